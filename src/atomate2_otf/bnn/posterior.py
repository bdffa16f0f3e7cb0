"""M SGHMC chains over a foundation model plus noise head: update with labels, predict.

The posterior keeps everything an on-the-fly run needs between reference calls, so a
checkpoint of it is a complete restart point: the chains' parameters, the labelled data
set, the energy offset between model and reference, the calibration statistics and the
random-number state. It knows nothing of ASE or workflows: structures arrive as
:class:`StructureRecord` and the model through the small :class:`FoundationModel` protocol.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from atomate2_otf.bnn import sghmc
from atomate2_otf.bnn.calibration import (
    GammaCalibration,
    WorstAtomForceCalibration,
    per_atom_force_std,
)
from atomate2_otf.bnn.checkpoint import posterior_from_bytes, posterior_to_bytes
from atomate2_otf.bnn.ensemble import ChainOutput, EnsemblePrediction, combine_ensemble
from atomate2_otf.bnn.heads import DEFAULT_FORCE_SIGMA_SCALE, ForceNoiseHead
from atomate2_otf.bnn.likelihood import DEFAULT_STRESS_SIGMA, Targets, log_likelihood
from atomate2_otf.bnn.prior import TransferPrior, check_sigma_tl
from atomate2_otf.bnn.sampling import draw_minibatch
from atomate2_otf.bnn.space import ChainRNG, ParameterSpace
from atomate2_otf.records import StructureRecord

if TYPE_CHECKING:
    from atomate2_otf.bnn.parallel import ChainPool
    from atomate2_otf.models.base import FoundationModel

logger = logging.getLogger(__name__)


@dataclass
class PosteriorConfig:
    """Settings of the Bayesian model (defaults: the paper's, per model family).

    n_chains: Monte Carlo samples M (paper 8; 4 is the advised minimum).
    sigma_tl: prior std around the pretrained weights; None takes the family default.
    energy_sigma: fixed energy std (eV); the on-the-fly Maker sets it to 0.1 K.
    force_sigma_scale: initial per-atom force std (eV/A) of the noise head.
    stress_sigma: fixed stress std (eV/A^3).
    head_hidden: hidden widths of the noise head MLP.
    head_step_size: opt-in SGHMC step size of the noise head's parameters (a per-parameter
        mass, so the posterior is unchanged); None (the paper's method) gives the head the
        model's gamma_0. Not a default: on held-out frames of SevenNet-0 (gamma_0 3e-4,
        methanol/GFN2-xTB and Al/EMT) a head step of 1e-3 made the energy and force RMSE
        worse on both systems while moving force sigma/RMSE towards 1
        (benchmarks/head_step_size.json); it matters only when gamma_0 is far below 1e-3.
    calibration_a, calibration_b: Gamma prior of the calibration; None: family default.
    calibration_ema: None (exact) or a decay in (0, 1) for drifting runs.
    seed: seeds the head initialisation, the minibatch draws and the SGHMC noise.
    """

    n_chains: int = 8
    sigma_tl: float | None = None
    energy_sigma: float = 0.01
    force_sigma_scale: float = DEFAULT_FORCE_SIGMA_SCALE
    stress_sigma: float = DEFAULT_STRESS_SIGMA
    head_hidden: tuple[int, ...] = (64, 16)
    head_step_size: float | None = None
    calibration_a: float | None = None
    calibration_b: float | None = None
    calibration_ema: float | None = None
    sghmc: sghmc.SGHMCConfig = field(default_factory=sghmc.SGHMCConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.sghmc, dict):
            self.sghmc = sghmc.SGHMCConfig(**self.sghmc)
        self.head_hidden = tuple(int(h) for h in self.head_hidden)
        if not isinstance(self.n_chains, int | np.integer) or self.n_chains < 1:
            raise ValueError(f"n_chains must be an integer >= 1, got {self.n_chains!r}")
        if self.sigma_tl is not None:
            check_sigma_tl(self.sigma_tl)
        if self.head_step_size is not None and not float(self.head_step_size) > 0:
            raise ValueError(f"head_step_size must be > 0 or None, got {self.head_step_size!r}")
        for name in ("energy_sigma", "force_sigma_scale", "stress_sigma"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["sghmc"] = self.sghmc.to_dict()
        out["head_hidden"] = list(self.head_hidden)
        return out


def _fingerprint(vector: torch.Tensor) -> str:
    """A short hash of the pretrained weights, to refuse a checkpoint on the wrong model."""
    data = vector.detach().to(device="cpu", dtype=torch.float32).numpy()
    return hashlib.sha256(data.tobytes()).hexdigest()[:16]


@dataclass
class Observation:
    """One label scored before it was learnt: the ensemble's energy error (eV, prediction
    minus reference), its predicted std, the untuned model's error, and the calibrated
    Student-t predictive law of the error (scale, eV, and degrees of freedom) as it stood
    before this error joined the calibration (the report's coverage curve needs it)."""

    error: float
    sigma: float
    untuned_error: float
    predictive_scale: float
    predictive_dof: float
    force_error: float | None = None
    force_sigma: float | None = None


class Posterior:
    """The Bayesian fine-tuned potential: M chains, a data set, calibration and offset.

    Everything that computes lives on one device (:mod:`atomate2_otf.devices`): the model,
    the noise head, the chains' SGHMC state, the prior, the minibatch tensors and the
    chains' noise streams. ``device`` None keeps the model where it is; a device moves
    the model there first. The head starts from the same CPU-drawn values on every device,
    and checkpoints hold CPU tensors only, so a checkpoint loads on any device.
    """

    def __init__(self, model: FoundationModel, config: PosteriorConfig | None = None,
                 device: str | torch.device | None = None) -> None:
        if device is not None:
            model.to(device)
        self.model = model
        self.device = model.device
        self.config = config or PosteriorConfig()
        defaults = model.defaults
        self.sigma_tl = self.config.sigma_tl or defaults.sigma_tl
        self.step_size = self.config.sghmc.step_size or defaults.step_size
        generator = torch.Generator(device="cpu").manual_seed(self.config.seed)
        self.head = ForceNoiseHead(model.feature_dim, self.config.head_hidden,
                                   self.config.force_sigma_scale,
                                   generator=generator).to(self.device)
        self.space = ParameterSpace([model.parameters(), self.head])
        pretrained = model.pretrained
        self.fingerprint = _fingerprint(pretrained)
        self.theta0 = torch.cat([pretrained, ParameterSpace([self.head]).vector()])
        center = torch.zeros(self.space.size, dtype=self.theta0.dtype, device=self.device)
        center[: pretrained.numel()] = pretrained
        self.prior = TransferPrior(center, self.sigma_tl)
        self.mass_scale = torch.ones(self.space.size, dtype=self.theta0.dtype,
                                     device=self.device)
        if self.config.head_step_size is not None:
            self.mass_scale[pretrained.numel():] = self.config.head_step_size / self.step_size
        self.state = sghmc.init(self.theta0.expand(self.config.n_chains, -1).contiguous())
        self.calibration = GammaCalibration(
            self.config.calibration_a or defaults.calibration_a,
            self.config.calibration_b or defaults.calibration_b,
            ema_decay=self.config.calibration_ema,
        )
        #: the force criterion's own Gamma (same prior), fed only when forces are observed
        self.force_calibration = WorstAtomForceCalibration(
            self.calibration.a, self.calibration.b, ema_decay=self.config.calibration_ema)
        self.data: list[StructureRecord] = []
        self._prepared: list[Any] = []
        self._batch_cache: tuple[Any, Any, Targets] | None = None
        #: E_pred(theta_0, x) - E_ref(x) of the first label of each composition
        #: (:attr:`StructureRecord.composition`): the reference energies of that
        #: composition move to the model's zero by it. One composition per run; a posterior
        #: carried to other compositions (warm starts) gets one offset per composition,
        #: since model and reference energy zeros differ by a per-element amount.
        self.energy_offsets: dict[str, float] = {}
        self.n_updates = 0
        #: identifies this object and the version of its chains (pool workers cache them)
        self.uid = uuid.uuid4().hex
        self.revision = 0
        self.rngs = [ChainRNG.from_seed(seq, self.device) for seq in
                     np.random.SeedSequence(self.config.seed).spawn(self.config.n_chains)]

    # -- data ----------------------------------------------------------------------------
    @property
    def n_chains(self) -> int:
        return self.state.theta.shape[0]

    def check_structure(self, record: StructureRecord) -> None:
        """Refuse, before any expensive work, a structure the model cannot describe."""
        self.model.check_elements(record.numbers)

    @property
    def energy_offset(self) -> float | None:
        """The offset of the first composition labelled (the run's, in a one-composition
        run); None before any label."""
        return next(iter(self.energy_offsets.values()), None)

    def knows_composition(self, record: StructureRecord) -> bool:
        """Whether a label of ``record``'s composition set its energy offset already."""
        return record.composition in self.energy_offsets

    def offsets_of(self, records: Sequence[StructureRecord]) -> np.ndarray:
        """The energy offset of each record's composition; 0 for one never labelled."""
        return np.array([self.energy_offsets.get(r.composition, 0.0) for r in records])

    def add_labels(self, records: Sequence[StructureRecord]) -> None:
        """Add reference-labelled structures to the data set.

        The first label of each composition sets its energy offset
        E_pred(theta_0, x0) - E_ref(x0) that moves its reference energies to the model's
        energy zero.
        """
        records = list(records)
        for i, record in enumerate(records):
            if not record.is_labelled:
                raise ValueError(f"structure {i} has no reference energy and forces")
            values = [record.energy, record.forces] + ([record.stress]
                                                       if record.stress is not None else [])
            if not all(np.all(np.isfinite(v)) for v in values):
                raise ValueError(f"structure {i} has a non-finite reference label")
            self.check_structure(record)
        if not records:
            return
        for record in records:
            if record.composition not in self.energy_offsets:
                untuned = self.predict_untuned([record])
                self.energy_offsets[record.composition] = float(untuned.energy[0]
                                                                - record.energy)
        self.data.extend(records)
        self._prepared.extend(self.model.prepare(r) for r in records)

    def observe(self, record: StructureRecord, predicted_energy: float,
                energy_std: float, predicted_forces: Any = None,
                forces_std: Any = None) -> Observation:
        """A reference call's label meets the prediction made before it (METHOD.md sec. 6).

        The error of that prediction and of the untuned model are recorded, the error joins
        the calibration, then the label joins the data set; the caller samples next. This
        order is the method: an error scored after the label was learnt would be no test.
        With the predicted forces and their [N, 3] stds (the force criterion), the
        worst-atom force error joins the force calibration the same way.
        """
        error = float(predicted_energy) - record.energy
        sigma = float(energy_std)
        untuned = float(self.predict_untuned([record.unlabelled()]).energy[0]) - record.energy
        scale = float(self.calibration.predictive_scale(sigma))
        dof = float(self.calibration.dof)
        self.calibration.update(np.array([error]), np.array([sigma]))
        force_error = force_sigma = None
        if predicted_forces is not None:
            force_error, force_sigma = self.force_calibration.update_worst_atom(
                np.asarray(predicted_forces, dtype=float) - record.forces,
                per_atom_force_std(np.square(forces_std)))
        self.add_labels([record])
        return Observation(error=error, sigma=sigma, untuned_error=untuned,
                           predictive_scale=scale, predictive_dof=dof,
                           force_error=force_error, force_sigma=force_sigma)

    # -- evaluation ------------------------------------------------------------------------
    def _forward(self, batch: Any, compute_stress: bool, create_graph: bool):
        out = self.model.evaluate(batch, compute_stress=compute_stress, create_graph=create_graph)
        return out, self.head(out.features)

    def chain_outputs(
        self, records: Sequence[StructureRecord], compute_stress: bool = False,
        thetas: torch.Tensor | None = None,
    ) -> list[ChainOutput]:
        """Raw per-chain predictions (model energy zero) for one batch of structures.

        The batch is prepared and collated once and evaluated with each chain's parameters;
        the results stay on the device until the last chain is done, then come to the CPU
        in one copy per quantity (a copy per chain would wait on the device M times).
        """
        batch = self.model.batch_to(self.model.collate([self.model.prepare(r) for r in records]))
        results = []
        with self.space.frozen():  # once for all chains: no parameter gradients needed
            for theta in (self.state.theta if thetas is None else thetas):
                self.space.load(theta)
                out, sigma = self._forward(batch, compute_stress, create_graph=False)
                results.append((out.energy.detach(), out.forces.detach(), sigma.detach(),
                                None if out.stress is None else out.stress.detach()))
        n_atoms = out.n_atoms.cpu().numpy()

        def host(i: int) -> list[np.ndarray] | None:
            if results[0][i] is None:
                return None
            return list(torch.stack([r[i] for r in results]).double().cpu().numpy())

        energy, forces, sigmas, stress = (host(i) for i in range(4))
        return [ChainOutput(energy=energy[c], forces=forces[c], force_sigma=sigmas[c],
                            stress=None if stress is None else stress[c], n_atoms=n_atoms)
                for c in range(len(results))]

    def combine(self, outputs: Sequence[ChainOutput],
                offset: float | np.ndarray = 0.0) -> EnsemblePrediction:
        """Ensemble mean and variance (law of total variance) of per-chain outputs;
        ``offset`` (per structure) moves energies to the reference's zero."""
        energies = np.stack([o.energy for o in outputs])
        forces = np.stack([o.forces for o in outputs])
        sigmas = np.stack([o.force_sigma for o in outputs])
        e_mean, e_epi, _ = combine_ensemble(energies, np.zeros_like(energies))
        e_alea = np.full_like(e_mean, self.config.energy_sigma**2)
        f_mean, f_epi, f_alea = combine_ensemble(
            forces, np.broadcast_to(sigmas[..., None] ** 2, forces.shape))
        stress = s_epi = s_alea = None
        if outputs[0].stress is not None:
            stresses = np.stack([o.stress for o in outputs])
            stress, s_epi, _ = combine_ensemble(stresses, np.zeros_like(stresses))
            s_alea = np.full_like(stress, self.config.stress_sigma**2)
        return EnsemblePrediction(
            energy=e_mean - offset, energy_var_epistemic=e_epi, energy_var_aleatoric=e_alea,
            forces=f_mean, forces_var_epistemic=f_epi, forces_var_aleatoric=f_alea,
            stress=stress, stress_var_epistemic=s_epi, stress_var_aleatoric=s_alea,
            n_atoms=outputs[0].n_atoms, chain_energies=energies - offset,
        )

    def predict(
        self, records: Sequence[StructureRecord], compute_stress: bool = False,
        thetas: torch.Tensor | None = None, pool: ChainPool | None = None,
    ) -> EnsemblePrediction:
        """Ensemble prediction for a batch of structures (energies in the reference's zero).

        With a :class:`~atomate2_otf.bnn.parallel.ChainPool` the chains are evaluated in
        its workers, in parallel.
        """
        records = list(records)
        for record in records:
            self.check_structure(record)
        offset = self.offsets_of(records)
        if pool is not None and thetas is None:
            return self.combine(pool.chain_outputs(self, records, compute_stress), offset)
        return self.combine(self.chain_outputs(records, compute_stress, thetas), offset)

    def predict_untuned(
        self, records: Sequence[StructureRecord], compute_stress: bool = False
    ) -> EnsemblePrediction:
        """The pretrained model (theta_0) alone, as a one-member ensemble."""
        return self.predict(records, compute_stress, thetas=self.theta0[None])

    # -- sampling --------------------------------------------------------------------------
    def _targets(self, indices: np.ndarray) -> Targets:
        records = [self.data[i] for i in indices]
        return Targets.from_records(records, self.offsets_of(records), device=self.device)

    def _minibatch(self, indices: np.ndarray) -> tuple[Any, Targets]:
        """The collated model input and the label tensors of a minibatch.

        The last one is kept: while the data set is no larger than a minibatch (early in
        a run) every step of every chain uses the same one, and collating it again and
        rebuilding its labels from numpy at each step is pure overhead. Evaluation never
        writes into a collated batch (the adapters copy what the model mutates).
        """
        key = (tuple(int(i) for i in indices), len(self.data), len(self.energy_offsets))
        cached = self._batch_cache
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        batch = self.model.batch_to(self.model.collate([self._prepared[i] for i in indices]))
        targets = self._targets(indices)
        self._batch_cache = (key, batch, targets)
        return batch, targets

    def _chain_gradient(self, theta: torch.Tensor, indices: np.ndarray,
                        weights: np.ndarray) -> torch.Tensor:
        """grad of U/N for one chain on one minibatch: prior in closed form + autograd."""
        self.space.load(theta)
        batch, targets = self._minibatch(indices)
        compute_stress = bool(targets.stress_mask.any())
        out, sigma = self._forward(batch, compute_stress, create_graph=True)
        ll = log_likelihood(out.energy, out.forces, sigma, targets,
                            energy_sigma=self.config.energy_sigma, stress=out.stress,
                            stress_sigma=self.config.stress_sigma)
        weights_t = torch.as_tensor(weights, dtype=ll.dtype, device=ll.device)
        loss = -(weights_t * ll).mean()
        grads = torch.autograd.grad(loss, self.space.parameters, allow_unused=True)
        # prior/N in closed form, then the likelihood gradients added slice by slice into
        # it (no concatenated copy); the same floating-point sums as flatten(grads) + prior
        total = self.prior.grad_neg_log_prob(theta)
        total.div_(len(self.data))
        return self.space.add_flat(total, grads)

    def chain_state(self, chain: int) -> sghmc.SGHMCState:
        """A [1, P] view of one chain's sampler state (writes go to the stacked state)."""
        s, m = self.state, slice(chain, chain + 1)
        return sghmc.SGHMCState(s.theta[m], s.momentum[m], s.v[m], s.v_hat[m], s.t)

    def run_chain(self, chain: int, config: sghmc.SGHMCConfig,
                  callback: Callable[[int, int], None] | None = None) -> None:
        """One update of one chain. Chains share nothing but the data, and each draws from
        its own random streams, so running them in any order or process gives the same
        samples."""
        rng = self.rngs[chain]
        batch_size = config.batch_size

        def grad_fn(thetas: torch.Tensor, t: int) -> torch.Tensor:
            indices, weights = draw_minibatch(len(self.data), batch_size, rng.numpy)
            return self._chain_gradient(thetas[0], indices, weights)[None]

        state = sghmc.reset_for_update(self.chain_state(chain), keep_mass=config.keep_mass)
        step_callback = None if callback is None else (lambda t, _: callback(chain, t))
        sghmc.run(state, grad_fn, config, step_size=self.step_size, n_data=len(self.data),
                  generator=rng.torch, callback=step_callback, mass_scale=self.mass_scale)
        state.momentum.zero_()

    def update(self, callback: Callable[[int, int], None] | None = None,
               n_steps: int | None = None, pool: ChainPool | None = None) -> None:
        """Continue every chain from its last sample on the current data set (one update).

        ``callback(chain, step)`` reports progress (every step serially, every few steps
        from a pool). With a :class:`~atomate2_otf.bnn.parallel.ChainPool` the chains run in
        its worker processes; the samples are the same as in the serial loop.
        """
        if not self.data:
            raise ValueError("the posterior has no labelled data yet: call add_labels first")
        config = self.config.sghmc
        if n_steps is not None:
            config = sghmc.SGHMCConfig(**{**config.to_dict(), "n_steps": int(n_steps)})
        self.revision += 1
        if pool is not None:
            pool.update(self, config, callback)
        else:
            for chain in range(self.n_chains):
                self.run_chain(chain, config, callback)
        # the mass's age: every chain took the same steps (views of the state cannot say)
        self.state.t = (self.state.t if config.keep_mass else 0) + config.n_steps
        self.n_updates += 1

    # -- serialisation (the format: bnn/checkpoint.py) -------------------------------------
    def to_bytes(self) -> bytes:
        """A self-contained checkpoint (torch format, loadable with weights_only=True)."""
        return posterior_to_bytes(self)

    @classmethod
    def from_bytes(cls, blob: bytes, model: FoundationModel | None = None,
                   device: str | torch.device | None = None) -> Posterior:
        """Rebuild a posterior from :meth:`to_bytes` on ``device`` (None: the model's, or
        the CPU); the model is reloaded by name if not given."""
        return posterior_from_bytes(cls, blob, model, device)
