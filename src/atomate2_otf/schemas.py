"""Pydantic documents of an on-the-fly run (stable field names, ARCHITECTURE.md).

Energies are in eV; ``call_errors`` are model-minus-reference energy errors of the ensemble
*before* it saw the structure (the calibration statistic of METHOD.md sec. 5), and
``untuned_errors`` those of the pretrained model with the run's energy offset. The first
reference call only sets the offset (its error is zero by construction), so the error lists
have ``n_reference_calls - 1`` entries. A run that continues a posterior
(``OTFMDMaker(start_from=...)``) scores its first call too (``calls[0].error``), outside
the triggered statistics.

Audited frames (``OTFMDMaker(audit_fraction=...)``) are reference calls on MD steps the
trigger let pass, drawn at random; they are ``calls`` of kind ``"audit"``, kept out of the
triggered statistics and summarised on their own (the audited miss rate: an estimate of how
often the unlabelled MD was outside K, the paper's 95 % claim checked during the run).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator
from pymatgen.core import Molecule, Structure

from atomate2_otf.stats import wilson_interval

#: what made a reference call: the initial structure, the trigger, or a random audit
CallKind = Literal["initial", "trigger", "audit"]


class ReferenceCall(BaseModel):
    """One reference calculation triggered during MD, seen by the model before its update."""

    index: int = Field(description="reference call number; 0 is the initial structure")
    kind: CallKind = Field("trigger", description="initial, trigger or audit (a random "
                           "MD step the trigger let pass)")
    md_step: int = Field(description="MD step of the labelled structure")
    reference_energy: float = Field(description="reference energy (eV)")
    predicted_energy: float | None = Field(None, description="ensemble mean before the update (eV)")
    error: float | None = Field(None, description="predicted - reference energy (eV)")
    sigma: float | None = Field(None, description="predicted energy std before the update (eV)")
    prob_within: float | None = Field(None, description="P(|e| < K) that fired the trigger")
    untuned_error: float | None = Field(None, description="pretrained model's error (eV)")
    predictive_scale: float | None = Field(
        None, description="scale of the calibrated Student-t predictive law of the error "
                          "before this call joined the calibration (eV)")
    predictive_dof: float | None = Field(
        None, description="its degrees of freedom (2a + n before this call)")
    force_error: float | None = Field(
        None, description="max over atoms of |F_pred - F_ref| before the update (eV/A; "
                          "force criterion runs only)")
    force_sigma: float | None = Field(
        None, description="predicted per-component force std of the atom with the largest "
                          "one (eV/A; force criterion runs only)")
    prob_within_forces: float | None = Field(
        None, description="P(max_i |F_i error| < K_F) at this structure (force criterion)")
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
    n_reference_calls: int = Field(
        0, description="reference calls of the method: the initial one and the triggered "
                       "ones (audits are counted in n_audit_calls)")
    threshold: float = Field(description="energy-error threshold K (eV)")
    confidence: float = Field(description="trigger when P(|e| < K) < confidence")
    call_errors: list[float] = Field(default_factory=list)
    call_sigmas: list[float] = Field(default_factory=list)
    untuned_errors: list[float] = Field(default_factory=list)
    share_above_threshold: float | None = Field(
        None, description="share of triggered calls with |error| > K")
    rmse_at_calls: float | None = Field(None, description="RMSE of call_errors (eV)")
    rmse_untuned_at_calls: float | None = Field(None, description="RMSE of untuned_errors (eV)")
    n_audit_calls: int = Field(0, description="audited MD steps (random, untriggered)")
    audit_miss_rate: float | None = Field(
        None, description="share of audited frames with |error| > K")
    audit_miss_rate_wilson95: tuple[float, float] | None = Field(
        None, description="95 % Wilson interval of audit_miss_rate")
    audit_rmse: float | None = Field(
        None, description="RMSE of the ensemble on the audited frames, before it saw them (eV)")
    audit_rmse_untuned: float | None = Field(
        None, description="RMSE of the untuned model on the audited frames (eV)")
    energy_offset: float | None = Field(None, description="E_model(x0) - E_ref(x0) (eV)")
    calls: list[ReferenceCall] = Field(default_factory=list)
    timings: Timings = Field(default_factory=Timings)
    final_checkpoint: str | None = None
    final_structure: Structure | Molecule | None = Field(
        None, description="the last MD structure")
    structure: Structure | Molecule | None = Field(
        None, description="the last MD structure, under the name atomate2's documents use, "
                          "so that next_maker.make(flow.output.structure) chains a Maker "
                          "after the run (the same as final_structure)")
    final_state: dict[str, Any] | None = Field(
        None, description="complete MD state at the end (atomate2_otf.md.state.MDState)")
    settings: dict[str, Any] = Field(default_factory=dict)
    start_from: str | None = Field(
        None, description="checkpoint whose posterior this run continued "
                          "(OTFMDMaker(start_from=...)); None: a fresh posterior")

    @model_validator(mode="after")
    def _structure_is_final_structure(self) -> OTFRunDoc:
        """Documents stored before ``structure`` existed get it from ``final_structure``."""
        if self.structure is None and self.final_structure is not None:
            self.structure = self.final_structure
        return self

    @classmethod
    def from_calls(cls, calls: list[ReferenceCall], **fields: Any) -> OTFRunDoc:
        """Fill the statistics from the per-call records (sorted by index)."""
        calls = sorted(calls, key=lambda c: c.index)
        # a continued run's initial call is scored too (start_from), but not triggered
        triggered = [c for c in calls if c.error is not None and c.kind == "trigger"]
        errors = [c.error for c in triggered]
        untuned = [c.untuned_error for c in triggered if c.untuned_error is not None]
        threshold = fields["threshold"]
        audits = [c for c in calls if c.kind == "audit" and c.error is not None]
        audit_errors = [c.error for c in audits]
        misses = int(np.sum(np.abs(audit_errors) > threshold)) if audits else 0
        timings = Timings(md=sum(c.md_s for c in calls),
                          reference=sum(c.reference_s or 0.0 for c in calls),
                          update=sum(c.update_s for c in calls))
        timings.md += fields.pop("final_md_s", 0.0)
        accounted = timings.md + timings.reference + timings.update
        timings.total = fields.pop("total_s", accounted)
        timings.other = max(timings.total - accounted, 0.0)
        return cls(
            calls=calls,
            n_reference_calls=len(calls) - len(audits),
            n_audit_calls=len(audits),
            audit_miss_rate=misses / len(audits) if audits else None,
            audit_miss_rate_wilson95=wilson_interval(misses, len(audits)) if audits else None,
            audit_rmse=_rmse(audit_errors),
            audit_rmse_untuned=_rmse([c.untuned_error for c in audits
                                      if c.untuned_error is not None]),
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


class ProductionMDDoc(BaseModel):
    """MD with a fine-tuned ensemble and no updates (``ProductionMDMaker``).

    Item access (``doc["energy_range"]``) is kept: this output was a plain dict before.
    """

    run_id: str
    checkpoint: str = Field(description="checkpoint of the ensemble that drove the MD")
    n_md_steps: int = Field(description="MD steps done")
    final_state: dict[str, Any] = Field(
        description="complete MD state at the end (atomate2_otf.md.state.MDState)")
    trajectory: list[dict[str, Any]] = Field(
        default_factory=list, description="stored frames, with energy_std and prob_within")
    max_energy_std: float = Field(0.0, description="largest predicted energy std (eV)")
    energy_range: float = Field(0.0, description="max - min potential energy (eV)")
    wall_s: float = Field(0.0, description="wall time (s)")
    structure: Structure | Molecule | None = Field(
        None, description="the last MD structure (for next_maker.make(output.structure))")

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None
