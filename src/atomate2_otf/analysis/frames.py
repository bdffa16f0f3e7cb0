"""Runs read back into pandas DataFrames: one row per reference call, one per material.

A run is read from what its jobs wrote, so a run still going reads like a finished one:
the per-call records (:func:`atomate2_otf.results.run_calls`), the stored trajectory, the
finished :class:`~atomate2_otf.schemas.OTFRunDoc` once it exists, and the run's state and
settings from its status row and journal. Energies stay in eV, times in fs and s; the call
frame keeps :class:`~atomate2_otf.schemas.ReferenceCall`'s field names, so a row reads as
the record it came from.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from atomate2_otf.analysis.status import status_rows
from atomate2_otf.schemas import OTFRunDoc, ReferenceCall

if TYPE_CHECKING:
    from jobflow import JobStore

logger = logging.getLogger(__name__)

#: columns of the call frame besides ReferenceCall's fields
CALL_EXTRAS = ("run_id", "time_fs", "temperature_K", "temperature_source",
               "target_temperature_K")
#: columns of the material frame (one row per run of a batch)
MATERIAL_COLUMNS = ("run_id", "source", "formula", "state", "completed", "n_md_steps",
                    "n_reference_calls", "n_audit_calls", "share_above_threshold",
                    "rmse_at_calls", "rmse_untuned_at_calls", "audit_miss_rate", "wall_s")


@dataclass
class RunData:
    """Everything a report needs of one run, as read from the store.

    ``doc`` is the finished OTFRunDoc (None while the run goes on); ``summary`` is that
    document or, for a run still going, one assembled from the calls written so far by the
    same code (:meth:`OTFRunDoc.from_calls`), so that its numbers mean the same thing.
    """

    run_id: str
    row: dict[str, Any]
    calls: list[ReferenceCall]
    settings: dict[str, Any]
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    doc: OTFRunDoc | None = None
    summary: OTFRunDoc | None = None

    @property
    def completed(self) -> bool:
        return self.doc is not None

    @property
    def state(self) -> str:
        return "completed" if self.completed else str(self.row.get("state") or "running")

    @property
    def threshold(self) -> float | None:
        value = self.settings.get("threshold")
        return None if value is None else float(value)

    @property
    def timestep_fs(self) -> float | None:
        value = (self.settings.get("md") or {}).get("timestep_fs")
        return None if value is None else float(value)


def as_store(store: JobStore | str) -> JobStore:
    """A connected JobStore from a JobStore or any spec the CLI takes (folder, jobflow
    store file, ``mongodb://`` URI)."""
    if isinstance(store, str) or hasattr(store, "__fspath__"):
        from atomate2_otf.store import open_job_store

        return open_job_store(str(store))
    store.connect()
    return store


def finished_doc(store: JobStore, run_id: str) -> OTFRunDoc | None:
    """The run's OTFRunDoc, the output of its last segment (None while it runs)."""
    best: tuple[int, dict[str, Any]] | None = None
    for doc in store.query({"metadata.otf_run_id": run_id, "metadata.otf_kind": "segment"},
                           properties=["output", "index"]):
        output = doc.get("output")
        if isinstance(output, dict) and output.get("completed"):
            index = int(doc.get("index", 1))
            if best is None or index >= best[0]:
                best = (index, output)
    if best is None:
        return None
    return OTFRunDoc(**{k: v for k, v in best[1].items() if not k.startswith("@")})


def _find_config(node: Any, run_id: str) -> dict[str, Any] | None:
    """The RunConfig dict of ``run_id`` anywhere in a serialised job queue."""
    if isinstance(node, dict):
        if node.get("run_id") == run_id and "md" in node and "threshold" in node:
            return node
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _find_config(child, run_id)
        if found is not None:
            return found
    return None


def journal_settings(store: JobStore, run_id: str) -> dict[str, Any]:
    """A run's settings (RunConfig as a dict) from the jobs still queued in its journal:
    the only place they are stored before the run's OTFRunDoc exists. Empty if unknown
    (no journal, e.g. a run submitted to FireWorks or run with jobflow's own runner)."""
    from atomate2_otf.local import journal_store

    runs = journal_store(store)
    doc = None if runs is None else runs.query_one({"run_id": run_id},
                                                   properties=["queue"])
    if not doc or not doc.get("queue"):
        return {}
    try:
        queue = json.loads(doc["queue"])
    except (TypeError, ValueError):
        return {}
    return _find_config(queue, run_id) or {}


def run_ids(store: JobStore) -> list[str]:
    """The ids of the runs in a store, in the order ``atomate2-otf status`` lists them."""
    return [row["run_id"] for row in status_rows(store)]


def _partial_summary(run_id: str, row: dict[str, Any], calls: list[ReferenceCall],
                     settings: dict[str, Any]) -> OTFRunDoc | None:
    """The numbers of a run still going, by the finished document's own code."""
    if "threshold" not in settings:
        return None
    return OTFRunDoc.from_calls(
        calls, run_id=run_id, formula=row.get("formula") or settings.get("formula"),
        model=str(settings.get("model")), reference=str(settings.get("reference")),
        ensemble=str((settings.get("md") or {}).get("ensemble", "nvt")), completed=False,
        n_md_steps=int(row.get("md_steps") or 0), threshold=float(settings["threshold"]),
        confidence=float(settings.get("confidence", 0.95)), settings=settings)


def load_run(store: JobStore, run_id: str, rows: list[dict[str, Any]] | None = None) -> RunData:
    """Read one run (finished or not); ``rows``: the store's status rows if already read.

    Raises KeyError naming the run and the runs that exist when ``run_id`` is not one.
    """
    from atomate2_otf.results import run_calls
    from atomate2_otf.store import load_trajectory

    rows = status_rows(store) if rows is None else rows
    by_id = {row["run_id"]: row for row in rows}
    if run_id not in by_id:
        raise KeyError(f"no run {run_id!r} in this store; its runs: "
                       f"{', '.join(by_id) or 'none'}")
    row = by_id[run_id]
    doc = finished_doc(store, run_id)
    calls = run_calls(store, run_id)
    settings = dict(doc.settings) if doc is not None and doc.settings else \
        journal_settings(store, run_id)
    summary = doc if doc is not None else _partial_summary(run_id, row, calls, settings)
    run = RunData(run_id=run_id, row=row, calls=calls, settings=settings,
                  trajectory=load_trajectory(store, run_id), doc=doc, summary=summary)
    logger.info("read run %s: %s, %d calls, %d trajectory frames", run_id, run.state,
                len(calls), len(run.trajectory))
    return run


def load_runs(store: JobStore | str, run_id: str | None = None) -> list[RunData]:
    """Every run of a store (a batch), or the one named."""
    store = as_store(store)
    rows = status_rows(store)
    ids = [run_id] if run_id is not None else [row["run_id"] for row in rows]
    return [load_run(store, one, rows) for one in ids]


def trajectory_frame(run: RunData) -> pd.DataFrame:
    """The stored MD frames: step, time (fs), temperature and its target (K)."""
    columns = ["step", "time_fs", "temperature_K", "target_temperature_K"]
    frame = pd.DataFrame([{k: f.get(k) for k in columns} for f in run.trajectory],
                         columns=columns)
    if frame.empty:
        return frame
    return (frame.drop_duplicates("step", keep="last").sort_values("step")
            .reset_index(drop=True).astype(float).astype({"step": int}))


def target_temperature(settings: dict[str, Any], steps: Any) -> np.ndarray | None:
    """The schedule's target temperature (K) at MD ``steps``; None without settings."""
    md = settings.get("md") or {}
    if "temperature" not in md or "n_steps" not in md:
        return None
    from atomate2_otf.md.schedule import TemperatureSchedule

    schedule = TemperatureSchedule.from_spec(md["temperature"])
    return np.array([schedule.temperature_at(int(s), int(md["n_steps"]))
                     for s in np.atleast_1d(steps)], dtype=float)


def calls_frame(run: RunData) -> pd.DataFrame:
    """One row per reference call: ReferenceCall's fields plus the MD time (fs) and the
    temperature there (K; interpolated in the stored trajectory, else the schedule's
    target, ``temperature_source`` says which)."""
    columns = [*CALL_EXTRAS[:1], *ReferenceCall.model_fields, *CALL_EXTRAS[1:]]
    frame = pd.DataFrame([c.model_dump() for c in run.calls],
                         columns=list(ReferenceCall.model_fields))
    frame.insert(0, "run_id", run.run_id)
    steps = frame["md_step"].to_numpy(dtype=float)
    dt = run.timestep_fs
    frame["time_fs"] = steps * dt if dt is not None else np.nan
    target = target_temperature(run.settings, steps) if len(frame) else None
    frame["target_temperature_K"] = target if target is not None else np.nan
    traj = trajectory_frame(run)
    if len(traj) and len(frame):
        frame["temperature_K"] = np.interp(steps, traj["step"].to_numpy(float),
                                           traj["temperature_K"].to_numpy(float))
        frame["temperature_source"] = "trajectory"
    else:
        frame["temperature_K"] = frame["target_temperature_K"]
        frame["temperature_source"] = "schedule" if target is not None else None
    return frame[columns].reset_index(drop=True)


def material_row(run: RunData) -> dict[str, Any]:
    """One row of the material frame: a run's key numbers (None where not known yet)."""
    s = run.summary
    # a run still going: the wall time of its calls so far (jobflow's overhead not known)
    wall = s.timings.total if s is not None else run.row.get("wall_s")
    return {
        "run_id": run.run_id, "source": run.row.get("source"),
        "formula": (s.formula if s is not None else None) or run.row.get("formula"),
        "state": run.state, "completed": run.completed,
        "n_md_steps": s.n_md_steps if s is not None else int(run.row.get("md_steps") or 0),
        "n_reference_calls": (s.n_reference_calls if s is not None
                              else sum(c.kind != "audit" for c in run.calls)),
        "n_audit_calls": (s.n_audit_calls if s is not None
                          else sum(c.kind == "audit" for c in run.calls)),
        "share_above_threshold": None if s is None else s.share_above_threshold,
        "rmse_at_calls": None if s is None else s.rmse_at_calls,
        "rmse_untuned_at_calls": None if s is None else s.rmse_untuned_at_calls,
        "audit_miss_rate": None if s is None else s.audit_miss_rate,
        "wall_s": wall,
    }


def materials_frame(runs: list[RunData]) -> pd.DataFrame:
    """One row per material (run) of a batch."""
    return pd.DataFrame([material_row(run) for run in runs], columns=list(MATERIAL_COLUMNS))
