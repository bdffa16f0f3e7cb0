"""fairchem-core 2.x models (UMA, eSEN) as a :class:`FoundationModel`.

Loading goes through fairchem's own loader (``load_predict_unit``: the checkpoint's model
config, its EMA weights and its tasks, i.e. normalisers and element references), with the
settings of fairchem's unmerged "batch" mode in full float32: no MoLE merging (the experts'
mixing depends on composition, so a merged model would hold for one composition only), no
compile, no activation checkpointing (it would recompute the forward in every training
step). The adapter then uses the ``HydraModel`` itself.

Energies, forces and stress are put together as ``MLIPPredictUnit`` does: the head's raw
output of the chosen task (dataset) is denormalised with that task's normaliser and the
element references are added back to the energy. What differs is who takes derivatives:

- **conserving models** (UMA, eSEN "conserving"; ``regress_config.direct_forces`` False):
  fairchem's ``MLP_EFS_Head`` would call ``autograd.grad(create_graph=self.training)``
  without ``retain_graph``, freeing the graph the noise-head features live on, and training
  mode would switch on UMA's MoLE dropout. The adapter turns the head's own derivatives off
  and differentiates the raw energy itself, once, with ``create_graph`` as asked and the
  graph retained: forces = -dE/dr; stress = (1/V) dE/d(strain) with positions and cell
  displaced by a symmetric zero strain, which is the virial fairchem builds from dE/dr and
  dE/dh (ASE sign). Forces are -dE/dx of the returned energy when the force task's
  normaliser has the energy's rmsd and zero mean, as fairchem's released tasks have.
- **direct-force models** (eSEN "direct", fairchem's ``Linear_Force_Head``): forces come
  from their own equivariant head, not from the energy. The likelihood then differentiates
  the energy head's output and the force head's output w.r.t. the parameters, as two
  separate predictions; they are not each other's derivative, so MD with such a model does
  not conserve energy (fairchem warns about this too). Stress comes from a direct stress
  head if the model has a stress task, else it is not available (``stress`` None).

The module stays in eval mode throughout (UMA's MoLE dropout and composition dropout stay
off; nothing else looks at ``training`` once the heads' own derivatives are off).

Features for the noise head are the invariant (l = 0) channels of the backbone's final node
embedding, the input of the energy head (``sphere_channels`` wide: 128 for UMA-S, eSEN-sm).

Named models (``"uma-s-1p1"``, ...) resolve only from the Hugging Face cache fairchem uses
(``$FAIRCHEM_CACHE_DIR``, default ``~/.cache/fairchem``); nothing is downloaded. A miss is
a :class:`ModelNotCachedError` naming the file, the repository and the folder.

UMA needs a task (``omat``, ``omol``, ``oc20``, ``odac``, ``omc``, ...): the ``task_name``
argument, default ``omat`` when the model has it (periodic inorganic materials with PBE(+U)
labels, the on-the-fly MD setting of this package), else the model's only task.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomate2_otf.models.base import (
    FamilyDefaults,
    FoundationModel,
    ModelNotCachedError,
    ModelOutput,
)
from atomate2_otf.records import StructureRecord

logger = logging.getLogger(__name__)

#: graph radius fairchem's ASE calculator uses when converting atoms (the backbone's own
#: cutoff then decides which edges it keeps)
_RADIUS = 6.0
#: default task when a model has several: periodic materials (see the module docstring)
DEFAULT_TASK = "omat"


def fairchem_cache_dir() -> Path:
    """The folder fairchem passes to Hugging Face as its cache."""
    return Path(os.environ.get("FAIRCHEM_CACHE_DIR",
                               os.path.join(os.path.expanduser("~"), ".cache/fairchem")))


def resolve_fairchem_checkpoint(model: str | os.PathLike[str]) -> Path:
    """Local checkpoint file for a path or a fairchem pretrained name, never downloading.

    A name is looked up with ``hf_hub_download(..., local_files_only=True)`` in the same
    cache folder fairchem's own resolver uses, so a model fetched once with fairchem on a
    machine with network access is found again here.
    """
    text = str(model)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    from fairchem.core.calculate.pretrained_mlip import _MODEL_CKPTS, available_models

    if text not in _MODEL_CKPTS.checkpoints:
        raise FileNotFoundError(
            f"fairchem model {text!r} is neither a checkpoint file nor a fairchem pretrained "
            f"name; names: {', '.join(available_models)}")
    entry = _MODEL_CKPTS.checkpoints[text]
    cache = fairchem_cache_dir()
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(filename=entry.filename, repo_id=entry.repo_id,
                                    subfolder=entry.subfolder, revision=entry.revision,
                                    cache_dir=str(cache), local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as err:
        remote = "/".join(p for p in (entry.subfolder, entry.filename) if p)
        raise ModelNotCachedError(
            f"fairchem model {text!r} ({remote} of the Hugging Face repository "
            f"{entry.repo_id}, access-gated) is not in fairchem's cache {str(cache)!r} and "
            f"this package does not download models. Either download {entry.filename} on "
            f"a machine with access and pass its path (model='/path/to/{entry.filename}'), "
            f"or fill the cache there with `huggingface-cli download {entry.repo_id} "
            f"{remote} --cache-dir {cache}` and copy that folder to the same place here "
            f"(or point FAIRCHEM_CACHE_DIR at it).") from err


@contextlib.contextmanager
def _preserved_rng() -> Iterator[None]:
    """fairchem's predict unit reseeds python, numpy and torch (seed 41) when it is built;
    the chains' and the MD's random streams must not depend on loading a model."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), \
        torch.random.get_rng_state()
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
        torch.set_num_threads(threads)


def inference_settings() -> Any:
    """fairchem settings for a trainable model: float32, no MoLE merge, no compile, no
    activation checkpointing, the backbone's own graph generation (as the calculator)."""
    from fairchem.core.units.mlip_unit.api.inference import InferenceSettings

    return InferenceSettings(tf32=False, activation_checkpointing=False, merge_mole=False,
                             compile=False, external_graph_gen=False,
                             base_precision_dtype=torch.float32)


def _load_hydra(path: Path) -> Any:
    """The HydraModel (tasks set up) through fairchem's own ``load_predict_unit``."""
    from fairchem.core.units.mlip_unit import load_predict_unit

    with _preserved_rng():
        unit = load_predict_unit(str(path), inference_settings=inference_settings(),
                                 device="cpu")
    return unit.model.module


class FairChemModel(FoundationModel):
    """A fairchem ``HydraModel`` for one task, energies eV (total, element references
    added), forces eV/A, stress eV/A^3 (ASE sign).

    Stress rows of structures that are not fully periodic are NaN (undefined there),
    produced behind ``torch.where`` so that the NaN never reaches a gradient.
    """

    family = "fairchem"
    # The paper's EquiformerV2 values carried over to its fairchem-2 successors (eSCN
    # family, same SO(2)-convolution design and initialisation scale): sigma_TL = 0.02.
    # The paper ties sigma_TL to the scale of the pretrained weights (EqV2's are much
    # smaller than NequIP's/MACE's, hence 0.02); gamma_0 = 1e-4 is the paper's EqV2
    # cyclical-schedule step size. No EqV2 on-the-fly run was calibrated in the paper, so
    # the calibration prior is its more conservative (MACE) one, a = 1.5, b = 10.
    defaults = FamilyDefaults(sigma_tl=0.02, step_size=1e-4, calibration_a=1.5,
                              calibration_b=10.0)

    def __init__(self, hydra: torch.nn.Module, name: str = "fairchem",
                 path: str | os.PathLike[str] | None = None,
                 task_name: str | None = None, charge: int = 0, spin: int | None = None,
                 frozen: Sequence[str] = ()) -> None:
        datasets = sorted(hydra.dataset_to_tasks)
        if task_name is None:
            task_name = DEFAULT_TASK if DEFAULT_TASK in datasets else (
                datasets[0] if len(datasets) == 1 else None)
            if task_name is None:
                raise ValueError(f"fairchem model {name!r} has several tasks: pass "
                                 f"task_name= one of {datasets}")
        if task_name not in datasets:
            raise ValueError(f"fairchem model {name!r}: task_name {task_name!r} is not one "
                             f"of its tasks {datasets}")
        tasks = {t.property: t for t in hydra.dataset_to_tasks[task_name]}
        if "energy" not in tasks:
            raise ValueError(f"fairchem model {name!r} has no energy task for {task_name!r}")
        self.regress = copy.copy(hydra.backbone.regress_config)
        self.direct_forces = bool(self.regress.direct_forces)
        if not self.direct_forces:
            # the adapter takes the derivatives (module docstring): heads give energy only
            quiet = dataclasses.replace(self.regress, forces=False, stress=False,
                                        hessian=False)
            for module in hydra.modules():
                if hasattr(module, "regress_config"):
                    module.regress_config = quiet
        elif "forces" not in tasks:
            raise ValueError(f"direct-force model {name!r} has no forces task for "
                             f"{task_name!r}")
        hydra.eval()
        super().__init__(hydra, name, frozen=frozen)
        self.path = None if path is None else str(path)
        self.task_name = task_name
        self.charge = int(charge)
        self.spin = spin
        self.tasks = tasks
        self._feature_dim = int(hydra.backbone.sphere_channels)
        self._numbers = frozenset(range(1, int(hydra.backbone.max_num_elements)))
        self._captured: torch.Tensor | None = None
        hydra.backbone.register_forward_hook(self._capture)
        if self.direct_forces:
            logger.warning("fairchem model %s predicts forces directly: energy and forces "
                           "are separate outputs (forces are not -dE/dx)", name)
        energy_norm, force_norm = tasks["energy"].normalizer, tasks.get("forces")
        if not self.direct_forces and force_norm is not None and (
                float(force_norm.normalizer.rmsd) != float(energy_norm.rmsd)
                or float(force_norm.normalizer.mean) != 0.0):
            logger.warning("fairchem model %s: force normaliser differs from the energy's; "
                           "forces follow fairchem's convention and are not exactly -dE/dx",
                           name)

    def _capture(self, _module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        self._captured = output["node_embedding"]

    def _move_extras(self, device: torch.device) -> None:
        # the tasks' normalisers and element references are modules outside the backbone
        for task in self.tasks.values():
            task.normalizer.to(device)
            if task.element_references is not None:
                task.element_references.to(device)

    def prepare(self, structure: StructureRecord) -> Any:
        """fairchem's ``AtomicData``, converted as ``FAIRChemCalculator`` converts atoms
        (charge and spin in ``atoms.info``, validated and defaulted by the backbone)."""
        from fairchem.core.datasets.atomic_data import AtomicData

        from atomate2_otf.atoms import atoms_from_record

        self.check_elements(structure.numbers)
        atoms = atoms_from_record(structure)
        atoms.info["charge"] = self.charge
        if self.spin is not None:
            atoms.info["spin"] = int(self.spin)
        self.module.validate_atoms_data(atoms, self.task_name)
        return AtomicData.from_ase(atoms, task_name=self.task_name, r_edges=False,
                                   r_data_keys=["spin", "charge"], max_neigh=None,
                                   radius=_RADIUS, target_dtype=torch.float32)

    def collate(self, prepared: Sequence[Any]) -> Any:
        """One batched ``AtomicData`` (fairchem's collate: indices offset)."""
        from fairchem.core.datasets.atomic_data import atomicdata_list_to_batch

        return atomicdata_list_to_batch(list(prepared))

    def evaluate(self, batch: Any, *, compute_stress: bool = False,
                 create_graph: bool = False) -> ModelOutput:
        data = batch.clone()
        n_atoms = data["natoms"].reshape(-1).long()
        n_graphs = int(n_atoms.shape[0])
        graph = data["batch"]
        pos = data["pos"].detach().requires_grad_(not self.direct_forces)
        cell = data["cell"].reshape(n_graphs, 3, 3)
        strain = None
        if not self.direct_forces:
            strain = torch.zeros(n_graphs, 3, 3, dtype=pos.dtype, device=pos.device,
                                 requires_grad=True)
            symmetric = 0.5 * (strain + strain.transpose(-1, -2))
            data["pos"] = pos + torch.bmm(pos.unsqueeze(-2), symmetric[graph]).squeeze(-2)
            data["cell"] = cell + torch.bmm(cell, symmetric)

        self._captured = None
        out = self.module(data)
        embedding, self._captured = self._captured, None
        if embedding is None:  # pragma: no cover - guards against a changed fairchem
            raise RuntimeError("fairchem backbone node embedding was not captured")
        features = embedding[:, 0, :]

        energy_task = self.tasks["energy"]
        raw_energy = out[energy_task.name][energy_task.property].reshape(-1)
        stress = None
        if self.direct_forces:
            forces_task = self.tasks["forces"]
            forces = forces_task.normalizer.denorm(
                out[forces_task.name][forces_task.property]).reshape(-1, 3)
            if compute_stress and "stress" in self.tasks and \
                    self.tasks["stress"].name in out:
                stress_task = self.tasks["stress"]
                stress = stress_task.normalizer.denorm(
                    out[stress_task.name][stress_task.property]).reshape(n_graphs, 3, 3)
                stress = self._mask_stress(stress, cell)
            elif compute_stress:
                logger.debug("direct-force model %s has no stress output", self.name)
        else:
            # retain_graph: the features (same graph) may still be differentiated later
            grad_pos, virial = torch.autograd.grad(
                raw_energy.sum(), [pos, strain], create_graph=create_graph,
                retain_graph=True, materialize_grads=True)
            forces_norm = (self.tasks["forces"] if "forces" in self.tasks
                           else energy_task).normalizer
            forces = forces_norm.denorm(-grad_pos)
            if compute_stress:
                volume = torch.linalg.det(cell).abs()
                safe = torch.where(volume > 0, volume, torch.ones_like(volume))
                stress_norm = (self.tasks["stress"] if "stress" in self.tasks
                               else energy_task).normalizer
                stress = self._mask_stress(stress_norm.denorm(virial / safe[:, None, None]),
                                           cell)
        energy = energy_task.normalizer.denorm(raw_energy)
        if energy_task.element_references is not None:
            energy = energy_task.element_references.undo_refs(data, energy)

        # one dtype for all outputs: the element references are float64, and the
        # likelihood adds energy and force terms in place
        forces = forces.to(energy.dtype)
        stress = None if stress is None else stress.to(energy.dtype)
        if not create_graph:
            energy, forces = energy.detach(), forces.detach()
            stress = None if stress is None else stress.detach()
        return ModelOutput(energy=energy, forces=forces, stress=stress,
                           features=features, n_atoms=n_atoms)

    def _mask_stress(self, stress: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """NaN rows for cells without volume (molecules: fairchem's zero cell)."""
        volume = torch.linalg.det(cell.detach()).abs()
        return torch.where((volume > 0)[:, None, None], stress,
                           torch.full_like(stress, float("nan")))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_captured"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # forward hooks pickle as bound methods of the old object: bind to this one
        self.module.backbone._forward_hooks.clear()
        self.module.backbone.register_forward_hook(self._capture)

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name, "task_name": self.task_name}
        if self.path is not None:
            spec["model"] = self.path
        if self.charge:
            spec["charge"] = self.charge
        if self.spin is not None:
            spec["spin"] = self.spin
        return spec


def load_fairchem(model: str | os.PathLike[str] = "uma-s-1p1", task_name: str | None = None,
                  charge: int = 0, spin: int | None = None,
                  frozen: Sequence[str] = ()) -> FairChemModel:
    """Load a fairchem-core 2.x checkpoint (UMA, eSEN) through fairchem's loader.

    ``model``: a checkpoint path or a fairchem pretrained name (``"uma-s-1p1"``,
    ``"esen-sm-conserving-all-omol"``, ...; names resolve only from the local cache, see
    :func:`resolve_fairchem_checkpoint`). ``task_name``: the UMA task (dataset) whose
    heads, normalisers and element references are used, validated against the model's
    tasks; default ``omat`` if present, else the only task. ``charge``/``spin``: total
    charge and spin multiplicity (used by the ``omol`` task; fairchem's defaults apply
    when ``spin`` is None).
    """
    path = resolve_fairchem_checkpoint(model)
    hydra = _load_hydra(path)
    return FairChemModel(hydra, name=str(model), path=path, task_name=task_name,
                         charge=charge, spin=spin, frozen=frozen)
