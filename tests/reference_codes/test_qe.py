"""Quantum ESPRESSO reference (reference.qe) on Si2: labels equal ASE's Espresso called
directly, forces equal the energy's finite difference, SCF non-convergence and crashes are
retried once, pseudopotential choice and refusals; a short on-the-fly run.

Si2 with the norm-conserving ``Si.pbe-rrkj.UPF`` at 20 Ry and a 2x2x2 mesh: ~1 s per pw.x
call on one core. The pseudopotential-choice and crash tests need no pw.x.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk, molecule
from jobflow import run_locally
from pymatgen.io.ase import AseAtomsAdaptor

from atomate2_otf.atoms import record_from_atoms
from atomate2_otf.flows import OTFMDMaker
from atomate2_otf.reference import get_reference_maker, label_from_output
from atomate2_otf.reference.qe import (
    DEBIAN_PSEUDO_DIR,
    PBE_PSEUDOPOTENTIALS,
    QEStaticMaker,
    pick_pseudopotentials,
)
from atomate2_otf.reference.retry import ReferenceCalculationError
from atomate2_otf.results import read_run_doc
from atomate2_otf.store import list_checkpoints
from tests.reference_codes.conftest import energy_forces, needs_pw

#: cheap but real settings for tests (the defaults are 40 Ry and a finer mesh)
FAST = {"ecutwfc": 20.0, "kpts": (2, 2, 2), "pseudopotentials": {"Si": "Si.pbe-rrkj.UPF"}}


def silicon(seed: int = 1):
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=seed)
    return atoms


def structure(atoms):
    return AseAtomsAdaptor.get_structure(atoms)


@pytest.fixture
def fake_pseudo_dir(tmp_path):
    folder = tmp_path / "pseudo"
    folder.mkdir()
    for name in ("Si.pbe-rrkj.UPF", "Si.pz-vbc.UPF", "Li.pbesol-s-kjpaw_psl.0.2.1.UPF",
                 "O.pbe-kjpaw.UPF", "Cu.pbe-zz.UPF", "Cu.pbe-aa.UPF"):
        (folder / name).write_text("fake\n")
    return folder


def test_pseudopotential_choice_and_missing_element_named(fake_pseudo_dir):
    chosen = pick_pseudopotentials({"O", "Si", "Cu"}, fake_pseudo_dir)
    # the table's file where present; else the first <El>.pbe-* file in sorted order
    assert chosen == {"O": "O.pbe-kjpaw.UPF", "Si": "Si.pbe-rrkj.UPF", "Cu": "Cu.pbe-aa.UPF"}
    assert pick_pseudopotentials(["Si"], fake_pseudo_dir, {"Si": "Si.pz-vbc.UPF"}) == {
        "Si": "Si.pz-vbc.UPF"}
    # Li has only a PBEsol file: not mixed into a PBE calculation
    with pytest.raises(ValueError, match=rf"element 'Li' in '{fake_pseudo_dir}'.*"
                                         r"Li\.pbesol-s-kjpaw_psl"):
        pick_pseudopotentials(["Li", "Si"], fake_pseudo_dir)
    with pytest.raises(ValueError, match=r"element 'Xe'.*pseudopotentials=\{'Xe'"):
        pick_pseudopotentials(["Xe"], fake_pseudo_dir)
    with pytest.raises(ValueError, match=r"'Si'.*asked for 'Si.missing.UPF'"):
        pick_pseudopotentials(["Si"], fake_pseudo_dir, {"Si": "Si.missing.UPF"})
    with pytest.raises(ValueError, match="does not exist"):
        pick_pseudopotentials(["Si"], fake_pseudo_dir / "nowhere")


@pytest.mark.skipif(not Path(DEBIAN_PSEUDO_DIR).is_dir(),
                    reason="quantum-espresso-data is not installed")
def test_debian_package_has_the_table_files():
    missing = [f for f in PBE_PSEUDOPOTENTIALS.values()
               if not (Path(DEBIAN_PSEUDO_DIR) / f).is_file()]
    assert missing == []


def test_refuses_molecules_and_bad_settings_before_running(fake_pseudo_dir):
    with pytest.raises(ValueError, match=r"periodic cells; got a Molecule \(H2 O1\)"):
        QEStaticMaker(pseudo_dir=str(fake_pseudo_dir)).run_ase(
            AseAtomsAdaptor.get_molecule(molecule("H2O")))
    with pytest.raises(ValueError, match="element 'Ge'"):
        QEStaticMaker(pseudo_dir=str(fake_pseudo_dir)).run_ase(
            structure(bulk("Ge", "diamond", a=5.65)))
    for bad, message in (({"ecutwfc": 0}, "ecutwfc"), ({"ecutrho": 50.0}, "ecutrho"),
                         ({"kpts": (2, 0, 2)}, "kpts"), ({"kspacing": -1.0}, "kspacing")):
        with pytest.raises(ValueError, match=message):
            QEStaticMaker(**bad)
    assert isinstance(get_reference_maker("qe"), QEStaticMaker)


def test_crash_is_retried_once_then_fails_naming_the_code(fake_pseudo_dir, tmp_path,
                                                          monkeypatch, counting_command):
    monkeypatch.chdir(tmp_path)
    command = counting_command.make("echo 'segmentation fault' >&2; exit 3")
    maker = QEStaticMaker(pseudo_dir=str(fake_pseudo_dir), command=command, **FAST)
    with pytest.raises(ReferenceCalculationError,
                       match=r"Quantum ESPRESSO \(pw\.x\) failed on Si2: the code crashed "
                             r"\(exit status 3.*retry.*failed too.*exit status 3"):
        maker.run_ase(structure(silicon()))
    assert counting_command.calls() == 2


@needs_pw
def test_labels_equal_espresso_called_directly(tmp_path, monkeypatch):
    from ase.calculators.espresso import Espresso, EspressoProfile

    monkeypatch.chdir(tmp_path)
    atoms = silicon()
    job = QEStaticMaker(**FAST).make(structure(atoms))
    responses = run_locally(job, log=False, ensure_success=True)
    label = label_from_output(responses[job.uuid][1].output, record_from_atoms(atoms))
    input_data = {"control": {"tprnfor": True, "tstress": True},
                  "system": {"ecutwfc": 20.0, "ecutrho": 160.0, "occupations": "smearing",
                             "smearing": "gaussian", "degauss": 0.01},
                  "electrons": {"conv_thr": 1e-8}}
    atoms.calc = Espresso(profile=EspressoProfile(command="pw.x",
                                                  pseudo_dir=DEBIAN_PSEUDO_DIR),
                          directory=str(tmp_path / "direct"), input_data=input_data,
                          pseudopotentials={"Si": "Si.pbe-rrkj.UPF"}, kpts=(2, 2, 2))
    assert abs(label.energy - atoms.get_potential_energy()) < 1e-5
    np.testing.assert_allclose(label.forces, atoms.get_forces(), atol=1e-4)
    # label.stress is ASE's convention (eV/A^3) after the task document's kbar
    np.testing.assert_allclose(label.stress, atoms.get_stress(voigt=False), atol=1e-5)
    assert np.abs(label.forces).max() > 0.1  # the rattled cell has real forces


@needs_pw
def test_forces_equal_the_finite_difference_of_the_energy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    maker = QEStaticMaker(**FAST)
    atoms = silicon()
    _, forces = energy_forces(maker.run_ase(structure(atoms)))
    h = 0.01
    energies = []
    for sign in (1, -1):
        displaced = atoms.copy()
        displaced.positions[0, 2] += sign * h
        energies.append(energy_forces(maker.run_ase(structure(displaced)))[0])
    assert abs(-(energies[0] - energies[1]) / (2 * h) - forces[0, 2]) < 2e-3


@needs_pw
def test_scf_non_convergence_is_retried_once_and_gives_the_converged_label(
        tmp_path, monkeypatch, counting_command):
    monkeypatch.chdir(tmp_path)
    command = counting_command.make('exec pw.x "$@"')
    two_steps = {"input_data": {"electrons": {"electron_maxstep": 2}}}
    maker = QEStaticMaker(command=command, calculator_kwargs=two_steps, **FAST)
    assert maker.safer_settings() == {"input_data": {"electrons": {
        "electron_maxstep": 300, "mixing_beta": 0.35, "mixing_mode": "local-TF"}}}
    energy, forces = energy_forces(maker.run_ase(structure(silicon())))
    assert counting_command.calls() == 2
    reference_energy, reference_forces = energy_forces(
        QEStaticMaker(**FAST).run_ase(structure(silicon())))
    # the same converged SCF reached another way: equal to conv_thr (1e-8 Ry) precision
    assert abs(energy - reference_energy) < 1e-5
    np.testing.assert_allclose(forces, reference_forces, atol=5e-4)
    # retry settings that cannot converge either: one retry, then the failure
    maker = QEStaticMaker(command=command, calculator_kwargs=two_steps,
                          retry_settings=two_steps, **FAST)
    with pytest.raises(ReferenceCalculationError,
                       match=r"Quantum ESPRESSO \(pw\.x\) failed on Si2: SCF not converged: "
                             r"pw\.x: convergence NOT achieved after +2 iterations.*retry.*"
                             r"failed too"):
        maker.run_ase(structure(silicon()))
    assert counting_command.calls() == 2 + 2


@needs_pw
def test_short_otf_run_with_qe(store):
    """Three reference calls (initial + 2 triggers) on Si2 with the toy model."""
    maker = OTFMDMaker(model="toy-si", reference_maker=QEStaticMaker(**FAST), n_steps=10,
                       timestep_fs=1.0, temperature=300.0, n_chains=2, update_steps=2,
                       initial_update_steps=2, n_workers=1, force_trigger_every=4,
                       threshold=0.05)
    flow = maker.make(silicon())
    run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)
    doc = read_run_doc(store, flow.output.uuid)
    assert doc is not None and doc.completed and doc.n_md_steps == 10
    assert doc.n_reference_calls == 3 and doc.reference == "QE static (PBE)"
    energies = [c.reference_energy for c in doc.calls]
    assert all(-212.5 < e < -210.5 for e in energies)  # Si2 PBE, this pseudopotential
    assert list_checkpoints(store, doc.run_id)[-1] == doc.n_reference_calls - 1


@needs_pw
def test_unconverged_scf_that_pw_x_goes_on_with_is_not_a_label(tmp_path, monkeypatch):
    """scf_must_converge=.false.: pw.x exits 0 with forces of an unconverged density."""
    monkeypatch.chdir(tmp_path)
    lax = {"input_data": {"electrons": {"electron_maxstep": 2, "scf_must_converge": False}}}
    maker = QEStaticMaker(calculator_kwargs=lax, retry_settings=lax, **FAST)
    with pytest.raises(ReferenceCalculationError,
                       match=r"SCF not converged: pw\.x: SCF stopped at estimated "
                             r"accuracy .* above conv_thr 1e-08 Ry.*failed too"):
        maker.run_ase(structure(silicon()))


@needs_pw
def test_pw_x_error_is_reported_in_its_own_words(fake_pseudo_dir, tmp_path, monkeypatch,
                                                 counting_command):
    """A corrupt pseudopotential file: pw.x stops with an error box, retried once."""
    monkeypatch.chdir(tmp_path)
    command = counting_command.make('exec pw.x "$@"')
    maker = QEStaticMaker(pseudo_dir=str(fake_pseudo_dir), command=command, **FAST)
    with pytest.raises(ReferenceCalculationError,
                       match=r"pw\.x crashed \(exit status \d+\): Error in routine .*"
                             r"failed too"):
        maker.run_ase(structure(silicon()))
    assert counting_command.calls() == 2
