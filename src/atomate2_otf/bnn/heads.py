"""Noise heads: per-atom force std from the model's invariant node features (METHOD.md sec. 1).

``sigma_i = scale * exp(MLP(v_i))`` turns point predictions into a likelihood whose width
the data can learn. The last layer starts at zero, so every atom starts at ``scale`` and the
head moves only as far as the labels ask; the earlier layers keep their random init so that
gradients reach them from the first step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: the reference code's initial force std, 0.1 kcal/mol/A, in eV/A
DEFAULT_FORCE_SIGMA_SCALE = 0.1 * 0.0433641043


class ForceNoiseHead(nn.Module):
    """MLP features -> log force std, SiLU between layers, zero-initialised last layer."""

    def __init__(
        self,
        feature_dim: int,
        hidden: Sequence[int] = (64, 16),
        scale: float = DEFAULT_FORCE_SIGMA_SCALE,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
        if not scale > 0:
            raise ValueError(f"force sigma scale must be > 0 (eV/A), got {scale!r}")
        self.scale = float(scale)
        widths = [int(feature_dim), *[int(h) for h in hidden], 1]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            # built on the CPU with a CPU generator whatever the run's device (the posterior
            # moves it): the same initial head on every device
            linear = nn.Linear(n_in, n_out, device="cpu")
            bound = 1.0 / n_in**0.5
            with torch.no_grad():
                linear.weight.uniform_(-bound, bound, generator=generator)
                linear.bias.zero_()
            layers.append(linear)
            if i < len(widths) - 2:
                layers.append(nn.SiLU())
        with torch.no_grad():
            layers[-1].weight.zero_()
            layers[-1].bias.zero_()
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Per-atom force std [N] (eV/A) from features [N, F]."""
        return self.scale * torch.exp(self.mlp(features).squeeze(-1))
