"""Fixtures of the workflow tests: the toy model under a registry name."""

import pytest

from atomate2_otf.models.base import register_model
from tests.toy_model import ToyModel


@pytest.fixture(scope="session", autouse=True)
def toy_model_registered():
    """``load_model("toy")``: a pair potential covering H, C, O, Cu; milliseconds per step."""
    register_model("toy", ToyModel)
