"""The online audit (issue 16.4): ``OTFMDMaker(audit_fraction=...)`` labels a random share
of the MD steps the trigger let pass and reports the audited miss rate.

Checked here: the audited steps are the seeded draws of :class:`AuditDraw`; each audited
frame is scored by the ensemble *before* its label joins the calibration or the data (the
checkpoint before the audit predicts the recorded energy, and its calibration does not
contain the error yet); an audit samples nothing; the run document's audit numbers equal
those of its calls; the audit jobs route like any other reference and update; a run with
the audit off makes no audit; bad fractions are refused before any work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from atomate2_otf.bnn.posterior import Posterior
from atomate2_otf.local import run_flow_locally
from atomate2_otf.md.trigger import AuditDraw
from atomate2_otf.results import read_run_doc
from atomate2_otf.stats import wilson_interval
from atomate2_otf.store import load_checkpoint
from tests.processes import ROOT, refused_cli_line
from tests.workflow.helpers import copper, toy_maker

FRACTION = 0.1
SEED = 5


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A 60-step toy run (a forced call every 7 model steps) auditing 10 % of the rest,
    every checkpoint kept."""
    from atomate2_otf.store import embedded_job_store

    tmp = tmp_path_factory.mktemp("audit")
    store = embedded_job_store(tmp / "store")
    flow = toy_maker(n_steps=60, audit_fraction=FRACTION, seed=SEED,
                     keep_checkpoints=100).make(copper())
    run_flow_locally(flow, store, root_dir=tmp / "jobs")
    doc = read_run_doc(store, flow.output.uuid)
    return store, doc


def test_audited_steps_are_the_seeded_draws(audited):
    _, doc = audited
    audits = [c for c in doc.calls if c.kind == "audit"]
    triggers = [c for c in doc.calls if c.kind == "trigger"]
    assert len(audits) >= 3 and len(triggers) >= 3  # measured: 7 audits, 4 triggers
    draw = AuditDraw(FRACTION, SEED)
    assert all(draw(c.md_step) for c in audits)
    # and no step drawn was skipped: between two calls every drawn step is audited
    steps = [c.md_step for c in doc.calls]
    for before, after in zip(steps[:-1], steps[1:], strict=True):
        drawn = [s for s in range(before + 1, after) if draw(s)]
        assert drawn == [], (before, after, drawn)  # the first draw after `before` stops it


def test_an_audit_is_scored_before_its_label_joins_the_calibration_or_the_data(audited):
    store, doc = audited
    for call in (c for c in doc.calls if c.kind == "audit"):
        before = Posterior.from_bytes(load_checkpoint(store, doc.calls[call.index - 1]
                                                      .checkpoint))
        after = Posterior.from_bytes(load_checkpoint(store, call.checkpoint))
        label = after.data[-1]
        assert label.energy == pytest.approx(call.reference_energy, abs=0)
        # the ensemble that made the MD step predicted the recorded energy, without the label
        assert len(before.data) == len(after.data) - 1
        predicted = before.predict([label.unlabelled()])
        assert float(predicted.energy[0]) == pytest.approx(call.predicted_energy, abs=1e-9)
        assert float(predicted.energy_std[0]) == pytest.approx(call.sigma, abs=1e-9)
        # the recorded predictive law is the calibration without this error; after it is in
        assert call.predictive_scale == pytest.approx(
            float(before.calibration.predictive_scale(call.sigma)), rel=1e-12)
        assert after.calibration.n == before.calibration.n + 1
        assert after.calibration.sum_z == pytest.approx(
            before.calibration.sum_z + (call.error / call.sigma) ** 2, rel=1e-12)
        # an audit buys a check, not an update: the chains are those of the call before
        np.testing.assert_array_equal(after.state.theta.numpy(), before.state.theta.numpy())


def test_run_document_reports_the_audit(audited):
    _, doc = audited
    audits = [c for c in doc.calls if c.kind == "audit"]
    errors = np.array([c.error for c in audits])
    misses = int(np.sum(np.abs(errors) > doc.threshold))
    assert doc.n_audit_calls == len(audits)
    assert doc.n_reference_calls == len(doc.calls) - len(audits)
    assert doc.audit_miss_rate == misses / len(audits)
    assert doc.audit_miss_rate_wilson95 == pytest.approx(wilson_interval(misses, len(audits)))
    assert doc.audit_rmse == pytest.approx(np.sqrt(np.mean(errors**2)))
    assert doc.audit_rmse_untuned == pytest.approx(
        np.sqrt(np.mean([c.untuned_error**2 for c in audits])))
    # the triggered statistics leave the audits out
    assert len(doc.call_errors) == doc.n_reference_calls - 1


def test_audit_jobs_are_named_and_tagged_like_every_reference_and_update(audited):
    store, doc = audited
    names = {d["name"]: d["metadata"] for d in store.query(
        {"metadata.otf_run_id": doc.run_id}, properties=["name", "metadata"])}
    for call in doc.calls:
        if call.kind != "audit":
            continue
        reference = names[f"otf reference {call.index} audit"]
        assert reference["otf_kind"] == "reference" and reference["otf_audit"] is True
        assert reference["otf_md_step"] == call.md_step
        update = names[f"otf update {call.index} audit"]
        assert update["otf_kind"] == "update" and update["otf_index"] == call.index


def test_audit_off_makes_no_audit_and_changes_nothing(tmp_path):
    from atomate2_otf.store import embedded_job_store

    docs = []
    for settings in ({}, {"audit_fraction": 0.0}):
        store = embedded_job_store(tmp_path / f"store{len(docs)}")
        flow = toy_maker(n_steps=30, seed=SEED, **settings).make(copper())
        run_flow_locally(flow, store, root_dir=tmp_path / f"jobs{len(docs)}")
        docs.append(read_run_doc(store, flow.output.uuid))
    default, off = docs
    assert off.n_audit_calls == 0 and off.audit_miss_rate is None
    assert [c.md_step for c in off.calls] == [c.md_step for c in default.calls]
    assert off.call_errors == default.call_errors
    np.testing.assert_array_equal(off.final_state["positions"],
                                  default.final_state["positions"])
    assert not AuditDraw(0.0, SEED)(7)


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "1"])
def test_a_bad_audit_fraction_is_refused_before_any_work(bad, tmp_path, cu_cif):
    line = refused_cli_line("run", str(cu_cif), "--reference", "emt", "--audit", bad,
                            store=tmp_path / "store")
    assert "audit" in line and bad in line and "[0, 1)" in line


KILL_AUDIT = "0.15"


@pytest.fixture(scope="module")
def audited_uninterrupted(tmp_path_factory):
    """The crash-point run with the audit on, never killed."""
    from tests.crash_points import copper as crash_copper
    from tests.crash_points import open_store, toy_run_maker

    tmp = tmp_path_factory.mktemp("audit-baseline")
    store = open_store(tmp / "store")
    flow = toy_run_maker(audit_fraction=float(KILL_AUDIT)).make(crash_copper())
    run_flow_locally(flow, store, root_dir=tmp / "jobs")
    return read_run_doc(store, flow.output.uuid)


@pytest.mark.parametrize("phase", ["segment", "reference"])
def test_a_killed_and_resumed_run_audits_the_same_steps(tmp_path, audited_uninterrupted,
                                                        phase):
    from tests.workflow.test_resume import _env, _kill_at

    expected = audited_uninterrupted
    audits = [c.index for c in expected.calls if c.kind == "audit"]
    assert len(audits) >= 2, [(c.kind, c.md_step) for c in expected.calls]
    # killed in the MD segment that ends in the first audit, or in the audit's reference
    index = audits[0] - 1 if phase == "segment" else audits[0]
    os.environ["OTF_AUDIT"] = KILL_AUDIT
    try:
        store_dir = _kill_at(tmp_path, phase, index)
    finally:
        del os.environ["OTF_AUDIT"]
    resumed = subprocess.run([sys.executable, "-m", "atomate2_otf.cli", "resume", "--store",
                              str(store_dir), "--json"], cwd=ROOT, env=_env(tmp_path),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    doc = json.loads(resumed.stdout)
    assert [(c["kind"], c["md_step"]) for c in doc["calls"]] == [
        (c.kind, c.md_step) for c in expected.calls]
    np.testing.assert_allclose([c["error"] or 0.0 for c in doc["calls"]],
                               [c.error or 0.0 for c in expected.calls], rtol=0, atol=1e-9)
    assert doc["audit_miss_rate"] == expected.audit_miss_rate
