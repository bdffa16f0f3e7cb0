"""CHGNet (chgnet 0.4.x) as a :class:`FoundationModel`: the offline default.

CHGNet's weights ship inside its wheel, so this adapter works without network. Graphs are
built once per structure with CHGNet's own converter; a batch is evaluated by CHGNet's own
forward (one batched graph), with a hook on the readout to capture the per-atom invariant
features that the noise head needs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ase import units

from atomate2_otf.bnn.data import StructureRecord
from atomate2_otf.models.base import FamilyDefaults, FoundationModel, ModelOutput

logger = logging.getLogger(__name__)


def molecule_box(positions: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """A cubic cell in which a molecule sees no periodic image within ``cutoff``.

    Models that only understand crystals (CHGNet) then describe an isolated molecule
    exactly: the image distance exceeds the cutoff by construction.
    """
    extent = positions.max(0) - positions.min(0)
    length = float(extent.max() + 2.0 * cutoff + 1.0)
    centred = positions - positions.min(0) - extent / 2.0 + length / 2.0
    return centred, np.eye(3) * length


class CHGNetModel(FoundationModel):
    """CHGNet with energies in eV (total), forces eV/A, stress eV/A^3 (ASE sign)."""

    family = "chgnet"
    # Not in the paper: CHGNet is MACE-like in size (0.4 M parameters, MPtrj-trained), so
    # MACE's conservative calibration prior is used; sigma_TL and gamma_0 were chosen by
    # the fine-tuning tests on xTB-labelled ethanol and EMT-labelled Cu (tests/).
    defaults = FamilyDefaults(sigma_tl=0.2, step_size=1e-3, calibration_a=1.5,
                              calibration_b=10.0)

    def __init__(self, module: torch.nn.Module, name: str = "chgnet",
                 version: str = "0.3.0") -> None:
        super().__init__(module, name)
        self.version = version
        self._captured: list[torch.Tensor] = []
        readout_input = module.readout_norm if module.readout_norm is not None \
            else module.atom_conv_layers[-1]
        readout_input.register_forward_hook(self._capture)
        self._cutoff = float(module.graph_converter.atom_graph_cutoff)

    def _capture(self, _module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        self._captured.append(output)

    @property
    def feature_dim(self) -> int:
        return int(self.module.atom_embedding.embedding.embedding_dim)

    @property
    def supported_numbers(self) -> frozenset[int]:
        return frozenset(range(1, self.module.atom_embedding.embedding.num_embeddings + 1))

    def prepare(self, structure: StructureRecord) -> Any:
        from pymatgen.core import Lattice, Structure

        positions, cell = structure.positions, structure.cell
        if not structure.periodic:
            positions, cell = molecule_box(positions, self._cutoff)
        pmg = Structure(Lattice(cell), structure.numbers.tolist(), positions,
                        coords_are_cartesian=True)
        return self.module.graph_converter(pmg)

    def collate(self, prepared: Sequence[Any]) -> Any:
        # CHGNet batches inside its forward (BatchedGraph.from_graphs): one graph per batch.
        return list(prepared)

    def evaluate(self, batch: Any, *, compute_stress: bool = False,
                 create_graph: bool = False) -> ModelOutput:
        self._captured.clear()
        task = "efs" if compute_stress else "ef"
        prediction = self.module(batch, task=task)
        features = self._captured[-1]
        self._captured.clear()
        n_atoms = prediction["atoms_per_graph"]
        energy = prediction["e"] * n_atoms if self.module.is_intensive else prediction["e"]
        forces = torch.cat(prediction["f"])
        stress = None
        if compute_stress:
            stress = torch.stack(prediction["s"]) * units.GPa  # GPa -> eV/A^3, same sign
        if not create_graph:
            energy, forces = energy.detach(), forces.detach()
            stress = None if stress is None else stress.detach()
        return ModelOutput(energy=energy, forces=forces, stress=stress, features=features,
                           n_atoms=n_atoms)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version}


def load_chgnet(version: str = "0.3.0", model: torch.nn.Module | None = None) -> CHGNetModel:
    """Load CHGNet ``version`` from the weights inside the chgnet wheel (works offline)."""
    if model is None:
        from chgnet.model import CHGNet

        model = CHGNet.load(model_name=version, use_device="cpu", verbose=False)
    model.eval()
    return CHGNetModel(model, version=version)
