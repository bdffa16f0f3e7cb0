"""Fixtures of the workflow tests: the toy model under a registry name."""

import pytest

from atomate2_otf.models.base import register_model
from tests.toy_model import ToyModel


@pytest.fixture(scope="session", autouse=True)
def toy_model_registered():
    """``load_model("toy")``: a pair potential covering H, C, O, Cu; milliseconds per step."""
    register_model("toy", ToyModel)


@pytest.fixture
def cu_cif(tmp_path):
    """A rattled 4-atom fcc Cu cell as a CIF file: a structure the CLI reads."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.02, seed=6)
    path = tmp_path / "cu.cif"
    atoms.write(path)
    return path
