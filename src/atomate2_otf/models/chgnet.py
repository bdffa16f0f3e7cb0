"""CHGNet (chgnet 0.4.x) as a :class:`FoundationModel`: the offline default.

CHGNet's weights ship inside its wheel, so this adapter works without network. Graphs are
built once per structure with CHGNet's own converter (the expensive neighbour search);
a batch is featurised into one ``BatchedGraph`` and run through ``CHGNet._compute`` in a
single forward pass. Forces and stress are taken here by autograd rather than inside
CHGNet, because CHGNet always builds the double-backward graph (``create_graph=True``),
which inference does not need.

Units: CHGNet 0.3.0 predicts an *intensive* energy (eV/atom) and stress in GPa; this
adapter returns total energies in eV and stress in eV/A^3 with ASE's sign,
``stress = (1/V) dE/d(strain)`` (positive = tensile), which is also CHGNet's own sign.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from atomate2_otf.models.base import FamilyDefaults, FoundationModel, ModelOutput
from atomate2_otf.records import StructureRecord

if TYPE_CHECKING:
    from chgnet.graph import CrystalGraph
    from chgnet.model import CHGNet

logger = logging.getLogger(__name__)


def molecule_box(positions: np.ndarray, cutoff: float,
                 margin: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Centre a molecule in a cubic cell in which no atom sees a periodic image within
    ``cutoff``.

    CHGNet only understands crystals; in this box it describes an isolated molecule
    exactly, since every image distance is at least ``length - extent > 2 * cutoff``.
    """
    extent = positions.max(0) - positions.min(0)
    length = float(extent.max() + 2.0 * cutoff + margin)
    centred = positions - (positions.min(0) + extent / 2.0) + length / 2.0
    return centred, np.eye(3) * length


class CHGNetModel(FoundationModel):
    """CHGNet with total energies in eV, forces in eV/A and stress in eV/A^3 (ASE sign).

    Molecules (records with no periodic direction) are evaluated in a box (see
    :func:`molecule_box`). Their ``stress`` entry in :class:`ModelOutput` is the stress of
    that artificial box, i.e. meaningless: callers use stress only where
    ``record.has_stress`` (fully periodic and labelled), which is what the likelihood's
    stress mask does.

    Features are the per-atom vectors the readout MLP sees: the atom features after the
    last convolution and CHGNet's ``readout_norm``, captured by a forward hook that is
    active only inside :meth:`evaluate` (so the same module can drive a
    ``CHGNetCalculator`` without the hook keeping graphs alive).
    """

    family = "chgnet"
    # From held-out frames of systems no test uses (benchmarks/defaults.py,
    # defaults_chgnet.json; docs/models.md): gamma_0 1e-3 beats 3e-4, the grid cannot tell
    # sigma_TL 0.05/0.2/0.5 apart (kept 0.2), (a, b) = (1.5, 10) has the best log score.
    defaults = FamilyDefaults(sigma_tl=0.2, step_size=1e-3, calibration_a=1.5,
                              calibration_b=10.0)

    def __init__(self, module: CHGNet, name: str = "chgnet", version: str = "0.3.0") -> None:
        super().__init__(module, name)
        self.version = version
        self._capturing = False
        self._features: torch.Tensor | None = None
        readout_input = (module.readout_norm if module.readout_norm is not None
                         else module.atom_conv_layers[-1])
        readout_input.register_forward_hook(self._capture)
        converter = module.graph_converter
        self._cutoff = float(max(converter.atom_graph_cutoff, converter.bond_graph_cutoff))

    def _capture(self, _module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if self._capturing:
            self._features = output

    # -- FoundationModel ---------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return int(self.module.atom_embedding.embedding.embedding_dim)

    @property
    def supported_numbers(self) -> frozenset[int]:
        # CHGNet embeds Z at row Z - 1 of its embedding table: Z = 1..94 for 0.2/0.3.
        return frozenset(range(1, self.module.atom_embedding.embedding.num_embeddings + 1))

    def prepare(self, structure: StructureRecord) -> CrystalGraph:
        """CHGNet's crystal graph of one record (molecules are boxed first)."""
        from pymatgen.core import Lattice, Structure

        self.check_elements(structure.numbers)
        positions, cell = structure.positions, structure.cell
        if structure.periodic:
            if abs(np.linalg.det(cell)) < 1e-6:
                raise ValueError("a periodic structure needs a cell of non-zero volume")
        elif structure.pbc.any():
            raise ValueError(
                f"CHGNet handles fully periodic or fully non-periodic structures; got "
                f"pbc={structure.pbc.tolist()} (pad the non-periodic axis with vacuum and "
                f"make it periodic)"
            )
        else:
            positions, cell = molecule_box(positions, self._cutoff)
        pmg = Structure(Lattice(cell), structure.numbers.tolist(), positions,
                        coords_are_cartesian=True)
        return self.module.graph_converter(pmg)

    def collate(self, prepared: Sequence[CrystalGraph]) -> list[CrystalGraph]:
        # CHGNet joins graphs in BatchedGraph.from_graphs, which needs the basis-expansion
        # layers (trainable), so the real batching happens at the start of evaluate().
        return list(prepared)

    def evaluate(self, batch: Sequence[CrystalGraph], *, compute_stress: bool = False,
                 create_graph: bool = False) -> ModelOutput:
        """One batched forward of CHGNet; forces/stress by autograd of the total energy."""
        from chgnet.model.model import BatchedGraph

        module = self.module
        graphs = list(batch)
        device = next(module.parameters()).device
        if graphs and graphs[0].atomic_number.device != device:
            graphs = [graph.to(device) for graph in graphs]
        comp_energy = (0.0 if module.composition_model is None
                       else module.composition_model(graphs))
        batched = BatchedGraph.from_graphs(
            graphs,
            bond_basis_expansion=module.bond_basis_expansion,
            angle_basis_expansion=module.angle_basis_expansion,
            compute_stress=compute_stress,
        )
        self._capturing, self._features = True, None
        try:
            prediction = module._compute(batched)  # energy only; derivatives below
        finally:
            self._capturing = False
        features, self._features = self._features, None
        if features is None:  # pragma: no cover - guards against a changed CHGNet
            raise RuntimeError("CHGNet's readout features were not captured")
        n_atoms = prediction["atoms_per_graph"]
        energy = prediction["e"] + comp_energy  # as CHGNet.forward
        if module.is_intensive:
            energy = energy * n_atoms
        inputs = list(batched.atom_positions) + (list(batched.strains) if compute_stress
                                                 else [])
        # retain_graph: the features (same graph) may still be differentiated by the caller
        grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph,
                                    retain_graph=True)
        forces = -torch.cat(grads[:len(graphs)])
        stress = None
        if compute_stress:
            volumes = batched.volumes.to(energy.dtype).abs()
            stress = torch.stack(grads[len(graphs):]) / volumes[:, None, None]
        if not create_graph:
            energy, forces = energy.detach(), forces.detach()
            stress = None if stress is None else stress.detach()
        return ModelOutput(energy=energy, forces=forces, stress=stress, features=features,
                           n_atoms=n_atoms.long())

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version}


def load_chgnet(version: str = "0.3.0", model: CHGNet | None = None) -> CHGNetModel:
    """Load CHGNet ``version`` from the weights inside the chgnet wheel (works offline).

    ``model`` wraps an already built CHGNet instead (e.g. one loaded from a file).
    """
    if model is None:
        from chgnet.model import CHGNet

        # CHGNet prints "CHGNet v0.3.0 initialized with ... parameters" whatever verbose
        # says; stdout belongs to the caller (e.g. a --json document): into the log with it
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            model = CHGNet.load(model_name=version, use_device="cpu", verbose=False)
        if printed.getvalue().strip():
            logger.info("%s", printed.getvalue().strip())
    model.eval()
    return CHGNetModel(model, version=version)
