"""Per-process resources that jobs share: loaded models and chain pools.

Loading a foundation model (seconds) or spawning a :class:`ChainPool` (seconds, plus a model
copy per worker) at every MD segment would dominate a run made of hundreds of short jobs,
so a process keeps them for the jobs it executes (run_locally runs them all in one process;
a FireWorks worker runs many). The cache is an explicit object, created on first use and
closed at interpreter exit; nothing else is process-global.
"""

from __future__ import annotations

import atexit
import json
from typing import TYPE_CHECKING, Any

from atomate2_otf.runtime import available_cpus

if TYPE_CHECKING:
    from atomate2_otf.bnn.parallel import ChainPool
    from atomate2_otf.models.base import FoundationModel


class Resources:
    """Models by spec and one chain pool per model, kept for the life of the process."""

    def __init__(self) -> None:
        self._models: dict[str, FoundationModel] = {}
        self._pools: dict[tuple[int, int], ChainPool] = {}

    def model(self, name: str, device: str = "cpu", **kwargs: Any) -> FoundationModel:
        """The model ``name`` on ``device`` (resolved here: ``"auto"`` is this machine's)."""
        from atomate2_otf.devices import resolve_device
        from atomate2_otf.models.base import load_model

        target = resolve_device(device)
        key = json.dumps({"name": name, "device": str(target), **kwargs}, sort_keys=True,
                         default=str)
        if key not in self._models:
            self._models[key] = load_model(name, device=target, **kwargs)
        return self._models[key]

    def pool(self, model: FoundationModel, n_chains: int,
             n_workers: int | None, device: str = "cpu") -> ChainPool | None:
        """A pool for ``model``: on the CPU ``n_workers`` processes (None: one per CPU, at
        most one per chain), on CUDA one per visible GPU (see
        :func:`atomate2_otf.devices.pool_devices`); None when that would be a single
        process (the serial path is faster)."""
        from atomate2_otf.devices import pool_devices

        devices = [str(d) for d in pool_devices(device, n_chains, n_workers,
                                                available_cpus())]
        if not devices:
            return None
        key = (id(model), tuple(devices))
        if key not in self._pools:
            from atomate2_otf.bnn.parallel import ChainPool

            self._pools[key] = ChainPool(model, n_workers=len(devices), devices=devices)
        return self._pools[key]

    def close(self, timeout: float = 10.0) -> None:
        """Stop the pools' workers (``timeout`` 0: at once, as after an interruption)."""
        for pool in self._pools.values():
            pool.close(timeout=timeout)
        self._pools.clear()


_resources: Resources | None = None


def resources() -> Resources:
    """This process's :class:`Resources` (created on first use, closed at exit)."""
    global _resources
    if _resources is None:
        _resources = Resources()
        atexit.register(_resources.close)
    return _resources
