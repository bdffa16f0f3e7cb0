"""Figures and numbers of runs built by hand: audited frames (kind "audit"), the calibration
curve against the Student-t law, and the figures a run without data skips."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from atomate2_otf.analysis import figures
from atomate2_otf.analysis.frames import RunData, calls_frame, trajectory_frame
from atomate2_otf.analysis.report import run_numbers
from atomate2_otf.schemas import OTFRunDoc, ReferenceCall

K = 0.05
SETTINGS = {"threshold": K, "confidence": 0.95, "model": "toy", "reference": "emt",
            "md": {"timestep_fs": 0.5, "temperature": 300.0, "n_steps": 100,
                   "ensemble": "nvt"}}


def _calls() -> list[ReferenceCall]:
    """An initial call, six triggered calls and four audited frames (two of them misses)."""
    calls = [ReferenceCall(index=0, kind="initial", md_step=0, reference_energy=-1.0,
                           reference_s=0.1, update_s=0.2)]
    errors = {"trigger": [0.01, -0.06, 0.08, -0.02, 0.03, 0.12],
              "audit": [0.004, -0.07, 0.01, 0.09]}
    step = 0
    for kind in ("trigger", "audit"):
        for i, error in enumerate(errors[kind]):
            step += 7
            calls.append(ReferenceCall(
                index=len(calls), kind=kind, md_step=step, reference_energy=-1.0,
                predicted_energy=-1.0 + error, error=error, sigma=0.01 + 0.002 * i,
                prob_within=0.9, untuned_error=2 * error, predictive_scale=0.03 + 0.01 * i,
                predictive_dof=3.0 + len(calls), md_s=0.5, reference_s=0.1, update_s=0.3))
    return calls


def _run(calls: list[ReferenceCall], finished: bool = True) -> RunData:
    doc = OTFRunDoc.from_calls(calls, run_id="hand", model="toy", reference="emt",
                               ensemble="nvt", completed=finished, n_md_steps=100,
                               threshold=K, confidence=0.95, settings=SETTINGS,
                               total_s=10.0)
    return RunData(run_id="hand", row={"state": "completed" if finished else "running"},
                   calls=calls, settings=SETTINGS, doc=doc if finished else None, summary=doc)


def test_coverage_is_the_student_t_law():
    rng = np.random.default_rng(0)
    scales = rng.uniform(0.01, 0.1, 20000)
    dofs = rng.uniform(3.0, 30.0, 20000)
    errors = scales * rng.standard_t(dofs)
    nominal = np.array([0.1, 0.5, 0.9, 0.95])
    observed = figures.coverage(errors, scales, dofs, nominal)
    assert np.allclose(observed, nominal, atol=0.01)
    # errors twice as large as the law says: the curve falls below the diagonal
    assert np.all(figures.coverage(2 * errors, scales, dofs, nominal) < nominal - 0.04)
    # one error just inside its 50 % interval: outside the 49 % one
    half = 0.04 * stats.t.ppf(0.75, 5.0)
    assert list(figures.coverage([half * 0.999999], [0.04], [5.0], [0.49, 0.5, 0.51])) == \
        [0.0, 1.0, 1.0]


def test_audited_frames_are_their_own_series(tmp_path):
    run = _run(_calls())
    frame = calls_frame(run)
    assert list(frame["kind"]).count("audit") == 4
    # no trajectory: the schedule's target temperature, at step x 0.5 fs
    assert set(frame["temperature_source"]) == {"schedule"}
    assert set(frame["temperature_K"]) == {300.0}
    assert list(frame["time_fs"]) == list(frame["md_step"] * 0.5)

    fig = figures.calibration_figure(run, frame)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "triggered calls (n = 6)" in labels and "audited frames (n = 4)" in labels
    labels = figures.error_figure(run, frame).axes[0].get_legend_handles_labels()[1]
    assert "audited frame" in labels and "triggered call" in labels

    numbers = run_numbers(run, frame)
    assert numbers["n_audit_calls"] == 4 and numbers["n_reference_calls"] == 7
    assert numbers["audit_miss_rate"] == run.doc.audit_miss_rate == 0.5
    assert numbers["audit_miss_rate_wilson95"] == list(run.doc.audit_miss_rate_wilson95)
    assert numbers["audit_rmse"] == run.doc.audit_rmse
    audits = [c for c in run.calls if c.kind == "audit"]
    inside = [abs(c.error) <= c.predictive_scale * stats.t.ppf(0.975, c.predictive_dof)
              for c in audits]
    assert numbers["coverage95_audits"] == np.mean(inside)

    written = figures.write_run_figures(run, frame, trajectory_frame(run), tmp_path)
    assert [f.skipped for f in written] == [None] * 5
    for f in written:
        png, pdf = (tmp_path / f"{f.name}.png"), (tmp_path / f"{f.name}.pdf")
        assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"


def test_a_run_with_only_its_first_call_skips_what_it_cannot_draw(tmp_path, caplog):
    run = _run(_calls()[:1], finished=False)
    frame = calls_frame(run)
    with caplog.at_level("INFO", logger="atomate2_otf.analysis.figures"):
        written = {f.name: f for f in figures.write_run_figures(
            run, frame, trajectory_frame(run), tmp_path)}
    assert written["timeline"].skipped is None and written["timing"].skipped is None
    assert "only the initial reference call" in written["errors"].skipped
    assert "predictive law" in written["calibration"].skipped
    assert "untuned" in written["untuned"].skipped
    assert "figure errors skipped" in caplog.text
    assert not (tmp_path / "errors.png").exists()
    # a run still going: time from its calls, "other" not known
    parts, complete = figures.time_split(run)
    assert not complete and parts == {"MD": 0.0, "reference": 0.1, "update": 0.2}
    assert run_numbers(run, frame)["timings"]["other"] is None


def test_no_call_at_all_is_a_reason_not_an_error():
    run = _run([], finished=False)
    with pytest.raises(figures.NoData, match="no reference call"):
        figures.timeline_figure(run, calls_frame(run), trajectory_frame(run))
    with pytest.raises(figures.NoData, match="no timed job"):
        figures.timing_figure(run)
