"""A random ScaleShiftMACE of MACE-MP-0's architecture (needs the ``mace`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from atomate2_otf.models.mace import MACE_MP_NUMBERS, MACEModel, default_dtype

#: MACE-MP-0 hyperparameters (2023-12-03-mace-128-L1_epoch-199.model, "medium"): the
#: architecture :func:`build_scale_shift_mace` builds unless told otherwise.
MACE_MP_MEDIUM = {
    "r_max": 6.0,
    "num_bessel": 10,
    "num_polynomial_cutoff": 5,
    "max_ell": 3,
    "num_interactions": 2,
    "hidden_irreps": "128x0e+128x1o",
    "MLP_irreps": "16x0e",
    "correlation": 3,
    "radial_MLP": (64, 64, 64),
    "avg_num_neighbors": 61.96,
    "atomic_inter_scale": 0.8,
    "atomic_inter_shift": 0.1,
}


def build_scale_shift_mace(atomic_numbers: Sequence[int] = MACE_MP_NUMBERS,
                           seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A random-initialised ``ScaleShiftMACE`` of MACE-MP-0's architecture (real
    interaction blocks, symmetric contractions, non-linear readout), float64 like a
    MACE-MP checkpoint. ``overrides`` change any of :data:`MACE_MP_MEDIUM` (tests build a
    small one). E0s are fixed, arbitrary numbers: the fine-tuning's energy offset absorbs
    them.
    """
    from e3nn import o3
    from mace import modules

    hyper = {**MACE_MP_MEDIUM, **overrides}
    numbers = [int(z) for z in atomic_numbers]
    with default_dtype(torch.float64), torch.random.fork_rng():
        torch.manual_seed(seed)
        module = modules.ScaleShiftMACE(
            r_max=float(hyper["r_max"]),
            num_bessel=int(hyper["num_bessel"]),
            num_polynomial_cutoff=int(hyper["num_polynomial_cutoff"]),
            max_ell=int(hyper["max_ell"]),
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes[
                "RealAgnosticResidualInteractionBlock"],
            num_interactions=int(hyper["num_interactions"]),
            num_elements=len(numbers),
            hidden_irreps=o3.Irreps(hyper["hidden_irreps"]),
            MLP_irreps=o3.Irreps(hyper["MLP_irreps"]),
            atomic_energies=np.linspace(-3.0, -1.0, len(numbers)),
            avg_num_neighbors=float(hyper["avg_num_neighbors"]),
            atomic_numbers=numbers,
            correlation=int(hyper["correlation"]),
            gate=torch.nn.functional.silu,
            radial_MLP=list(hyper["radial_MLP"]),
            atomic_inter_scale=float(hyper["atomic_inter_scale"]),
            atomic_inter_shift=float(hyper["atomic_inter_shift"]),
        )
    return module


def random_mace_mp_medium(seed: int = 0, dtype: str = "float32") -> MACEModel:
    """A random-initialised MACE-MP-0-medium-shaped model (about 4.7 M parameters, 89
    elements), for cost benchmarks where the real weights cannot be downloaded."""
    model = MACEModel(build_scale_shift_mace(seed=seed), name="mace-mp-medium-random",
                      dtype=dtype)
    if seed != 0:
        model.factory_kwargs["seed"] = seed
    return model
