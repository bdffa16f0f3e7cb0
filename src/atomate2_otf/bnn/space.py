"""The sampled parameter vector and each chain's random streams.

SGHMC works on one flat vector per chain; the model runs on its own modules. The
parameter space maps between the two, and a chain's RNG keeps its minibatch draws and
noise reproducible across processes and checkpoints.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


class ParameterSpace:
    """A flat view of the model's and the head's parameters, in a fixed order.

    Loading a chain is one copy of its vector into the live modules, after which the
    model runs exactly as usual (the always-correct path for any architecture).
    """

    def __init__(self, groups: Sequence[torch.nn.Module | Sequence[torch.nn.Parameter]]) -> None:
        self.parameters = [p for group in groups for p in (
            group.parameters() if isinstance(group, torch.nn.Module) else group)]
        self.size = sum(p.numel() for p in self.parameters)

    def vector(self) -> torch.Tensor:
        return torch.nn.utils.parameters_to_vector(self.parameters).detach().clone()

    def load(self, vector: torch.Tensor) -> None:
        """Copy ``vector`` into the parameters (a copy: torch's vector_to_parameters would
        make them views of the chain state, so that any in-place use of the module would
        silently rewrite a chain or theta_0)."""
        with torch.no_grad():
            offset = 0
            for p in self.parameters:
                p.copy_(vector[offset:offset + p.numel()].view_as(p))
                offset += p.numel()

    def add_flat(self, out: torch.Tensor,
                 tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """``out += flatten(tensors)`` in place (None counts as zeros); returns ``out``."""
        offset = 0
        for p, g in zip(self.parameters, tensors, strict=True):
            n = p.numel()
            if g is not None:
                out[offset:offset + n].add_(g.reshape(-1))
            offset += n
        return out

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """No parameter gradients inside (inference): saves the backward's weight terms."""
        flags = [p.requires_grad for p in self.parameters]
        for p in self.parameters:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in zip(self.parameters, flags, strict=True):
                p.requires_grad_(flag)


@dataclass
class ChainRNG:
    """One chain's random streams: numpy for minibatch draws, torch for SGHMC noise.

    The torch stream lives on the chain's device, so the noise of a step (one number per
    parameter) is drawn where the chain is, not on the CPU and copied. A CPU generator
    (Mersenne Twister) and a CUDA one (Philox) have states of different kinds: a state of
    the other kind (a checkpoint written on a GPU, loaded on a CPU, or the other way round)
    seeds this generator from a hash of that state, so the chain goes on with a stream
    that is reproducible for that checkpoint, though not the one the other device drew.
    """

    numpy: np.random.Generator
    torch: torch.Generator

    @classmethod
    def from_seed(cls, seed_sequence: np.random.SeedSequence,
                  device: str | torch.device = "cpu") -> ChainRNG:
        torch_seed = int(seed_sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
        return cls(np.random.default_rng(seed_sequence),
                   torch.Generator(device=device).manual_seed(torch_seed))

    def get_state(self) -> dict[str, Any]:
        return {"numpy": self.numpy.bit_generator.state, "torch": self.torch.get_state(),
                "torch_device": self.torch.device.type}

    def set_state(self, state: dict[str, Any]) -> None:
        self.numpy.bit_generator.state = state["numpy"]
        kind = state.get("torch_device", "cpu")  # checkpoints before issue 18: CPU streams
        if kind == self.torch.device.type:
            self.torch.set_state(state["torch"])
            return
        digest = hashlib.sha256(state["torch"].cpu().numpy().tobytes()).digest()
        self.torch.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        logger.info("a %s random state continues on %s: generator seeded from its hash",
                    kind, self.torch.device.type)
