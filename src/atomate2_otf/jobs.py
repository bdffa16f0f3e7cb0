"""The jobs of an on-the-fly run: prepare, MD segment, posterior update (METHOD.md sec. 6).

Each MD segment either finishes the run (output: :class:`OTFRunDoc`) or stops at a trigger
and replaces itself with ``Flow([reference k, update k, md segment k+1])``. Jobs pass only
small documents between them (a checkpoint key, the MD state, one label); the posterior
bytes live in the JobStore's ``checkpoints`` store (:mod:`atomate2_otf.store`), so a flow
of a thousand cycles keeps neither megabytes in job arguments nor state in the process.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from jobflow import Flow, JobConfig, OutputReference, Response, job

from atomate2_otf.bnn.data import StructureRecord
from atomate2_otf.reference.labels import label_from_output
from atomate2_otf.runtime import resources
from atomate2_otf.schemas import ReferenceCall
from atomate2_otf.store import (
    RetentionPolicy,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    save_trajectory,
)

if TYPE_CHECKING:
    from jobflow import JobStore, Maker

    from atomate2_otf.bnn.posterior import Posterior

logger = logging.getLogger(__name__)

#: jobs read and write checkpoints through the JobStore they run with
STORE_CONFIG = JobConfig(expose_store=True)
#: the update job resolves the reference's task document itself: jobflow would keep the
#: resolved document in the job's arguments, and run_locally keeps every job of a run alive
UPDATE_CONFIG = JobConfig(expose_store=True, resolve_references=False)


@dataclass
class RunConfig:
    """Everything the jobs of one run need besides the MD state (plain types only)."""

    run_id: str
    model: str
    model_kwargs: dict[str, Any]
    reference: str
    posterior: dict[str, Any]
    md: dict[str, Any]
    threshold: float
    confidence: float
    update_steps: int
    initial_update_steps: int
    n_workers: int | None = None
    keep_checkpoints: int = 3
    max_reference_calls: int | None = None
    force_trigger_every: int | None = None
    progress: bool = False
    formula: str | None = None
    worker_categories: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | RunConfig) -> RunConfig:
        return data if isinstance(data, RunConfig) else cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metadata(self, kind: str, index: int) -> dict[str, Any]:
        """Job metadata: lets status/summary queries find a run's jobs in any store."""
        return {"otf_run_id": self.run_id, "otf_kind": kind, "otf_index": int(index)}


# -- worker routing --------------------------------------------------------------------------
#: the kinds of job a run is made of, as keys of ``worker_categories``
WORKER_KINDS = ("reference", "segment", "update", "prepare")
#: name of the job jobflow appends to a replacement flow to carry the replaced job's output
_STORE_INPUTS = "store_inputs"


def check_worker_categories(categories: dict[str, str] | None) -> dict[str, str] | None:
    """Validate ``{kind: FireWorks category}`` (kinds: :data:`WORKER_KINDS`) before a run.

    A misspelt kind would silently leave that kind's jobs without a category, and such jobs
    wait forever when every worker serves a category, so it is refused here instead.
    """
    if categories is None:
        return None
    if not isinstance(categories, dict):
        raise ValueError(f"worker_categories must be a dict {{kind: category}} with kinds "
                         f"{', '.join(WORKER_KINDS)}; got {categories!r}")
    for kind, category in categories.items():
        if kind not in WORKER_KINDS:
            raise ValueError(f"worker_categories has an unknown key {kind!r}; accepted keys "
                             f"are: {', '.join(WORKER_KINDS)}")
        if not isinstance(category, str) or not category.strip():
            raise ValueError(f"worker_categories[{kind!r}] must be a non-empty string (a "
                             f"FireWorks category), got {category!r}")
    return {str(k): str(v) for k, v in categories.items()}


def _jobs_of(job_or_flow: Any) -> list[Any]:
    """Every Job in a Job or (nested) Flow: reference Makers such as VASP's make Flows."""
    if isinstance(job_or_flow, Flow):
        return [j for child in job_or_flow.jobs for j in _jobs_of(child)]
    return [job_or_flow]


def route_to_category(job_or_flow: Any, category: str | None) -> None:
    """Send every job of ``job_or_flow`` to FireWorks workers of ``category``.

    jobflow copies ``manager_config`` into the Firework spec, and FireWorks gives a
    Firework with ``_category`` only to a worker whose fworker file lists that category.
    Other ``manager_config`` entries (``_fworker``, ``_priority``, ...) are kept.
    """
    if category is None:
        return
    for one in _jobs_of(job_or_flow):
        one.config.manager_config = {**(one.config.manager_config or {}), "_category": category}


def route_segment(segment: Any, categories: dict[str, str] | None) -> None:
    """Route an MD segment job and what jobflow derives from its replacement.

    jobflow's ``pass_manager_config`` (on by default) copies the replaced job's
    ``manager_config`` over every job of the replacement flow, which would send reference
    k and update k to the segment's workers; it is switched off here, and md_segment
    routes each job it creates itself. jobflow also appends a ``store_inputs`` job (same
    uuid as the segment, carries its output on) that md_segment never sees: a dynamic
    config update, inherited by each following segment, gives it the segment category.
    """
    if not categories:
        return
    route_to_category(segment, categories.get("segment"))
    segment.config.pass_manager_config = False
    _route_store_inputs(segment, categories.get("segment"))


def _route_store_inputs(segment: Any, category: str | None) -> None:
    """Idempotently register the dynamic update that routes jobflow's store_inputs job
    (idempotent, so the list of updates stays one long over a thousand cycles)."""
    if category is None:
        return
    for update in segment.config_updates:
        if update.get("name_filter") == _STORE_INPUTS:
            return
    segment.update_config({"manager_config": {"_category": category}},
                          name_filter=_STORE_INPUTS, attributes="manager_config", dynamic=True)


# -- helpers ---------------------------------------------------------------------------------
def current_store() -> JobStore:
    """The JobStore of the running job (jobs are created with ``expose_store=True``)."""
    from jobflow import CURRENT_JOB

    if CURRENT_JOB.store is None:
        raise RuntimeError("no JobStore is exposed to this job; run it through jobflow "
                           "(run_locally or a FireWorks/jobflow-remote worker)")
    return CURRENT_JOB.store


def _model(config: RunConfig):
    return resources().model(config.model, **config.model_kwargs)


def _pool(config: RunConfig, posterior: Posterior):
    return resources().pool(posterior.model, posterior.n_chains, config.n_workers)


def new_posterior(config: RunConfig) -> Posterior:
    from atomate2_otf.bnn.posterior import Posterior, PosteriorConfig

    return Posterior(_model(config), PosteriorConfig(**config.posterior))


def load_posterior(store: JobStore, key: str, config: RunConfig) -> Posterior:
    from atomate2_otf.bnn.posterior import Posterior

    return Posterior.from_bytes(load_checkpoint(store, key), model=_model(config))


def _update(posterior: Posterior, config: RunConfig, n_steps: int, label: str) -> None:
    if n_steps < 1:
        return
    bar = None
    callback = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps * posterior.n_chains, desc=label, unit="step", leave=False)
        done: dict[int, int] = {}

        def callback(chain: int, step: int) -> None:
            bar.update(step + 1 - done.get(chain, 0))
            done[chain] = step + 1

    try:
        posterior.update(callback=callback, n_steps=n_steps, pool=_pool(config, posterior))
    finally:
        if bar is not None:
            bar.close()


def _record(state_positions: Any, numbers: Any, cell: Any, pbc: Any, label) -> StructureRecord:
    periodic = bool(np.all(pbc))
    return StructureRecord(numbers=numbers, positions=state_positions, cell=cell, pbc=pbc,
                           energy=label.energy, forces=label.forces,
                           stress=label.stress if periodic else None)


def _ensure_recursion_headroom(margin: int = 2000) -> None:
    """jobflow's run_locally runs each replacement flow in a nested call (about two Python
    frames per cycle), so a run with hundreds of reference calls would hit Python's
    recursion limit. Pure-Python frames cost no C stack on CPython >= 3.11, so raising the
    limit as the nesting deepens is safe; it is only ever raised, and only as needed."""
    depth = 0
    frame = sys._getframe()
    while frame is not None:
        depth += 1
        frame = frame.f_back
    if sys.getrecursionlimit() < depth + margin:
        sys.setrecursionlimit(depth + 2 * margin)


# -- jobs ------------------------------------------------------------------------------------
@job(name="otf prepare", config=STORE_CONFIG)
def prepare_run(reference_output: Any, state: dict[str, Any],
                config: dict[str, Any]) -> dict[str, Any]:
    """Label 0 sets the energy offset; sample the first chains; write checkpoint 0."""
    from atomate2_otf.md.state import MDState

    cfg = RunConfig.from_dict(config)
    store = current_store()
    md_state = MDState.from_dict(state)
    label = label_from_output(reference_output, len(md_state.numbers),
                              where="reference call 0 (the initial structure)")
    run_started = time.time() - (label.elapsed_s or 0.0)
    posterior = new_posterior(cfg)
    started = time.perf_counter()
    posterior.add_labels([_record(md_state.positions, md_state.numbers, md_state.cell,
                                  md_state.pbc, label)])
    _update(posterior, cfg, cfg.initial_update_steps, "initial update")
    update_s = time.perf_counter() - started
    key = save_checkpoint(store, cfg.run_id, 0, posterior.to_bytes())
    # The first MD step is driven by the reference itself, as every trigger step is.
    md_state.energy = label.energy
    md_state.forces = np.asarray(label.forces)
    md_state.stress = None if label.stress is None else np.asarray(label.stress)
    call = ReferenceCall(index=0, md_step=md_state.step, reference_energy=label.energy,
                         reference_s=label.elapsed_s, update_s=update_s,
                         checkpoint=key)
    return {"checkpoint": key, "state": md_state.to_dict(), "call": call.model_dump(),
            "energy_offset": posterior.energy_offset, "run_started": run_started}


@job(name="otf update", config=UPDATE_CONFIG)
def update_posterior(reference_output: Any, checkpoint: str, trigger: dict[str, Any],
                     index: int, config: dict[str, Any]) -> dict[str, Any]:
    """Record the model's error before it sees the label, then add the label and update."""
    from atomate2_otf.md.segment import Label

    cfg = RunConfig.from_dict(config)
    store = current_store()
    if isinstance(reference_output, OutputReference):
        reference_output = reference_output.resolve(store)
    numbers = np.asarray(trigger["numbers"])
    label = label_from_output(reference_output, len(numbers),
                              where=f"reference call {index} (MD step {trigger['md_step']})")
    reference_s = label.elapsed_s
    if reference_s is None:  # generic Makers: the time between trigger and this job
        reference_s = max(time.time() - trigger["ended_at"], 0.0)
    posterior = load_posterior(store, checkpoint, cfg)
    record = _record(trigger["positions"], numbers, trigger["cell"], trigger["pbc"], label)
    error = float(trigger["energy"]) - label.energy
    sigma = float(trigger["energy_std"])
    untuned = float(posterior.predict_untuned([record.unlabelled()]).energy[0]) - label.energy
    started = time.perf_counter()
    posterior.calibration.update(np.array([error]), np.array([sigma]))
    posterior.add_labels([record])
    _update(posterior, cfg, cfg.update_steps, f"update {index}")
    update_s = time.perf_counter() - started
    key = save_checkpoint(store, cfg.run_id, index, posterior.to_bytes())
    prune_checkpoints(store, cfg.run_id, RetentionPolicy(keep_last=cfg.keep_checkpoints))
    call = ReferenceCall(
        index=index, md_step=int(trigger["md_step"]), reference_energy=label.energy,
        predicted_energy=float(trigger["energy"]), error=error, sigma=sigma,
        prob_within=trigger.get("prob_within"), untuned_error=untuned,
        md_s=float(trigger["md_s"]), reference_s=reference_s,
        update_s=update_s, checkpoint=key)
    pending = Label(positions=np.asarray(trigger["positions"]), cell=np.asarray(trigger["cell"]),
                    energy=label.energy, forces=np.asarray(label.forces),
                    stress=None if label.stress is None else np.asarray(label.stress))
    return {"checkpoint": key, "call": call.model_dump(), "label": pending.to_dict()}


@job(name="otf md segment", config=STORE_CONFIG)
def md_segment(checkpoint: str, state: dict[str, Any], index: int, config: dict[str, Any],
               reference_maker: Maker, pending_label: dict[str, Any] | None = None,
               run_started: float | None = None) -> Response:
    """Run MD with the ensemble mean until the trigger fires or the run's steps are done."""
    from atomate2_otf.md.calculator import PosteriorCalculator
    from atomate2_otf.md.segment import Label, MDSettings, run_segment
    from atomate2_otf.md.state import MDState

    run_started = time.time() if run_started is None else run_started
    cfg = RunConfig.from_dict(config)
    store = current_store()
    settings = MDSettings.from_dict(cfg.md)
    posterior = load_posterior(store, checkpoint, cfg)
    calculator = PosteriorCalculator(posterior, cfg.threshold, pool=_pool(cfg, posterior))
    md_state = MDState.from_dict(state)
    trigger = _Trigger(cfg.confidence, cfg.force_trigger_every)

    bar = callback = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.n_steps, initial=md_state.step, desc=f"MD segment {index}",
                   unit="step", leave=False)

        def callback(step: int, results: dict[str, Any]) -> None:
            bar.update(1)

    started = time.perf_counter()
    try:
        result = run_segment(md_state, calculator, settings, trigger=trigger,
                             pending_label=None if pending_label is None
                             else Label.from_dict(pending_label), callback=callback)
    finally:
        if bar is not None:
            bar.close()
    md_s = time.perf_counter() - started
    save_trajectory(store, cfg.run_id, index, result.trajectory)
    n_calls = index + 1  # reference calls so far: the initial one plus one per segment end
    if not result.triggered:
        from atomate2_otf.results import summarise_run

        doc = summarise_run(store, cfg, result.state.to_dict(), checkpoint,
                            final_md_s=md_s, total_s=time.time() - run_started)
        return Response(output=doc)
    if cfg.max_reference_calls is not None and n_calls >= cfg.max_reference_calls:
        raise RuntimeError(
            f"run {cfg.run_id}: the trigger fired at MD step {result.state.step + 1} but the "
            f"run already made {n_calls} reference calls (max_reference_calls="
            f"{cfg.max_reference_calls}); the last checkpoint {checkpoint!r} stays loadable")
    pending = result.pending
    trigger_info = {
        "md_step": int(result.state.step) + 1,
        "numbers": pending.get_atomic_numbers().tolist(),
        "positions": pending.get_positions().tolist(),
        "cell": np.asarray(pending.get_cell()).tolist(),
        "pbc": pending.get_pbc().tolist(),
        "energy": float(trigger.last["energy"]),
        "energy_std": float(trigger.last["energy_std"]),
        "prob_within": float(trigger.last["prob_within"]),
        "md_s": md_s, "ended_at": time.time(),
    }
    k = index + 1
    reference = _reference_job(reference_maker, pending, k, cfg, trigger_info["md_step"])
    update = update_posterior(reference.output, checkpoint, trigger_info, k, cfg.to_dict())
    update.name = f"otf update {k}"
    update.metadata = cfg.metadata("update", k)
    following = md_segment(update.output["checkpoint"], result.state.to_dict(), k, cfg.to_dict(),
                           reference_maker, pending_label=update.output["label"],
                           run_started=run_started)
    following.name = f"otf md segment {k}"
    following.metadata = cfg.metadata("segment", k)
    if cfg.worker_categories:
        from jobflow import CURRENT_JOB

        categories = cfg.worker_categories
        route_to_category(reference, categories.get("reference"))
        route_to_category(update, categories.get("update"))
        route_to_category(following, categories.get("segment"))
        following.config.pass_manager_config = False
        # the store_inputs update reaches `following` through jobflow's config_updates
        if CURRENT_JOB.job is not None:
            _route_store_inputs(CURRENT_JOB.job, categories.get("segment"))
    _ensure_recursion_headroom()
    return Response(replace=Flow([reference, update, following], output=following.output,
                                 name=f"otf cycle {k}"),
                    output={"run_id": cfg.run_id, "segment": index, "triggered_at": k,
                            "md_step": trigger_info["md_step"]})


class _Trigger:
    """P(|e| < K) < confidence; or, for tests and diagnostics, every ``every``-th
    model-evaluated step of a segment. Keeps the results it last saw (the trigger's)."""

    def __init__(self, confidence: float, every: int | None) -> None:
        self.confidence = confidence
        self.every = every
        self.seen = 0
        self.last: dict[str, Any] = {}

    def __call__(self, results: dict[str, Any]) -> bool:
        self.last = dict(results)
        self.seen += 1
        if self.every:
            return self.seen % self.every == 0
        return float(results["prob_within"]) < self.confidence


def _reference_job(maker: Maker, atoms: Any, index: int, cfg: RunConfig, md_step: int):
    """The reference Maker's job (or flow) for one structure, named routably."""
    from pymatgen.io.ase import AseAtomsAdaptor

    structure = (AseAtomsAdaptor.get_structure(atoms) if atoms.pbc.all()
                 else AseAtomsAdaptor.get_molecule(atoms))
    reference = maker.make(structure)
    reference.name = f"otf reference {index}"
    if hasattr(reference, "metadata") and not isinstance(reference, Flow):
        reference.metadata = {**(reference.metadata or {}), **cfg.metadata("reference", index),
                              "otf_md_step": int(md_step)}
    return reference
