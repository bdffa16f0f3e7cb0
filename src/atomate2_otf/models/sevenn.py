"""SevenNet (sevenn 0.13) as a :class:`FoundationModel`; 7net-0 ships inside the wheel.

SevenNet is NequIP-like, so the paper's NequIP defaults apply.

Why the adapter takes the derivatives itself: SevenNet's own ``force_output`` module calls
``torch.autograd.grad(create_graph=self.training)`` without ``retain_graph``, so in eval
mode it frees the forward graph (the features could then not be differentiated) and in
train mode it always pays for the double-backward graph. The adapter therefore removes
that module and differentiates the energy w.r.t. the edge vectors (SevenNet's own grad
key) itself, with ``create_graph`` as asked and the graph retained, turning dE/dr_ij into
forces and virial exactly as SevenNet does. The module stays in eval mode throughout (it
has no dropout or batch norm; only the removed force module looked at ``training``).

Features for the noise head are the invariant (0e) node features entering the energy
readout (the input of ``reduce_input_to_hidden``, 128x0e for 7net-0).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from atomate2_otf.models.base import FamilyDefaults, FoundationModel, ModelOutput, periodic_stress
from atomate2_otf.records import StructureRecord

logger = logging.getLogger(__name__)

#: module whose input node features are the per-atom features (first readout linear)
_READOUT = "reduce_input_to_hidden"
#: per-graph flag added by :meth:`SevenNetModel.prepare` (stress only for full pbc)
_PERIODIC_KEY = "otf_periodic"


class SevenNetModel(FoundationModel):
    """SevenNet with energies in eV (total), forces eV/A, stress eV/A^3 (ASE sign).

    Stress rows of structures that are not fully periodic are NaN (see
    :func:`~atomate2_otf.models.base.periodic_stress`).
    """

    family = "sevenn"
    # From held-out frames of systems no test uses (benchmarks/defaults.py,
    # defaults_sevenn.json; docs/models.md): gamma_0 1e-3 scores 0.225 against 0.231 for
    # 3e-4; (a, b) = (1.5, 30) has the best prequential log score, tied with (1.5, 10).
    # sigma_TL stays the paper's NequIP value, 0.2 (not gridded: CHGNet's grid could not
    # tell 0.05, 0.2 and 0.5 apart).
    defaults = FamilyDefaults(sigma_tl=0.2, step_size=1e-3, calibration_a=1.5,
                              calibration_b=30.0)

    def __init__(self, module: torch.nn.Module, name: str = "sevenn-0",
                 checkpoint: str = "7net-0", modal: str | None = None,
                 frozen: Sequence[str] = ()) -> None:
        import sevenn._keys as KEY

        if getattr(module, "key_grad", None) != KEY.EDGE_VEC:
            raise NotImplementedError(
                f"SevenNet model differentiates w.r.t. {module.key_grad!r}; this adapter "
                f"supports models whose forces come from the edge vectors ({KEY.EDGE_VEC!r})"
            )
        if module.type_map is None:
            raise ValueError("SevenNet model has no type_map (atomic number -> index)")
        modal_map = getattr(module, "modal_map", None)
        if modal_map and modal not in modal_map:
            raise ValueError(f"SevenNet model {checkpoint!r} is multi-fidelity: pass modal= "
                             f"one of {sorted(modal_map)}, got {modal!r}")
        if not modal_map and modal:
            logger.warning("modal=%r ignored: %s has no modal_map", modal, checkpoint)
            modal = None
        # See the module docstring: forces and stress are taken here, not by SevenNet.
        module.delete_module_by_key("force_output")
        module.set_is_batch_data(True)
        module.eval()
        super().__init__(module, name, frozen=frozen)
        self.checkpoint = checkpoint
        self.modal = modal
        self.cutoff = float(module.cutoff)
        self.type_map = {int(z): int(i) for z, i in module.type_map.items()}

        readout = module._modules[_READOUT]
        irreps = readout.irreps_in
        self._scalar_slices = [sl for (_, ir), sl in zip(irreps, irreps.slices(), strict=True)
                               if ir.l == 0 and ir.p == 1]
        if not self._scalar_slices:
            raise ValueError(f"SevenNet readout input {irreps} has no 0e channels")
        self._feature_dim = sum(sl.stop - sl.start for sl in self._scalar_slices)
        self._all_scalar = self._feature_dim == irreps.dim
        self._numbers = frozenset(self.type_map)
        self._captured: torch.Tensor | None = None
        readout.register_forward_pre_hook(self._capture)

    def _capture(self, _module: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
        import sevenn._keys as KEY

        self._captured = inputs[0][KEY.NODE_FEATURE]

    def prepare(self, structure: StructureRecord) -> Any:
        """One AtomGraphData, built exactly as ``SevenNetCalculator.calculate`` builds it."""
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        from atomate2_otf.atoms import atoms_from_record

        # SevenNet's one-hot lookup would fail obscurely (index -1) on unknown elements.
        self.check_elements(structure.numbers)
        data = AtomGraphData.from_numpy_dict(
            unlabeled_atoms_to_graph(atoms_from_record(structure), self.cutoff,
                                     with_shift=False))
        data[_PERIODIC_KEY] = torch.tensor([structure.periodic])
        if self.modal:
            data["data_modality"] = self.modal
        return data

    def collate(self, prepared: Sequence[Any]) -> Any:
        """One torch_geometric Batch (node/edge tensors concatenated, indices offset)."""
        from torch_geometric.data import Batch

        return Batch.from_data_list(list(prepared))

    def evaluate(self, batch: Any, *, compute_stress: bool = False,
                 create_graph: bool = False) -> ModelOutput:
        import sevenn._keys as KEY

        # SevenNet writes into its input (node features, requires_grad on edge_vec):
        # work on a shallow copy so that a cached batch can be evaluated again.
        data = batch.clone()
        self._captured = None
        out = self.module(data)  # forward only: energy per structure, edge_vec a leaf
        features, self._captured = self._captured, None
        if features is None:  # pragma: no cover - guards against a changed SevenNet
            raise RuntimeError("SevenNet's readout features were not captured")
        if not self._all_scalar:
            features = torch.cat([features[:, sl] for sl in self._scalar_slices], dim=-1)

        energy = out[KEY.PRED_TOTAL_ENERGY].reshape(-1)
        rij = out[KEY.EDGE_VEC]
        # retain_graph: the features (same graph) may still be differentiated by the caller
        (fij,) = torch.autograd.grad(energy.sum(), [rij], create_graph=create_graph,
                                     retain_graph=True, materialize_grads=True)
        src, dst = out[KEY.EDGE_IDX]
        n_total = out[KEY.NODE_FEATURE].shape[0]
        # r_ij = r_dst - r_src, so dE/dr_src = -f_ij and dE/dr_dst = +f_ij (as SevenNet)
        forces = (torch.zeros(n_total, 3, dtype=fij.dtype, device=fij.device)
                  .index_add(0, src, fij).index_add(0, dst, -fij))

        stress = None
        if compute_stress:
            # ASE: sigma_ab = (1/V) dE/d eps_ab, and r -> (1 + eps) r gives
            # dE/d eps_ab = sum_ij f_ij,a r_ij,b (symmetrised: E is rotation invariant).
            n_graphs = energy.shape[0]
            edge_graph = out[KEY.BATCH][src]
            virial = torch.zeros(n_graphs, 3, 3, dtype=fij.dtype, device=fij.device)
            virial = virial.index_add(0, edge_graph, fij[:, :, None] * rij[:, None, :])
            virial = 0.5 * (virial + virial.transpose(1, 2))
            volume = out[KEY.CELL_VOLUME].reshape(-1).to(fij.dtype).abs()
            stress = periodic_stress(virial, volume,
                                     out[_PERIODIC_KEY].reshape(-1).to(fij.device))

        n_atoms = out[KEY.NUM_ATOMS].reshape(-1).long()
        if not create_graph:
            energy, forces = energy.detach(), forces.detach()
            stress = None if stress is None else stress.detach()
        return ModelOutput(energy=energy, forces=forces, stress=stress, features=features,
                           n_atoms=n_atoms)

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name, "checkpoint": self.checkpoint}
        if getattr(self, "train_frozen", False):
            spec["train_frozen"] = True
        if self.modal:
            spec["modal"] = self.modal
        return spec


def load_sevenn(checkpoint: str = "7net-0", modal: str | None = None,
                train_frozen: bool = False) -> SevenNetModel:
    """Load a SevenNet checkpoint by pretrained name or by path, via sevenn's own loader.

    Pretrained names (e.g. ``"7net-0"``) resolve to the checkpoints inside the sevenn
    wheel, so this works offline; a path loads a user's (e.g. fine-tuned) checkpoint.
    The parameters that SevenNet's build freezes (the per-layer neighbour-count
    normalisers and the per-species energy shift/scale) stay frozen, i.e. are not
    sampled, unless ``train_frozen``.
    """
    import sevenn.util as util

    cp = util.load_checkpoint(checkpoint)
    module = cp.build_model()
    frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
    if frozen and train_frozen:
        logger.info("SevenNet %s: making %d frozen parameter(s) trainable: %s",
                    checkpoint, len(frozen), ", ".join(frozen))
        frozen = []
    model = SevenNetModel(module, checkpoint=str(checkpoint), modal=modal, frozen=frozen)
    model.train_frozen = bool(train_frozen)
    return model
