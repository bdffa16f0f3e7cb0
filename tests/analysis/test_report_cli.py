"""``atomate2-otf report`` as a user runs it (a subprocess): the files it writes, numbers
equal to the store's, a run still going, and bad input as one error line with status 2."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from atomate2_otf.local import journal_store
from atomate2_otf.results import run_calls
from tests.analysis.runs import (
    FIGURES,
    check_numbers,
    finished_doc,
    open_store,
    report_cli,
    stopped_run,
)


def _check_markdown(text: str, doc) -> None:
    for shown in (f"| MD steps | {doc.n_md_steps} |",
                  f"| reference calls (initial + triggered) | {doc.n_reference_calls} |",
                  f"{100 * doc.share_above_threshold:.1f} %",
                  f"{1000 * doc.rmse_at_calls:.2f} meV",
                  f"{1000 * doc.rmse_untuned_at_calls:.2f} meV",
                  f"{doc.timings.total:.3g} s",
                  f"| threshold K | {1000 * doc.threshold:.2f} meV |"):
        assert shown in text, shown
    for name in FIGURES:
        assert f"({name}.png)" in text


def test_report_of_a_finished_run(finished, tmp_path):
    folder, run_id = finished
    out = tmp_path / "report"
    result = report_cli("--store", str(folder), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)  # the whole of stdout is the summary
    assert summary == json.loads((out / "summary.json").read_text())
    assert (summary["run_id"], summary["state"], summary["kind"]) == (run_id, "completed", "run")
    for name in FIGURES:
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
        assert summary["figures"][name] == [f"{name}.png", f"{name}.pdf"]
    assert summary["skipped_figures"] == {}
    doc = finished_doc(folder, run_id)
    check_numbers(summary, doc)
    text = (out / "summary.md").read_text()
    _check_markdown(text, doc)
    assert "not finished" not in text
    assert len((out / "calls.csv").read_text().splitlines()) == 1 + doc.n_reference_calls


def test_report_of_a_batch(batch, tmp_path):
    folder, run_ids = batch
    out = tmp_path / "report"
    result = report_cli("--store", str(folder), "--batch", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"report: {out / 'summary.md'}" in result.stdout
    assert f"run {run_ids[2]} (not finished: failed)" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "batch"
    assert (out / "batch.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "batch.pdf").read_bytes()[:4] == b"%PDF"
    rows = {row["run_id"]: row for row in summary["materials"]}
    assert list(rows) == run_ids
    text = (out / "summary.md").read_text()
    assert "![calls, share above K, RMSE and wall time per material](batch.png)" in text
    assert "1 of the runs are not finished" in text
    for run_id, source in zip(run_ids[:2], ("cu.cif", "cu8.cif"), strict=True):
        doc = finished_doc(folder, run_id)
        row = rows[run_id]
        assert (row["source"], row["state"], row["completed"]) == (source, "completed", True)
        for name in ("n_md_steps", "n_reference_calls", "n_audit_calls",
                     "share_above_threshold", "rmse_at_calls", "rmse_untuned_at_calls"):
            assert row[name] == getattr(doc, name), name
        assert row["wall_s"] == doc.timings.total
        run_summary = json.loads((out / run_id / "summary.json").read_text())
        check_numbers(run_summary, doc)
        _check_markdown((out / run_id / "summary.md").read_text(), doc)
        assert f"[{run_id}]({run_id}/summary.md)" in text
    stopped = rows[run_ids[2]]
    assert (stopped["state"], stopped["completed"], stopped["n_reference_calls"]) == \
        ("failed", False, 3)
    assert "not finished (state: failed)" in (out / run_ids[2] / "summary.md").read_text()


def test_report_of_a_run_still_going(tmp_path):
    """A run whose journal owner is alive (this test process): reported as running, from
    its calls so far."""
    folder = tmp_path / "store"
    run_id = stopped_run(folder)
    store = open_store(folder)
    runs = journal_store(store)
    journal = runs.query_one({"run_id": run_id})
    journal.pop("_id", None)
    runs.update([{**journal, "state": "running", "pid": os.getpid(), "error": None}],
                key="run_id")
    out = tmp_path / "report"
    result = report_cli("--store", str(folder), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert (summary["state"], summary["completed"]) == ("running", False)
    calls = run_calls(store, run_id)
    errors = [c.error for c in calls if c.error is not None]
    numbers = summary["numbers"]
    assert numbers["n_reference_calls"] == len(calls) == 3
    assert numbers["share_above_threshold"] == float(np.mean(np.abs(errors) > 0.05))
    assert numbers["rmse_at_calls"] == float(np.sqrt(np.mean(np.square(errors))))
    assert numbers["timings"]["other"] is None and not numbers["timings_complete"]
    assert numbers["timings"]["update"] == sum(c.update_s for c in calls)
    assert numbers["final_checkpoint"] is None
    assert sorted(summary["figures"]) == sorted(FIGURES)
    text = (out / "summary.md").read_text()
    assert "**This run is not finished (state: running).**" in text
    assert "3 reference calls" in text


@pytest.fixture
def empty_store(tmp_path):
    folder = tmp_path / "empty"
    open_store(folder)
    return folder


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def test_unknown_run_id(finished, tmp_path):
    folder, run_id = finished
    line = _one_error_line(report_cli("--store", str(folder), "--run", "nope", "--out",
                                   str(tmp_path / "out")))
    assert "no run 'nope'" in line and run_id in line
    assert not (tmp_path / "out").exists()  # nothing written for bad input


def test_store_without_runs(empty_store, tmp_path):
    line = _one_error_line(report_cli("--store", str(empty_store), "--out", str(tmp_path / "o")))
    assert f"no runs in the store {empty_store}" in line


def test_missing_store(tmp_path):
    line = _one_error_line(report_cli("--store", str(tmp_path / "nowhere")))
    assert "nowhere" in line and "does not exist" in line


def test_output_folder_that_cannot_be_written(finished, tmp_path):
    folder, _ = finished
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = _one_error_line(report_cli("--store", str(folder), "--out", str(blocker / "report")))
    assert f"cannot write the report to '{blocker / 'report'}'" in line


def test_several_runs_need_a_choice(batch, tmp_path):
    folder, run_ids = batch
    line = _one_error_line(report_cli("--store", str(folder), "--out", str(tmp_path / "o")))
    assert "--run RUN_ID" in line and "--batch" in line
    assert all(run_id in line for run_id in run_ids)
    line = _one_error_line(report_cli("--store", str(folder), "--run", run_ids[0], "--batch"))
    assert "either --run or --batch" in line
