"""Run the M chains of a posterior update in worker processes.

The chains of an update are independent (each has its own random streams, METHOD.md sec. 3),
so they parallelise perfectly across processes, as the reference code does with one process
per GPU. On a CPU, where one chain's step on a small molecule is bound by Python and
dispatch overhead rather than arithmetic, whole processes use the cores far better than
torch's intra-op threads. Workers are spawned (safe with torch and OpenMP), keep the model
loaded between updates, and receive the posterior as checkpoint bytes, so a worker runs
exactly the code of :meth:`Posterior.run_chain` and the samples equal the serial ones.

Devices: each worker runs its chains on one device of ``devices`` (the reference code's one
process per GPU); with more chains than workers a worker runs several, one after another.
The model travels to the workers as CPU bytes and each worker moves it to its own device,
so no worker touches another's GPU; results come back as CPU tensors.
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing as mp
import os
import pickle
import queue
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import torch

from atomate2_otf.runtime import c_library

if TYPE_CHECKING:
    from atomate2_otf.bnn.ensemble import ChainOutput
    from atomate2_otf.bnn.posterior import Posterior
    from atomate2_otf.bnn.sghmc import SGHMCConfig
    from atomate2_otf.models.base import FoundationModel
    from atomate2_otf.records import StructureRecord

logger = logging.getLogger(__name__)

_PROGRESS_EVERY = 25
#: the token of a worker's start-up message (tasks count from 1)
_READY = 0


#: seconds between checks that the parent process still lives, while a worker waits
_PARENT_CHECK_S = 1.0
#: prctl option: the signal a process gets when the thread that created it exits (Linux)
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux only).

    A worker of a killed run would otherwise wait on its task pipe for ever, holding its
    model (~1 GB for a large model). Without prctl (other systems) the worker's liveness
    checks alone end it, within about a second of its next check."""
    prctl = getattr(c_library(), "prctl", None)
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _exit_if_orphaned(parent_pid: int) -> None:
    if os.getppid() != parent_pid:
        logger.warning("chain worker %d: parent process %d is gone, exiting", os.getpid(),
                       parent_pid)
        os._exit(1)  # not sys.exit: the results queue's feeder could wait on a dead reader


def model_to_bytes(model: FoundationModel) -> bytes:
    """The model as bytes for a worker (torch's pickler: it records each storage's device,
    which :func:`model_from_bytes` maps to the CPU)."""
    buffer = io.BytesIO()
    torch.save(model, buffer)
    return buffer.getvalue()


def model_from_bytes(blob: bytes, device: str | torch.device = "cpu") -> FoundationModel:
    """Inverse of :func:`model_to_bytes`, on ``device``: read onto the CPU, then moved, so a
    worker never allocates on the GPU the model came from."""
    model = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
    return model.to(device)


def _host(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy for the results queue (a CUDA tensor would need CUDA IPC)."""
    return tensor.detach().to("cpu", copy=True)


def _worker_main(model_bytes: bytes, threads: int, tasks: Connection, results: Any,
                 parent_pid: int, pdeathsig: bool, warning_filters: list[Any],
                 device: str = "cpu") -> None:
    """Worker loop: keep a replica posterior; run updates and predictions of its chains.

    The worker holds only the read end of its task pipe, so the pipe reports EOF once the
    parent is gone; it ignores SIGINT (a Ctrl-C reaches the whole process group: the parent
    decides, and closes the pool)."""
    from atomate2_otf.bnn.posterior import Posterior
    from atomate2_otf.bnn.sghmc import SGHMCConfig
    from atomate2_otf.runtime import keep_freed_memory

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if pdeathsig:
        _die_with_parent(parent_pid)
    warnings.filters[:] = warning_filters  # the parent's: -v shows what the parent shows
    torch.set_num_threads(threads)
    keep_freed_memory()  # this process is ours: steps reuse their freed tensors
    # Bytes, not the model object: multiprocessing would hand every worker the same
    # shared-memory parameters, and loading a chain into them would race.
    model = model_from_bytes(model_bytes, device)
    results.put((_READY, "ready", os.getpid()))
    replica: Posterior | None = None
    while True:
        while not tasks.poll(_PARENT_CHECK_S):
            _exit_if_orphaned(parent_pid)
        try:
            message = tasks.recv()
        except EOFError:  # the parent closed the pipe or died
            return
        if message is None:
            return
        kind, token, blob, chains, payload = message
        try:
            if blob is not None:
                replica = Posterior.from_bytes(blob, model=model)
            assert replica is not None, "a worker got a task before any posterior"
            if kind == "update":
                config = SGHMCConfig(**payload)

                def progress(chain: int, t: int) -> None:
                    if (t + 1) % _PROGRESS_EVERY == 0 or t + 1 == config.n_steps:
                        _exit_if_orphaned(parent_pid)
                        results.put((token, "progress", (chain, t)))

                for chain in chains:
                    replica.run_chain(chain, config, progress)
                    state = replica.state
                    results.put((token, "chain", (
                        chain, _host(state.theta[chain]), _host(state.v[chain]),
                        _host(state.v_hat[chain]), replica.rngs[chain].get_state())))
            elif kind == "predict":
                records, compute_stress = payload
                outputs = replica.chain_outputs(records, compute_stress,
                                                replica.state.theta[chains])
                results.put((token, "outputs", list(zip(chains, outputs, strict=True))))
        except Exception as err:  # report; the worker stays alive for the next task
            logger.exception("chain worker failed")
            results.put((token, "error", repr(err)))


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread while workers are spawned: a child inherits the mask, so
    a Ctrl-C (sent to the whole process group) cannot reach a worker that is still importing
    torch, before it ignores SIGINT itself. A SIGINT meanwhile reaches the parent after."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _picklable_filters() -> list[Any]:
    """This process's warning filters that a spawned worker can receive."""
    kept = []
    for entry in warnings.filters:
        try:
            pickle.dumps(entry)
        except Exception:  # noqa: BLE001 - a filter on a class a worker cannot import
            continue
        kept.append(entry)
    return kept


class ChainPool:
    """A pool of processes that run posterior updates chain by chain.

    Args:
        model: the foundation model (sent to each worker once, at start).
        n_workers: processes; default: one per device of ``devices``, else the CPUs this
            process may use.
        threads_per_worker: torch threads in each worker (1 is best for small systems).
        startup_timeout_s: the longest wait for the workers to load the model, checked
            before the first task (a worker that died while starting is reported at once).
        devices: where the workers run, worker ``w`` on ``devices[w % len(devices)]``
            (e.g. ``["cuda:0", "cuda:1"]``: one worker per GPU); default: the model's
            device for every worker. Chain ``c`` runs on worker ``c % n_workers``.
    """

    def __init__(self, model: FoundationModel, n_workers: int | None = None,
                 threads_per_worker: int = 1, startup_timeout_s: float = 600.0,
                 devices: Sequence[str | torch.device] | None = None) -> None:
        from atomate2_otf.devices import check_device

        if devices is not None:
            devices = [check_device(d) for d in devices]
            if not devices:
                raise ValueError("devices must name at least one device, got []")
        if n_workers is None:
            from atomate2_otf.runtime import available_cpus

            n_workers = len(devices) if devices else available_cpus()
        if int(n_workers) < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers!r}")
        if devices is None:
            devices = [str(model.device)]
        #: the device of each worker
        self.devices = [devices[w % len(devices)] for w in range(int(n_workers))]
        if int(threads_per_worker) < 1:
            raise ValueError(f"threads_per_worker must be >= 1, got {threads_per_worker!r}")
        context = mp.get_context("spawn")
        model_bytes = model_to_bytes(model)
        # The kernel's parent-death signal follows the thread that created the child: a
        # pool made in another thread (which may end first) relies on the liveness checks.
        pdeathsig = threading.current_thread() is threading.main_thread()
        filters = _picklable_filters()
        self._results = context.Queue()
        self._tasks: list[Connection] = []
        self._workers = []
        with _sigint_blocked():  # a Ctrl-C while a worker starts up is the parent's
            for device in self.devices:
                reader, writer = context.Pipe(duplex=False)
                worker = context.Process(
                    target=_worker_main, daemon=True,
                    args=(model_bytes, int(threads_per_worker), reader, self._results,
                          os.getpid(), pdeathsig, filters, device))
                worker.start()
                reader.close()  # the worker's end: only the worker may hold it
                self._tasks.append(writer)
                self._workers.append(worker)
        self._token = 0
        self._synced: list[tuple[str, int] | None] = [None] * len(self._workers)
        self._ready: set[int] = set()
        self._startup_timeout_s = float(startup_timeout_s)

    def _dead_workers(self) -> list[tuple[int | None, int | None]]:
        """(pid, exit code) of every worker that is no longer running."""
        return [(w.pid, w.exitcode) for w in self._workers if not w.is_alive()]

    def _await_ready(self) -> None:
        """Wait until every worker has loaded its model, before the first task is sent.

        A task sent to a worker that never reads would block on the pipe for good; a worker
        dies or stalls at start-up when, for example, a script without an ``if __name__ ==
        "__main__":`` guard makes the pool (spawned workers re-import the script)."""
        deadline = time.monotonic() + self._startup_timeout_s
        hint = ("chain workers are spawned processes that re-import the main script: a "
                "script that updates a posterior with workers must guard its code with "
                "'if __name__ == \"__main__\":'")
        while len(self._ready) < self.n_workers:
            try:
                token, kind, body = self._results.get(timeout=1.0)
            except queue.Empty:
                dead = self._dead_workers()
                if dead:
                    raise RuntimeError(f"chain worker process(es) (pid, exit code) {dead} "
                                       f"exited while starting; {hint}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"chain workers not ready after "
                                       f"{self._startup_timeout_s:.0f} s; {hint}") from None
                continue
            if kind == "ready":
                self._ready.add(int(body))

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers (for logs and for checks that they are gone)."""
        return [int(w.pid) for w in self._workers if w.pid is not None]

    @property
    def n_workers(self) -> int:
        return len(self._workers)

    def _assignment(self, n_chains: int) -> list[list[int]]:
        """Chains of each worker; the same for updates and predictions."""
        return [list(range(w, n_chains, self.n_workers)) for w in range(self.n_workers)]

    def _send(self, kind: str, posterior: Posterior, payload: Any) -> tuple[int, int]:
        """Send a task to every worker that owns chains; the posterior only if stale."""
        self._await_ready()
        self._token += 1
        key = (posterior.uid, posterior.revision)
        blob = None
        n_tasks = 0
        for w, chains in enumerate(self._assignment(posterior.n_chains)):
            if not chains:
                continue
            if kind == "update" or self._synced[w] != key:
                blob = blob or posterior.to_bytes()
                worker_blob = blob
            else:
                worker_blob = None
            self._tasks[w].send((kind, self._token, worker_blob, chains, payload))
            self._synced[w] = key
            n_tasks += 1
        return self._token, n_tasks

    def _receive(self, token: int) -> tuple[str, Any]:
        """Next message of the current task; raise if a worker failed or died."""
        while True:
            try:
                message_token, kind, body = self._results.get(timeout=5.0)
            except queue.Empty:
                dead = self._dead_workers()
                if dead:
                    self._synced = [None] * self.n_workers
                    raise RuntimeError(f"chain worker process(es) (pid, exit code) {dead} died") from None
                continue
            if message_token != token:  # left over from a task that failed earlier
                continue
            if kind == "error":
                self._synced = [None] * self.n_workers
                raise RuntimeError(f"a chain worker failed: {body}")
            return kind, body

    def update(self, posterior: Posterior, config: SGHMCConfig,
               callback: Callable[[int, int], None] | None = None) -> None:
        """Run one update of every chain of ``posterior`` in the workers, in place."""
        token, _ = self._send("update", posterior, config.to_dict())
        pending = set(range(posterior.n_chains))
        while pending:
            kind, body = self._receive(token)
            if kind == "progress":
                if callback is not None:
                    callback(*body)
                continue
            chain, theta, v, v_hat, rng_state = body
            posterior.state.theta[chain].copy_(theta)
            posterior.state.v[chain].copy_(v)
            posterior.state.v_hat[chain].copy_(v_hat)
            posterior.rngs[chain].set_state(rng_state)
            pending.discard(chain)

    def chain_outputs(self, posterior: Posterior, records: list[StructureRecord],
                      compute_stress: bool) -> list[ChainOutput]:
        """Per-chain predictions computed in the workers, in chain order."""
        token, n_tasks = self._send("predict", posterior, (records, compute_stress))
        outputs: dict[int, ChainOutput] = {}
        for _ in range(n_tasks):
            _, body = self._receive(token)
            outputs.update(body)
        return [outputs[chain] for chain in range(posterior.n_chains)]

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers: each finishes its task, then exits; after ``timeout`` seconds
        (0: at once, as after an interruption) the rest are killed. Idempotent."""
        for connection in self._tasks:
            with contextlib.suppress(OSError, ValueError):
                if timeout > 0:
                    connection.send(None)
                connection.close()
        for worker in self._workers:
            if timeout > 0:
                worker.join(timeout=timeout)
            if worker.is_alive():
                worker.kill()
            worker.join(timeout=5)
        self._results.cancel_join_thread()

    def __enter__(self) -> ChainPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
