"""When to ask the reference, and what a segment hands over when it does.

The rule (METHOD.md sec. 6): label the structure when the calibrated probability that the
energy error is within K, P(|e| < K), drops below the confidence level. The event is the
one form in which a trigger travels from the MD segment to the posterior update: the
structure to label and the model's prediction for it, made before the label existed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from atomate2_otf.bnn.calibration import check_confidence
from atomate2_otf.records import StructureRecord


class CalibratedTrigger:
    """P(|e| < K) < confidence; or, for tests and diagnostics, every ``every``-th
    model-evaluated step of a segment. Keeps the results it last judged (the trigger's).

    With the force criterion on, the calculator's results carry ``prob_within_forces`` =
    P(max_i |F_i error| < K_F) and the trigger also fires when that drops below the
    confidence; without it the rule is the energy criterion alone, unchanged.
    """

    def __init__(self, confidence: float, every: int | None = None) -> None:
        self.confidence = check_confidence(confidence)
        self.every = every
        self.seen = 0
        self.last: dict[str, Any] = {}

    def __call__(self, results: dict[str, Any]) -> bool:
        self.last = dict(results)
        self.seen += 1
        if self.every:
            return self.seen % self.every == 0
        if float(results["prob_within"]) < self.confidence:
            return True
        forces = results.get("prob_within_forces")
        return forces is not None and float(forces) < self.confidence


#: separates the audit's random stream from the run's other streams of the same seed
AUDIT_STREAM = 0xA0D17


def check_audit_fraction(fraction: Any) -> float:
    """0 (no audit, the default) or a share in (0, 1) of the untriggered MD steps."""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(fraction, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"audit_fraction (--audit) must be a number in [0, 1): the share of "
                         f"untriggered MD steps to label, e.g. 0.02; got {fraction!r}")
    return value


@dataclass(frozen=True)
class AuditDraw:
    """Which untriggered MD steps an online audit labels (issue 16.4).

    The draw for step ``s`` comes from the run's seed and ``s`` alone (its own stream,
    ``default_rng([seed, AUDIT_STREAM, s])``), not from the integrator's random state: a
    run with the audit off is bit-identical to one without the feature, and a killed and
    resumed run audits exactly the steps the uninterrupted run would have.
    """

    fraction: float
    seed: int

    def __call__(self, step: int) -> bool:
        if self.fraction <= 0.0:
            return False
        draw = np.random.default_rng([int(self.seed), AUDIT_STREAM, int(step)]).random()
        return bool(draw < self.fraction)


@dataclass
class TriggerEvent:
    """A structure the trigger sent to the reference, with the ensemble's prediction for it.

    md_step: the MD step the structure belongs to. structure: the atoms, unlabelled.
    energy, energy_std, prob_within: the model's mean energy (eV), its calibrated std and
    P(|e| < K) there. md_s: wall seconds of the segment; ended_at: epoch seconds when it
    stopped (a reference Maker that reports no time is timed from here). With the force
    criterion: the predicted forces and their [N, 3] stds, and P(max_i |F_i error| < K_F).
    """

    md_step: int
    structure: StructureRecord
    energy: float
    energy_std: float
    prob_within: float
    md_s: float
    ended_at: float
    forces: np.ndarray | None = None
    forces_std: np.ndarray | None = None
    prob_within_forces: float | None = None

    @classmethod
    def from_trigger(cls, trigger: CalibratedTrigger, structure: StructureRecord,
                     md_step: int, md_s: float) -> TriggerEvent:
        """The event of the step ``trigger`` fired on, ending now."""
        last = trigger.last
        forces = {}
        if last.get("prob_within_forces") is not None:
            forces = {"forces": np.array(last["forces"], dtype=float),
                      "forces_std": np.array(last["forces_std"], dtype=float),
                      "prob_within_forces": float(last["prob_within_forces"])}
        return cls(md_step=int(md_step), structure=structure, energy=float(last["energy"]),
                   energy_std=float(last["energy_std"]),
                   prob_within=float(last["prob_within"]), md_s=float(md_s),
                   ended_at=time.time(), **forces)

    def to_dict(self) -> dict[str, Any]:
        data = {"md_step": self.md_step, "structure": self.structure.to_dict(),
                "energy": self.energy, "energy_std": self.energy_std,
                "prob_within": self.prob_within, "md_s": self.md_s, "ended_at": self.ended_at}
        if self.prob_within_forces is not None:  # the force criterion's, only when it is on
            data.update(forces=np.asarray(self.forces).tolist(),
                        forces_std=np.asarray(self.forces_std).tolist(),
                        prob_within_forces=self.prob_within_forces)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TriggerEvent:
        arrays = {k: np.array(data[k], dtype=float) for k in ("forces", "forces_std")
                  if data.get(k) is not None}
        return cls(**{**data, **arrays,
                      "structure": StructureRecord.from_dict(data["structure"])})
