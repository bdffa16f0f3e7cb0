"""The labelling VASP Maker: MP-compatible inputs, identical for every call, safe to reuse.

These tests only write input sets (``potcar_spec=True``: no POTCARs needed) or run the
Maker's checks; the VASP stand-in runs in test_fake_vasp_static.py.
"""

import json

import numpy as np
import pytest
from atomate2.vasp.jobs.core import StaticMaker
from custodian.vasp.handlers import (
    IncorrectSmearingHandler,
    KspacingMetalHandler,
    LargeSigmaHandler,
)
from monty.json import MontyDecoder
from pymatgen.io.ase import AseAtomsAdaptor

from atomate2_otf.reference import get_reference_maker, vasp_reference_maker
from atomate2_otf.reference.vasp import LabellingStaticMaker, check_fresh_directory
from tests.reference_vasp.helpers import copper


def inputs(maker, atoms):
    """The VaspInput the Maker's generator writes for ``atoms`` (no POTCAR files needed)."""
    return maker.input_set_generator.get_input_set(AseAtomsAdaptor.get_structure(atoms),
                                                   potcar_spec=True)


def test_registered_as_vasp_with_mp_pbe_settings():
    maker = get_reference_maker("vasp")
    assert isinstance(maker, StaticMaker) and isinstance(maker, LabellingStaticMaker)
    vis = inputs(maker, copper())
    incar = vis["INCAR"]
    # MP's GGA Hamiltonian (what MPtrj-trained models saw): PBE POTCARs of MP, 520 eV
    assert incar["ENCUT"] == 520 and incar["PREC"] == "Accurate" and "GGA" not in incar
    assert vis["POTCAR.spec"].split() == ["Cu_pv"] and incar["ISPIN"] == 2 and incar["LASPH"]
    # labelling: symmetry off, single point with forces and stress, fixed smearing
    assert incar["ISYM"] == 0 and incar["NSW"] == 0 and incar["IBRION"] == -1
    assert incar["ISIF"] == 2 and incar["ISMEAR"] == 0 and incar["SIGMA"] == 0.05
    assert not incar["LCHARG"] and not incar["LWAVE"] and "LORBIT" not in incar
    assert vis["KPOINTS"].style.name == "Gamma"
    handlers = maker.run_vasp_kwargs["handlers"]
    physics_changing = (LargeSigmaHandler, IncorrectSmearingHandler, KspacingMetalHandler)
    assert not any(isinstance(h, physics_changing) for h in handlers)


def test_mp_u_values_follow_the_composition():
    from pymatgen.core import Lattice, Structure

    feo = Structure(Lattice.cubic(4.3), ["Fe", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    incar = vasp_reference_maker().input_set_generator.get_input_set(
        feo, potcar_spec=True)["INCAR"]
    assert incar["LDAU"] and incar["LDAUU"] == [5.3, 0]


def test_inputs_are_identical_for_every_snapshot_of_a_run():
    maker = vasp_reference_maker()
    first, later = inputs(maker, copper(seed=3)), inputs(maker, copper(rattle=0.1, seed=9))
    assert dict(first["INCAR"]) == dict(later["INCAR"])
    assert str(first["KPOINTS"]) == str(later["KPOINTS"])


def test_structure_fixes_the_mesh_when_the_cell_changes():
    start = copper()
    strained = copper(a=3.61 * 1.08)
    free = vasp_reference_maker()
    fixed = vasp_reference_maker(AseAtomsAdaptor.get_structure(start))
    # MP's density alone would change the mesh during an NPT run ...
    assert inputs(free, start)["KPOINTS"].kpts != inputs(free, strained)["KPOINTS"].kpts
    # ... the structure given to the factory keeps the starting cell's mesh throughout
    assert inputs(fixed, strained)["KPOINTS"].kpts == inputs(free, start)["KPOINTS"].kpts


def test_site_order_is_kept_for_mixed_cells():
    atoms = copper()
    atoms.symbols[[1, 3]] = "Au"  # Cu Au Cu Au: sorting would group the species
    poscar = inputs(vasp_reference_maker(), atoms)["POSCAR"]
    assert [s.specie.symbol for s in poscar.structure] == list(atoms.get_chemical_symbols())
    np.testing.assert_allclose(poscar.structure.cart_coords, atoms.positions, atol=1e-10)


def test_user_settings_override_and_bad_values_are_named():
    maker = vasp_reference_maker(user_incar_settings={"ISPIN": 1, "ENCUT": 600},
                                 vasp_cmd="srun vasp_std")
    incar = inputs(maker, copper())["INCAR"]
    assert incar["ISPIN"] == 1 and incar["ENCUT"] == 600 and incar["ISYM"] == 0
    assert maker.run_vasp_kwargs["vasp_cmd"] == "srun vasp_std"
    # without a command the worker's atomate2 setting (VASP_CMD) is used
    assert "vasp_cmd" not in vasp_reference_maker().run_vasp_kwargs
    with pytest.raises(ValueError, match="reciprocal_density must be >= 1, got 0"):
        vasp_reference_maker(reciprocal_density=0)
    with pytest.raises(ValueError, match="vasp_cmd must be a non-empty command"):
        vasp_reference_maker(vasp_cmd="  ")


def test_maker_survives_serialisation():
    """Jobs carry the Maker as an argument: FireWorks/jobflow-remote store it as JSON."""
    maker = vasp_reference_maker(AseAtomsAdaptor.get_structure(copper()))
    again = MontyDecoder().process_decoded(json.loads(json.dumps(maker.as_dict())))
    assert isinstance(again, LabellingStaticMaker)
    assert dict(inputs(again, copper())["INCAR"]) == dict(inputs(maker, copper())["INCAR"])
    assert str(inputs(again, copper())["KPOINTS"]) == str(inputs(maker, copper())["KPOINTS"])
    assert [type(h) for h in again.run_vasp_kwargs["handlers"]] == [
        type(h) for h in maker.run_vasp_kwargs["handlers"]]


def test_a_directory_used_by_an_earlier_vasp_run_is_refused(tmp_path):
    check_fresh_directory(tmp_path)  # empty: fine
    (tmp_path / "POSCAR.gz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"earlier VASP calculation \(POSCAR.gz\).*"
                                         r"create_folders=True"):
        check_fresh_directory(tmp_path)


def test_a_molecule_is_refused(tmp_path, monkeypatch):
    from jobflow import run_locally
    from pymatgen.core import Molecule

    monkeypatch.chdir(tmp_path)
    job = vasp_reference_maker().make(Molecule(["H", "H"], [[0, 0, 0], [0, 0, 0.74]]))
    with pytest.raises(ValueError, match="VASP needs a periodic cell, got a Molecule"):
        run_locally(job, log=False, ensure_success=True, raise_immediately=True)
