"""The fine-tuned ensemble inside atomate2's own force-field Makers.

atomate2's ``ForceFieldMDMaker``, ``ForceFieldRelaxMaker`` and ``ForceFieldStaticMaker``
take any ASE calculator as ``force_field_name={"@module": ..., "@callable": ...}``:
``ForceFieldMixin.__post_init__`` turns the dict into the import string
``"module.callable"`` and ``atomate2.forcefields.utils.ase_calculator`` builds the calculator
as ``callable(**calculator_kwargs)``. :data:`FORCE_FIELD_NAME` names
:func:`fine_tuned_calculator`, so::

    ForceFieldMDMaker(force_field_name=FORCE_FIELD_NAME,
                      calculator_kwargs={"store": "runs/", "checkpoint": doc.final_checkpoint})

runs atomate2's MD with a run's fine-tuned posterior.

Where the uncertainty goes: atomate2's task document records per frame only the standard
properties (its ``TrajectoryObserver``: energy, forces, stress, magmoms, velocities,
temperature), and neither ``calculator_kwargs`` nor ``calculator_meta`` (it keeps
``forcefield_name``, here ``"fine_tuned_calculator"``, and ``forcefield_version``, here
this package's version). Its final ``structure`` carries the atoms' ``info`` as
``structure.properties`` (pymatgen's ``AseAtomsAdaptor``), so the calculator writes there,
on the atoms it computes: ``otf_posterior`` (model, run id, checkpoint, threshold K,
confidence) and ``otf_uncertainty`` (the last evaluation's ``energy_std``,
``prob_within``, ... and the run so far: evaluations, largest and mean ``energy_std``,
smallest ``prob_within``, how many evaluations an on-the-fly run would have labelled).
MD and relaxations document these; a static (``steps <= 1``) does not, since atomate2
documents the first trajectory frame there instead of the atoms (the energy is the
ensemble's all the same). atomate2's jobs also need a ``data`` additional store in their
JobStore (large objects), which the embedded OTF store has not: the posterior is read from
``store``, the task documents go wherever the atomate2 flow runs.
"""

from __future__ import annotations

import logging
import re
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
from ase.calculators.calculator import all_changes

from atomate2_otf import defaults
from atomate2_otf.bnn.calibration import check_confidence
from atomate2_otf.md.calculator import PosteriorCalculator

if TYPE_CHECKING:
    from ase import Atoms

    from atomate2_otf.bnn.posterior import Posterior

logger = logging.getLogger(__name__)

#: atomate2's ``force_field_name`` for the fine-tuned ensemble
FORCE_FIELD_NAME = {"@module": __name__, "@callable": "fine_tuned_calculator"}
#: keys of ``atoms.info`` (``structure.properties`` in atomate2's task document)
PROVENANCE_KEY = "otf_posterior"
UNCERTAINTY_KEY = "otf_uncertainty"


def fine_tuned_calculator(store: str, checkpoint: str, threshold: float = defaults.THRESHOLD,
                          confidence: float = defaults.CONFIDENCE, model: str | None = None,
                          model_kwargs: dict[str, Any] | None = None,
                          device: str = defaults.DEVICE) -> FineTunedCalculator:
    """The fine-tuned posterior of ``checkpoint`` as an ASE calculator for atomate2's Makers.

    Args:
        store: where the run lives, as the CLI's ``--store`` takes it
            (:func:`atomate2_otf.store.open_job_store`: a folder, a jobflow store file or a
            ``mongodb://`` URI); an absolute path, since the job may run in another folder.
        checkpoint: a checkpoint key such as ``OTFRunDoc.final_checkpoint``.
        threshold: K (eV) of ``prob_within = P(|e| < K)``; the run's own K compares.
        confidence: evaluations with ``prob_within`` below it are counted (the steps an
            on-the-fly run would have labelled).
        model: None loads the model the checkpoint names; or another registration of the
            same weights.
        device: where the ensemble is evaluated (:mod:`atomate2_otf.devices`; ``"auto"``
            takes the GPU of a GPU worker), whichever device wrote the checkpoint.
    """
    from atomate2_otf.devices import resolve_device
    from atomate2_otf.flows import load_fine_tuned_posterior
    from atomate2_otf.store import open_job_store

    if not isinstance(checkpoint, str) or ":" not in checkpoint:
        raise ValueError(f"checkpoint must be a checkpoint key 'run_id:index' (such as "
                         f"OTFRunDoc.final_checkpoint), got {checkpoint!r}")
    resolve_device(device)  # a device this machine lacks fails before the store is opened
    job_store = open_job_store(store)
    try:
        posterior = load_fine_tuned_posterior(job_store, checkpoint, model, model_kwargs,
                                              device=device)
    finally:
        job_store.close()
    provenance = {"model": posterior.model.name, "run_id": checkpoint.rsplit(":", 1)[0],
                  "checkpoint": checkpoint, "store": public_store_spec(store),
                  "threshold": float(threshold), "confidence": float(confidence)}
    logger.info("fine-tuned calculator: %s", provenance)
    return FineTunedCalculator(posterior, threshold, confidence=confidence,
                               provenance=provenance)


def public_store_spec(spec: str) -> str:
    """The store spec without a password (MongoDB URIs may carry one)."""
    return re.sub(r"(mongodb(?:\+srv)?://)[^@/]*@", r"\1***@", str(spec))


class FineTunedCalculator(PosteriorCalculator):
    """A :class:`PosteriorCalculator` that also writes provenance and uncertainty to the
    ``info`` of the atoms it computes, where atomate2's task documents keep them.

    The running summary restarts whenever another ``Atoms`` object is computed (atomate2
    caches one calculator per Maker, which may serve several jobs in one process).
    """

    def __init__(self, posterior: Posterior, threshold: float,
                 confidence: float = defaults.CONFIDENCE,
                 provenance: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(posterior, threshold, **kwargs)
        self.confidence = check_confidence(confidence)
        self.provenance = dict(provenance or {})
        self._seen: weakref.ref | None = None
        self._summary: dict[str, Any] = {}

    def calculate(self, atoms: Atoms | None = None, properties=("energy",),
                  system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if atoms is not None:
            self._record(atoms)

    def _record(self, atoms: Atoms) -> None:
        if self._seen is None or self._seen() is not atoms:
            self._seen = weakref.ref(atoms)
            self._summary = {"n_evaluations": 0, "sum_energy_std": 0.0,
                             "max_energy_std": 0.0, "min_prob_within": 1.0,
                             "n_below_confidence": 0}
        results = self.results
        energy_std = float(results["energy_std"])
        prob = float(results["prob_within"])
        summary = self._summary
        summary["n_evaluations"] += 1
        summary["sum_energy_std"] += energy_std
        summary["max_energy_std"] = max(summary["max_energy_std"], energy_std)
        summary["min_prob_within"] = min(summary["min_prob_within"], prob)
        summary["n_below_confidence"] += int(prob < self.confidence)
        last = {"energy_std": energy_std,
                "energy_std_epistemic": float(results["energy_std_epistemic"]),
                "prob_within": prob,
                "max_force_std": float(np.max(results["forces_std"])),
                **({"prob_within_forces": float(results["prob_within_forces"])}
                   if "prob_within_forces" in results else {})}
        atoms.info[PROVENANCE_KEY] = dict(self.provenance)
        atoms.info[UNCERTAINTY_KEY] = {
            **last,
            "n_evaluations": summary["n_evaluations"],
            "mean_energy_std": summary["sum_energy_std"] / summary["n_evaluations"],
            "max_energy_std": summary["max_energy_std"],
            "min_prob_within": summary["min_prob_within"],
            "n_below_confidence": summary["n_below_confidence"],
        }
