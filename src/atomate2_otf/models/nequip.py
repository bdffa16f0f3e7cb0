"""NequIP-framework models (nequip 0.19: NequIP and Allegro) as a :class:`FoundationModel`.

Loading goes through nequip's own loader, ``nequip.model.saved_models.load_saved_model``, so
a packaged model (``.nequip.zip``, what foundation potentials such as NequIP-OAM-L ship as)
and a training checkpoint (``.ckpt``) both give the trainable eager ``GraphModel``. A
compiled ``.pt2``/``.nequip.pt2`` file is inference-only (AOT-compiled, no parameters to
sample) and is refused with a message saying what to pass instead.

Why the adapter takes the derivatives itself: nequip's ``ForceStressOutput`` wraps the
energy model and calls ``torch.autograd.grad(create_graph=self.training)`` without
``retain_graph``, so in eval mode the forward graph (and with it the features' graph) is
freed, and in train mode every call pays for the double-backward graph. The adapter calls
the wrapped energy model (``ForceStressOutput.func``) directly and applies nequip's own
symmetric-strain trick itself (positions and cell displaced by a zero strain that requires
grad), differentiating once with ``create_graph`` as asked and the graph retained:
forces = -dE/dr, stress = (1/V) dE/d(strain) (ASE sign, which is nequip's sign too). The
module stays in eval mode: nequip models have no dropout or batch norm, and nothing else
looks at ``training`` once ``ForceStressOutput`` is bypassed.

Features for the noise head are the invariant (0e) node features that enter the per-atom
energy readout (NequIP: the last layer's scalar channels). Allegro has no node features: it
reads out per-edge energies from per-edge scalar features, so its per-atom features are the
sums of the readout's input edge scalars over each atom's edges (the centre atom's share of
its energy, again invariant).

Named models: ``"nequip.net:<group>/<model>:<version>"`` resolves only from nequip's local
model cache (``$NEQUIP_CACHE_DIR`` or ``~/.nequip/model_cache``, indexed by the
``*.metadata.json`` files nequip writes there); nothing is downloaded. A cache miss raises
:class:`ModelNotCachedError` naming the file to place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomate2_otf.models.base import (
    FamilyDefaults,
    FoundationModel,
    ModelNotCachedError,
    ModelOutput,
    periodic_stress,
)
from atomate2_otf.records import StructureRecord

logger = logging.getLogger(__name__)

#: nequip.net model ids of the published foundation potentials (short name -> id); only
#: used to resolve a short name to the id nequip's cache is keyed by.
NEQUIP_NET_MODELS: dict[str, str] = {
    "nequip-oam-l": "nequip.net:mir-group/NequIP-OAM-L:0.1",
    "nequip-mp-l": "nequip.net:mir-group/NequIP-MP-L:0.1",
    "allegro-oam-l": "nequip.net:mir-group/Allegro-OAM-L:0.1",
}
_NEQUIP_NET_PREFIX = "nequip.net:"


def nequip_cache_dir() -> Path:
    """nequip's model cache folder (``$NEQUIP_CACHE_DIR`` or ``~/.nequip/model_cache``),
    computed without creating it (nequip's own helper creates the folder)."""
    env = os.environ.get("NEQUIP_CACHE_DIR")
    return Path(env).expanduser().resolve() if env else Path.home() / ".nequip" / "model_cache"


def resolve_nequip_model(model: str | os.PathLike[str]) -> Path:
    """Path of a saved nequip model given a path, a nequip.net id or a short name.

    A nequip.net id is looked up in nequip's cache by the ``model_id`` recorded in the
    cache's metadata files; the download nequip would attempt is never started (no network
    on compute nodes, and an attempt can hang), so a miss is a
    :class:`ModelNotCachedError` that says what to place where.
    """
    text = str(model)
    model_id = NEQUIP_NET_MODELS.get(text.lower(), text)
    if not model_id.startswith(_NEQUIP_NET_PREFIX):
        path = Path(text).expanduser()
        if not path.is_file():
            known = ", ".join(sorted(NEQUIP_NET_MODELS))
            raise FileNotFoundError(
                f"NequIP model file {str(path)!r} does not exist; pass the path of a "
                f"packaged model (.nequip.zip) or checkpoint (.ckpt), a nequip.net id "
                f"('nequip.net:group/model:version') or one of: {known}")
        return path
    bare_id = model_id[len(_NEQUIP_NET_PREFIX):]
    cache = nequip_cache_dir()
    for metadata_file in sorted(cache.glob("*.metadata.json")) if cache.is_dir() else []:
        try:
            metadata = json.loads(metadata_file.read_text())
        except (OSError, ValueError):
            continue
        if metadata.get("model_id") == bare_id:
            candidate = metadata_file.with_name(
                metadata_file.name[:-len(".metadata.json")] + ".nequip.zip")
            if candidate.is_file():
                return candidate
    name = bare_id.split("/")[-1].replace(":", "-")
    raise ModelNotCachedError(
        f"NequIP model {model_id!r} is not in nequip's local model cache {str(cache)!r} and "
        f"this package does not download models. On a machine with network access run "
        f"`nequip-package` or load it once with nequip (it then caches "
        f"<hash>.nequip.zip plus <hash>.metadata.json in that folder) and copy both files "
        f"into {str(cache)!r} (or set NEQUIP_CACHE_DIR), or download the packaged file "
        f"(e.g. {name}.nequip.zip from https://www.nequip.net) and pass its path as "
        f"model='/path/to/{name}.nequip.zip'.")


@contextlib.contextmanager
def _preserved_global_state() -> Iterator[None]:
    """Undo what nequip's ``set_global_state`` does to the whole process.

    nequip initialises a global state once (required before a checkpoint can be built):
    it sets torch's default dtype to float64, e3nn's optimisation defaults, and reseeds
    python, numpy and torch. Other code in this process (noise heads, SGHMC noise, other
    e3nn models) must not see any of these changes.
    """
    import e3nn

    dtype = torch.get_default_dtype()
    e3nn_defaults = dict(e3nn.get_optimization_defaults())
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), \
        torch.random.get_rng_state()
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        # e3nn's code generation (TorchScript or eager) for every model built later,
        # SevenNet's included: a scripted SevenNet cannot be pickled to a ChainPool worker
        e3nn.set_optimization_defaults(**e3nn_defaults)
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)


def _load_graph_model(path: Path) -> torch.nn.Module:
    """nequip's own loader (package or checkpoint), eager mode, global state contained."""
    from nequip.model.saved_models import load_saved_model
    from nequip.utils.global_state import set_global_state

    if str(path).endswith((".pt2", ".nequip.pth", ".pth")):
        raise ValueError(
            f"{str(path)!r} looks like a compiled nequip model, which is inference-only "
            f"(no trainable parameters); pass the packaged model (.nequip.zip) or the "
            f"training checkpoint (.ckpt) it was compiled from")
    with _preserved_global_state():
        set_global_state(allow_tf32=False)
        return load_saved_model(str(path))


class NequIPModel(FoundationModel):
    """A nequip-framework ``GraphModel`` with energies in eV (total), forces eV/A, stress
    eV/A^3 (ASE sign); assumes the model was trained in eV and A, as nequip's foundation
    potentials are (the model file carries no unit).

    Stress rows of structures that are not fully periodic are NaN (see
    :func:`~atomate2_otf.models.base.periodic_stress`).
    """

    family = "nequip"
    # The paper's NequIP values (METHOD.md): sigma_TL 0.2, gamma_0 3e-5, a = 3, b = 10.
    defaults = FamilyDefaults(sigma_tl=0.2, step_size=3e-5, calibration_a=3.0,
                              calibration_b=10.0)

    def __init__(self, module: torch.nn.Module, name: str = "nequip",
                 path: str | os.PathLike[str] | None = None,
                 chemical_species_to_atom_type_map: Mapping[str, str] | None = None,
                 frozen: Sequence[str] = ()) -> None:
        from ase.data import atomic_numbers

        top = getattr(module, "model", None)
        if type(top).__name__ != "ForceStressOutput" or not hasattr(top, "func"):
            raise NotImplementedError(
                f"nequip model {name!r}: expected a GraphModel wrapping ForceStressOutput "
                f"(an energy model with autograd forces), found {type(top).__name__}")
        module.eval()
        super().__init__(module, name, frozen=frozen)
        self.path = None if path is None else str(path)
        metadata = module.metadata
        self.type_names: list[str] = metadata["type_names"].split(" ")
        self.r_max = float(metadata["r_max"])
        self.model_dtype = {"float32": torch.float32, "float64": torch.float64}[
            metadata.get("model_dtype", "float32")]
        species_map = dict(chemical_species_to_atom_type_map or
                           {t: t for t in self.type_names})
        unknown = sorted(set(species_map) - set(atomic_numbers))
        if unknown:
            raise ValueError(
                f"nequip model {name!r}: type name(s) {unknown} are not chemical symbols; "
                f"pass chemical_species_to_atom_type_map={{'H': '<type name>', ...}}")
        self.species_map = species_map
        self._numbers = frozenset(atomic_numbers[s] for s in species_map)
        self._energy_model = top.func
        self._input_fields = list(module.model_input_fields)
        self._transforms = self._build_transforms()

        # the readout is the module writing the per-atom (NequIP) or per-edge (Allegro)
        # energies; found by its output field, not its name, which configs may change
        readout, self._edge_readout = None, False
        for child in self._energy_model.modules():
            out_field = getattr(child, "out_field", None)
            if out_field in ("atomic_energy", "edge_energy") and hasattr(child, "field") \
                    and child.field != out_field:
                readout, self._edge_readout = child, out_field == "edge_energy"
                break
        if readout is None:
            raise NotImplementedError(
                f"nequip model {name!r}: no module reading out per-atom ('atomic_energy') or "
                f"per-edge ('edge_energy') energies was found for the noise-head features")
        field = readout.field
        irreps = readout.irreps_in[field]
        self._feature_field = field
        self._scalar_slices = [sl for (_, ir), sl in zip(irreps, irreps.slices(), strict=True)
                               if ir.l == 0 and ir.p == 1]
        if not self._scalar_slices:
            raise ValueError(f"nequip readout input {irreps} has no 0e channels")
        self._feature_dim = sum(sl.stop - sl.start for sl in self._scalar_slices)
        self._captured: torch.Tensor | None = None
        readout.register_forward_pre_hook(self._capture)

    # -- pickling: packaged models' classes live in a torch.package namespace ------------
    def __getstate__(self) -> dict[str, Any]:
        """A packaged model cannot be pickled (its classes are importable only through the
        package's importer), so ChainPool workers rebuild the module from the file and get
        the live parameter values as a state dict."""
        if self.path is None:
            raise TypeError("a NequIPModel built from an in-memory module cannot be pickled; "
                            "load it with load_nequip(path)")
        state = {k: v for k, v in self.__dict__.items()
                 if k not in ("module", "_energy_model", "_transforms", "_captured")}
        state["state_dict"] = {k: v.detach().clone() for k, v in
                               self.module.state_dict().items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state_dict = state.pop("state_dict")
        module = _load_graph_model(Path(state["path"]))
        module.load_state_dict(state_dict)
        # __init__ on self (not on a new object): the feature hook binds to this instance
        NequIPModel.__init__(self, module, name=state["name"], path=state["path"],
                             chemical_species_to_atom_type_map=state["species_map"],
                             frozen=state["frozen"])
        self.__dict__.update({k: v for k, v in state.items()
                              if k not in ("module", "pretrained")})
        self.pretrained = state["pretrained"]

    def _build_transforms(self) -> list[Any]:
        from nequip.integrations.utils import basic_transforms

        return basic_transforms(self.module.metadata, self.r_max, self.type_names,
                                self.species_map)

    def _capture(self, _module: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
        self._captured = inputs[0][self._feature_field]

    def prepare(self, structure: StructureRecord) -> Any:
        """nequip's data dict, built as ``NequIPCalculator`` builds it (type mapping and
        neighbour list transforms of the model), positions and cell in float64 as nequip's
        global dtype has them."""
        from nequip.data import from_ase

        from atomate2_otf.atoms import atoms_from_record

        self.check_elements(structure.numbers)
        data = from_ase(atoms_from_record(structure))
        data = {k: (v.to(torch.float64) if torch.is_floating_point(v) else v)
                for k, v in data.items()}
        for transform in self._transforms:
            data = transform(data)
        return data

    def collate(self, prepared: Sequence[Any]) -> Any:
        """One batched data dict (nequip's ``batched_from_list``: indices offset)."""
        from nequip.data import AtomicDataDict

        return AtomicDataDict.batched_from_list([dict(d) for d in prepared])

    def evaluate(self, batch: Any, *, compute_stress: bool = False,
                 create_graph: bool = False) -> ModelOutput:
        from nequip.data import AtomicDataDict as K

        data = {k: batch[k] for k in self._input_fields if k in batch}
        n_atoms = batch[K.NUM_NODES_KEY].reshape(-1).long()
        n_graphs = int(n_atoms.shape[0])
        graph = batch[K.BATCH_KEY]
        pos = batch[K.POSITIONS_KEY].detach().requires_grad_(True)
        cell = batch[K.CELL_KEY].reshape(n_graphs, 3, 3)
        # nequip's own strain trick (ForceStressOutput): r -> r (1 + eps), h -> h (1 + eps)
        # with a symmetric zero strain eps, so that dE/d eps is the virial.
        strain = torch.zeros(n_graphs, 3, 3, dtype=pos.dtype, device=pos.device,
                             requires_grad=True)
        symmetric = 0.5 * (strain + strain.transpose(-1, -2))
        data[K.POSITIONS_KEY] = pos + torch.bmm(pos.unsqueeze(-2),
                                                symmetric[graph]).squeeze(-2)
        data[K.CELL_KEY] = cell + torch.bmm(cell, symmetric)

        self._captured = None
        out = self._energy_model(data)
        features, self._captured = self._captured, None
        if features is None:  # pragma: no cover - guards against a changed nequip
            raise RuntimeError("nequip's readout features were not captured")
        features = torch.cat([features[:, sl] for sl in self._scalar_slices], dim=-1)
        if self._edge_readout:
            centre = out[K.EDGE_INDEX_KEY][0]
            features = torch.zeros(pos.shape[0], features.shape[-1], dtype=features.dtype,
                                   device=features.device).index_add(0, centre, features)

        energy = out[K.TOTAL_ENERGY_KEY].reshape(-1)
        # retain_graph: the features (same graph) may still be differentiated by the caller
        grad_pos, virial = torch.autograd.grad(
            energy.sum(), [pos, strain], create_graph=create_graph, retain_graph=True,
            materialize_grads=True)
        forces = -grad_pos

        stress = None
        if compute_stress:
            volume = torch.linalg.det(cell).abs()
            # stress only for fully periodic cells (nequip's pbc key: [B, 3])
            stress = periodic_stress(
                virial, volume, batch[K.PBC_KEY].reshape(n_graphs, 3).all(-1).to(pos.device))

        if not create_graph:
            energy, forces = energy.detach(), forces.detach()
            stress = None if stress is None else stress.detach()
        return ModelOutput(energy=energy, forces=forces, stress=stress,
                           features=features.to(torch.float32), n_atoms=n_atoms)

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name}
        if self.path is not None:
            spec["model"] = self.path
        if self.species_map != {t: t for t in self.type_names}:
            spec["chemical_species_to_atom_type_map"] = dict(self.species_map)
        return spec


def load_nequip(model: str | os.PathLike[str] = "nequip-oam-l",
                chemical_species_to_atom_type_map: Mapping[str, str] | None = None,
                frozen: Sequence[str] = ()) -> NequIPModel:
    """Load a NequIP or Allegro model through nequip's loader.

    ``model``: a packaged model (``.nequip.zip``) or training checkpoint (``.ckpt``), a
    nequip.net id (``"nequip.net:mir-group/NequIP-OAM-L:0.1"``) or a short name from
    :data:`NEQUIP_NET_MODELS`; ids and names resolve only from nequip's local cache
    (:func:`resolve_nequip_model`). ``chemical_species_to_atom_type_map``: element symbol ->
    model type name, for models whose type names are not element symbols.
    """
    path = resolve_nequip_model(model)
    module = _load_graph_model(path)
    return NequIPModel(module, name=str(model), path=path,
                       chemical_species_to_atom_type_map=chemical_species_to_atom_type_map,
                       frozen=frozen)
