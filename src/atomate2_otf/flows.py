"""Makers of on-the-fly runs (atomate2 style): OTFMDMaker and ProductionMDMaker.

``OTFMDMaker().make(structure)`` gives ``Flow[reference 0, prepare, md segment 0]``; each
segment then grows the flow dynamically (see :mod:`atomate2_otf.jobs`). Every setting is
checked in ``make`` so that bad input fails before any model loads or reference runs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from jobflow import Flow, Maker, OutputReference, Response, job

from atomate2_otf import defaults
from atomate2_otf.atoms import to_atoms, to_pymatgen
from atomate2_otf.bnn.calibration import (
    check_confidence,
    check_ema_decay,
    check_force_threshold,
    check_threshold,
)
from atomate2_otf.bnn.prior import check_sigma_tl
from atomate2_otf.devices import check_device
from atomate2_otf.jobflow_compat import (
    STORE_CONFIG,
    check_worker_categories,
    current_store,
    route_segment,
    route_to_category,
)
from atomate2_otf.jobs import (
    CHECKPOINT_TRANSPORTS,
    RunConfig,
    md_segment,
    prepare_run,
    reference_job,
    segment_transport,
    start_run,
)
from atomate2_otf.md.trigger import check_audit_fraction
from atomate2_otf.models.base import check_model_name
from atomate2_otf.reference.retry import RetryingGFN2xTBStaticMaker
from atomate2_otf.schemas import ProductionMDDoc
from atomate2_otf.store import load_checkpoint, save_trajectory

if TYPE_CHECKING:
    from ase import Atoms
    from jobflow import JobStore
    from pymatgen.core import Molecule, Structure

    from atomate2_otf.bnn.posterior import Posterior
    from atomate2_otf.md.calculator import PosteriorCalculator
    from atomate2_otf.md.settings import MDSettings
    from atomate2_otf.md.state import MDState



def scaled_noise_schedule(n_steps: int) -> dict[str, int]:
    """Burn-in and noise ramp in the reference code's proportions (400 and 100 of 2000
    steps), so that short updates still end with noisy, spreading chains."""
    return {"burn_in": int(round(0.2 * n_steps)), "ramp": max(int(round(0.05 * n_steps)), 1)}


@dataclass
class _MDMaker(Maker):
    """Settings shared by the Makers that run MD with a (fine-tuned) ensemble."""

    name: str = "otf md"
    model: str = defaults.MODEL
    model_kwargs: dict = field(default_factory=dict)
    ensemble: str = defaults.ENSEMBLE
    temperature: float | list = defaults.TEMPERATURE_K
    timestep_fs: float = defaults.TIMESTEP_FS
    n_steps: int = defaults.N_STEPS
    friction_per_fs: float = defaults.FRICTION_PER_FS
    pressure_bar: float = defaults.PRESSURE_BAR
    threshold: float = defaults.THRESHOLD
    trajectory_interval: int = defaults.TRAJECTORY_INTERVAL
    seed: int = defaults.SEED
    device: str = defaults.DEVICE

    def __post_init__(self) -> None:
        # the spelling only: the flow may run on another machine (a GPU worker), where
        # each job resolves it (atomate2_otf.devices.resolve_device)
        self.device = check_device(self.device)

    def md_settings(self, atoms: Atoms) -> MDSettings:
        """The validated MD settings, checked against ``atoms`` (no model is loaded)."""
        from atomate2_otf.md.segment import MDSettings, check_structure_for_md

        settings = MDSettings(
            ensemble=self.ensemble, timestep_fs=self.timestep_fs, temperature=self.temperature,
            n_steps=self.n_steps, friction_per_fs=self.friction_per_fs,
            pressure_bar=self.pressure_bar, trajectory_interval=self.trajectory_interval)
        check_structure_for_md(atoms, settings)
        return settings


@dataclass
class OTFMDMaker(_MDMaker):
    """On-the-fly fine-tuning MD: MD with a Bayesian foundation model that labels a structure
    with ``reference_maker`` whenever P(|E error| < threshold) drops below ``confidence``.

    Args:
        name: flow name.
        model: registered foundation-model name (``atomate2_otf.models.base.registered_models``).
        model_kwargs: extra arguments of the model loader.
        reference_maker: any Maker whose ``make(structure)`` outputs energy, forces and
            (periodic) stress: atomate2's ASE Makers, its VASP StaticMaker, your own.
        ensemble: "nvt" (Langevin), "nve" or "npt" (MTK; periodic cells only).
        temperature: K; a number, a list of knots (300 -> 800 -> 300) or (fraction, T) pairs.
        timestep_fs, n_steps, friction_per_fs, pressure_bar: MD settings.
        threshold: energy-error threshold K (eV); the paper's ethanol run used 0.5 kcal/mol.
        confidence: label when P(|e| < K) < confidence.
        force_threshold: K_F (eV/A) of the optional force criterion (paper sec. 6), beside
            the energy one: also label when P(max_i |F_i error| < K_F) < confidence, with
            the worst atom's error calibrated by its own Gamma. It catches a local event
            (one atom in a strained place) that the energy of a large cell hides. None
            (default): the energy criterion alone.
        n_chains: M SGHMC chains; sigma_tl: prior std (None: model family default).
        update_steps, initial_update_steps: SGHMC steps per update (default 250, measured
            for CPUs: docs/measurements.md; the paper's 2000); of the first update.
        sghmc: further SGHMCConfig fields (batch_size, burn_in, ramp, ...).
        energy_sigma: fixed energy noise std (eV); None gives 0.1 * threshold (METHOD.md).
        calibration_a, calibration_b: Gamma prior of the calibration (None: family default).
        calibration_ema: None (the exact calibration, the paper's) or a decay in (0, 1):
            each new error weighs 1 and older ones are multiplied by the decay, so the
            calibration follows an error scale that drifts (a temperature ramp, a phase
            change); 0.9 remembers about the last ten calls.
        audit_fraction: the online audit, off at 0 (the default): a share in (0, 1) of the
            MD steps the trigger let pass is labelled anyway, drawn from the run's seed (a
            resumed run audits the same steps). Each audited frame's error is recorded
            before its label joins the calibration and the data; the run document reports
            the audited miss rate (|error| > K) with its 95 % Wilson interval and the RMSE
            of the fine-tuned and untuned model there. An audit costs a reference call, not
            an update, and never takes the last call of ``max_reference_calls``.
        n_workers: processes for the chains (None: one per CPU; 0/1: serial).
        keep_checkpoints: newest checkpoints kept by the retention policy.
        max_reference_calls: stop with an error past this many calls (None: no limit).
        force_trigger_every: label every n-th model step regardless of the uncertainty
            (diagnostics and tests; None: the calibrated trigger).
        trajectory_interval: MD steps between stored frames.
        seed: seeds velocities, thermostat noise, chains and minibatches.
        device: where the model, the chains and the MD's ensemble evaluation run: "cpu",
            "cuda" (on several visible GPUs the chains spread over them, one worker per
            GPU), "cuda:N" or "auto" (CUDA when the job's machine has it, else CPU). A run
            setting, not a method one: checkpoints load on any device. Refused here if
            misspelt; each job resolves it on the machine that runs it.
        worker_categories: FireWorks categories by job kind, keys "reference", "segment",
            "update", "prepare" (e.g. references on CPU workers, the rest on GPU workers;
            see atomate2_otf.fireworks.DEFAULT_WORKER_CATEGORIES); None: no routing.
        start_from: continue a stored posterior: a checkpoint key of the JobStore the
            flow runs with (``OTFRunDoc.final_checkpoint``, or a reference to one). The
            chains, data, calibration and energy offset are the checkpoint's (so are the
            posterior's own settings: n_chains, sigma_tl, energy_sigma, calibration prior,
            SGHMC); structure, ensemble, temperatures, steps and K are this Maker's. An
            ``otf start`` job refuses, before reference call 0, a missing checkpoint, a
            model with other pretrained weights, and a reference other than the source
            run's; label 0 is then scored before it is learnt (see ``prepare_run``). Pass
            the source run's final ``MDState`` to ``make`` to continue its dynamics too.
        checkpoint_transport: how the jobs hand each other the posterior. "store" (the
            default): by key through the JobStore each job runs with, for the local
            runner, jobflow's run_locally and FireWorks. "outputs": as references to job
            outputs that the manager resolves before a job runs, so that no job reads the
            store; jobflow-remote needs it (its workers run each job against a file store
            of their own). Same numbers either way; "outputs" keeps GridFS checkpoints
            base64-encoded (1.33x) and cannot be combined with ``start_from``, which reads
            the store. Under jobflow's run_locally it keeps every resolved checkpoint in
            memory for the whole run: use "store" there.
    """

    reference_maker: Maker = field(default_factory=RetryingGFN2xTBStaticMaker)
    confidence: float = defaults.CONFIDENCE
    force_threshold: float | None = None
    n_chains: int = defaults.N_CHAINS
    sigma_tl: float | None = None
    update_steps: int = defaults.UPDATE_STEPS
    initial_update_steps: int | None = None
    sghmc: dict = field(default_factory=dict)
    energy_sigma: float | None = None
    calibration_a: float | None = None
    calibration_b: float | None = None
    calibration_ema: float | None = None
    audit_fraction: float = defaults.AUDIT_FRACTION
    n_workers: int | None = None
    keep_checkpoints: int = defaults.KEEP_CHECKPOINTS
    max_reference_calls: int | None = None
    force_trigger_every: int | None = None
    progress: bool = False
    worker_categories: dict[str, str] | None = None
    start_from: str | OutputReference | None = None
    checkpoint_transport: str = "store"

    def run_config(self, atoms: Atoms) -> RunConfig:
        """Validate every setting (no model is loaded) and freeze them for the jobs."""
        from atomate2_otf.bnn.posterior import PosteriorConfig
        from atomate2_otf.bnn.sghmc import SGHMCConfig

        check_model_name(self.model)
        transport = check_checkpoint_transport(self.checkpoint_transport, self.start_from)
        categories = check_worker_categories(self.worker_categories)
        threshold = check_threshold(self.threshold)
        confidence = check_confidence(self.confidence)
        audit_fraction = check_audit_fraction(self.audit_fraction)
        force_threshold = (None if self.force_threshold is None
                           else check_force_threshold(self.force_threshold))
        if self.sigma_tl is not None:
            check_sigma_tl(self.sigma_tl)
        for name in ("update_steps", "keep_checkpoints"):
            if int(getattr(self, name)) < (0 if name == "update_steps" else 1):
                raise ValueError(f"{name} must be >= {0 if name == 'update_steps' else 1}, "
                                 f"got {getattr(self, name)!r}")
        if self.force_trigger_every is not None and int(self.force_trigger_every) < 1:
            raise ValueError(f"force_trigger_every must be >= 1 or None, "
                             f"got {self.force_trigger_every!r}")
        settings = self.md_settings(atoms)
        update_steps = int(self.update_steps)
        initial = update_steps if self.initial_update_steps is None else int(
            self.initial_update_steps)
        sghmc = SGHMCConfig(**{"n_steps": max(update_steps, 1),
                               **scaled_noise_schedule(min(update_steps, initial) or 1),
                               **self.sghmc})
        if 0 < min(update_steps, initial) <= sghmc.burn_in:
            raise ValueError(
                f"sghmc burn_in={sghmc.burn_in} leaves no noisy step in an update of "
                f"{min(update_steps, initial)} steps: the chains would not spread and the "
                f"ensemble would report no epistemic uncertainty; use burn_in < update_steps")
        posterior = PosteriorConfig(
            n_chains=self.n_chains, sigma_tl=self.sigma_tl,
            energy_sigma=self.energy_sigma or 0.1 * threshold,
            calibration_a=self.calibration_a, calibration_b=self.calibration_b,
            calibration_ema=check_ema_decay(self.calibration_ema),
            sghmc=sghmc, seed=int(self.seed))
        reference = getattr(self.reference_maker, "name", type(self.reference_maker).__name__)
        return RunConfig(
            run_id=uuid.uuid4().hex[:12], model=self.model, model_kwargs=dict(self.model_kwargs),
            reference=reference, posterior=posterior.to_dict(), md=settings.to_dict(),
            threshold=threshold, confidence=confidence, update_steps=update_steps,
            initial_update_steps=initial, n_workers=self.n_workers,
            keep_checkpoints=int(self.keep_checkpoints),
            max_reference_calls=self.max_reference_calls,
            force_trigger_every=self.force_trigger_every, progress=bool(self.progress),
            formula=atoms.get_chemical_formula(mode="hill"), worker_categories=categories,
            audit_fraction=audit_fraction, force_threshold=force_threshold,
            device=self.device, checkpoint_transport=transport)

    def make(self, structure: Structure | Molecule | Atoms | MDState | str | Path,
             prev_dir: str | Path | None = None) -> Flow:
        """The on-the-fly flow for one structure (``prev_dir`` unused; atomate2 signature).

        An :class:`~atomate2_otf.md.state.MDState` (e.g. ``MDState.from_dict(
        doc.final_state)``) continues a run's dynamics: its positions, momenta and cell
        are kept, the step count, thermostat/barostat variables and random stream start
        anew (for this Maker's ensemble and seed).
        """
        from atomate2_otf.md.segment import MDSettings, initial_state
        from atomate2_otf.md.state import MDState

        start_from = check_start_from(self.start_from)
        if isinstance(structure, MDState):
            atoms = structure.to_atoms()
            cfg = self.run_config(atoms)
            state = continued_state(structure, MDSettings.from_dict(cfg.md), int(self.seed))
        else:
            atoms = to_atoms(structure)
            cfg = self.run_config(atoms)
            state = initial_state(atoms, MDSettings.from_dict(cfg.md), int(self.seed))
        start = None
        if start_from is not None:
            start = start_run(start_from, to_pymatgen(atoms), cfg.to_dict())
            start.metadata = cfg.metadata("start", 0)
            reference = reference_job(self.reference_maker, start.output["structure"], 0,
                                      cfg, md_step=0)
            prepare = prepare_run(reference.output, state.to_dict(), cfg.to_dict(),
                                  start_from=start.output["checkpoint"])
        else:
            reference = reference_job(self.reference_maker, atoms, 0, cfg, md_step=0)
            prepare = prepare_run(reference.output, state.to_dict(), cfg.to_dict())
        prepare.metadata = cfg.metadata("prepare", 0)
        # under the "outputs" transport: what later jobs would otherwise read from the store
        run_info = {"energy_offset": prepare.output["energy_offset"], "start_from": None}
        segment = md_segment(prepare.output["checkpoint"], prepare.output["state"], 0,
                             cfg.to_dict(), self.reference_maker,
                             run_started=prepare.output["run_started"],
                             **segment_transport(cfg, prepare.output, [], run_info))
        segment.name = "otf md segment 0"
        segment.metadata = cfg.metadata("segment", 0)
        if cfg.worker_categories:
            route_to_category(reference, cfg.worker_categories.get("reference"))
            route_to_category(prepare, cfg.worker_categories.get("prepare"))
            if start is not None:
                route_to_category(start, cfg.worker_categories.get("prepare"))
            route_segment(segment, cfg.worker_categories)
        jobs = [reference, prepare, segment] if start is None else [start, reference, prepare,
                                                                     segment]
        return Flow(jobs, output=segment.output, name=f"{self.name} {cfg.formula}")


def check_checkpoint_transport(transport: Any, start_from: Any = None) -> str:
    """A checkpoint transport of :data:`~atomate2_otf.jobs.CHECKPOINT_TRANSPORTS`, refused
    with ``start_from`` when it is "outputs" (the start job reads the source run's
    checkpoint and documents from the store)."""
    if transport not in CHECKPOINT_TRANSPORTS:
        raise ValueError(f"checkpoint_transport must be one of "
                         f"{', '.join(map(repr, CHECKPOINT_TRANSPORTS))}, got {transport!r}")
    if transport == "outputs" and start_from is not None:
        raise ValueError(f"start_from={start_from!r} needs checkpoint_transport='store': a "
                         f"continued run reads its source run's checkpoint and documents "
                         f"from the JobStore, which 'outputs' (jobflow-remote) jobs do not")
    return str(transport)


def check_start_from(start_from: Any) -> str | OutputReference | None:
    """``start_from`` as OTFMDMaker takes it: None, a checkpoint key ``run_id:index`` or a
    reference to one (resolved when the run starts); anything else is refused here."""
    if start_from is None or isinstance(start_from, OutputReference):
        return start_from
    run_id, _, index = start_from.rpartition(":") if isinstance(start_from, str) else ("", "", "")
    if not run_id or not index.isdigit():
        raise ValueError(f"start_from must be a checkpoint key 'run_id:index' such as "
                         f"OTFRunDoc.final_checkpoint (or a flow's output reference to one), "
                         f"got {start_from!r}")
    return start_from


def continued_state(previous: MDState, settings: MDSettings, seed: int) -> MDState:
    """Step-0 state of a run that continues ``previous``'s dynamics: its positions,
    momenta, cell and masses; new integrator variables and random stream (``seed``), as
    the ensemble may change (Langevin, then NVE); results computed on first use."""
    from atomate2_otf.md.integrators import new_rng_state
    from atomate2_otf.md.segment import check_structure_for_md
    from atomate2_otf.md.state import MDState

    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    atoms = previous.to_atoms()
    check_structure_for_md(atoms, settings)
    state = MDState.from_atoms(atoms, step=0)
    state.integrator = {"ensemble": settings.ensemble, "rng": new_rng_state(int(seed))}
    return state


def ensemble_calculator(store: JobStore, checkpoint: str, threshold: float = defaults.THRESHOLD,
                        model: str | None = None,
                        model_kwargs: dict[str, Any] | None = None,
                        device: str = defaults.DEVICE) -> PosteriorCalculator:
    """The fine-tuned ensemble of a checkpoint as an ASE calculator (mean E/F/S, and the
    uncertainty and P(|e| < threshold) in ``.results``), evaluated on ``device``.

    ``checkpoint`` is a key such as ``OTFRunDoc.final_checkpoint``; the model is reloaded by
    the name stored in the checkpoint unless ``model`` names another registration.
    """
    from atomate2_otf.md.calculator import PosteriorCalculator

    return PosteriorCalculator(load_fine_tuned_posterior(store, checkpoint, model, model_kwargs,
                                                         device=device), threshold)


def load_fine_tuned_posterior(store: JobStore, checkpoint: str, model: str | None = None,
                              model_kwargs: dict[str, Any] | None = None,
                              device: str = defaults.DEVICE) -> Posterior:
    """The posterior of checkpoint ``checkpoint`` (a key such as ``run_id:3``) in ``store``
    on ``device`` (checked before the checkpoint is read), its model loaded by the name the
    checkpoint stores unless ``model`` names another registration of the same weights (the
    checkpoint refuses different weights)."""
    from atomate2_otf.bnn.posterior import Posterior
    from atomate2_otf.devices import resolve_device
    from atomate2_otf.models.base import load_model

    target = resolve_device(device)
    store.connect()
    blob = load_checkpoint(store, checkpoint)
    return Posterior.from_bytes(
        blob, model=None if model is None else load_model(model, device=target,
                                                          **(model_kwargs or {})),
        device=target)


@job(name="otf production md", config=STORE_CONFIG, output_schema=ProductionMDDoc)
def production_md(checkpoint: str, state: dict[str, Any], md: dict[str, Any], run_id: str,
                  threshold: float, model: str | None = None,
                  model_kwargs: dict[str, Any] | None = None,
                  device: str = defaults.DEVICE) -> ProductionMDDoc:
    """MD with a fine-tuned ensemble and no updates (energy is conserved in NVE).

    The model is the one the checkpoint names, unless ``model`` names another registration
    of the same weights. The document's ``structure`` is the last MD structure, so a Maker
    chains after it as after atomate2's own (``next_maker.make(job.output.structure)``).
    """
    import time

    from atomate2_otf.md.segment import MDSettings, run_segment
    from atomate2_otf.md.state import MDState

    started = time.perf_counter()
    store = current_store()
    calculator = ensemble_calculator(store, checkpoint, threshold, model=model,
                                     model_kwargs=model_kwargs, device=device)
    result = run_segment(MDState.from_dict(state), calculator, MDSettings.from_dict(md))
    save_trajectory(store, run_id, 0, result.trajectory)
    energies = [f["energy"] for f in result.trajectory]
    return ProductionMDDoc(
        run_id=run_id, checkpoint=checkpoint, n_md_steps=result.state.step,
        final_state=result.state.to_dict(), trajectory=result.trajectory,
        max_energy_std=float(np.max([f.get("energy_std", 0.0) for f in result.trajectory])),
        energy_range=float(np.ptp(energies)) if energies else 0.0,
        wall_s=time.perf_counter() - started,
        structure=to_pymatgen(result.state.to_atoms()))


@dataclass
class ProductionMDMaker(_MDMaker):
    """MD with the fine-tuned ensemble of a finished run, without updates.

    ``checkpoint`` is the finished run's ``OTFRunDoc.final_checkpoint``; the checkpoint
    names its model, so ``model`` stays None unless another registration of the same
    weights should load it. ``device`` as OTFMDMaker's (any device, whichever wrote the
    checkpoint).
    """

    name: str = "otf production md"
    model: str | None = None
    ensemble: str = "nve"
    checkpoint: str = ""

    def make(self, structure: Structure | Molecule | Atoms | str | Path,
             prev_dir: str | Path | None = None) -> Response | Any:
        from atomate2_otf.md.segment import initial_state

        if not self.checkpoint:
            raise ValueError("ProductionMDMaker needs checkpoint= (a finished run's "
                             "OTFRunDoc.final_checkpoint)")
        if self.model is not None:
            check_model_name(self.model)
        atoms = to_atoms(structure)
        settings = self.md_settings(atoms)
        run_id = self.checkpoint.split(":")[0] + "-production-" + uuid.uuid4().hex[:6]
        state = initial_state(atoms, settings, int(self.seed))
        production = production_md(self.checkpoint, state.to_dict(), settings.to_dict(),
                                   run_id, check_threshold(self.threshold), model=self.model,
                                   model_kwargs=dict(self.model_kwargs) or None,
                                   device=self.device)
        production.name = self.name
        return production
