"""One row per run of a store: what ``atomate2-otf status`` and ``batch`` print.

A run's state comes from three places, each knowing what the others cannot: its jobs'
documents (finished: the OTFRunDoc; running: the newest job), its journal (queued,
submitted, failed or interrupted runs) and, for runs submitted to FireWorks, the launchpad.
"""

from __future__ import annotations

from typing import Any


def status_rows(store, launchpad=None) -> list[dict[str, Any]]:
    """One row per run (material) in the store.

    Finished runs come from their OTFRunDoc, running ones from their newest job, and the
    runs' journals add what jobs cannot tell: runs that are queued, submitted to FireWorks,
    failed, or interrupted (journalled as running by a process that is gone: resume them).
    With ``launchpad``, submitted runs take their state from their Fireworks.
    """
    from atomate2_otf.local import journal_store, owner_alive

    rows: dict[str, dict[str, Any]] = {}
    calls: dict[str, set[int]] = {}  # a running run's calls so far (audits not counted)

    def row_of(run_id: str) -> dict[str, Any]:
        return rows.setdefault(run_id, {"run_id": run_id, "source": None, "state": "running",
                                        "formula": None, "md_steps": 0, "reference_calls": 0,
                                        "share_above_k": None, "wall_s": None, "error": None})

    for doc in store.query({"metadata.otf_kind": {"$in": ["prepare", "update", "segment"]}},
                           properties=["metadata", "output", "completed_at", "name"]):
        meta = doc["metadata"]
        row = row_of(meta["otf_run_id"])
        row["source"] = row["source"] or meta.get("otf_source")
        row["formula"] = row["formula"] or meta.get("otf_formula")
        output = doc.get("output") or {}
        if meta["otf_kind"] in ("prepare", "update") and not meta.get("otf_audit"):
            calls.setdefault(meta["otf_run_id"], set()).add(int(meta["otf_index"]))
            row["reference_calls"] = max(row["reference_calls"],
                                         len(calls[meta["otf_run_id"]]))
        if isinstance(output, dict) and output.get("completed"):
            row.update(state="completed", formula=output.get("formula"),
                       md_steps=output.get("n_md_steps"),
                       reference_calls=output.get("n_reference_calls"),
                       share_above_k=output.get("share_above_threshold"),
                       wall_s=(output.get("timings") or {}).get("total"))
        if isinstance(output, dict) and row["state"] == "running":
            step = output.get("md_step", (output.get("state") or {}).get("step", 0))
            row["md_steps"] = max(row["md_steps"] or 0, int(step))
    runs = journal_store(store)
    for journal in [] if runs is None else runs.query({}, properties=[
            "run_id", "state", "source", "formula", "error", "host", "pid", "fw_ids"]):
        row = row_of(str(journal["run_id"]))
        row["source"] = journal.get("source") or row["source"]
        row["formula"] = row["formula"] or journal.get("formula")
        if row["state"] == "completed":
            continue
        state = journal.get("state", "running")
        if state == "running" and not owner_alive(journal):
            state = "interrupted"
        if state == "submitted" and launchpad is not None and journal.get("fw_ids"):
            state = fireworks_state(launchpad, journal["fw_ids"])
        if state == "completed":  # journal done, document not readable: report as is
            state = "running"
        row["state"] = state
        row["error"] = journal.get("error") if state == "failed" else None
    return sorted(rows.values(), key=lambda r: (str(r["source"] or ""), r["run_id"]))


def fireworks_state(launchpad, fw_ids: list[int]) -> str:
    """One state for a run's Fireworks: failed if any fizzled, running if any runs."""
    states = {doc["state"] for doc in launchpad.fireworks.find(
        {"fw_id": {"$in": [int(i) for i in fw_ids]}}, {"state": 1})}
    if "FIZZLED" in states:
        return "failed"
    if "RUNNING" in states or "RESERVED" in states:
        return "running"
    if states <= {"COMPLETED"}:
        return "running"  # the run's later Fireworks are detours not listed here
    return "submitted"
