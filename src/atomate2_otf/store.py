"""Where a run's bytes live: the embedded JobStore, checkpoints and trajectories.

Only this module knows how checkpoints are laid out. Jobs receive a :class:`jobflow.JobStore`
(``CURRENT_JOB.store`` inside a running job) and use its *additional stores*:

- ``"checkpoints"``: one document per posterior checkpoint ``{run_id, index, data, nbytes}``,
  ``data`` the posterior bytes base64-encoded (maggma stores JSON-encode what they hold);
- ``"trajectories"`` (optional): one document per MD segment with its sampled frames.

Nothing here assumes a store class: any maggma Store works (SQLiteStore embedded by default,
MongoStore/GridFSStore in production), so documents stay small in the docs store and large
blobs go where the JobStore's configuration puts them.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobflow import JobStore
    from maggma.core import Store

logger = logging.getLogger(__name__)

CHECKPOINT_STORE = "checkpoints"
TRAJECTORY_STORE = "trajectories"


def embedded_job_store(folder: str | Path) -> JobStore:
    """A file-backed JobStore in ``folder`` (created if missing): no server needed.

    One SQLite file, ``folder/otf.sqlite``, with three collections (see
    :class:`~atomate2_otf.sqlite_store.SQLiteStore`, and why not MontyDB): ``outputs`` for
    job documents, plus the ``checkpoints`` and ``trajectories`` additional stores.
    Reopening the same folder gives the same data.
    """
    from jobflow import JobStore

    from atomate2_otf.sqlite_store import SQLiteStore

    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    database = str(folder / "otf.sqlite")
    return JobStore(SQLiteStore("outputs", database, key="uuid"), additional_stores={
        CHECKPOINT_STORE: SQLiteStore(CHECKPOINT_STORE, database, key="_key"),
        TRAJECTORY_STORE: SQLiteStore(TRAJECTORY_STORE, database, key="_key"),
    })


def _additional(store: JobStore, name: str, required: bool) -> Store | None:
    extra = store.additional_stores.get(name)
    if extra is None and required:
        raise ValueError(
            f"the JobStore has no additional store named {name!r} (it has: "
            f"{sorted(store.additional_stores) or 'none'}); on-the-fly runs keep their "
            f"checkpoints there. Use atomate2_otf.store.embedded_job_store(folder), or add "
            f"'{name}' to additional_stores in your jobflow configuration"
        )
    if extra is not None:
        extra.connect()
    return extra


def checkpoint_key(run_id: str, index: int) -> str:
    """Stable id of checkpoint ``index`` of run ``run_id`` (what jobs pass around)."""
    return f"{run_id}:{int(index)}"


def save_checkpoint(store: JobStore, run_id: str, index: int, blob: bytes) -> str:
    """Write the posterior bytes of checkpoint ``index``; return its key."""
    key = checkpoint_key(run_id, index)
    _additional(store, CHECKPOINT_STORE, True).update([{
        "_key": key, "run_id": run_id, "index": int(index), "nbytes": len(blob),
        "data": base64.b64encode(blob).decode("ascii"),
        "created": datetime.now(timezone.utc).isoformat(),
    }], key="_key")
    return key


def load_checkpoint(store: JobStore, key: str) -> bytes:
    """The posterior bytes saved under ``key``; a clear error if retention removed them."""
    doc = _additional(store, CHECKPOINT_STORE, True).query_one({"_key": key})
    if doc is None:
        raise ValueError(f"checkpoint {key!r} is not in the store (never written, or pruned "
                         f"by the retention policy)")
    return base64.b64decode(doc["data"])


def list_checkpoints(store: JobStore, run_id: str) -> list[int]:
    """Indices of the checkpoints of ``run_id`` that are still stored, ascending."""
    extra = _additional(store, CHECKPOINT_STORE, True)
    return sorted(int(d["index"]) for d in extra.query({"run_id": run_id}, properties=["index"]))


@dataclass(frozen=True)
class RetentionPolicy:
    """Which checkpoints to keep: the newest ``keep_last`` and every ``keep_every``-th.

    Checkpoints of a large model are tens of MB and a long run makes hundreds, so old ones
    are pruned as new ones are written. The newest is always kept (it is where a run
    resumes, and the final one is the fine-tuned potential); ``keep_every`` keeps a sparse
    history for analysis (0: none).
    """

    keep_last: int = 3
    keep_every: int = 0

    def __post_init__(self) -> None:
        if int(self.keep_last) < 1:
            raise ValueError(f"keep_last must be >= 1 (the newest checkpoint is where a run "
                             f"resumes), got {self.keep_last!r}")
        if int(self.keep_every) < 0:
            raise ValueError(f"keep_every must be >= 0, got {self.keep_every!r}")

    def to_prune(self, indices: list[int]) -> list[int]:
        keep = set(sorted(indices)[-int(self.keep_last):])
        if self.keep_every:
            keep |= {i for i in indices if i % int(self.keep_every) == 0}
        return [i for i in indices if i not in keep]


def prune_checkpoints(store: JobStore, run_id: str, policy: RetentionPolicy) -> list[int]:
    """Delete the checkpoints of ``run_id`` that ``policy`` does not keep; return them."""
    doomed = policy.to_prune(list_checkpoints(store, run_id))
    if doomed:
        _additional(store, CHECKPOINT_STORE, True).remove_docs(
            {"run_id": run_id, "index": {"$in": doomed}})
        logger.debug("pruned checkpoints %s of run %s", doomed, run_id)
    return doomed


def save_trajectory(store: JobStore, run_id: str, segment: int,
                    frames: list[dict[str, Any]]) -> bool:
    """Store one segment's sampled frames, if the JobStore has a trajectories store."""
    extra = _additional(store, TRAJECTORY_STORE, False)
    if extra is None:
        return False
    extra.update([{"_key": f"{run_id}:{int(segment)}", "run_id": run_id,
                   "segment": int(segment), "frames": frames}], key="_key")
    return True


def load_trajectory(store: JobStore, run_id: str) -> list[dict[str, Any]]:
    """All stored frames of a run, in MD-step order."""
    extra = _additional(store, TRAJECTORY_STORE, False)
    if extra is None:
        return []
    docs = sorted(extra.query({"run_id": run_id}), key=lambda d: d["segment"])
    return [frame for doc in docs for frame in doc["frames"]]
