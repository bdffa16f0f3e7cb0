"""Pydantic documents of an on-the-fly run (stable field names, ARCHITECTURE.md).

Energies are in eV; ``call_errors`` are model-minus-reference energy errors of the ensemble
*before* it saw the structure (the calibration statistic of METHOD.md sec. 5), and
``untuned_errors`` those of the pretrained model with the run's energy offset. The first
reference call only sets the offset (its error is zero by construction), so the error lists
have ``n_reference_calls - 1`` entries.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from pymatgen.core import Molecule, Structure


class ReferenceCall(BaseModel):
    """One reference calculation triggered during MD, seen by the model before its update."""

    index: int = Field(description="reference call number; 0 is the initial structure")
    md_step: int = Field(description="MD step of the labelled structure")
    reference_energy: float = Field(description="reference energy (eV)")
    predicted_energy: float | None = Field(None, description="ensemble mean before the update (eV)")
    error: float | None = Field(None, description="predicted - reference energy (eV)")
    sigma: float | None = Field(None, description="predicted energy std before the update (eV)")
    prob_within: float | None = Field(None, description="P(|e| < K) that fired the trigger")
    untuned_error: float | None = Field(None, description="pretrained model's error (eV)")
    md_s: float = Field(0.0, description="wall time of the MD segment that ended here (s)")
    reference_s: float | None = Field(None, description="wall time of the reference (s)")
    update_s: float = Field(0.0, description="wall time of the posterior update (s)")
    checkpoint: str | None = Field(None, description="checkpoint written after the update")


class Timings(BaseModel):
    """Wall-time totals of a run (s). ``md``: inside the integrator loop (model evaluations
    included); ``reference``: the reference calculations; ``update``: calibration, data and
    SGHMC; ``other``: everything else (jobflow, store reads/writes, checkpoint
    (de)serialisation, building task documents)."""

    md: float = 0.0
    reference: float = 0.0
    update: float = 0.0
    other: float = 0.0
    total: float = 0.0

    @property
    def other_share(self) -> float:
        return self.other / self.total if self.total > 0 else 0.0


def _rmse(values: list[float]) -> float | None:
    return float(np.sqrt(np.mean(np.square(values)))) if values else None


class OTFRunDoc(BaseModel):
    """Summary of a finished (or the state of a running) on-the-fly run."""

    run_id: str
    formula: str | None = None
    model: str
    reference: str
    ensemble: str
    completed: bool = False
    n_md_steps: int = Field(0, description="MD steps done")
    n_reference_calls: int = Field(0, description="reference calls, the initial one included")
    threshold: float = Field(description="energy-error threshold K (eV)")
    confidence: float = Field(description="trigger when P(|e| < K) < confidence")
    call_errors: list[float] = Field(default_factory=list)
    call_sigmas: list[float] = Field(default_factory=list)
    untuned_errors: list[float] = Field(default_factory=list)
    share_above_threshold: float | None = Field(
        None, description="share of triggered calls with |error| > K")
    rmse_at_calls: float | None = Field(None, description="RMSE of call_errors (eV)")
    rmse_untuned_at_calls: float | None = Field(None, description="RMSE of untuned_errors (eV)")
    energy_offset: float | None = Field(None, description="E_model(x0) - E_ref(x0) (eV)")
    calls: list[ReferenceCall] = Field(default_factory=list)
    timings: Timings = Field(default_factory=Timings)
    final_checkpoint: str | None = None
    final_structure: Structure | Molecule | None = Field(
        None, description="the last MD structure")
    final_state: dict[str, Any] | None = Field(
        None, description="complete MD state at the end (atomate2_otf.md.state.MDState)")
    settings: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_calls(cls, calls: list[ReferenceCall], **fields: Any) -> OTFRunDoc:
        """Fill the statistics from the per-call records (sorted by index)."""
        calls = sorted(calls, key=lambda c: c.index)
        triggered = [c for c in calls if c.error is not None]
        errors = [c.error for c in triggered]
        untuned = [c.untuned_error for c in triggered if c.untuned_error is not None]
        threshold = fields["threshold"]
        timings = Timings(md=sum(c.md_s for c in calls),
                          reference=sum(c.reference_s or 0.0 for c in calls),
                          update=sum(c.update_s for c in calls))
        timings.md += fields.pop("final_md_s", 0.0)
        accounted = timings.md + timings.reference + timings.update
        timings.total = fields.pop("total_s", accounted)
        timings.other = max(timings.total - accounted, 0.0)
        return cls(
            calls=calls,
            n_reference_calls=len(calls),
            call_errors=errors,
            call_sigmas=[c.sigma for c in triggered],
            untuned_errors=untuned,
            share_above_threshold=(float(np.mean(np.abs(errors) > threshold))
                                   if errors else None),
            rmse_at_calls=_rmse(errors),
            rmse_untuned_at_calls=_rmse(untuned),
            timings=timings,
            **fields,
        )
