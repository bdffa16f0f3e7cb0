"""A run's results, read back from the store: its reference calls and its OTFRunDoc.

Every job of a run writes its part (the prepare and update jobs one ``ReferenceCall`` each,
the last segment the final state); this module assembles them, so that a finished run, a
run still going and one read from another machine's store are summarised the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from atomate2_otf.schemas import OTFRunDoc, ReferenceCall

if TYPE_CHECKING:
    from jobflow import JobStore

    from atomate2_otf.jobs import RunConfig


def run_calls(store: JobStore, run_id: str) -> list[ReferenceCall]:
    """The per-call records of a run written so far, by call index (newest output wins)."""
    docs = store.query({"metadata.otf_run_id": run_id,
                        "metadata.otf_kind": {"$in": ["prepare", "update"]}},
                       properties=["output.call", "index"])
    calls: dict[int, tuple[int, ReferenceCall]] = {}
    for doc in docs:
        call = ReferenceCall(**doc["output"]["call"])
        if call.index not in calls or doc.get("index", 1) >= calls[call.index][0]:
            calls[call.index] = (doc.get("index", 1), call)
    return [calls[i][1] for i in sorted(calls)]


def summarise_run(store: JobStore, cfg: RunConfig, final_state: dict[str, Any],
                  checkpoint: str, final_md_s: float = 0.0,
                  total_s: float | None = None, calls: list[dict] | None = None,
                  run_info: dict[str, Any] | None = None) -> OTFRunDoc:
    """The OTFRunDoc of a run from its records in the store, or from ``calls`` (the
    ReferenceCall documents) and ``run_info`` (``energy_offset``, ``start_from``) where a
    job cannot read the store (the "outputs" checkpoint transport)."""
    from atomate2_otf.atoms import to_pymatgen
    from atomate2_otf.md.state import MDState

    atoms = MDState.from_dict(final_state).to_atoms()
    structure = to_pymatgen(atoms)
    posterior_offset = start_from = None
    if calls is not None:
        calls = [ReferenceCall(**call) for call in calls]
        posterior_offset = (run_info or {}).get("energy_offset")
        start_from = (run_info or {}).get("start_from")
    else:
        calls = run_calls(store, cfg.run_id)
    if calls and run_info is None:
        doc = store.query_one({"metadata.otf_run_id": cfg.run_id, "metadata.otf_kind": "prepare"},
                              properties=["output.energy_offset", "output.start_from"])
        if doc is not None:
            posterior_offset = doc["output"].get("energy_offset")
            start_from = doc["output"].get("start_from")
    fields: dict[str, Any] = {"final_md_s": final_md_s}
    if total_s is not None:
        fields["total_s"] = total_s
    return OTFRunDoc.from_calls(
        calls, run_id=cfg.run_id, formula=cfg.formula, model=cfg.model,
        reference=cfg.reference, ensemble=str(cfg.md.get("ensemble", "nvt")), completed=True,
        n_md_steps=int(final_state["step"]), threshold=cfg.threshold,
        confidence=cfg.confidence, energy_offset=posterior_offset,
        final_checkpoint=checkpoint, final_structure=structure, structure=structure,
        final_state=final_state, start_from=start_from,
        settings=cfg.to_dict(), **fields)


def read_run_doc(store: JobStore, uuid: str) -> OTFRunDoc | None:
    """The finished OTFRunDoc of the flow whose output job is ``uuid`` (None if unfinished).

    The document sits at the end of jobflow's chain of replaced segments; the store's
    reference resolution follows it.
    """
    try:
        output = store.get_output(uuid, load=True)
    except ValueError:
        return None
    if isinstance(output, dict) and output.get("completed"):
        output = OTFRunDoc(**{k: v for k, v in output.items() if not k.startswith("@")})
    return output if isinstance(output, OTFRunDoc) and output.completed else None
