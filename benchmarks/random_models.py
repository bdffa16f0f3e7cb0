"""Randomly initialised models shaped like released foundation potentials, for cost runs.

Weights of the released models cannot be downloaded here, and cost does not depend on the
weights' values, so ``chain_cost.py`` measures these instead:

- ``nequip_paper``: the paper's NequIP shape (64 invariant features, l_max 2, 4 layers,
  r_max 5 A; ~5.0 M parameters), packaged as a ``.nequip.zip`` by nequip's own tools;
- ``esen_sm``: fairchem's eSEN-sm conserving shape (K4L2: 128 channels, l_max 2, 4
  layers, 6 A cutoff; ~6.3 M parameters), which is also the active-parameter shape of
  UMA-S once its experts are merged for one composition;
- ``uma_s``: UMA-S with its 32 unmerged experts (very large for 8 chains on a CPU).

Usage: python benchmarks/chain_cost.py --models random_models:nequip_paper ...
(the script's folder is on ``sys.path``, so ``random_models`` imports as a module).
Files are cached under ``$OTF_RANDOM_MODELS`` (default: ~/.cache/atomate2_otf/random).
"""

from __future__ import annotations

import os
from pathlib import Path

from atomate2_otf.models.base import FoundationModel

_CACHE = Path(os.environ.get("OTF_RANDOM_MODELS",
                             Path.home() / ".cache" / "atomate2_otf" / "random"))
#: elements of the cost systems (ethanol, Si) plus Cu for the tests' EMT data
_TYPES = ("H", "C", "O", "Si", "Cu")


def nequip_paper() -> FoundationModel:
    from atomate2_otf.models.nequip import load_nequip
    from tests.random_models.nequip_random import package_random_model

    path = _CACHE / "nequip-paper" / "paper.nequip.zip"
    if not path.is_file():
        path = package_random_model(path.parent, "paper", type_names=_TYPES, r_max=5.0)
    return load_nequip(path)


def _fairchem(shape: str, datasets: tuple[str, ...], task: str) -> FoundationModel:
    from atomate2_otf.models.fairchem import load_fairchem
    from tests.random_models.fairchem_random import save_random_checkpoint

    path = _CACHE / f"fairchem-{shape}.pt"
    if not path.is_file():
        save_random_checkpoint(path, shape, datasets=datasets)
    return load_fairchem(path, task_name=task)


def esen_sm() -> FoundationModel:
    return _fairchem("esen-sm", ("omat",), "omat")


def uma_s() -> FoundationModel:
    return _fairchem("uma-s", ("omat", "omol", "oc20", "odac", "omc"), "omat")
