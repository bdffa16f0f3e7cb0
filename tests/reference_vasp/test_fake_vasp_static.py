"""atomate2's own VASP path (write inputs -> custodian runs "VASP" -> parse -> TaskDoc) with
the EMT stand-in as VASP: labels, units and the stress sign end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.io import read
from ase.units import GPa

from atomate2_otf.atoms import record_from_atoms
from atomate2_otf.reference import label_from_output
from tests.fake_vasp import (
    FAKE_CUSTODIAN_KWARGS,
    FAKE_VASP_HANDLERS,
    FAKE_VASP_SCRIPT,
    fake_vasp_command,
    fake_vasp_maker,
)
from tests.reference_vasp.helpers import copper, emt_values, run_static

#: POTCAR.spec stands in for the licensed POTCARs; pymatgen's Vasprun looks for them anyway
pytestmark = pytest.mark.filterwarnings("ignore:No POTCAR file with matching TITEL:UserWarning")


def test_static_job_labels_equal_emt(tmp_path):
    atoms = copper()
    doc, folder = run_static(fake_vasp_maker(), atoms, tmp_path)
    energy, forces, stress = emt_values(atoms)
    assert doc.state == "successful" and doc.task_label == "VASP static (MP PBE)"
    assert doc.input.incar["ISYM"] == 0 and doc.input.incar["ISIF"] == 2
    assert {p.name for p in folder.iterdir()} >= {"vasprun.xml.gz", "OUTCAR.gz",
                                                  "OSZICAR.gz", "CONTCAR.gz", "POTCAR.spec"}
    assert abs(doc.output.energy - energy) < 1e-6
    np.testing.assert_allclose(doc.output.forces, forces, atol=1e-6)
    # the TaskDoc keeps VASP's kbar (positive = compressive); the package reads it as ASE's
    np.testing.assert_allclose(doc.output.stress, -stress / (0.1 * GPa), atol=1e-6)
    label = label_from_output(doc, record_from_atoms(atoms))
    assert abs(label.energy - energy) < 1e-6
    np.testing.assert_allclose(label.forces, forces, atol=1e-6)
    np.testing.assert_allclose(label.stress, stress, atol=1e-9)


def test_mixed_cell_forces_come_back_in_site_order(tmp_path):
    atoms = copper(rattle=0.05)
    atoms.symbols[[1, 3]] = "Au"  # the order a sorted POSCAR would permute
    doc, _ = run_static(fake_vasp_maker(), atoms, tmp_path)
    energy, forces, _ = emt_values(atoms)
    label = label_from_output(doc, record_from_atoms(atoms))
    assert abs(label.energy - energy) < 1e-6
    np.testing.assert_allclose(label.forces, forces, atol=1e-6)


@pytest.mark.parametrize("a, pressure_sign", [(3.40, +1), (3.75, -1)])
def test_kbar_to_ase_stress_end_to_end(tmp_path, a, pressure_sign):
    """Compressed Cu pushes outwards: VASP reports a positive pressure in kbar, ASE a
    negative stress in eV/A^3 (tension: the reverse). The stand-in's files are read three
    ways: by ASE's own vasprun.xml and OUTCAR readers (VASP's convention as ASE knows it),
    and through emmet's TaskDoc and label_from_output (the package's path)."""
    atoms = copper(a=a, rattle=0.01)
    _, _, stress = emt_values(atoms)
    assert np.sign(np.trace(stress)) == -pressure_sign  # ASE's sign for this strain

    doc, folder = run_static(fake_vasp_maker(), atoms, tmp_path)
    kbar = np.asarray(doc.output.stress)
    assert np.sign(np.trace(kbar)) == pressure_sign  # VASP's sign: compression positive
    np.testing.assert_allclose(np.trace(kbar) / 3, -np.trace(stress) / 3 / GPa * 10, rtol=1e-6)

    from_vasprun = read(folder / "vasprun.xml.gz", format="vasp-xml")
    from_outcar = read(folder / "OUTCAR.gz", format="vasp-out")
    np.testing.assert_allclose(from_vasprun.get_stress(voigt=False), stress, atol=1e-9)
    np.testing.assert_allclose(from_outcar.get_stress(voigt=False), stress, atol=1e-6)
    np.testing.assert_allclose(from_outcar.get_forces(), emt_values(atoms)[1], atol=1e-5)

    label = label_from_output(doc, record_from_atoms(atoms))
    np.testing.assert_allclose(label.stress, stress, atol=1e-9)
    np.testing.assert_allclose(label.stress, from_vasprun.get_stress(voigt=False), atol=1e-9)


def test_positive_energy_handler_is_why_the_stand_in_drops_it(tmp_path):
    """With every labelling handler, EMT's positive energy of a squeezed cell reads as a
    broken SCF: custodian switches ALGO to Normal, then gives up (a static run has no
    POTIM to lower). Real PAW energies are negative; the stand-in's are not."""
    from custodian.custodian import NonRecoverableError

    from atomate2_otf.reference.retry import ReferenceCalculationError
    from atomate2_otf.reference.vasp import LABELLING_HANDLERS

    assert len(FAKE_VASP_HANDLERS) == len(LABELLING_HANDLERS) - 1
    atoms = copper(a=3.40)
    assert emt_values(atoms)[0] > 0
    with pytest.raises(ReferenceCalculationError,
                       match=r"VASP failed on Cu4: run 1: Positive energy "
                             r"\[PositiveEnergyErrorHandler\]; rerun with INCAR ALGO=Normal; "
                             r"run 2 .*no correction possible") as info:
        run_static(fake_vasp_maker(handlers=LABELLING_HANDLERS), atoms, tmp_path)
    assert isinstance(info.value.__cause__, NonRecoverableError)


def test_vasp_command_from_atomate2_settings(tmp_path):
    """No command in the Maker: atomate2's VASP_CMD of the process that runs the job is
    used, here set through ATOMATE2_VASP_CMD (a fresh interpreter, as on a worker)."""
    atoms = copper(seed=11)
    script = f"""
import json, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parents[2])!r})
from jobflow import run_locally
from pymatgen.io.ase import AseAtomsAdaptor
from ase.io import read
from atomate2_otf.reference import vasp_reference_maker
from tests.fake_vasp import FAKE_CUSTODIAN_KWARGS, FAKE_VASP_HANDLERS

maker = vasp_reference_maker(handlers=FAKE_VASP_HANDLERS, custodian_kwargs=FAKE_CUSTODIAN_KWARGS,
                             write_input_set_kwargs={{"potcar_spec": True}})
job = maker.make(AseAtomsAdaptor.get_structure(read(sys.argv[1])))
out = run_locally(job, root_dir=sys.argv[2], create_folders=True, log=False,
                  ensure_success=True)[job.uuid][1].output
print(json.dumps({{"energy": out.output.energy, "forces": out.output.forces}}))
"""
    atoms.write(tmp_path / "POSCAR.in", format="vasp")
    env = {**os.environ, "ATOMATE2_VASP_CMD": fake_vasp_command(),
           "ATOMATE2_VASP_GAMMA_CMD": fake_vasp_command()}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "POSCAR.in"),
                             str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    energy, forces, _ = emt_values(atoms)
    assert abs(out["energy"] - energy) < 1e-6
    np.testing.assert_allclose(out["forces"], forces, atol=1e-6)


def test_custodian_kwargs_of_the_stand_in_are_only_timing():
    maker = fake_vasp_maker()
    assert maker.run_vasp_kwargs["custodian_kwargs"] == FAKE_CUSTODIAN_KWARGS
    assert maker.write_input_set_kwargs == {"potcar_spec": True}


def test_gfn1_xtb_option_labels_a_silicon_cell(tmp_path):
    """The stand-in's second calculator: GFN1-xTB (tblite) for elements EMT lacks."""
    pytest.importorskip("tblite")
    from ase.build import bulk
    from tblite.ase import TBLite

    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.02, seed=1)
    doc, _ = run_static(fake_vasp_maker(calculator="gfn1-xtb"), atoms, tmp_path)
    label = label_from_output(doc, record_from_atoms(atoms))
    reference = atoms.copy()
    reference.calc = TBLite(method="GFN1-xTB", verbosity=0)
    assert abs(label.energy - reference.get_potential_energy()) < 1e-6
    np.testing.assert_allclose(label.forces, reference.get_forces(), atol=1e-6)
    np.testing.assert_allclose(label.stress, reference.get_stress(voigt=False), atol=1e-8)


def test_stand_in_behaves_like_vasp_on_its_inputs(tmp_path):
    """No POTCAR: no run. ISIF = 0: no stress. NSW > 0 with moving ions: refused."""
    from pymatgen.io.vasp import Vasprun

    atoms = copper()
    atoms.write(tmp_path / "POSCAR", format="vasp")
    command = [sys.executable, str(FAKE_VASP_SCRIPT)]

    def run(incar: str):
        (tmp_path / "INCAR").write_text(incar)
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, check=False)

    result = run("ISIF = 0\n")
    assert result.returncode != 0 and "no POTCAR or POTCAR.spec" in result.stderr
    (tmp_path / "POTCAR.spec").write_text("Cu_pv\n")
    assert run("ISIF = 0\nNSW = 0\n").returncode == 0
    step = Vasprun(str(tmp_path / "vasprun.xml"), parse_potcar_file=False).ionic_steps[-1]
    assert "stress" not in step and np.asarray(step["forces"]).shape == (4, 3)
    result = run("NSW = 5\nIBRION = 2\n")
    assert result.returncode != 0 and "only single points" in result.stderr
