"""Run a flow in this process without keeping it: the local path for long on-the-fly runs.

jobflow's ``run_locally`` runs each replacement flow in a nested call and keeps every job's
``Response`` (with the replacement flow and its jobs) until the end, so a run of a thousand
reference calls holds a thousand cycles of jobs in memory (measured: peak RSS 478 MB at 100
cycles, 672 MB at 1000, growing ~0.1 MB per cycle). This runner executes the same jobs
with the same ``Job.run`` (so stores, references, names and documents are exactly
jobflow's) from a work queue: a replacement, detour or addition is queued in front of the
remaining jobs, as ``run_locally`` would run it next (jobflow's ``store_inputs`` job, which
resolves nothing, first of all), and a job is dropped once it has run.
It stops at the first failing job, whose exception propagates; everything written before
stays in the store.

Crash safety: when the JobStore has a ``runs`` additional store, the runner keeps a
*journal* there, one document per run with the queue of jobs still to run, rewritten after
every job. A process killed with ``kill -9`` loses only the job it was running:
:func:`resume_runs` (``atomate2-otf resume``) reloads the queue and runs it. Jobs whose
output is already stored are not run again (a finished reference calculation is never
repeated), except MD segments, which are cheap to redo, deterministic, and may have been
killed after writing their output but before the journal recorded their replacement.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from atomate2_otf.jobflow_compat import is_store_inputs
from atomate2_otf.store import RUNS_STORE

if TYPE_CHECKING:
    from collections.abc import Iterable

    from jobflow import Flow, Job, JobStore
    from maggma.core import Store

logger = logging.getLogger(__name__)

#: journal states; "queued" runs were submitted (batch) but not started, "interrupted" ones
#: were stopped by a signal (SIGINT, SIGTERM) between or inside jobs
UNFINISHED = ("queued", "running", "interrupted", "failed")


class RunInterrupted(KeyboardInterrupt):
    """A signal stopped the run; raised by a handler such as the CLI's.

    A KeyboardInterrupt, so that no ``except Exception`` in a job or a library swallows it;
    the runner journals the run as ``interrupted`` (resume finishes it) and re-raises.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")


def _jobs_in_order(flow: Flow | Job) -> list[Job]:
    from jobflow.core.flow import get_flow

    # external references are allowed: a warm-started material's run reads its donor's
    # final checkpoint, a job of an earlier flow that ran into the same store
    return [job for job, _ in get_flow(flow, allow_external_references=True).iterflow()]


def _now() -> str:
    return datetime.now(tz=timezone.utc).isoformat()


def flow_run_id(flow: Flow | Job) -> str:
    """The on-the-fly run id of ``flow`` (job metadata ``otf_run_id``), else its uuid."""
    for job in _jobs_in_order(flow):
        run_id = (job.metadata or {}).get("otf_run_id")
        if run_id:
            return str(run_id)
    return str(flow.uuid)


@dataclass
class Journal:
    """The ``runs`` document of one run: its queue of jobs, owner and state.

    The queue is stored as one JSON string (jobflow jobs are MSONable), so any maggma Store
    holds it unchanged and a document stays far below MongoDB's 16 MB.
    """

    runs: Store
    run_id: str
    #: the document as last written by this process (one read per run, not per job)
    _doc: dict[str, Any] | None = None

    def write(self, state: str, queue: Iterable[Job] | None = None, **fields: Any) -> None:
        from monty.json import MontyEncoder

        doc: dict[str, Any] = {"run_id": self.run_id, "state": state, "updated": _now(),
                               "host": socket.gethostname(), "pid": os.getpid(), **fields}
        if queue is not None:
            doc["queue"] = json.dumps([job.as_dict() for job in queue], cls=MontyEncoder)
        if self._doc is None:
            self._doc = self.runs.query_one({"run_id": self.run_id}) or {}
            self._doc.pop("_id", None)
        self._doc = {**self._doc, **doc}
        # jobflow resets additional stores' keys to "blob_uuid": name the key every time
        self.runs.update([self._doc], key="run_id")

    def read(self) -> dict[str, Any] | None:
        return self.runs.query_one({"run_id": self.run_id})

    @staticmethod
    def queue_of(doc: dict[str, Any]) -> list[Job]:
        from monty.json import MontyDecoder

        return list(json.loads(doc.get("queue") or "[]", cls=MontyDecoder))


def journal_store(store: JobStore) -> Store | None:
    """The JobStore's ``runs`` store, connected (None: this store keeps no journal)."""
    runs = store.additional_stores.get(RUNS_STORE)
    if runs is not None:
        runs.connect()
    return runs


def register_run(store: JobStore, flow: Flow | Job, state: str = "queued",
                 **fields: Any) -> str | None:
    """Journal ``flow`` without running it (a batch's materials before they start), so that
    status lists it and resume can run it. Returns the run id (None: no ``runs`` store)."""
    runs = journal_store(store)
    if runs is None:
        return None
    run_id = flow_run_id(flow)
    Journal(runs, run_id).write(state, _jobs_in_order(flow), output_uuid=flow.output.uuid
                                if getattr(flow, "output", None) is not None else None,
                                **fields)
    return run_id


def run_flow_locally(flow: Flow | Job, store: JobStore, root_dir: str | Path | None = None,
                     create_folders: bool = True,
                     journal_fields: dict[str, Any] | None = None) -> int:
    """Run ``flow`` to completion with ``store``; return the number of jobs run.

    ``create_folders``: one folder per job under ``root_dir`` (default: the working
    directory), as file-based reference codes need. ``journal_fields``: extra fields of the
    run's journal document (e.g. a batch's source id).
    """
    output = getattr(flow, "output", None)
    return _run_queue(_jobs_in_order(flow), store, flow_run_id(flow), root_dir,
                      create_folders, output_uuid=None if output is None else output.uuid,
                      **(journal_fields or {}))


def _run_queue(jobs: list[Job], store: JobStore, run_id: str,
               root_dir: str | Path | None, create_folders: bool = True,
               **journal_fields: Any) -> int:
    """The runner: jobs from the front of a queue, the journal rewritten after each."""
    root = Path.cwd() if root_dir is None else Path(root_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    store.connect()
    queue: deque[Job] = deque(jobs)
    runs = journal_store(store)
    journal = None if runs is None else Journal(runs, run_id)
    if journal is not None:
        journal.write("running", queue, root_dir=str(root), started=_now(),
                      **{k: v for k, v in journal_fields.items() if v is not None})
    n_run = 0
    try:
        while queue:
            job = queue[0]
            job_dir = root
            if create_folders:
                stamp = datetime.now(tz=timezone.utc).strftime("%Y-%m-%d-%H-%M-%S-%f")
                job_dir = root / f"job_{stamp}-{uuid4().hex[:6]}"
                job_dir.mkdir()
            with contextlib.chdir(job_dir):
                response = job.run(store=store, job_dir=job_dir)
            queue.popleft()
            n_run += 1
            if response.stop_jobflow:
                logger.info("%s stopped the flow", job.name)
                queue.clear()
                break
            if response.stop_children:
                raise NotImplementedError(f"{job.name} asked to stop its children; "
                                          f"run_flow_locally does not support that")
            follow: list[Job] = []
            for new in (response.replace, response.detour, response.addition):
                if new is not None:
                    follow.extend(_jobs_in_order(new))
            # jobflow's store_inputs (it maps the replaced job's uuid to the replacement's
            # output) resolves nothing, so it runs first: left for later, as run_locally
            # leaves it, one per cycle would pile up in the queue and in every journal
            # write (a thousand cycles made each write a thousand jobs long)
            follow.sort(key=lambda new_job: not is_store_inputs(new_job))
            queue.extendleft(reversed(follow))
            if journal is not None:
                journal.write("running", queue)
            del job, response, follow
    except BaseException as err:
        if journal is not None:
            # a signal (SIGINT, SIGTERM) is not the run's failure: the job it stopped is
            # still in the queue, and resume finishes the run
            state = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            with contextlib.suppress(Exception):  # the job's own error is what matters
                journal.write(state, queue, error=f"{type(err).__name__}: {err}")
        raise
    if journal is not None:
        journal.write("completed", [], finished=_now(), error=None)
    if create_folders:
        with contextlib.suppress(OSError):  # jobs that wrote nothing leave empty folders
            for path in root.glob("job_*"):
                if path.is_dir() and not any(path.iterdir()):
                    os.rmdir(path)
    return n_run


def owner_alive(doc: dict[str, Any]) -> bool:
    """Whether the process that last wrote the journal still runs (same host only)."""
    if doc.get("host") != socket.gethostname() or not doc.get("pid"):
        return False
    if int(doc["pid"]) == os.getpid():
        return False
    try:
        os.kill(int(doc["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _already_done(store: JobStore, job: Job) -> bool:
    """The job's output is stored and running it again would add nothing."""
    if (job.metadata or {}).get("otf_kind") == "segment":
        return False  # see the module docstring
    return store.query_one({"uuid": job.uuid, "index": job.index}, properties=["uuid"]) \
        is not None


@dataclass
class ResumeOutcome:
    """What :func:`resume_runs` did with one run."""

    run_id: str
    state: str  # "completed", "failed" or "skipped"
    output_uuid: str | None = None
    jobs_run: int = 0
    jobs_skipped: int = 0
    error: str | None = None


def unfinished_runs(store: JobStore) -> list[dict[str, Any]]:
    """Journal documents of runs that did not complete (queued, killed or failed)."""
    runs = journal_store(store)
    if runs is None:
        return []
    return sorted(runs.query({"state": {"$in": list(UNFINISHED)}}),
                  key=lambda d: str(d.get("started") or d.get("updated") or ""))


def resume_runs(store: JobStore, root_dir: str | Path | None = None,
                run_ids: Iterable[str] | None = None, retry_failed: bool = True,
                wait_s: float = 0.0) -> list[ResumeOutcome]:
    """Finish every unfinished run of ``store`` (or those in ``run_ids``), one after another.

    A run whose journal owner is still alive on this host is skipped (it is not dead, only
    running). One run that fails does not stop the others; its outcome says why.
    """
    if journal_store(store) is None:
        raise ValueError("this JobStore has no 'runs' store, so runs were not journalled "
                         "and cannot be resumed; use atomate2_otf.store.open_job_store")
    wanted = None if run_ids is None else set(run_ids)
    outcomes: list[ResumeOutcome] = []
    if wait_s:
        time.sleep(wait_s)
    for doc in unfinished_runs(store):
        run_id = str(doc["run_id"])
        if wanted is not None and run_id not in wanted:
            continue
        if doc["state"] == "failed" and not retry_failed:
            continue
        if doc["state"] == "running" and owner_alive(doc):
            outcomes.append(ResumeOutcome(run_id, "skipped", doc.get("output_uuid"),
                                          error=f"still running as pid {doc['pid']}"))
            continue
        queue = Journal.queue_of(doc)
        todo = [job for job in queue if not _already_done(store, job)]
        skipped = len(queue) - len(todo)
        logger.info("resuming run %s: %d jobs to run, %d already done", run_id, len(todo),
                    skipped)
        root = doc.get("root_dir") if root_dir is None else root_dir
        try:
            n_run = _run_queue(todo, store, run_id, root)
        except Exception as err:  # noqa: BLE001 - reported per run; the others go on
            logger.debug("run %s failed again", run_id, exc_info=True)
            outcomes.append(ResumeOutcome(run_id, "failed", doc.get("output_uuid"),
                                          jobs_skipped=skipped,
                                          error=f"{type(err).__name__}: {err}"))
            continue
        outcomes.append(ResumeOutcome(run_id, "completed", doc.get("output_uuid"),
                                      jobs_run=n_run, jobs_skipped=skipped))
    return outcomes
