"""SevenNet (sevenn 0.13) as a :class:`FoundationModel`; 7net-0 ships inside the wheel.

SevenNet is NequIP-like, so the paper's NequIP defaults apply. Its force module takes the
autograd derivative itself and keeps the graph only in training mode; the adapter switches
the mode per call so that a force loss can be back-propagated to the parameters while
inference stays cheap. Features for the noise head are the invariant (0e) node features
entering the energy readout.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from atomate2_otf.bnn.data import StructureRecord
from atomate2_otf.models.base import FamilyDefaults, FoundationModel, ModelOutput

logger = logging.getLogger(__name__)

# SevenNet's stress order is xx, yy, zz, xy, yz, zx (and the opposite sign to ASE).
_SEVENN_INDEX = [[0, 3, 5], [3, 1, 4], [5, 4, 2]]


class SevenNetModel(FoundationModel):
    """SevenNet with energies in eV (total), forces eV/A, stress eV/A^3 (ASE sign)."""

    family = "sevenn"
    # The paper's NequIP values (METHOD.md): sigma_TL 0.2, gamma_0 3e-5, a = 3, b = 10;
    # gamma_0 raised to 1e-4 (the reference code's NequIP value), which the fine-tuning
    # tests need to move within a few hundred steps.
    defaults = FamilyDefaults(sigma_tl=0.2, step_size=1e-4, calibration_a=3.0,
                              calibration_b=10.0)

    def __init__(self, module: torch.nn.Module, name: str = "sevenn-0",
                 checkpoint: str = "7net-0", modal: str | None = None) -> None:
        module.set_is_batch_data(True)
        module.eval()
        super().__init__(module, name)
        self.checkpoint = checkpoint
        self.modal = modal
        self.cutoff = float(module.cutoff)
        self.type_map = {int(z): int(i) for z, i in module.type_map.items()}
        self._captured: list[torch.Tensor] = []
        readout = module._modules["reduce_input_to_hidden"]
        self._feature_dim = int(readout.irreps_in.dim)
        if any(ir.l != 0 for _, ir in readout.irreps_in):
            raise ValueError(f"SevenNet readout input {readout.irreps_in} is not invariant")
        readout.register_forward_pre_hook(self._capture)

    def _capture(self, _module: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
        import sevenn._keys as KEY

        self._captured.append(inputs[0][KEY.NODE_FEATURE])

    @property
    def feature_dim(self) -> int:
        return self._feature_dim

    @property
    def supported_numbers(self) -> frozenset[int]:
        return frozenset(self.type_map)

    def prepare(self, structure: StructureRecord) -> Any:
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        from atomate2_otf.atoms import atoms_from_record

        data = AtomGraphData.from_numpy_dict(
            unlabeled_atoms_to_graph(atoms_from_record(structure), self.cutoff,
                                     with_shift=False))
        if self.modal:
            data["data_modality"] = self.modal
        return data

    def collate(self, prepared: Sequence[Any]) -> Any:
        from torch_geometric.data import Batch

        return Batch.from_data_list(list(prepared))

    def evaluate(self, batch: Any, *, compute_stress: bool = False,
                 create_graph: bool = False) -> ModelOutput:
        import sevenn._keys as KEY

        self._captured.clear()
        self.module.train(create_graph)  # the force module keeps the graph only in training
        try:
            out = self.module(batch.clone())
        finally:
            self.module.eval()
        features = self._captured[-1]
        self._captured.clear()
        energy = out[KEY.PRED_TOTAL_ENERGY].reshape(-1)
        forces = out[KEY.PRED_FORCE]
        stress = None
        if compute_stress:
            stress = -out[KEY.PRED_STRESS][:, _SEVENN_INDEX]  # -> [B, 3, 3], ASE sign
        n_atoms = out[KEY.NUM_ATOMS].reshape(-1).long()
        if not create_graph:
            energy, forces = energy.detach(), forces.detach()
            stress = None if stress is None else stress.detach()
        return ModelOutput(energy=energy, forces=forces, stress=stress, features=features,
                           n_atoms=n_atoms)

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name, "checkpoint": self.checkpoint}
        if self.modal:
            spec["modal"] = self.modal
        return spec


def load_sevenn(checkpoint: str = "7net-0", modal: str | None = None) -> SevenNetModel:
    """Load a SevenNet checkpoint by pretrained name (shipped in the wheel) or by path."""
    import sevenn.util as util

    cp = util.load_checkpoint(checkpoint)
    module = cp.build_model()
    return SevenNetModel(module, checkpoint=checkpoint, modal=modal)
