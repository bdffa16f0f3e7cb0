"""The transfer-learning prior N(theta_0, sigma_TL^2 I) (METHOD.md sec. 2).

Centred on the pretrained weights, so the posterior stays near what the foundation model
learned unless the new labels argue otherwise; newly added parameters (noise heads) are
centred on their zero initialisation with the same std.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def check_sigma_tl(sigma_tl: float) -> float:
    sigma_tl = float(sigma_tl)
    if not math.isfinite(sigma_tl) or sigma_tl <= 0:
        raise ValueError(f"sigma_TL (prior std) must be a finite number > 0, got {sigma_tl!r}")
    return sigma_tl


@dataclass
class TransferPrior:
    """Isotropic Gaussian around ``center`` (flat parameter vector [P])."""

    center: torch.Tensor
    sigma: float

    def __post_init__(self) -> None:
        self.sigma = check_sigma_tl(self.sigma)

    def grad_neg_log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        """Gradient of -log p(theta) in closed form (no autograd needed)."""
        return (theta - self.center) / self.sigma**2
