"""Where models, chains and data live: the ``device`` setting of a run (issue 18).

A device is a run setting, not a method setting: on a CPU it changes no number, and a
checkpoint written on one device loads on any other. Accepted values:

- ``"cpu"`` (the default everywhere);
- ``"cuda"``: this process's current CUDA device (``cuda:0`` unless set otherwise); for a
  run's chains, every visible GPU (one worker each, several chains per worker when there
  are more chains than GPUs);
- ``"cuda:N"``: the N-th *visible* GPU, so ``CUDA_VISIBLE_DEVICES`` is respected and a
  FireWorks or jobflow-remote GPU worker needs no other setting;
- ``"auto"``: ``"cuda"`` when torch finds a CUDA device, else ``"cpu"``: one setting for a
  flow whose jobs may run on CPU and on GPU workers.

:func:`check_device` checks the spelling only (a Maker may build a flow on a laptop that
runs on a GPU node); :func:`resolve_device` checks the machine it runs on.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: what the error messages say is accepted
ACCEPTED = ("'cpu', 'cuda', 'cuda:N' (N = 0, 1, ... among the visible GPUs) or 'auto' "
            "(CUDA when available, else CPU)")
_SPEC = re.compile(r"^(cpu|auto|cuda|cuda:\d+)$")


def check_device(device: Any) -> str:
    """``device`` as a normalised string, or a ValueError naming it and what is accepted.

    No CUDA query: the flow may be built on one machine and run on another."""
    text = str(device) if isinstance(device, torch.device) else device
    if isinstance(text, str) and _SPEC.match(text):
        return text
    raise ValueError(f"device must be {ACCEPTED}, got {device!r}")


def _visible() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")


def resolve_device(device: Any) -> torch.device:
    """The ``torch.device`` that ``device`` means on this machine; a ValueError (one line:
    the value, why, what is accepted) if it names a GPU this process cannot see."""
    if isinstance(device, torch.device) and device.type not in ("cpu", "cuda"):
        return device  # e.g. "meta" in the device-discipline tests: passed through
    spec = check_device(device)
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = ("a CPU-only build of torch " + torch.__version__ if torch.version.cuda is None
               else f"torch {torch.__version__} finds no CUDA device, "
                    f"CUDA_VISIBLE_DEVICES={_visible()}")
        raise ValueError(f"device {spec!r} is not available here ({why}): use 'cpu' or "
                         f"'auto' (CUDA when available, else CPU)")
    if spec in ("cuda", "auto"):
        return torch.device("cuda", torch.cuda.current_device())
    index, count = int(spec.split(":")[1]), torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device {spec!r} is not available here ({count} CUDA device(s) "
                         f"visible, CUDA_VISIBLE_DEVICES={_visible()}): use 'cuda:0' to "
                         f"'cuda:{count - 1}', 'cuda', 'cpu' or 'auto'")
    return torch.device("cuda", index)


def pool_devices(device: Any, n_chains: int, n_workers: int | None,
                 available_cpus: int) -> list[torch.device]:
    """One device per chain worker process; an empty list: the serial loop in this process.

    - CPU: ``n_workers`` processes (None: one per CPU, at most one per chain).
    - ``"cuda"``/``"auto"`` on CUDA: one worker per visible GPU, at most one per chain, or
      ``n_workers`` workers spread round-robin over the GPUs; one GPU and no ``n_workers``:
      serial (the chains take turns on that GPU, in this process).
    - ``"cuda:N"``: that GPU alone; ``n_workers`` > 1 puts that many workers on it.
    """
    here = resolve_device(device)
    if here.type != "cuda":
        workers = min(available_cpus, n_chains) if n_workers is None else int(n_workers)
        return [here] * workers if workers > 1 else []
    if check_device(device) in ("cuda", "auto"):
        gpus = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    else:
        gpus = [here]
    workers = min(len(gpus), n_chains) if n_workers is None else int(n_workers)
    if workers <= 1:
        return []
    return [gpus[w % len(gpus)] for w in range(workers)]
