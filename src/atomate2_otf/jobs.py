"""The jobs of an on-the-fly run: prepare, MD segment, posterior update (METHOD.md sec. 6).

Each MD segment either finishes the run (output: :class:`OTFRunDoc`, the segment job's
``output_schema``, so ``flow.output.structure`` is checked when the flow is built) or stops
at a trigger and replaces itself with ``Flow([reference k, update k, md segment k+1])``.
The prepare and update jobs keep plain dict outputs without a schema: later jobs index them
by key (``update.output["checkpoint"]``, also in flows already stored by a journal or
FireWorks), and jobflow resolves ``["key"]`` on a pydantic document with ``doc["key"]``,
which a pydantic model does not support. Jobs pass only
small documents between them (a checkpoint key, the MD state, one label); the posterior
bytes live in the JobStore's ``checkpoints`` store (:mod:`atomate2_otf.store`), so a flow
of a thousand cycles keeps neither megabytes in job arguments nor state in the process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from jobflow import Flow, JobConfig, OutputReference, Response, job

from atomate2_otf.atoms import record_from_atoms, to_pymatgen
from atomate2_otf.jobflow_compat import (
    STORE_CONFIG,
    UPDATE_CONFIG,
    current_store,
    ensure_recursion_headroom,
    release_output_schema,
    route_store_inputs,
    route_to_category,
)
from atomate2_otf.records import StructureRecord
from atomate2_otf.reference.labels import elapsed_from_output, label_from_output
from atomate2_otf.resources import resources
from atomate2_otf.schemas import OTFRunDoc, ReferenceCall
from atomate2_otf.store import (
    RetentionPolicy,
    checkpoint_bytes,
    checkpoint_placeholder,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    save_trajectory,
)

if TYPE_CHECKING:
    from jobflow import JobStore, Maker

    from atomate2_otf.bnn.posterior import Posterior

logger = logging.getLogger(__name__)

#: how the jobs of a run hand each other the posterior (``RunConfig.checkpoint_transport``):
#: "store": by key, each job reading and writing the JobStore it runs with (the local
#: runner, jobflow's run_locally, FireWorks); "outputs": as references to job outputs that
#: the manager resolves before the job runs (jobflow-remote, whose workers run every job
#: against a file store of its own that the runner copies into the real one afterwards)
CHECKPOINT_TRANSPORTS = ("store", "outputs")


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
    audit_fraction: float = 0.0
    force_threshold: float | None = None
    #: where models and chains run (atomate2_otf.devices), resolved by each job on the
    #: machine that runs it: "auto" follows the worker
    device: str = "cpu"
    #: one of CHECKPOINT_TRANSPORTS
    checkpoint_transport: str = "store"

    @property
    def portable(self) -> bool:
        """Jobs read nothing from the JobStore: checkpoints, the run's calls and its energy
        offset arrive as (resolved) job arguments; jobs still write to the store."""
        return self.checkpoint_transport == "outputs"

    @classmethod
    def from_dict(cls, data: dict[str, Any] | RunConfig) -> RunConfig:
        return data if isinstance(data, RunConfig) else cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metadata(self, kind: str, index: int) -> dict[str, Any]:
        """Job metadata: lets status/summary queries find a run's jobs in any store."""
        return {"otf_run_id": self.run_id, "otf_kind": kind, "otf_index": int(index)}


# -- helpers ---------------------------------------------------------------------------------
def _model(config: RunConfig):
    return resources().model(config.model, device=config.device, **config.model_kwargs)


def _pool(config: RunConfig, posterior: Posterior):
    return resources().pool(posterior.model, posterior.n_chains, config.n_workers,
                            device=config.device)


def new_posterior(config: RunConfig) -> Posterior:
    from atomate2_otf.bnn.posterior import Posterior, PosteriorConfig

    return Posterior(_model(config), PosteriorConfig(**config.posterior))


def load_posterior(store: JobStore, key: str, config: RunConfig,
                   data: Any = None) -> Posterior:
    """The posterior of checkpoint ``key``: read from ``store`` or, with the "outputs"
    transport, from ``data``, the resolved :func:`~atomate2_otf.store.checkpoint_placeholder`
    (jobs of that transport let the manager resolve their references)."""
    from atomate2_otf.bnn.posterior import Posterior

    blob = load_checkpoint(store, key) if data is None else checkpoint_bytes(data)
    return Posterior.from_bytes(blob, model=_model(config))


def segment_transport(cfg: RunConfig, producer: Any, calls: list[Any],
                      run_info: dict[str, Any] | None) -> dict[str, Any]:
    """An MD segment's arguments under the "outputs" transport (none under "store"): the
    checkpoint of ``producer`` (the prepare or update job's output), the run's calls so
    far with ``producer``'s call added, and ``run_info`` (energy offset, start_from)."""
    if not cfg.portable:
        return {}
    return {"checkpoint_data": producer["checkpoint_data"],
            "calls": [*calls, producer["call"]], "run_info": run_info}


def _checkpoint_output(cfg: RunConfig, key: str) -> dict[str, Any]:
    """The output field that hands checkpoint ``key`` on under the "outputs" transport."""
    return {"checkpoint_data": checkpoint_placeholder(key)} if cfg.portable else {}


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


def source_reference(store: JobStore, checkpoint: str) -> str | None:
    """The reference name of the run that wrote ``checkpoint`` (``run_id:index``), from its
    prepare job's output or its finished OTFRunDoc; None if this store has neither.

    Checkpoints store the model, not the reference, so a continued run checks the
    reference against the source run's documents.
    """
    run_id = checkpoint.rsplit(":", 1)[0]
    doc = store.query_one({"metadata.otf_run_id": run_id, "metadata.otf_kind": "prepare"},
                          properties=["output.reference"])
    reference = None if doc is None else doc["output"].get("reference")
    if reference is None:
        doc = store.query_one({"metadata.otf_run_id": run_id, "metadata.otf_kind": "segment",
                               "output.completed": True}, properties=["output.reference"])
        reference = None if doc is None else doc["output"].get("reference")
    return reference


@job(name="otf start", config=STORE_CONFIG)
def start_run(start_from: str, structure: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Check, before reference call 0 is paid for, that a continued run can start from
    checkpoint ``start_from``: it exists, its posterior's pretrained weights are those of
    the run's model, its source run used the same reference, and the model describes the
    new structure's elements. Hands the structure on to reference call 0."""
    from atomate2_otf.atoms import to_atoms
    from atomate2_otf.bnn.posterior import Posterior

    cfg = RunConfig.from_dict(config)
    store = current_store()
    where = f"start_from={start_from!r}"
    blob = load_checkpoint_for_start(store, start_from)
    try:
        posterior = Posterior.from_bytes(blob, model=_model(cfg))
    except ValueError as error:
        raise ValueError(f"{where}: its posterior cannot continue with model={cfg.model!r} "
                         f"({error}); use the model the source run used") from error
    reference = source_reference(store, start_from)
    if reference is None:
        logger.warning("%s: no document of the source run in this store names its "
                       "reference; the reference %r is not checked", where, cfg.reference)
    elif reference != cfg.reference:
        raise ValueError(f"{where}: the source run labelled with reference {reference!r}, "
                         f"this run's reference_maker is {cfg.reference!r}; a posterior "
                         f"continues only with the reference its data came from")
    posterior.check_structure(record_from_atoms(to_atoms(structure)))
    return {"checkpoint": start_from, "structure": structure}


def load_checkpoint_for_start(store: JobStore, key: Any) -> bytes:
    """The bytes of checkpoint ``key``, or a ValueError saying what start_from takes."""
    if not isinstance(key, str) or ":" not in key:
        raise ValueError(f"start_from must be a checkpoint key 'run_id:index' (such as "
                         f"OTFRunDoc.final_checkpoint), got {key!r}")
    try:
        return load_checkpoint(store, key)
    except ValueError as error:
        raise ValueError(f"start_from={key!r}: {error}; start_from takes a checkpoint of "
                         f"the JobStore the flow runs with (OTFRunDoc.final_checkpoint)") \
            from error


@job(name="otf prepare", config=STORE_CONFIG)
def prepare_run(reference_output: Any, state: dict[str, Any],
                config: dict[str, Any], start_from: str | None = None) -> dict[str, Any]:
    """Label 0 sets the energy offset; sample the first chains; write checkpoint 0.

    With ``start_from`` (a checkpoint key) the run continues that posterior (chains, data,
    calibration, energy offset) instead: label 0 of the new start structure is scored
    first, as every later label is (the error of the ensemble's prediction before it saw
    the structure joins the calibration, then the label joins the data), since the
    structure is new to the ensemble and a label learnt unscored would be a test skipped.
    The energy offset stays the posterior's: its data are in that energy zero, and label 0
    is just one more label. A start structure of a composition the posterior has never
    seen (a class-level warm start) has no offset yet: its label sets one, as in a fresh
    run, and call 0 is not scored (an error against a zero it defines would be zero).
    Then the chains sample ``initial_update_steps``.
    """
    from atomate2_otf.md.state import MDState

    cfg = RunConfig.from_dict(config)
    store = current_store()
    md_state = MDState.from_dict(state)
    structure = StructureRecord(md_state.numbers, md_state.positions, md_state.cell, md_state.pbc)
    label = label_from_output(reference_output, structure,
                              where="reference call 0 (the initial structure)")
    reference_s = elapsed_from_output(reference_output)
    run_started = time.time() - (reference_s or 0.0)
    scored: dict[str, Any] = {}
    if start_from is None:
        posterior = new_posterior(cfg)
        started = time.perf_counter()
        posterior.add_labels([label])
    else:
        posterior = load_posterior(store, start_from, cfg)
        started = time.perf_counter()
        if posterior.knows_composition(label):
            scored = _score_start(posterior, label, cfg)
        else:
            posterior.add_labels([label])
    _update(posterior, cfg, cfg.initial_update_steps, "initial update")
    update_s = time.perf_counter() - started
    key = save_checkpoint(store, cfg.run_id, 0, posterior.to_bytes(), portable=cfg.portable)
    # The first MD step is driven by the reference itself, as every trigger step is.
    md_state.energy = label.energy
    md_state.forces = np.asarray(label.forces)
    md_state.stress = None if label.stress is None else np.asarray(label.stress)
    call = ReferenceCall(index=0, kind="initial", md_step=md_state.step,
                         reference_energy=label.energy, reference_s=reference_s,
                         update_s=update_s, checkpoint=key, **scored)
    return {"checkpoint": key, "state": md_state.to_dict(), "call": call.model_dump(),
            "energy_offset": float(posterior.offsets_of([label])[0]),
            "run_started": run_started,
            "reference": cfg.reference, "start_from": start_from,
            **_checkpoint_output(cfg, key)}


def _score_start(posterior: Posterior, label: StructureRecord,
                 cfg: RunConfig) -> dict[str, Any]:
    """Predict label 0's structure with the carried posterior, then observe the label:
    the ReferenceCall fields of that scored prediction."""
    prediction = posterior.predict([label.unlabelled()], pool=_pool(cfg, posterior))
    energy = float(prediction.energy[0])
    energy_std = float(prediction.energy_std[0])
    prob_within = float(posterior.calibration.prob_within(energy_std, cfg.threshold))
    forces = forces_std = None
    if cfg.force_threshold is not None:
        forces = np.asarray(prediction.forces)
        forces_std = np.sqrt(np.asarray(prediction.forces_var))
    observed = posterior.observe(label, energy, energy_std, predicted_forces=forces,
                                 forces_std=forces_std)
    return {"predicted_energy": energy, "error": observed.error, "sigma": observed.sigma,
            "prob_within": prob_within, "untuned_error": observed.untuned_error,
            "predictive_scale": observed.predictive_scale,
            "predictive_dof": observed.predictive_dof, "force_error": observed.force_error,
            "force_sigma": observed.force_sigma}


@job(name="otf update", config=UPDATE_CONFIG)
def update_posterior(reference_output: Any, checkpoint: str, trigger: dict[str, Any],
                     index: int, config: dict[str, Any], kind: str = "trigger",
                     checkpoint_data: Any = None) -> dict[str, Any]:
    """Score the model's prediction against the label, learn the label, sample; store.

    An audited frame (``kind="audit"``) is scored and learnt the same way (its error is
    recorded before the label joins the calibration and the data), but not sampled on:
    an audit buys a check of the ensemble, not an update, and the next triggered update
    samples with its label in the data. ``checkpoint_data``: the "outputs" transport's
    reference to the checkpoint (see :func:`load_posterior`).
    """
    from atomate2_otf.md.trigger import TriggerEvent

    cfg = RunConfig.from_dict(config)
    store = current_store()
    if isinstance(reference_output, OutputReference):
        reference_output = reference_output.resolve(store)
    event = TriggerEvent.from_dict(trigger)
    label = label_from_output(reference_output, event.structure,
                              where=f"reference call {index} (MD step {event.md_step})")
    reference_s = elapsed_from_output(reference_output)
    if reference_s is None:  # generic Makers: the time between trigger and this job
        reference_s = max(time.time() - event.ended_at, 0.0)
    posterior = load_posterior(store, checkpoint, cfg, checkpoint_data)
    started = time.perf_counter()
    observed = posterior.observe(label, event.energy, event.energy_std,
                                 predicted_forces=event.forces, forces_std=event.forces_std)
    if kind != "audit":
        _update(posterior, cfg, cfg.update_steps, f"update {index}")
    update_s = time.perf_counter() - started
    key = save_checkpoint(store, cfg.run_id, index, posterior.to_bytes(), portable=cfg.portable)
    prune_checkpoints(store, cfg.run_id, RetentionPolicy(keep_last=cfg.keep_checkpoints))
    call = ReferenceCall(
        index=index, kind=kind, md_step=event.md_step, reference_energy=label.energy,
        predicted_energy=event.energy, error=observed.error, sigma=observed.sigma,
        prob_within=event.prob_within, untuned_error=observed.untuned_error,
        predictive_scale=observed.predictive_scale, predictive_dof=observed.predictive_dof,
        force_error=observed.force_error, force_sigma=observed.force_sigma,
        prob_within_forces=event.prob_within_forces,
        md_s=event.md_s, reference_s=reference_s, update_s=update_s, checkpoint=key)
    # the label goes back to the next segment, which replays the triggering step with it
    return {"checkpoint": key, "call": call.model_dump(), "label": label.to_dict(),
            **_checkpoint_output(cfg, key)}


@job(name="otf checkpoint")
def checkpoint_pointer(checkpoint: str) -> dict[str, Any]:
    """Hand checkpoint ``checkpoint`` (a key) to the jobs of the same cycle, under the
    "outputs" transport; it reads nothing and writes nothing.

    Update k needs the checkpoint segment k ran with, which an earlier cycle's job wrote;
    a reference to that job's output would reach outside the flow segment k returns, and
    jobflow-remote refuses such a flow (``get_flow`` without external references). This
    job, made in the same flow, outputs the pointer to that checkpoint instead: it needs
    nothing, so it runs beside the reference call, off the cycle's critical path.
    """
    return {"checkpoint": checkpoint, "checkpoint_data": checkpoint_placeholder(checkpoint)}


@job(name="otf md segment", config=STORE_CONFIG, output_schema=OTFRunDoc)
def md_segment(checkpoint: str, state: dict[str, Any], index: int, config: dict[str, Any],
               reference_maker: Maker, pending_label: dict[str, Any] | None = None,
               run_started: float | None = None, checkpoint_data: Any = None,
               calls: list[dict] | None = None,
               run_info: dict[str, Any] | None = None) -> Response:
    """Run MD with the ensemble mean until the trigger fires or the run's steps are done.

    The "outputs" transport's arguments (None otherwise): ``checkpoint_data``, the
    resolved checkpoint; ``calls``, the run's ReferenceCall documents so far, and
    ``run_info``, its energy offset and ``start_from``, which the last segment summarises
    instead of querying the store. A trigger then adds :func:`checkpoint_pointer` to the
    cycle, for the update.
    """
    from atomate2_otf.md.calculator import PosteriorCalculator
    from atomate2_otf.md.segment import MDSettings, run_segment
    from atomate2_otf.md.state import MDState
    from atomate2_otf.md.trigger import AuditDraw, CalibratedTrigger, TriggerEvent

    run_started = time.time() if run_started is None else run_started
    cfg = RunConfig.from_dict(config)
    store = current_store()
    settings = MDSettings.from_dict(cfg.md)
    posterior = load_posterior(store, checkpoint, cfg, checkpoint_data)
    calculator = PosteriorCalculator(posterior, cfg.threshold, pool=_pool(cfg, posterior),
                                     force_threshold=cfg.force_threshold)
    md_state = MDState.from_dict(state)
    trigger = CalibratedTrigger(cfg.confidence, cfg.force_trigger_every)
    n_calls = index + 1  # reference calls so far: the initial one plus one per segment end
    audit = None  # audits stop before they would use up the run's reference-call budget
    if cfg.audit_fraction > 0 and (cfg.max_reference_calls is None
                                   or n_calls < cfg.max_reference_calls - 1):
        audit = AuditDraw(cfg.audit_fraction, int(cfg.posterior.get("seed", 0)))

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
                             else StructureRecord.from_dict(pending_label), callback=callback,
                             audit=audit)
    finally:
        if bar is not None:
            bar.close()
    md_s = time.perf_counter() - started
    save_trajectory(store, cfg.run_id, index, result.trajectory)
    if not result.triggered:
        from atomate2_otf.results import summarise_run

        doc = summarise_run(store, cfg, result.state.to_dict(), checkpoint,
                            final_md_s=md_s, total_s=time.time() - run_started,
                            calls=calls, run_info=run_info)
        return Response(output=doc)
    kind = result.reason or "trigger"
    if (kind == "trigger" and cfg.max_reference_calls is not None
            and n_calls >= cfg.max_reference_calls):
        raise RuntimeError(
            f"run {cfg.run_id}: the trigger fired at MD step {result.state.step + 1} but the "
            f"run already made {n_calls} reference calls (max_reference_calls="
            f"{cfg.max_reference_calls}); the last checkpoint {checkpoint!r} stays loadable")
    event = TriggerEvent.from_trigger(trigger, record_from_atoms(result.pending),
                                      md_step=result.state.step + 1, md_s=md_s)
    k = index + 1
    reference = reference_job(reference_maker, result.pending, k, cfg, event.md_step,
                              audit=kind == "audit")
    portable: dict[str, Any] = {}
    pointer = None
    if cfg.portable:
        pointer = checkpoint_pointer(checkpoint)
        pointer.name = f"otf checkpoint {k}"
        pointer.metadata = cfg.metadata("checkpoint", k)
        portable = {"checkpoint_data": pointer.output["checkpoint_data"]}
    update = update_posterior(reference.output, checkpoint, event.to_dict(), k, cfg.to_dict(),
                              **({"kind": kind} if kind == "audit" else {}), **portable)
    if cfg.portable:  # references resolved by the manager: jobflow-remote's runner resolves
        update.config = JobConfig(expose_store=True)  # only where resolve_references is on
    update.name = f"otf update {k}" + (" audit" if kind == "audit" else "")
    update.metadata = {**cfg.metadata("update", k), **({"otf_audit": True}
                                                       if kind == "audit" else {})}
    following = md_segment(update.output["checkpoint"], result.state.to_dict(), k, cfg.to_dict(),
                           reference_maker, pending_label=update.output["label"],
                           run_started=run_started,
                           **segment_transport(cfg, update.output, calls or [], run_info))
    following.name = f"otf md segment {k}"
    following.metadata = cfg.metadata("segment", k)
    if cfg.worker_categories:
        from jobflow import CURRENT_JOB

        categories = cfg.worker_categories
        route_to_category(reference, categories.get("reference"))
        route_to_category(update, categories.get("update"))
        if pointer is not None:
            route_to_category(pointer, categories.get("update"))
        route_to_category(following, categories.get("segment"))
        following.config.pass_manager_config = False
        # the store_inputs update reaches `following` through jobflow's config_updates
        if CURRENT_JOB.job is not None:
            route_store_inputs(CURRENT_JOB.job, categories.get("segment"))
    ensure_recursion_headroom()
    release_output_schema()  # the last segment's OTFRunDoc is checked, not this reference
    cycle = [reference, update, following] if pointer is None else [pointer, reference,
                                                                      update, following]
    return Response(replace=Flow(cycle, output=following.output, name=f"otf cycle {k}"),
                    output={"run_id": cfg.run_id, "segment": index, "triggered_at": k,
                            "md_step": event.md_step,
                            **({"audit": True} if kind == "audit" else {})})


def reference_job(maker: Maker, atoms: Any, index: int, cfg: RunConfig, md_step: int,
                  audit: bool = False):
    """The reference Maker's job (or flow) for call ``index`` of a run, named and tagged
    (run id, kind, index, MD step) so that status queries and worker routing find it.

    An audit's reference is the same Maker's job, named ``otf reference {index} audit``:
    a route by name (``otf reference``) or by kind ("reference") sends it where every other
    reference goes.
    """
    # an OutputReference (a continued run's start job hands the structure on) stays one
    reference = maker.make(atoms if isinstance(atoms, OutputReference) else to_pymatgen(atoms))
    reference.name = f"otf reference {index}" + (" audit" if audit else "")
    if hasattr(reference, "metadata") and not isinstance(reference, Flow):
        reference.metadata = {**(reference.metadata or {}), **cfg.metadata("reference", index),
                              "otf_md_step": int(md_step), **({"otf_audit": True}
                                                              if audit else {})}
    return reference
