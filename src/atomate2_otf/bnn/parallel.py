"""Run the M chains of a posterior update in worker processes.

The chains of an update are independent (each has its own random streams, METHOD.md sec. 3),
so they parallelise perfectly across processes, as the reference code does with one process
per GPU. On a CPU, where one chain's step on a small molecule is bound by Python and
dispatch overhead rather than arithmetic, whole processes use the cores far better than
torch's intra-op threads. Workers are spawned (safe with torch and OpenMP), keep the model
loaded between updates, and receive the posterior as checkpoint bytes, so a worker runs
exactly the code of :meth:`Posterior.run_chain` and the samples equal the serial ones.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from atomate2_otf.bnn.posterior import Posterior
    from atomate2_otf.bnn.sghmc import SGHMCConfig
    from atomate2_otf.models.base import FoundationModel

logger = logging.getLogger(__name__)

_PROGRESS_EVERY = 25


def _worker_main(model: FoundationModel, threads: int, tasks: Any, results: Any) -> None:
    """Worker loop: rebuild the posterior from bytes, run the chains it is given."""
    from atomate2_otf.bnn.posterior import Posterior
    from atomate2_otf.bnn.sghmc import SGHMCConfig

    torch.set_num_threads(threads)
    while True:
        message = tasks.get()
        if message is None:
            return
        token, blob, chains, config_dict = message
        try:
            posterior = Posterior.from_bytes(blob, model=model)
            config = SGHMCConfig(**config_dict)

            def progress(chain: int, t: int) -> None:
                if (t + 1) % _PROGRESS_EVERY == 0 or t + 1 == config.n_steps:
                    results.put((token, "progress", chain, t))

            for chain in chains:
                posterior.run_chain(chain, config, progress)
                results.put((token, "chain", chain, posterior.state.theta[chain].clone(),
                             posterior.state.v[chain].clone(),
                             posterior.state.v_hat[chain].clone(),
                             posterior.rngs[chain].get_state()))
        except Exception as err:  # report, keep the worker alive for the next update
            logger.exception("chain worker failed")
            results.put((token, "error", repr(err)))


class ChainPool:
    """A pool of processes that run posterior updates chain by chain.

    Args:
        model: the foundation model (sent to each worker once, at start).
        n_workers: processes; default: the CPUs this process may use.
        threads_per_worker: torch threads in each worker (1 is best for small systems).
    """

    def __init__(self, model: FoundationModel, n_workers: int | None = None,
                 threads_per_worker: int = 1) -> None:
        if n_workers is None:
            n_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
                else (os.cpu_count() or 1)
        if int(n_workers) < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers!r}")
        if int(threads_per_worker) < 1:
            raise ValueError(f"threads_per_worker must be >= 1, got {threads_per_worker!r}")
        context = mp.get_context("spawn")
        self._results = context.Queue()
        self._tasks = [context.Queue() for _ in range(int(n_workers))]
        self._workers = [
            context.Process(target=_worker_main, args=(model, int(threads_per_worker), q,
                                                       self._results), daemon=True)
            for q in self._tasks
        ]
        for worker in self._workers:
            worker.start()
        self._token = 0

    @property
    def n_workers(self) -> int:
        return len(self._workers)

    def update(self, posterior: Posterior, config: SGHMCConfig,
               callback: Callable[[int, int], None] | None = None) -> None:
        """Run one update of every chain of ``posterior`` in the workers, in place."""
        self._token += 1
        blob = posterior.to_bytes()
        n_chains = posterior.n_chains
        assignment = [list(range(w, n_chains, self.n_workers)) for w in range(self.n_workers)]
        for q, chains in zip(self._tasks, assignment, strict=True):
            if chains:
                q.put((self._token, blob, chains, config.to_dict()))
        pending = set(range(n_chains))
        while pending:
            try:
                message = self._results.get(timeout=5.0)
            except queue.Empty:
                dead = [w.pid for w in self._workers if not w.is_alive()]
                if dead:
                    raise RuntimeError(f"chain worker process(es) {dead} died during an "
                                       f"update; chains {sorted(pending)} did not finish")
                continue
            token, kind, *body = message
            if token != self._token:  # left over from an update that failed earlier
                continue
            if kind == "error":
                raise RuntimeError(f"a chain worker failed: {body[0]}")
            if kind == "progress":
                if callback is not None:
                    callback(body[0], body[1])
                continue
            chain, theta, v, v_hat, rng_state = body
            posterior.state.theta[chain].copy_(theta)
            posterior.state.v[chain].copy_(v)
            posterior.state.v_hat[chain].copy_(v_hat)
            posterior.rngs[chain].set_state(rng_state)
            pending.discard(chain)

    def close(self) -> None:
        """Stop the workers (also done at interpreter exit: they are daemons)."""
        for q in self._tasks:
            q.put(None)
        for worker in self._workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()

    def __enter__(self) -> ChainPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
