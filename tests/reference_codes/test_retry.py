"""The retry wrapper (reference.retry) with calculators that fail deterministically: NaN
output, a raising (crashed) code, a transient crash, tblite's SCF non-convergence; exactly
one retry with the safer settings, then a failure naming the call and the code, with the
run's checkpoints kept."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from atomate2.ase.jobs import AseRelaxMaker
from jobflow import run_locally
from pymatgen.io.ase import AseAtomsAdaptor

from atomate2_otf.bnn.posterior import Posterior
from atomate2_otf.flows import OTFMDMaker
from atomate2_otf.reference.retry import (
    ReferenceCalculationError,
    RetryingGFN2xTBStaticMaker,
    RetryOnFailure,
    current_call,
    deep_update,
)
from atomate2_otf.results import read_run_doc
from atomate2_otf.store import list_checkpoints, load_checkpoint
from tests.reference_codes.conftest import energy_forces
from tests.workflow.helpers import run_id_of


class _Attempts:
    """Every calculation the scripted calculator is asked for, with its settings."""

    def __init__(self) -> None:
        self.settings: list[dict[str, Any]] = []

    def reset(self) -> None:
        self.settings.clear()


ATTEMPTS = _Attempts()


class ScriptedEMT(EMT):
    """EMT that fails as told: ``fail`` is "nan", "raise" or "value" (an input error),
    from calculation number ``fail_from`` on (counted over the test), unless ``safe``."""

    def __init__(self, fail: str | None = None, fail_from: int = 1, safe: bool = False,
                 transient: bool = False) -> None:
        super().__init__()
        self.script = {"fail": fail, "fail_from": fail_from, "safe": safe,
                       "transient": transient}

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        # atomate2 asks for the energy, then for magmoms (EMT recalculates): one attempt
        if "energy" in properties:
            ATTEMPTS.settings.append(dict(self.script))
        n = len(ATTEMPTS.settings)
        failing = (self.script["fail"] and n >= self.script["fail_from"]
                   and not (self.script["transient"] and n > self.script["fail_from"]))
        if failing and self.script["fail"] == "raise":
            raise RuntimeError("code crashed (simulated segfault)")
        if failing and self.script["fail"] == "value":
            raise ValueError("bad input (simulated)")
        super().calculate(atoms, properties, system_changes or ["positions"])
        if failing and self.script["fail"] == "nan" and not self.script["safe"]:
            self.results["energy"] = math.nan


@dataclass
class ScriptedMaker(RetryOnFailure, AseRelaxMaker):
    """An ASE Maker whose retry switches ``safe`` on (which cures only the NaN failure)."""

    name: str = "scripted EMT"
    steps: int = 1
    relax_cell: bool = False
    calculator_kwargs: dict = field(default_factory=dict)

    code: ClassVar[str] = "scripted EMT"

    def safer_settings(self) -> dict[str, Any]:
        return {"safe": True}

    def _get_calculator(self):
        return ScriptedEMT(**self.calculator_kwargs)


def copper():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.02, seed=2)
    return atoms


@pytest.fixture(autouse=True)
def _reset_attempts():
    ATTEMPTS.reset()


def test_deep_update_merges_nested_settings_without_touching_the_original():
    base = {"input_data": {"electrons": {"conv_thr": 1e-8, "mixing_beta": 0.7}}, "x": 1}
    merged = deep_update(base, {"input_data": {"electrons": {"mixing_beta": 0.35}}})
    assert merged == {"input_data": {"electrons": {"conv_thr": 1e-8, "mixing_beta": 0.35}},
                      "x": 1}
    assert base["input_data"]["electrons"]["mixing_beta"] == 0.7


def test_current_call_outside_a_flow(monkeypatch):
    from jobflow import CURRENT_JOB

    # jobflow leaves the job context of a job that raised set (an earlier test's failing
    # run would leak into this one): "outside a flow" is no job context at all
    monkeypatch.setattr(CURRENT_JOB, "job", None)
    assert current_call() == "reference call"


def test_nan_is_retried_once_with_the_safer_settings_then_the_run_settings_return():
    structure = AseAtomsAdaptor.get_structure(copper())
    maker = ScriptedMaker(calculator_kwargs={"fail": "nan"})
    maker.run_ase(structure)
    assert [s["safe"] for s in ATTEMPTS.settings] == [False, True]
    assert maker.calculator_kwargs == {"fail": "nan"}  # restored for the next call
    ATTEMPTS.reset()
    maker.run_ase(structure)
    assert [s["safe"] for s in ATTEMPTS.settings] == [False, True]


@pytest.mark.parametrize("fail, expected", [
    ("raise", r"RuntimeError: code crashed \(simulated segfault\)"),
    ("nan", r"non-finite output: energy.*not finite"),
])
def test_failure_that_persists_fails_after_exactly_one_retry(fail, expected):
    structure = AseAtomsAdaptor.get_structure(copper())
    maker = ScriptedMaker(calculator_kwargs={"fail": fail},
                          retry_settings={"fail": fail})  # the "safer" settings fail too
    with pytest.raises(ReferenceCalculationError, match=expected) as info:
        maker.run_ase(structure)
    assert len(ATTEMPTS.settings) == 2
    message = str(info.value)
    assert "scripted EMT failed on Cu4" in message and "retry" in message


def test_transient_crash_passes_on_the_retry_with_the_right_label():
    atoms = copper()
    maker = ScriptedMaker(calculator_kwargs={"fail": "raise", "transient": True})
    energy, forces = energy_forces(maker.run_ase(AseAtomsAdaptor.get_structure(atoms)))
    assert len(ATTEMPTS.settings) == 2
    atoms.calc = EMT()
    assert abs(energy - atoms.get_potential_energy()) < 1e-12
    np.testing.assert_allclose(forces, atoms.get_forces(), atol=1e-12)


def test_input_errors_are_not_retried_and_retry_can_be_off():
    structure = AseAtomsAdaptor.get_structure(copper())
    with pytest.raises(ValueError, match="bad input"):
        ScriptedMaker(calculator_kwargs={"fail": "value"}).run_ase(structure)
    assert len(ATTEMPTS.settings) == 1
    ATTEMPTS.reset()
    with pytest.raises(ReferenceCalculationError, match=r"retry=False"):
        ScriptedMaker(calculator_kwargs={"fail": "raise"}, retry=False).run_ase(structure)
    assert len(ATTEMPTS.settings) == 1


def _retry_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "atomate2_otf.reference.retry" and "retrying once" in r.getMessage()]


def test_xtb_scf_non_convergence_retried_with_more_iterations_and_less_damping(caplog):
    from tblite.ase import TBLite

    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.3, seed=1)
    maker = RetryingGFN2xTBStaticMaker()
    maker.calculator_kwargs["max_iterations"] = 2
    assert maker.safer_settings() == {"max_iterations": 1000, "mixer_damping": 0.2}
    with caplog.at_level(logging.WARNING):
        energy, _ = energy_forces(maker.run_ase(AseAtomsAdaptor.get_molecule(atoms)))
    warnings = _retry_warnings(caplog)
    assert len(warnings) == 1 and "SCF not converged in 2 cycles" in warnings[0]
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    assert abs(energy - atoms.get_potential_energy()) < 1e-6
    # retry settings that cannot converge either: the call fails with the code named
    caplog.clear()
    maker = RetryingGFN2xTBStaticMaker(retry_settings={"max_iterations": 2})
    maker.calculator_kwargs["max_iterations"] = 2
    with caplog.at_level(logging.WARNING), pytest.raises(
            ReferenceCalculationError,
            match=r"GFN2-xTB \(tblite\) failed on C2H6O.*SCF not converged.*retry.*failed "
                  r"too.*SCF not converged"):
        maker.run_ase(AseAtomsAdaptor.get_molecule(atoms))
    assert len(_retry_warnings(caplog)) == 1


def _otf_maker(reference_maker, **kwargs):
    settings = dict(model="toy", reference_maker=reference_maker, n_steps=20,
                    timestep_fs=1.0, n_chains=2, update_steps=2, initial_update_steps=2,
                    n_workers=1, force_trigger_every=5, threshold=0.05)
    settings.update(kwargs)
    return OTFMDMaker(**settings)


@pytest.mark.parametrize("fail, expected", [
    ("nan", "non-finite output"),
    ("raise", r"code crashed \(simulated segfault\)"),
])
def test_failing_reference_in_a_run_names_the_call_and_keeps_the_checkpoints(store, fail,
                                                                              expected):
    # calculation 1 is reference call 0; call 1 (MD step 5) fails, and so does its retry
    maker = ScriptedMaker(calculator_kwargs={"fail": fail, "fail_from": 2},
                          retry_settings={"fail": fail})
    flow = _otf_maker(maker).make(copper())
    with pytest.raises(Exception, match=rf"reference call 1\b.*scripted EMT.*{expected}"):
        run_locally(flow, store=store, log=False, raise_immediately=True)
    assert len(ATTEMPTS.settings) == 1 + 2  # call 0, call 1 and its one retry
    run_id = run_id_of(flow)
    assert list_checkpoints(store, run_id) == [0]
    posterior = Posterior.from_bytes(load_checkpoint(store, f"{run_id}:0"))
    assert len(posterior.data) == 1 and np.isfinite(posterior.energy_offset)


def test_a_retry_that_succeeds_lets_the_run_finish(store):
    maker = ScriptedMaker(calculator_kwargs={"fail": "nan", "fail_from": 2})
    flow = _otf_maker(maker, n_steps=12).make(copper())
    run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)
    doc = read_run_doc(store, flow.output.uuid)
    assert doc is not None and doc.completed and doc.n_reference_calls == 3
    # every call after the first failed once and was relabelled with the safe settings
    assert [s["safe"] for s in ATTEMPTS.settings] == [False, False, True, False, True]
