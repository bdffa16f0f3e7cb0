"""MACE (mace-torch 0.3.16) as a :class:`FoundationModel`: MACE-MP-0 and any MACE checkpoint.

Loading. MACE-MP-0 is asked for by its mace name (``"small"``, ``"medium"``, ``"large"``,
or any other key of mace's ``mace_mp_urls``), which resolves to the file mace's own
``mace_mp`` loader caches (``~/.cache/mace/<name>``, or ``$XDG_CACHE_HOME/mace``). mace would
download a missing file; this adapter checks the cache first and, when the file is not
there, raises :class:`ModelNotCachedError` naming the file and the folder instead, because
on a machine without network the download would only wait for a timeout. Any other MACE
file is loaded by path: a pickled whole module (the usual ``.model``, what ``torch.save``
of a trained MACE writes) or a ``{"config", "state_dict"}`` dictionary (see
:func:`save_mace_state_dict`; it rebuilds the module from its constructor arguments, so it
does not depend on how the installed e3nn pickles its generated code).

Loading a pickled module runs code from the file (``torch.load(weights_only=False)``, as
mace itself does): load only checkpoints you trust.

Evaluation. The batch is one mace ``torch_geometric`` Batch. The adapter calls the MACE
module for the energy only (``compute_force=False``) and takes forces and stress itself by
autograd of the total energy w.r.t. the positions and mace's symmetric displacement, with
``create_graph`` as asked and the graph retained. MACE's own ``get_outputs`` ties
``retain_graph`` to ``create_graph``: in inference it would free the graph, so the features
could no longer be differentiated, and in training it always pays for the double backward
graph even when only forces are wanted. The derivatives are mace's: forces
``-dE/dr``, stress ``(1/V) dE/d(strain)`` (ASE sign), as ``compute_forces_virials``.

Features for the noise head are the invariant (``0e``) channels of every interaction
layer's node features, concatenated: MACE-MP-0 medium gives 128 + 128 = 256, the width
the paper's noise head takes (METHOD.md sec. 1), and the same channels that mace's
``MACECalculator.get_descriptors(invariants_only=True)`` returns.

Precision. MACE-MP-0 checkpoints are stored in float64 (and mace's older ``mace_mp``
defaulted to it); this adapter runs in float32 unless asked otherwise, deliberately:

- the posterior stores every chain's parameters as float32 in its checkpoints and its noise
  head is float32, so float64 parameters would be rounded at every checkpoint anyway;
- the SGHMC noise moves each parameter by ~sqrt(2 gamma) >> float32 rounding (1e-7
  relative), and the energy error the method resolves (K = 0.5..15 kcal/mol) is far above
  float32 rounding of a total energy (about 1e-7 relative: 1e-4 eV at 1000 eV);
- on CPU a float32 MACE forward and training step cost about half of float64, and the
  M-chain state (and its checkpoints) half the memory: 4.7 M parameters x 8 chains.

``dtype="float64"`` is available for tight comparisons (geometry optimisation, tests);
the features are then cast to the default dtype of the noise head.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# mace first: importing it sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, without which e3nn 0.4.4
# (mace's pin) cannot even import under torch >= 2.6 (its constants.pt is a pickle). This
# also holds in a ChainPool worker, which imports this module before unpickling the MACE
# module inside the model. The variable only affects torch.load calls that do not pass
# weights_only; this package's own checkpoint loads pass weights_only=True.
import mace  # noqa: F401
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

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


#: the 89 elements of MACE-MP-0 (MPtrj): H..Bi and Ac..Pu
MACE_MP_NUMBERS = tuple(range(1, 84)) + tuple(range(89, 95))


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """torch's default dtype inside, restored even on error (mace's own context manager
    does not restore it when the body raises, e.g. on a bad structure)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def mace_mp_cache_path(name: str) -> tuple[Path, str]:
    """The file mace's ``mace_mp(model=name)`` reads from its cache, and the address it
    would download it from; computed exactly as ``download_mace_mp_checkpoint`` does."""
    from mace.calculators.foundations_models import mace_mp_urls
    from mace.tools.utils import get_cache_dir

    if name not in mace_mp_urls:
        raise ValueError(f"unknown MACE-MP model name {name!r}; mace knows: "
                         f"{', '.join(sorted(mace_mp_urls))} (or give a file path)")
    url = mace_mp_urls[name]
    file_name = "".join(c for c in os.path.basename(url) if c.isalnum() or c in "_")
    return Path(get_cache_dir()) / file_name, url


def resolve_mace_checkpoint(model: str | os.PathLike) -> Path:
    """A MACE-MP-0 name or a path -> an existing file, never downloading.

    Names go through mace's own ``download_mace_mp_checkpoint`` only once the cached file
    is known to exist, so mace returns the path without touching the network.
    """
    path = Path(model).expanduser()
    if path.is_file():
        return path
    from mace.calculators.foundations_models import download_mace_mp_checkpoint, mace_mp_urls

    if str(model) not in mace_mp_urls:
        raise FileNotFoundError(
            f"MACE checkpoint {str(model)!r} is neither a file nor a MACE-MP model name "
            f"({', '.join(sorted(mace_mp_urls))})")
    cached, url = mace_mp_cache_path(str(model))
    if not cached.is_file():
        raise ModelNotCachedError(
            f"MACE-MP model {str(model)!r} is not in mace's cache and is not downloaded "
            f"here (no network): place the file {cached.name!r} in the folder "
            f"{str(cached.parent)!r} (full path {str(cached)!r}; mace's cache folder is "
            f"$XDG_CACHE_HOME/mace, default ~/.cache/mace). Get it on a machine with "
            f"network from {url} and rename it to {cached.name!r}, or pass the file's path "
            f"as model=")
    resolved = Path(download_mace_mp_checkpoint(str(model)))
    if resolved != cached:  # pragma: no cover - guards against a changed mace
        logger.warning("mace resolved %r to %s, expected %s", model, resolved, cached)
    return resolved


def load_mace_module(path: str | os.PathLike) -> torch.nn.Module:
    """A MACE module from a file: a pickled module (``.model``) or a ``{"config",
    "state_dict"}`` dictionary written by :func:`save_mace_state_dict`."""
    obj = torch.load(str(path), map_location="cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):
        return obj
    if isinstance(obj, dict) and {"config", "state_dict"} <= set(obj):
        import mace.modules as modules

        class_name = obj.get("model_class", "ScaleShiftMACE")
        cls = getattr(modules, class_name, None)
        if cls is None:
            raise ValueError(f"{path}: unknown MACE model class {class_name!r}")
        # build in the stored precision so that loading the state dict rounds nothing
        dtypes = [v.dtype for v in obj["state_dict"].values() if torch.is_floating_point(v)]
        with default_dtype(dtypes[0] if dtypes else torch.get_default_dtype()):
            module = cls(**obj["config"])
        module.load_state_dict(obj["state_dict"])
        return module
    raise TypeError(
        f"{path}: not a MACE checkpoint (expected a pickled MACE module or a dict with "
        f"'config' and 'state_dict'; got {type(obj).__name__}). A training checkpoint "
        f"(checkpoints/*.pt) holds no architecture: convert it with mace's tools first")


def save_mace_state_dict(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Write ``module`` as ``{"model_class", "config", "state_dict"}``, loadable by
    :func:`load_mace_module`. The config is mace's ``extract_config_mace_model``."""
    from mace.tools.scripts_utils import extract_config_mace_model

    config = extract_config_mace_model(module)
    if "error" in config:
        raise ValueError(config["error"])
    torch.save({"model_class": type(module).__name__, "config": config,
                "state_dict": module.state_dict()}, str(path))


@dataclass
class MACEBatch:
    """A collated batch: mace's batched graph as a dict (floats in the model dtype) and
    which structures are fully periodic (stress is defined only there)."""

    data: dict[str, torch.Tensor]
    periodic: torch.Tensor


class MACEModel(FoundationModel):
    """MACE with total energies in eV, forces eV/A, stress eV/A^3 (ASE sign).

    Stress rows of structures that are not fully periodic are NaN (see
    :func:`~atomate2_otf.models.base.periodic_stress`).
    """

    family = "mace"
    # METHOD.md (the paper's MACE-MP-0 runs): sigma_TL 0.5, gamma_0 1e-3, a = 1.5, b = 10.
    defaults = FamilyDefaults(sigma_tl=0.5, step_size=1e-3, calibration_a=1.5,
                              calibration_b=10.0)

    def __init__(self, module: torch.nn.Module, name: str = "mace",
                 checkpoint: str | None = None, dtype: str = "float32",
                 head: str | None = None, frozen: Sequence[str] = ()) -> None:
        from e3nn import o3

        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        for attribute in ("atomic_numbers", "r_max", "products", "interactions"):
            if not hasattr(module, attribute):
                raise TypeError(f"{type(module).__name__} is not a MACE energy model "
                                f"(no {attribute!r}); dipole/polar MACE is not supported")
        module = module.to(device="cpu", dtype=_DTYPES[dtype])
        module.eval()  # MACE has no dropout or batch norm; only the grads look at training
        heads = list(getattr(module, "heads", None) or ["Default"])
        if head is None:
            defaults = [h for h in heads if h.lower() == "default"]
            head = defaults[0] if defaults else heads[-1]
            if len(heads) > 1:
                logger.info("MACE model has heads %s: using %r", heads, head)
        elif head not in heads:
            raise ValueError(f"head {head!r} is not one of the model's heads {heads}")
        super().__init__(module, name, frozen=frozen)
        self.checkpoint = checkpoint
        self.dtype = dtype
        self.head = head
        self.heads = heads
        self.cutoff = float(module.r_max)
        self.numbers = tuple(int(z) for z in module.atomic_numbers)
        #: further keyword arguments of the factory, for spec() (e.g. a random model's seed)
        self.factory_kwargs: dict[str, Any] = {}

        # invariant channels (0e) of each layer's output inside node_feats (concatenated)
        columns: list[torch.Tensor] = []
        offset = 0
        for product in module.products:
            irreps = o3.Irreps(str(product.linear.irreps_out))
            for (_, ir), sl in zip(irreps, irreps.slices(), strict=True):
                if ir.l == 0 and ir.p == 1:
                    columns.append(torch.arange(offset + sl.start, offset + sl.stop))
            offset += irreps.dim
        if not columns:
            raise ValueError("MACE node features have no 0e channels")
        self._feature_index = torch.cat(columns)
        self._node_feats_dim = offset

    # -- FoundationModel ---------------------------------------------------------------
    def _move_extras(self, device: torch.device) -> None:
        self._feature_index = self._feature_index.to(device)

    @property
    def feature_dim(self) -> int:
        return int(self._feature_index.numel())

    @property
    def supported_numbers(self) -> frozenset[int]:
        return frozenset(self.numbers)

    def prepare(self, structure: StructureRecord) -> Any:
        """One mace ``AtomicData`` built as ``MACECalculator`` builds it (float64 geometry,
        cast to the model dtype at collation)."""
        from mace import data as mace_data
        from mace.tools import utils

        from atomate2_otf.atoms import atoms_from_record

        # mace's z_table lookup would fail obscurely on an element it does not cover
        self.check_elements(structure.numbers)
        atoms = atoms_from_record(structure)
        with default_dtype(torch.float64):
            config = mace_data.config_from_atoms(
                atoms, key_specification=mace_data.KeySpecification(), head_name=self.head)
            graph = mace_data.AtomicData.from_config(
                config, z_table=utils.AtomicNumberTable(list(self.numbers)),
                cutoff=self.cutoff, heads=self.heads)
        return graph, bool(structure.periodic)

    def collate(self, prepared: Sequence[Any]) -> MACEBatch:
        """One mace Batch for the whole list (indices offset), floats in the model dtype."""
        from mace.tools import torch_geometric

        batch = torch_geometric.Batch.from_data_list([graph for graph, _ in prepared])
        dtype = _DTYPES[self.dtype]
        data = {key: (value.to(dtype) if torch.is_floating_point(value) else value)
                for key, value in batch.to_dict().items() if torch.is_tensor(value)}
        periodic = torch.tensor([flag for _, flag in prepared], dtype=torch.bool)
        return MACEBatch(data=data, periodic=periodic)

    def evaluate(self, batch: MACEBatch, *, compute_stress: bool = False,
                 create_graph: bool = False) -> ModelOutput:
        # mace writes into its input dict (positions, shifts) and marks the positions as
        # requiring grad: work on a shallow copy with fresh position leaves, so that a
        # cached batch can be evaluated again
        data = dict(batch.data)
        positions = data["positions"].detach().clone().requires_grad_(True)
        data["positions"] = positions
        out = self.module(data, training=False, compute_force=False, compute_stress=False,
                          compute_displacement=compute_stress)
        energy = out["energy"].reshape(-1)
        features = out["node_feats"]
        if features is None or features.shape[-1] != self._node_feats_dim:
            raise RuntimeError(  # pragma: no cover - guards against a changed mace
                f"MACE node_feats has shape {None if features is None else features.shape}, "
                f"expected [N, {self._node_feats_dim}]")
        features = features[:, self._feature_index]
        if features.dtype != torch.get_default_dtype():
            features = features.to(torch.get_default_dtype())  # the noise head's dtype

        inputs = [positions] + ([out["displacement"]] if compute_stress else [])
        # retain_graph: the features (same graph) may still be differentiated by the caller
        grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph,
                                    retain_graph=True, materialize_grads=True)
        forces = -grads[0]
        stress = None
        if compute_stress:
            # mace: stress = (1/V) dE/d(symmetric displacement), ASE's sign
            cell = data["cell"].reshape(-1, 3, 3)
            volume = torch.linalg.det(cell).abs()
            stress = periodic_stress(grads[1], volume, batch.periodic.to(volume.device))
        ptr = data["ptr"]
        n_atoms = (ptr[1:] - ptr[:-1]).long()
        if not create_graph:
            energy, forces = energy.detach(), forces.detach()
            stress = None if stress is None else stress.detach()
        return ModelOutput(energy=energy, forces=forces, stress=stress, features=features,
                           n_atoms=n_atoms)

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name}
        if self.checkpoint is not None:
            spec["model"] = self.checkpoint
        if self.dtype != "float32":
            spec["dtype"] = self.dtype
        if len(self.heads) > 1:
            spec["head"] = self.head
        spec.update(self.factory_kwargs)
        return spec


def load_mace(model: str | os.PathLike = "medium", dtype: str = "float32",
              head: str | None = None) -> MACEModel:
    """Load MACE-MP-0 by mace name (``"small"``, ``"medium"``, ``"large"``, ...) from mace's
    cache, or any MACE checkpoint file by path; never downloads (see the module docstring).

    All parameters are sampled (MACE's E0s and scale/shift are buffers, not parameters).
    """
    path = resolve_mace_checkpoint(model)
    logger.info("loading MACE checkpoint %s (%s)", path, dtype)
    module = load_mace_module(path)
    checkpoint = str(model) if not Path(str(model)).expanduser().is_file() else str(path)
    return MACEModel(module, name="mace", checkpoint=checkpoint, dtype=dtype, head=head)
