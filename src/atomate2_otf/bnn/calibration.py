"""Calibration of the predicted energy uncertainty without a validation set (METHOD.md sec. 5).

The error model is ``e = E_pred - E_true ~ N(0, sigma_pred^2 / lambda)`` with a conjugate
Gamma(a, b) prior (shape a, rate b) on the precision multiplier lambda. Each reference
calculation adds one ``z_i = e_i^2 / sigma_i^2`` (sigma from the model *before* it saw that
structure), so the posterior stays Gamma(a + n/2, b + S/2) and the predictive error on a new
structure is Student-t. Starting with a/b < 1 makes the run under-confident early on, on
purpose: an over-confident model never asks for the data that would correct it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special, stats


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def check_confidence(confidence: float) -> float:
    """Validate a confidence level: a probability strictly between 0 and 1."""
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    return confidence


def check_threshold(threshold: float) -> float:
    """Validate the energy-error threshold K (eV)."""
    return _check_positive("threshold (energy-error K, eV)", threshold)


def check_force_threshold(threshold: float) -> float:
    """Validate the force criterion's threshold K_F (eV/A)."""
    return _check_positive("force_threshold (worst-atom force error K_F, eV/A)", threshold)


@dataclass
class GammaCalibration:
    """Gamma prior/posterior on the precision of the predicted energy std.

    Args:
        a: shape of the Gamma prior (> 0).
        b: rate of the Gamma prior (> 0).
        ema_decay: None for the exact conjugate update (default). A value in (0, 1) turns
            the statistics into exponential moving averages (old evidence is multiplied by
            ``ema_decay`` per new error) so that calibration can follow a drifting
            miscalibration, e.g. across a phase transition (paper, Sec. 6).
    """

    a: float = 1.5
    b: float = 10.0
    ema_decay: float | None = None
    n: float = field(default=0.0)
    sum_z: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.a = _check_positive("calibration shape a", self.a)
        self.b = _check_positive("calibration rate b", self.b)
        self.ema_decay = check_ema_decay(self.ema_decay)

    # -- posterior -------------------------------------------------------------------------
    @property
    def shape(self) -> float:
        """Posterior shape a + n/2."""
        return self.a + self.n / 2.0

    @property
    def rate(self) -> float:
        """Posterior rate b + S/2 with S the (possibly decayed) sum of z_i."""
        return self.b + self.sum_z / 2.0

    @property
    def dof(self) -> float:
        """Degrees of freedom of the predictive Student-t, nu = 2a + n."""
        return 2.0 * self.a + self.n

    @property
    def scale_sq(self) -> float:
        """Factor on sigma^2 giving the squared Student-t scale: (b + S/2) / (a + n/2)."""
        return self.rate / self.shape

    def update(self, errors: Any, sigmas: Any) -> GammaCalibration:
        """Add observed errors (eV) with the std (eV) predicted *before* seeing each label."""
        errors = np.atleast_1d(np.asarray(errors, dtype=float))
        sigmas = np.atleast_1d(np.asarray(sigmas, dtype=float))
        if errors.shape != sigmas.shape:
            raise ValueError(
                f"errors and sigmas must have the same shape, got {errors.shape} "
                f"and {sigmas.shape}"
            )
        if not np.all(np.isfinite(errors)):
            raise ValueError(f"errors must be finite, got {errors!r}")
        if np.any(~np.isfinite(sigmas)) or np.any(sigmas <= 0):
            raise ValueError(f"sigmas must be finite and > 0, got {sigmas!r}")
        z = (errors / sigmas) ** 2
        if self.ema_decay is None:
            self.n += float(len(z))
            self.sum_z += float(z.sum())
        else:
            for value in z:
                self.n = self.ema_decay * self.n + 1.0
                self.sum_z = self.ema_decay * self.sum_z + float(value)
        return self

    # -- prediction ------------------------------------------------------------------------
    def predictive_scale(self, sigma: Any) -> np.ndarray:
        """Scale of the predictive Student-t for predicted std ``sigma`` (eV)."""
        return np.asarray(sigma, dtype=float) * np.sqrt(self.scale_sq)

    def prob_within(self, sigma: Any, threshold: float) -> float | np.ndarray:
        """P(|e*| < K) for predicted std ``sigma``: the Student-t CDF difference."""
        threshold = check_threshold(threshold)
        sigma = np.asarray(sigma, dtype=float)
        if np.any(sigma <= 0) or not np.all(np.isfinite(sigma)):
            raise ValueError(f"sigma must be finite and > 0, got {sigma!r}")
        x = threshold / self.predictive_scale(sigma)
        # 2 * cdf(x) - 1 loses digits when cdf ~ 1; the survival function keeps them.
        prob = 1.0 - 2.0 * stats.t.sf(x, df=self.dof)
        return float(prob) if prob.ndim == 0 else prob

    def prob_within_hyp2f1(self, sigma: Any, threshold: float) -> float | np.ndarray:
        """The paper's closed form of :meth:`prob_within` with Gauss' 2F1 (a cross-check)."""
        threshold = check_threshold(threshold)
        sigma = np.asarray(sigma, dtype=float)
        d = self.a + (self.n + 1.0) / 2.0
        b_n = self.rate
        log_prefactor = special.gammaln(d) - special.gammaln(d - 0.5)
        prob = (
            2.0 * threshold * np.exp(log_prefactor) / (np.sqrt(2.0 * np.pi * b_n) * sigma)
            * special.hyp2f1(0.5, d, 1.5, -(threshold**2) / (2.0 * b_n * sigma**2))
        )
        return float(prob) if np.ndim(prob) == 0 else prob

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "ema_decay": self.ema_decay,
                "n": self.n, "sum_z": self.sum_z}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GammaCalibration:
        return cls(**data)


def check_ema_decay(decay: Any) -> float | None:
    """None (the exact calibration) or a decay in (0, 1) of the exponentially weighted one."""
    if decay is None:
        return None
    try:
        value = float(decay)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(decay, bool) or not 0.0 < value < 1.0:
        raise ValueError(f"calibration_ema (ema_decay) must be None (the exact calibration) "
                         f"or a number in (0, 1), e.g. 0.9; got {decay!r}")
    return value


#: Gauss-Legendre nodes over the quantiles of the calibration's Gamma law (force criterion)
_QUADRATURE_NODES = 64


class WorstAtomForceCalibration(GammaCalibration):
    """The force criterion's calibration (paper sec. 6): its own Gamma on the precision of
    the predicted per-atom force std, fed by the atom the ensemble is least sure of.

    The error model per atom i is ``dF_i ~ N(0, s_i^2 I_3 / lambda)``, with ``s_i`` the
    predicted per-component force std (the root mean of its three variances). Each reference
    call adds the three components of the atom with the largest ``s_i`` (the atom a local
    event makes uncertain) as three observations, so the posterior is Gamma(a + 3n/2, ...),
    exactly as the energy calibration with three errors per call. The criterion is
    ``P(max_i |dF_i| < K_F)``: given lambda the atoms' squared errors are independent
    scaled chi^2_3 variables, and lambda is integrated over its Gamma law by quadrature.
    """

    def update_worst_atom(self, force_errors: Any, force_stds: Any) -> tuple[float, float]:
        """Add a call's force errors ([N, 3], eV/A, predicted minus reference) with the
        per-atom stds ([N], eV/A) predicted before the label; returns (max_i |dF_i|, the
        std of the atom used)."""
        errors = np.asarray(force_errors, dtype=float).reshape(-1, 3)
        stds = np.asarray(force_stds, dtype=float).reshape(-1)
        if len(stds) != len(errors):
            raise ValueError(f"force_stds has {len(stds)} atoms, force_errors {len(errors)}")
        worst = int(np.argmax(stds))
        self.update(errors[worst], np.full(3, stds[worst]))
        return float(np.linalg.norm(errors, axis=1).max()), float(stds[worst])

    def prob_within_max(self, force_stds: Any, threshold: float) -> float:
        """P(max_i |dF_i| < K_F) for per-atom stds ``force_stds`` (eV/A), K_F in eV/A."""
        threshold = check_force_threshold(threshold)
        stds = np.asarray(force_stds, dtype=float).reshape(-1)
        if np.any(stds <= 0) or not np.all(np.isfinite(stds)):
            raise ValueError(f"force stds must be finite and > 0, got {stds!r}")
        nodes, weights = np.polynomial.legendre.leggauss(_QUADRATURE_NODES)
        quantiles = 0.5 * (nodes + 1.0)
        precision = stats.gamma.ppf(quantiles, self.shape, scale=1.0 / self.rate)
        log_cdf = stats.chi2.logcdf(precision[:, None] * threshold**2 / stds[None, :] ** 2, 3)
        return float(np.clip(0.5 * weights @ np.exp(log_cdf.sum(axis=1)), 0.0, 1.0))


def per_atom_force_std(forces_var: Any) -> np.ndarray:
    """Per-atom force std (eV/A) from the [N, 3] predicted variances: the root of their
    mean, the isotropic std the force calibration's error model uses."""
    return np.sqrt(np.asarray(forces_var, dtype=float).reshape(-1, 3).mean(axis=1))
