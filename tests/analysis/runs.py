"""Small real runs for the analysis tests (the toy model with EMT labels and forced
triggers: a run of 30 steps takes about a second), finished, stopped and batched, and the
report command run and checked against the store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from ase.build import bulk

from atomate2_otf.analysis.report import DOC_NUMBERS
from atomate2_otf.local import journal_store, register_run, run_flow_locally
from atomate2_otf.results import read_run_doc
from atomate2_otf.store import embedded_job_store
from tests.processes import ROOT, subprocess_env
from tests.workflow.helpers import copper, run_id_of, toy_maker

#: the toy model by import path: a subprocess (the CLI) finds it without registration
TOY = "tests.toy_model:ToyModel"
#: a run that heats and cools (the timeline shows the schedule), a call every 6 steps
SETTINGS = {"model": TOY, "n_steps": 30, "force_trigger_every": 6,
            "temperature": [300.0, 600.0, 300.0]}


def open_store(folder: Path):
    store = embedded_job_store(folder)
    store.connect()
    return store


def finished_run(folder: Path, atoms: Any = None, **journal: Any) -> str:
    """One finished run in the store at ``folder``; its run id."""
    flow = toy_maker(**SETTINGS).make(copper() if atoms is None else atoms)
    run_flow_locally(flow, open_store(folder), root_dir=folder / "jobs",
                     journal_fields=journal or None)
    return run_id_of(flow)


def stopped_run(folder: Path, **journal: Any) -> str:
    """A run stopped by ``max_reference_calls`` at its third call: the store holds the
    prepare job, two updates and the segments' frames, and its journal says failed."""
    flow = toy_maker(**SETTINGS, max_reference_calls=3).make(copper())
    try:
        run_flow_locally(flow, open_store(folder), root_dir=folder / "jobs",
                         journal_fields=journal or None)
    except RuntimeError as err:
        assert "max_reference_calls" in str(err)
    else:
        raise AssertionError("the run was meant to stop at its call limit")
    return run_id_of(flow)


def batch_runs(folder: Path) -> list[str]:
    """Two finished materials (journalled like ``atomate2-otf batch`` does) and one that
    stopped; their run ids."""
    from atomate2_otf.batch import BatchOTFMaker

    items = BatchOTFMaker(otf_maker=toy_maker(**SETTINGS)).items(
        {"cu.cif": copper(), "cu8.cif": bulk("Cu", "fcc", a=3.66, cubic=True) * (2, 1, 1)})
    store = open_store(folder)
    ids = []
    for item in items:
        register_run(store, item.flow, state="queued", source=item.source_id,
                     formula=item.formula)
        run_flow_locally(item.flow, store, root_dir=folder / "jobs",
                         journal_fields={"source": item.source_id, "formula": item.formula})
        ids.append(run_id_of(item.flow))
    return [*ids, stopped_run(folder, source="stopped.cif", formula="Cu4")]


FIGURES = ("timeline", "errors", "calibration", "untuned", "timing")


def report_cli(*args: str) -> subprocess.CompletedProcess:
    """``atomate2-otf report ARGS`` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "atomate2_otf.cli", "report", *args],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)


def finished_doc(folder: Path, run_id: str):
    """The OTFRunDoc of a journalled run, by jobflow's own resolution of its output."""
    store = open_store(folder)
    return read_run_doc(store, journal_store(store).query_one({"run_id": run_id})["output_uuid"])


def check_numbers(summary: dict, doc) -> None:
    """Every OTFRunDoc number in the summary is the store's (exactly: JSON keeps repr)."""
    numbers = summary["numbers"]
    for name in DOC_NUMBERS:
        value = getattr(doc, name)
        assert numbers[name] == (list(value) if isinstance(value, tuple) else value), name
    assert numbers["timings"] == doc.timings.model_dump() and numbers["timings_complete"]
    assert numbers["final_checkpoint"] == doc.final_checkpoint
    assert [c["error"] for c in summary["calls"][1:]] == doc.call_errors
    assert [c["index"] for c in summary["calls"]] == [c.index for c in doc.calls]
    assert summary["settings"]["threshold"] == doc.threshold == doc.settings["threshold"]
