"""The checkpoint format of a posterior: one self-contained blob, a complete restart point.

torch's format, loadable with ``weights_only=True`` (plain tensors and types only), every
tensor on the CPU (and read with ``map_location="cpu"``), so a checkpoint written on a GPU
loads on a CPU and the other way round: the
chains (float32), the noise head's start, a carried SGHMC mass, the labelled data set as
flat tensors, the energy offset, the calibration and every chain's random state. Older
formats stay readable (READABLE_FORMATS).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from atomate2_otf.bnn import sghmc
from atomate2_otf.bnn.calibration import GammaCalibration, WorstAtomForceCalibration
from atomate2_otf.records import StructureRecord

if TYPE_CHECKING:
    from atomate2_otf.bnn.posterior import Posterior
    from atomate2_otf.models.base import FoundationModel

CHECKPOINT_FORMAT = 3
#: formats from_bytes still reads (1: the data set as a list of plain dicts; 1 and 2: a
#: carried mass (keep_mass) as the max of the bias-corrected moment, and no mass age)
READABLE_FORMATS = (1, 2, 3)


def pack_records(records: Sequence[StructureRecord]) -> dict[str, torch.Tensor]:
    """The labelled data set as a few flat tensors (float64, exact).

    torch's weights-only unpickler is pure Python: a data set stored as nested lists cost
    tens of ms per load at a few dozen structures and grew with every label, and each MD
    segment loads the checkpoint once.
    """
    def stress(r: StructureRecord) -> np.ndarray:
        return np.full((3, 3), np.nan) if r.stress is None else r.stress

    if not records:
        return {"n_atoms": torch.zeros(0, dtype=torch.long, device="cpu")}
    return {
        "n_atoms": torch.tensor([r.n_atoms for r in records], dtype=torch.long, device="cpu"),
        "numbers": torch.from_numpy(np.concatenate([r.numbers for r in records])),
        "positions": torch.from_numpy(np.concatenate([r.positions for r in records])),
        "cell": torch.from_numpy(np.stack([r.cell for r in records])),
        "pbc": torch.from_numpy(np.stack([r.pbc for r in records])),
        "energy": torch.tensor([np.nan if r.energy is None else r.energy for r in records],
                               dtype=torch.float64, device="cpu"),
        "forces": torch.from_numpy(np.concatenate([
            np.full((r.n_atoms, 3), np.nan) if r.forces is None else r.forces
            for r in records])),
        "has_stress": torch.tensor([r.stress is not None for r in records], device="cpu"),
        "stress": torch.from_numpy(np.stack([stress(r) for r in records])),
    }


def unpack_records(packed: dict[str, torch.Tensor]) -> list[StructureRecord]:
    """Inverse of :func:`pack_records`."""
    n_atoms = packed["n_atoms"].tolist()
    if not n_atoms:
        return []
    bounds = np.cumsum([0, *n_atoms])
    arrays = {k: v.numpy() for k, v in packed.items()}
    records = []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        energy = float(arrays["energy"][i])
        forces = arrays["forces"][lo:hi]
        records.append(StructureRecord(
            numbers=arrays["numbers"][lo:hi], positions=arrays["positions"][lo:hi],
            cell=arrays["cell"][i], pbc=arrays["pbc"][i],
            energy=None if np.isnan(energy) else energy,
            forces=None if np.isnan(forces).all() else forces,
            stress=arrays["stress"][i] if arrays["has_stress"][i] else None))
    return records


def head_size(posterior: Posterior) -> int:
    """Parameters of the noise head (the tail of every chain's vector)."""
    return sum(p.numel() for p in posterior.head.parameters())


def legacy_mass_age(posterior: Posterior) -> int:
    """The age to give a mass carried in a format 1-2 checkpoint, whose ``v_hat`` is the
    max of the bias-corrected moment over the last update and whose age was not kept:
    that update's length, so that ``v_hat * (1 - beta^age)`` approximates the raw max
    (an approximation: the step at which the old max was reached is not stored;
    keep_mass was never the default)."""
    return int(posterior.config.sghmc.n_steps)


def posterior_to_bytes(posterior: Posterior) -> bytes:
    """A self-contained checkpoint of ``posterior``."""
    keep_mass = posterior.config.sghmc.keep_mass

    def host(tensor: torch.Tensor) -> torch.Tensor:
        # a CPU copy of just these values (a view would save its whole storage)
        return tensor.detach().to("cpu", copy=True)

    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": posterior.model.spec(),
        "fingerprint": posterior.fingerprint,
        "config": posterior.config.to_dict(),
        "theta": host(posterior.state.theta).to(torch.float32),
        "theta0_head": host(posterior.theta0[-head_size(posterior):]),
        "v": host(posterior.state.v) if keep_mass else None,
        "v_hat": host(posterior.state.v_hat) if keep_mass else None,
        "mass_age": posterior.state.t if keep_mass else 0,
        "data": pack_records(posterior.data),
        "energy_offset": posterior.energy_offset,  # the one offset older readers take
        "energy_offsets": dict(posterior.energy_offsets),
        "calibration": posterior.calibration.to_dict(),
        "force_calibration": posterior.force_calibration.to_dict(),
        "n_updates": posterior.n_updates,
        "rngs": [rng.get_state() for rng in posterior.rngs],
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def posterior_from_bytes(posterior_cls: type[Posterior], blob: bytes,
                         model: FoundationModel | None = None,
                         device: str | torch.device | None = None) -> Posterior:
    """Rebuild a posterior from :func:`posterior_to_bytes` on ``device`` (None: the given
    model's, or the CPU); the model is reloaded by the name stored in the checkpoint if not
    given. Tensors are read onto the CPU whatever device wrote them, then moved."""
    from atomate2_otf.bnn.posterior import PosteriorConfig

    payload = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    if payload.get("format") not in READABLE_FORMATS:
        raise ValueError(f"unsupported checkpoint format {payload.get('format')!r}; "
                         f"this version reads formats {READABLE_FORMATS}")
    if model is None:
        from atomate2_otf.models.base import load_model

        spec = dict(payload["model"])
        model = load_model(spec.pop("name"), device=device or "cpu", **spec)
    posterior = posterior_cls(model, PosteriorConfig(**payload["config"]), device=device)
    if posterior.fingerprint != payload["fingerprint"]:
        raise ValueError(
            f"checkpoint was made with different pretrained weights of "
            f"{payload['model']!r} (fingerprint {payload['fingerprint']}, the loaded "
            f"model has {posterior.fingerprint})"
        )
    posterior.theta0[-head_size(posterior):] = payload["theta0_head"]
    theta = payload["theta"].to(device=posterior.device, dtype=posterior.theta0.dtype)
    posterior.state = sghmc.init(theta)
    if payload["v"] is not None:
        posterior.state.v.copy_(payload["v"])
        posterior.state.v_hat.copy_(payload["v_hat"])
        posterior.state.t = int(payload.get("mass_age", 0))
        if payload["format"] < 3:  # see READABLE_FORMATS: convert to the raw-moment max
            posterior.state.t = legacy_mass_age(posterior)
            posterior.state.v_hat.mul_(1.0 - posterior.config.sghmc.beta ** posterior.state.t)
    records = (unpack_records(payload["data"]) if payload["format"] >= 2
               else [StructureRecord.from_dict(d) for d in payload["data"]])
    posterior.data = records
    posterior._prepared = [model.prepare(r) for r in records]
    if "energy_offsets" in payload:
        posterior.energy_offsets = dict(payload["energy_offsets"])
    elif payload["energy_offset"] is not None:  # one offset: that of the first label's
        posterior.energy_offsets = {records[0].composition: payload["energy_offset"]}
    posterior.calibration = GammaCalibration.from_dict(payload["calibration"])
    if "force_calibration" in payload:  # checkpoints before the force criterion: a fresh one
        posterior.force_calibration = WorstAtomForceCalibration.from_dict(
            payload["force_calibration"])
    posterior.n_updates = int(payload["n_updates"])
    for rng, state in zip(posterior.rngs, payload["rngs"], strict=True):
        rng.set_state(state)
    return posterior
