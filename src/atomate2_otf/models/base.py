"""The small interface every foundation-model family implements, and the model registry.

The Bayesian layer (`atomate2_otf.bnn`) only needs four things from a potential:

1. its trainable parameters (one ``torch.nn.Module``), which the posterior overwrites with
   each chain's sample before evaluating it;
2. a way to turn structures into the model's own input once (graphs are expensive to
   build and the data set is fixed between updates) and to collate several of them into
   *one batched graph*;
3. energy, forces and (periodic) stress of a batch, differentiable w.r.t. the parameters
   when training;
4. rotation-invariant per-atom features from the same forward pass, for the noise head.

Devices: a factory builds its model on the CPU; :meth:`FoundationModel.to` moves it, and
:meth:`FoundationModel.batch_to` moves a collated batch there (``prepare`` stays on the CPU:
graphs are built once and cached). A family with state outside its module (index tensors,
normalisers) moves it in :meth:`FoundationModel._move_extras`.

A new family is one module in this package that subclasses :class:`FoundationModel` and
calls :func:`register_model`.
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from atomate2_otf.records import StructureRecord

logger = logging.getLogger(__name__)


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with its tensors on ``device``: a tensor or anything with ``.to(device)``
    (torch_geometric batches, CHGNet graphs, fairchem AtomicData), dataclasses, dicts,
    lists and tuples of them; other values as they are."""
    if callable(getattr(obj, "to", None)) and not isinstance(obj, type):
        return obj.to(device)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: to_device(getattr(obj, f.name), device)
                                           for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, dict):
        return {key: to_device(value, device) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(value, device) for value in obj)
    return obj


class ModelNotCachedError(FileNotFoundError):
    """A named model's weights are not in the local cache and nothing may be downloaded;
    the message says which file to place where."""


@dataclass(frozen=True)
class FamilyDefaults:
    """Per-architecture defaults of the method (METHOD.md sections 2, 3 and 5).

    sigma_tl: std of the transfer-learning prior around the pretrained weights.
    step_size: SGHMC gamma_0 of the cosine schedule.
    calibration_a, calibration_b: shape and rate of the Gamma prior on the precision.
    """

    sigma_tl: float
    step_size: float
    calibration_a: float
    calibration_b: float


@dataclass
class ModelOutput:
    """One batched evaluation, in eV, eV/A and eV/A^3 (ASE stress sign).

    energy: [B] total energies. forces: [N, 3] for all atoms of the batch, concatenated.
    stress: [B, 3, 3] or None when not requested. features: [N, F] invariant per-atom
    features. n_atoms: [B] atoms per structure (long), to split per-atom tensors.
    """

    energy: torch.Tensor
    forces: torch.Tensor
    stress: torch.Tensor | None
    features: torch.Tensor
    n_atoms: torch.Tensor


def periodic_stress(virial: torch.Tensor, volume: torch.Tensor,
                    periodic: torch.Tensor) -> torch.Tensor:
    """``virial / V`` ([B, 3, 3], eV/A^3) for fully periodic cells, NaN rows elsewhere.

    The NaN is produced behind ``torch.where`` with a safe volume, so that it never reaches
    a gradient (the likelihood masks those rows; a NaN in the backward would poison every
    parameter).
    """
    periodic = periodic & (volume > 0)
    safe = torch.where(periodic, volume, torch.ones_like(volume))
    return torch.where(periodic[:, None, None], virial / safe[:, None, None],
                       torch.full_like(virial, float("nan")))


class FoundationModel(ABC):
    """A pretrained potential wrapped for functional, batched, differentiable use."""

    #: registry key of the family, e.g. "chgnet"
    family: ClassVar[str]
    #: method defaults for this family
    defaults: ClassVar[FamilyDefaults]

    def __init__(self, module: torch.nn.Module, name: str,
                 frozen: Sequence[str] = ()) -> None:
        self.module = module
        self.name = name
        names = {n for n, _ in module.named_parameters()}
        unknown = sorted(set(frozen) - names)
        if unknown:
            raise ValueError(f"frozen parameter name(s) {unknown} are not parameters of "
                             f"{name!r}")
        #: parameter names kept at their pretrained values (not sampled, no gradients)
        self.frozen = tuple(n for n, _ in module.named_parameters() if n in set(frozen))
        for n, parameter in module.named_parameters():
            parameter.requires_grad_(n not in self.frozen)
        # The posterior overwrites the live parameters with each chain's sample; the prior
        # centre must not depend on which chain ran last, so keep the pretrained copy.
        self.pretrained = torch.nn.utils.parameters_to_vector(
            self.parameters()).detach().clone()

    # -- what subclasses provide -------------------------------------------------------
    # feature_dim and supported_numbers: either set ``_feature_dim`` and ``_numbers`` in
    # __init__ (read from a loaded checkpoint) or override the properties.
    _feature_dim: int
    _numbers: frozenset[int]

    @property
    def feature_dim(self) -> int:
        """Width of the per-atom invariant features returned in ``ModelOutput.features``."""
        return self._feature_dim

    @property
    def supported_numbers(self) -> frozenset[int]:
        """Atomic numbers the pretrained model was trained on."""
        return self._numbers

    @abstractmethod
    def prepare(self, structure: StructureRecord) -> Any:
        """Convert one structure to the model's own input (graph); cached by callers."""

    @abstractmethod
    def collate(self, prepared: Sequence[Any]) -> Any:
        """Join prepared structures into one batched input (never a loop at evaluation)."""

    @abstractmethod
    def evaluate(
        self, batch: Any, *, compute_stress: bool = False, create_graph: bool = False
    ) -> ModelOutput:
        """Energy, forces (always), stress (if asked) and features of a batch.

        ``create_graph=True`` keeps the graph of the forces so that a loss on them can be
        differentiated w.r.t. the parameters (training); inference passes False.
        """

    # -- shared helpers -----------------------------------------------------------------
    def check_elements(self, numbers: Sequence[int] | np.ndarray) -> None:
        """Raise ValueError if a structure holds an element the model does not cover."""
        unknown = sorted(set(int(z) for z in np.asarray(numbers).reshape(-1))
                         - self.supported_numbers)
        if unknown:
            from ase.data import chemical_symbols

            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
            covered = ", ".join(chemical_symbols[z] for z in sorted(self.supported_numbers))
            raise ValueError(
                f"model {self.name!r} does not cover element(s) {names}; "
                f"it covers: {covered}"
            )

    def parameters(self) -> list[torch.nn.Parameter]:
        """Trainable (sampled) parameters in a fixed order (the order of the flat vectors);
        the ``frozen`` ones are left out."""
        return [p for n, p in self.module.named_parameters() if n not in self.frozen]

    def spec(self) -> dict[str, Any]:
        """What :func:`load_model` needs to rebuild this model (stored in checkpoints; no
        device: a checkpoint loads on any)."""
        return {"name": self.name}

    # -- devices --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the parameters (and the pretrained copy) live."""
        return self.pretrained.device

    def to(self, device: str | torch.device) -> FoundationModel:
        """Move the model to ``device`` (a setting of :mod:`atomate2_otf.devices`, or a
        ``torch.device``), in place; returns ``self``. Move a model before a posterior is
        built on it: the posterior keeps its chains where the model was."""
        from atomate2_otf.devices import resolve_device

        target = resolve_device(device)
        if target != self.device:
            self.module.to(target)
            self.pretrained = self.pretrained.to(target)
            self._move_extras(target)
            logger.info("model %r moved to %s", self.name, target)
        return self

    def _move_extras(self, device: torch.device) -> None:
        """Move state that lives outside ``self.module`` (none by default)."""

    def batch_to(self, batch: Any, device: torch.device | None = None) -> Any:
        """A collated batch on ``device`` (default: the model's); see :func:`to_device`."""
        return to_device(batch, self.device if device is None else device)


# Built-in names map to "module:factory" so that listing them needs no optional extra;
# the extra is imported only when that model is asked for.
_BUILTIN: dict[str, tuple[str, dict[str, Any]]] = {
    "chgnet": ("atomate2_otf.models.chgnet:load_chgnet", {"version": "0.3.0"}),
    "chgnet-0.3.0": ("atomate2_otf.models.chgnet:load_chgnet", {"version": "0.3.0"}),
    "chgnet-0.2.0": ("atomate2_otf.models.chgnet:load_chgnet", {"version": "0.2.0"}),
    "sevenn-0": ("atomate2_otf.models.sevenn:load_sevenn", {"checkpoint": "7net-0"}),
    # weights from the families' own caches (never downloaded here; a miss names the file)
    "mace-mp-0-small": ("atomate2_otf.models.mace:load_mace", {"model": "small"}),
    "mace-mp-0-medium": ("atomate2_otf.models.mace:load_mace", {"model": "medium"}),
    "mace-mp-0-large": ("atomate2_otf.models.mace:load_mace", {"model": "large"}),
    "nequip-oam-l": ("atomate2_otf.models.nequip:load_nequip", {"model": "nequip-oam-l"}),
    "allegro-oam-l": ("atomate2_otf.models.nequip:load_nequip", {"model": "allegro-oam-l"}),
    "uma-s-1p1": ("atomate2_otf.models.fairchem:load_fairchem",
                  {"model": "uma-s-1p1", "task_name": "omat"}),
    "uma-s-1p2": ("atomate2_otf.models.fairchem:load_fairchem",
                  {"model": "uma-s-1p2", "task_name": "omat"}),
    "esen-sm-conserving-all-omol": ("atomate2_otf.models.fairchem:load_fairchem",
                                    {"model": "esen-sm-conserving-all-omol",
                                     "task_name": "omol"}),
}
_EXTRA_OF_MODULE = {"atomate2_otf.models.sevenn": "sevenn",
                    "atomate2_otf.models.nequip": "nequip",
                    "atomate2_otf.models.fairchem": "fairchem",
                    "atomate2_otf.models.mace": "mace"}
_REGISTRY: dict[str, Callable[..., FoundationModel]] = {}


def register_model(name: str, factory: Callable[..., FoundationModel]) -> None:
    """Make ``load_model(name, **kwargs)`` build a model with ``factory(**kwargs)``."""
    _REGISTRY[name] = factory


def registered_models() -> list[str]:
    """Names accepted by :func:`load_model`."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def is_import_path(name: Any) -> bool:
    """``"package.module:factory"``: a model any process can build without registering it
    first (worker processes of FireWorks or a ChainPool do not share a registry)."""
    if not isinstance(name, str) or name.count(":") != 1:
        return False
    module_name, factory_name = name.split(":")
    return all(part.isidentifier() for part in module_name.split(".")) and \
        factory_name.isidentifier()


def check_model_name(name: Any) -> None:
    """ValueError naming ``name`` and what is accepted, before any model is loaded."""
    if isinstance(name, str) and (name in _REGISTRY or name in _BUILTIN or is_import_path(name)):
        return
    raise ValueError(
        f"unknown model name {name!r}; registered models are: "
        f"{', '.join(registered_models())} (or give an import path 'package.module:factory')"
    )


def load_model(name: str, device: str | torch.device = "cpu", **kwargs: Any) -> FoundationModel:
    """Build a foundation model by registered name (e.g. ``"chgnet"``, ``"sevenn-0"``) or by
    import path ``"package.module:factory"`` (the factory takes ``**kwargs``), on ``device``
    (:mod:`atomate2_otf.devices`; checked before anything is loaded)."""
    from atomate2_otf.devices import resolve_device

    where = resolve_device(device)
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name](**kwargs).to(where)
    check_model_name(name)
    if name in _BUILTIN:
        target, defaults = _BUILTIN[name]
    else:
        target, defaults = name, {}
    module_name, factory_name = target.split(":")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        extra = _EXTRA_OF_MODULE.get(module_name, "all")
        raise ImportError(
            f"model {name!r} needs an optional dependency that is not installed ({err}); "
            f"install it with: pip install 'atomate2-otf[{extra}]'"
            + (" in an environment of its own (mace-torch pins e3nn==0.4.4, which sevenn, "
               "nequip and fairchem cannot share)" if extra == "mace" else "")
        ) from err
    factory = getattr(module, factory_name, None)
    if factory is None:
        raise ValueError(f"model {name!r}: module {module_name!r} has no {factory_name!r}")
    model = factory(**{**defaults, **kwargs})
    model.name = name
    return model.to(where)
