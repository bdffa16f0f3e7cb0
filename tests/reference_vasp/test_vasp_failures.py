"""Failure handling on the VASP path, with the stand-in failing the way VASP does: an SCF
that stops at NELM unconverged (rerun once by custodian with ALGO = Normal), one that never
converges, a crash (exit status 1, partial output). One corrective rerun, then a
ReferenceCalculationError naming the code, the reference call and its MD step; the run's
checkpoints stay loadable."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
from custodian.vasp.handlers import UnconvergedErrorHandler
from jobflow import run_locally
from monty.io import zopen

from atomate2_otf.bnn.posterior import Posterior
from atomate2_otf.flows import OTFMDMaker
from atomate2_otf.reference.retry import ReferenceCalculationError
from atomate2_otf.reference.vasp import LABELLING_MAX_ERRORS, custodian_corrections
from atomate2_otf.store import list_checkpoints, load_checkpoint
from tests.fake_vasp import FAKE_VASP_HANDLERS, fake_vasp_maker
from tests.fake_vasp.fake_vasp import UNCONVERGED_ERROR
from tests.reference_vasp.helpers import copper, emt_values, record_atoms, run_static
from tests.workflow.helpers import run_id_of

#: POTCAR.spec stands in for the licensed POTCARs; pymatgen's Vasprun looks for them anyway
pytestmark = pytest.mark.filterwarnings("ignore:No POTCAR file with matching TITEL:UserWarning")

SEGFAULT = r"Crashed: forrtl: severe \(174\): SIGSEGV, segmentation fault occurred"
UNCONVERGED = r"SCF not converged within NELM = 100 electronic steps \[UnconvergedErrorHandler\]"


def runs(counter) -> int:
    """How many times the stand-in ran (its --run-counter file)."""
    return int(counter.read_text()) if counter.exists() else 0


def failed_job_dir(root):
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    return folder


def test_unconverged_scf_is_rerun_once_with_algo_normal_and_labels(tmp_path):
    """ALGO = Fast (MP's) stops at NELM unconverged; custodian's UnconvergedErrorHandler
    reruns once with ALGO = Normal, which converges: the label is EMT's."""
    atoms = copper()
    counter = tmp_path / "runs"
    doc, folder = run_static(fake_vasp_maker(scf_fails_with="fast", run_counter=counter),
                             atoms, tmp_path / "jobs")
    assert runs(counter) == 2
    (entry,) = doc.custodian
    (correction,) = entry.corrections
    assert correction["handler"]["@class"] == "UnconvergedErrorHandler"
    assert correction["errors"] == ["Unconverged"]
    assert correction["actions"] == [{"dict": "INCAR", "action": {"_set": {"ALGO": "Normal"}}}]
    assert doc.state == "successful" and doc.input.incar["ALGO"] == "Normal"
    with zopen(folder / "INCAR.orig.gz", "rt") as incar:
        assert "ALGO = Fast" in incar.read()

    energy, forces, stress = emt_values(atoms)
    assert abs(doc.output.energy - energy) < 1e-6
    np.testing.assert_allclose(doc.output.forces, forces, atol=1e-6)

    # the first run's output, kept by custodian, is what VASP writes at NELM: unconverged
    from pymatgen.io.vasp import Vasprun

    with tarfile.open(folder / "error.1.tar.gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("vasprun.xml"))
        (tmp_path / "vasprun.xml").write_bytes(tar.extractfile(member).read())
    first = Vasprun(str(tmp_path / "vasprun.xml"), parse_potcar_file=False)
    assert not first.converged_electronic
    assert len(first.ionic_steps[-1]["electronic_steps"]) == 100 == first.parameters["NELM"]
    assert abs(first.final_energy - energy - UNCONVERGED_ERROR) < 1e-6


def test_persistent_non_convergence_fails_after_one_rerun_naming_vasp(tmp_path):
    counter = tmp_path / "runs"
    with pytest.raises(ReferenceCalculationError,
                       match=rf"VASP failed on Cu4: run 1: {UNCONVERGED}; rerun with INCAR "
                             rf"ALGO=Normal; run 2 \(the corrective rerun\): {UNCONVERGED}; "
                             rf"custodian's next correction .* not run; custodian stopped: "
                             rf"Max errors .*: {LABELLING_MAX_ERRORS}") as info:
        run_static(fake_vasp_maker(scf_fails_with="any", run_counter=counter), copper(),
                   tmp_path / "jobs")
    assert runs(counter) == 2  # the failed run and its one corrective rerun
    assert "labels and checkpoints written so far stay" in str(info.value)
    assert type(info.value.__cause__).__name__.startswith("MaxCorrections")
    folder = failed_job_dir(tmp_path / "jobs")
    assert [c["handler"] for c in custodian_corrections(folder)] == [
        "UnconvergedErrorHandler"] * 2


def test_crash_fails_after_one_rerun_quoting_stderr(tmp_path):
    counter = tmp_path / "runs"
    with pytest.raises(ReferenceCalculationError,
                       match=rf"VASP failed on Cu4: run 1: {SEGFAULT} \[VaspCrashHandler\]; "
                             rf"rerun with INCAR ALGO=Normal; removed the partial OUTCAR.*; "
                             rf"run 2 \(the corrective rerun\): {SEGFAULT}"):
        run_static(fake_vasp_maker(crash=True, run_counter=counter), copper(),
                   tmp_path / "jobs")
    assert runs(counter) == 2
    folder = failed_job_dir(tmp_path / "jobs")
    assert {"error.1.tar.gz", "error.2.tar.gz"} <= {p.name for p in folder.iterdir()}
    with tarfile.open(folder / "error.1.tar.gz") as tar:
        names = {m.name.rsplit("/", 1)[-1] for m in tar.getmembers()}
        stderr = next(m for m in tar.getmembers() if m.name.endswith("std_err.txt"))
        assert b"SIGSEGV" in tar.extractfile(stderr).read()
    assert "OUTCAR" in names and "vasprun.xml" not in names  # the crash's partial output


def test_a_crash_that_does_not_recur_gives_the_label(tmp_path):
    atoms = copper(seed=5)
    counter = tmp_path / "runs"
    doc, _ = run_static(fake_vasp_maker(crash=True, faulty_runs="1", run_counter=counter),
                        atoms, tmp_path / "jobs")
    assert runs(counter) == 2
    (correction,) = doc.custodian[0].corrections
    assert correction["handler"]["@class"] == "VaspCrashHandler"
    assert correction["actions"][0] == {"dict": "INCAR", "action": {"_set": {"ALGO": "Normal"}}}
    energy, forces, _ = emt_values(atoms)
    assert abs(doc.output.energy - energy) < 1e-6
    np.testing.assert_allclose(doc.output.forces, forces, atol=1e-6)


def test_unconverged_output_no_handler_corrects_still_fails_clearly(tmp_path):
    """Without UnconvergedErrorHandler custodian passes an unconverged run; atomate2's
    task document says 'failed' and the label is refused, not used."""
    handlers = [h for h in FAKE_VASP_HANDLERS if not isinstance(h, UnconvergedErrorHandler)]
    with pytest.raises(ReferenceCalculationError,
                       match=r"VASP failed on Cu4: VASP's output is not converged and no "
                             r"handler corrected it"):
        run_static(fake_vasp_maker(scf_fails_with="any", handlers=handlers), copper(),
                   tmp_path / "jobs")


def _otf_maker(reference_maker):
    return OTFMDMaker(model="toy", reference_maker=reference_maker, n_steps=20,
                      timestep_fs=1.0, n_chains=2, update_steps=2, initial_update_steps=2,
                      n_workers=1, force_trigger_every=5, threshold=0.05)


@pytest.mark.parametrize("failure, expected", [
    ({"scf_fails_with": "any"}, UNCONVERGED),
    ({"crash": True}, SEGFAULT),
], ids=["scf-unconverged", "crash"])
def test_failing_vasp_call_in_a_run_names_call_and_step_and_keeps_checkpoints(
        store, tmp_path, failure, expected):
    # run 1 is reference call 0 (fine); call 1 (MD step 5) fails, and so does its rerun
    counter = tmp_path / "runs"
    atoms = copper()
    maker = fake_vasp_maker(faulty_runs="2-", run_counter=counter, **failure)
    flow = _otf_maker(maker).make(atoms)
    with pytest.raises(ReferenceCalculationError,
                       match=rf"^reference call 1 \(MD step 5\): VASP failed on Cu4: run 1: "
                             rf"{expected}.*run 2 \(the corrective rerun\): {expected}"):
        run_locally(flow, store=store, root_dir=tmp_path / "jobs", create_folders=True,
                    log=False, raise_immediately=True)
    assert runs(counter) == 3  # call 0, call 1 and its one corrective rerun

    run_id = run_id_of(flow)
    checkpoints = list_checkpoints(store, run_id)
    assert checkpoints == [0]
    for index in checkpoints:
        posterior = Posterior.from_bytes(load_checkpoint(store, f"{run_id}:{index}"))
        assert np.isfinite(posterior.energy_offset)
        (record,) = posterior.data  # reference call 0's label, EMT's
        energy, forces, _ = emt_values(record_atoms(record))
        assert abs(record.energy - energy) < 1e-6
        np.testing.assert_allclose(record.forces, forces, atol=1e-6)
    # reference call 0's task document stays in the store, successful
    (task,) = store.query({"name": "otf reference 0"}, properties=["output.state"])
    assert task["output"]["state"] == "successful"


def test_stand_in_failure_options_are_real_vasp_like(tmp_path):
    """The stand-in alone: the crash exits 1 with stderr and no vasprun.xml; --faulty-runs
    counts runs across directories."""
    import subprocess
    import sys

    from tests.fake_vasp import FAKE_VASP_SCRIPT

    copper().write(tmp_path / "POSCAR", format="vasp")
    (tmp_path / "INCAR").write_text("ALGO = Fast\nNELM = 7\n")
    (tmp_path / "POTCAR.spec").write_text("Cu_pv\n")

    def run(*args):
        return subprocess.run([sys.executable, str(FAKE_VASP_SCRIPT), *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60, check=False)

    result = run("--crash")
    assert result.returncode == 1 and "SIGSEGV" in result.stderr
    assert (tmp_path / "OUTCAR").is_file() and not (tmp_path / "vasprun.xml").exists()
    counter = str(tmp_path / "n")
    outcomes = [run("--crash", "--faulty-runs", "2", "--run-counter", counter).returncode
                for _ in range(3)]
    assert outcomes == [0, 1, 0]
    from pymatgen.io.vasp import Oszicar, Vasprun

    assert run("--scf-fails-with", "Fast,All").returncode == 0
    vasprun = Vasprun(str(tmp_path / "vasprun.xml"), parse_potcar_file=False)
    assert not vasprun.converged_electronic
    assert len(Oszicar(str(tmp_path / "OSZICAR")).electronic_steps[-1]) == 7
