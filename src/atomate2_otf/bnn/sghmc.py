"""SGHMC with an AMSGrad-adapted mass (METHOD.md sec. 3), in the init/step style of BlackJAX.

All M chains live in stacked ``[M, P]`` tensors and every operation is element-wise, so the
sampler itself is vectorised over chains for free; only the gradient (the model) costs.

With ``g = grad U(theta) / N`` (U = -log prior - N * mean log-likelihood), friction alpha,
step size gamma_t and the AMSGrad inverse mass of PyTorch and the reference code,
``m^-1 = 1 / (sqrt(v_max / (1 - beta^t)) + eps)``, where ``v_max`` is the running max of the
*raw* second moment ``v_t = beta v_{t-1} + (1 - beta) g^2`` (the bias correction divides the
max afterwards, so the large gradients at the start of an update fade from the step scale)::

    p     <- (1 - alpha) p - alpha g + alpha * xi,   xi ~ N(0, 2 T / (gamma_t m^-1 N))
    theta <- theta + gamma_t m^-1 p

which is a discretisation of Hamiltonian dynamics with friction whose stationary law is
exp(-U / T); T = 1 samples the posterior, T = 0 (burn-in) is heavy-ball descent to the MAP.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch


@dataclass
class SGHMCConfig:
    """Settings of one posterior update (defaults: the paper's on-the-fly runs).

    n_steps: SGHMC steps per update (paper: 2000). step_size: gamma_0; None takes the model
    family's default. friction: alpha. beta, eps: AMSGrad second-moment decay and floor.
    burn_in: noise-free steps at the start of every update; ramp: steps over which the
    noise standard deviation then rises linearly to its T = 1 value (the reference's
    preheat). batch_size: structures per minibatch.
    schedule: "cosine" (gamma_t = gamma_0/2 (1 + cos(pi t / n_steps)) + 1e-8) or "constant".
    keep_mass: carry the AMSGrad moments (and their age, for the bias correction) across
    updates (default: fresh, as the reference).
    """

    n_steps: int = 2000
    step_size: float | None = None
    friction: float = 0.1
    beta: float = 0.999
    eps: float = 1e-4
    burn_in: int = 400
    ramp: int = 100
    batch_size: int = 5
    schedule: str = "cosine"
    keep_mass: bool = False

    def __post_init__(self) -> None:
        if int(self.n_steps) < 1:
            raise ValueError(f"n_steps must be >= 1, got {self.n_steps!r}")
        if self.step_size is not None and not float(self.step_size) > 0:
            raise ValueError(f"step_size must be > 0 (or None for the family default), "
                             f"got {self.step_size!r}")
        if not 0.0 < float(self.friction) <= 1.0:
            raise ValueError(f"friction must lie in (0, 1], got {self.friction!r}")
        if not 0.0 < float(self.beta) < 1.0:
            raise ValueError(f"beta must lie in (0, 1), got {self.beta!r}")
        if not float(self.eps) > 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")
        if int(self.burn_in) < 0 or int(self.ramp) < 0:
            raise ValueError(f"burn_in and ramp must be >= 0, got {self.burn_in!r}, "
                             f"{self.ramp!r}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class SGHMCState:
    """Everything a chain needs to continue: positions, momenta, AMSGrad moments (``v``: the
    raw second moment, ``v_hat``: its running max) and ``t``, the moments' age in steps."""

    theta: torch.Tensor
    momentum: torch.Tensor
    v: torch.Tensor
    v_hat: torch.Tensor
    t: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"theta": self.theta, "momentum": self.momentum, "v": self.v,
                "v_hat": self.v_hat, "t": self.t}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SGHMCState:
        return cls(data["theta"], data["momentum"], data["v"], data["v_hat"], int(data["t"]))


def init(theta: torch.Tensor) -> SGHMCState:
    """A state at rest at ``theta`` ([M, P]) with an empty mass estimate."""
    zeros = torch.zeros_like(theta)
    return SGHMCState(theta.clone(), zeros.clone(), zeros.clone(), zeros.clone(), 0)


def reset_for_update(state: SGHMCState, keep_mass: bool) -> SGHMCState:
    """Start of an update: momentum to zero; the mass fresh (moments and their age zeroed)
    unless kept, in which case its age goes on counting (a carried moment is not biased
    towards zero, so its bias correction must not start again)."""
    state.momentum.zero_()
    if not keep_mass:
        state.t = 0
        state.v.zero_()
        state.v_hat.zero_()
    return state


def cosine_step_size(t: int, n_steps: int, step_size: float) -> float:
    """gamma_t = gamma_0 / 2 * (1 + cos(pi t / T)) + 1e-8 (never exactly zero)."""
    return step_size / 2.0 * (1.0 + math.cos(math.pi * t / n_steps)) + 1e-8


def temperature(t: int, burn_in: int, ramp: int) -> float:
    """0 during burn-in, 1 after the ramp; during the ramp the reference code (MCMC.py)
    scales the noise *standard deviation* linearly, r = (t - burn_in + 1) / ramp, so the
    effective temperature rises as r**2."""
    if t < burn_in:
        return 0.0
    if ramp <= 0:
        return 1.0
    return min(1.0, (t - burn_in + 1) / ramp) ** 2


def inverse_mass(state: SGHMCState, beta: float, eps: float) -> torch.Tensor:
    """m^-1 = 1 / (sqrt(v_max / (1 - beta^t)) + eps): the denominator of PyTorch's
    ``Adam(amsgrad=True)`` (eps outside the square root), for a state that has taken
    ``t >= 1`` steps."""
    corrected = state.v_hat / (1.0 - beta**state.t)
    return 1.0 / (corrected.sqrt() + eps)


def step(
    state: SGHMCState,
    grad: torch.Tensor,
    *,
    step_size: float,
    temp: float,
    n_data: int,
    friction: float,
    beta: float,
    eps: float,
    generator: torch.Generator | None = None,
    mass_scale: torch.Tensor | None = None,
) -> SGHMCState:
    """One SGHMC step on all chains, in place; ``grad`` is grad U / N, shape [M, P].

    ``mass_scale`` ([P], optional) multiplies the inverse mass per parameter: a constant
    preconditioner, so the stationary law is unchanged while some parameters (the new
    noise head) move faster than others.
    """
    state.t += 1
    state.v.mul_(beta).addcmul_(grad, grad, value=1.0 - beta)
    torch.maximum(state.v_hat, state.v, out=state.v_hat)  # the max of the raw moment
    inv_mass = inverse_mass(state, beta, eps)
    if mass_scale is not None:
        inv_mass = inv_mass * mass_scale
    state.momentum.mul_(1.0 - friction).add_(grad, alpha=-friction)
    if temp > 0:
        # drawn on the generator's device (a chain's generator lives with the chain)
        noise = torch.randn(state.theta.shape, generator=generator, dtype=state.theta.dtype,
                            device=state.theta.device if generator is None
                            else generator.device).to(state.theta.device)
        noise_std = friction * torch.sqrt(2.0 * temp / (step_size * inv_mass * n_data))
        state.momentum.addcmul_(noise, noise_std)
    state.theta.addcmul_(inv_mass, state.momentum, value=step_size)
    return state


GradFn = Callable[[torch.Tensor, int], torch.Tensor]


def run(
    state: SGHMCState,
    grad_fn: GradFn,
    config: SGHMCConfig,
    *,
    step_size: float,
    n_data: int,
    generator: torch.Generator | None = None,
    callback: Callable[[int, SGHMCState], None] | None = None,
    mass_scale: torch.Tensor | None = None,
) -> SGHMCState:
    """One posterior update: ``config.n_steps`` steps with schedule, burn-in and ramp.

    ``grad_fn(theta, t)`` returns grad U / N for the stacked chains (it draws its own
    minibatch). The caller resets the state (:func:`reset_for_update`) before an update.
    """
    for t in range(config.n_steps):
        gamma = (cosine_step_size(t, config.n_steps, step_size)
                 if config.schedule == "cosine" else step_size)
        temp = temperature(t, config.burn_in, config.ramp)
        grad = grad_fn(state.theta, t)
        step(state, grad, step_size=gamma, temp=temp, n_data=n_data,
             friction=config.friction, beta=config.beta, eps=config.eps, generator=generator,
             mass_scale=mass_scale)
        if callback is not None:
            callback(t, state)
    return state
