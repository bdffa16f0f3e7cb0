"""Where a run's bytes live: the embedded JobStore, checkpoints and trajectories.

Only this module knows how checkpoints are laid out. Jobs receive a :class:`jobflow.JobStore`
(``CURRENT_JOB.store`` inside a running job) and use its *additional stores*:

- ``"checkpoints"``: one entry per posterior checkpoint ``{_key, run_id, index, nbytes}``
  plus the posterior bytes, stored RAW where the store can hold bytes (a GridFS file, a
  SQLite BLOB: 1.0x the posterior) and base64 in a JSON document in any other maggma
  Store (1.33x); documents written base64 by earlier versions stay readable;
- ``"trajectories"`` (optional): one document per MD segment with its sampled frames;
- ``"runs"`` (optional): a small journal of runs, key ``run_id`` (used by the runners).

:func:`open_job_store` opens any of the three ways to say where a run lives: a folder
(embedded SQLite), a jobflow JobStore config file, or a ``mongodb://`` URI (MongoDB +
GridFS, see :mod:`atomate2_otf.mongo`), and checks that the database answers.
"""

from __future__ import annotations

import base64
import json
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
RUNS_STORE = "runs"
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def embedded_job_store(folder: str | Path) -> JobStore:
    """A file-backed JobStore in ``folder`` (created if missing): no server needed.

    One SQLite file, ``folder/otf.sqlite``, with four collections (see
    :class:`~atomate2_otf.sqlite_store.SQLiteStore`, and why not MontyDB): ``outputs`` for
    job documents, plus the ``checkpoints``, ``trajectories`` and ``runs`` (key
    ``run_id``) additional stores. Reopening the same folder gives the same data.
    """
    from jobflow import JobStore

    from atomate2_otf.sqlite_store import SQLiteStore

    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    database = str(folder / "otf.sqlite")
    return JobStore(SQLiteStore("outputs", database, key="uuid"), additional_stores={
        CHECKPOINT_STORE: SQLiteStore(CHECKPOINT_STORE, database, key="_key"),
        TRAJECTORY_STORE: SQLiteStore(TRAJECTORY_STORE, database, key="_key"),
        RUNS_STORE: SQLiteStore(RUNS_STORE, database, key="run_id"),
    })


def _load_config(path: Path) -> JobStore:
    """A JobStore from a jobflow config file: a JobStore spec (``docs_store`` and
    ``additional_stores``), the same under a ``JOB_STORE`` key (jobflow's settings file),
    or a monty-serialised JobStore."""
    from jobflow import JobStore
    from monty.serialization import loadfn

    import atomate2_otf.mongo  # noqa: F401  (RetryingStore: a store type configs may name)

    if not path.is_file():
        raise ValueError(f"JobStore config file {path} does not exist (a folder for an "
                         f"embedded store must not end in {'/'.join(CONFIG_SUFFIXES)})")
    try:
        spec = loadfn(path)
    except Exception as error:
        raise ValueError(f"cannot parse JobStore config file {path}: "
                         f"{type(error).__name__}: {error}") from error
    if isinstance(spec, JobStore):
        return spec
    if isinstance(spec, dict) and "JOB_STORE" in spec:
        spec = spec["JOB_STORE"]
    if not isinstance(spec, dict) or "docs_store" not in spec:
        raise ValueError(f"JobStore config file {path} has no 'docs_store' (nor JOB_STORE: "
                         f"{{docs_store: ...}}); see examples/jobflow_mongo.yaml")
    try:
        return JobStore.from_dict_spec(spec)
    except Exception as error:
        raise ValueError(f"JobStore config file {path} does not describe a JobStore: "
                         f"{type(error).__name__}: {error}") from error


def open_job_store(spec: str | Path, check_timeout_s: float = 5.0) -> JobStore:
    """The JobStore ``spec`` names, connected, its database checked to answer.

    ``spec``: a folder (existing or not) -> :func:`embedded_job_store`; a ``.yaml``/
    ``.yml``/``.json`` file -> jobflow's :meth:`JobStore.from_file` format (also under a
    ``JOB_STORE`` key); a ``mongodb://``/``mongodb+srv://`` URI -> MongoDB documents and
    GridFS checkpoints/trajectories in the URI's database (default ``atomate2_otf``, see
    :func:`atomate2_otf.mongo.mongo_job_store`). MongoDB/GridFS stores are wrapped in
    :class:`~atomate2_otf.mongo.RetryingStore` so a database restart mid-run is waited
    out. Raises ValueError for a config that does not parse, and
    :class:`~atomate2_otf.mongo.StoreUnreachableError` (a ValueError) naming host and port
    when the database does not answer within ``check_timeout_s``.
    """
    from atomate2_otf.mongo import check_reachable, mongo_job_store, wrap_mongo_stores

    text = str(spec)
    if text.startswith(("mongodb://", "mongodb+srv://")):
        try:
            job_store = mongo_job_store(text)
        except ValueError:
            raise
        except Exception as error:  # pymongo's InvalidURI, ConfigurationError
            raise ValueError(f"invalid MongoDB URI {text!r}: {error}") from error
        source = "the MongoDB URI"
    else:
        path = Path(text).expanduser()
        if path.suffix.lower() in CONFIG_SUFFIXES:
            job_store = wrap_mongo_stores(_load_config(path))
            source = str(path)
        elif path.is_file():
            raise ValueError(f"{path} is a file, not a store folder nor a JobStore config "
                             f"(.yaml, .yml, .json)")
        else:
            job_store = embedded_job_store(path)
            source = str(path)
    check_reachable(job_store, source, timeout_s=check_timeout_s)
    job_store.connect()
    _ensure_indexes(job_store)
    logger.info("opened JobStore %s", job_store.name)
    return job_store


def _ensure_indexes(job_store: JobStore) -> None:
    """Indexes the package's queries use (no-ops on the embedded store, which has them)."""
    from atomate2_otf.mongo import is_mongo, unwrap

    if not is_mongo(unwrap(job_store.docs_store)):
        return
    for field in ("uuid", "metadata.otf_run_id", "metadata.otf_kind"):
        job_store.docs_store.ensure_index(field)
    for name, fields in ((CHECKPOINT_STORE, ("_key", "run_id")),
                         (TRAJECTORY_STORE, ("_key", "run_id")), (RUNS_STORE, ("run_id",))):
        extra = job_store.additional_stores.get(name)
        if extra is not None and is_mongo(unwrap(extra)):
            for field in fields:
                extra.ensure_index(field)


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


def _backend(store: Store) -> str:
    """How checkpoint bytes are kept in ``store``: "gridfs" and "sqlite" raw, else base64."""
    from maggma.stores import GridFSStore

    from atomate2_otf.mongo import unwrap
    from atomate2_otf.sqlite_store import SQLiteStore

    inner = unwrap(store)
    if isinstance(inner, GridFSStore):
        return "gridfs"
    if isinstance(inner, SQLiteStore):
        return "sqlite"
    return "base64"


def save_checkpoint(store: JobStore, run_id: str, index: int, blob: bytes,
                    portable: bool = False) -> str:
    """Write the posterior bytes of checkpoint ``index``; return its key.

    Every checkpoint document also carries ``blob_uuid`` (= its key): jobflow keys each
    additional store by it, so a store that copies another store's documents (jobflow-remote
    uploads each job's own file store into the real one) and jobflow's loading of a
    :func:`checkpoint_placeholder` in a job output both find it. ``portable`` (the
    ``"outputs"`` checkpoint transport) writes a GridFS checkpoint in maggma's own encoding
    (base64 in a JSON file, 1.33x) instead of raw bytes, which jobflow could not load.
    """
    from atomate2_otf.mongo import gridfs_put_raw, retrying, unwrap

    key = checkpoint_key(run_id, index)
    extra = _additional(store, CHECKPOINT_STORE, True)
    meta = {"_key": key, "blob_uuid": key, "run_id": run_id, "index": int(index),
            "nbytes": len(blob), "created": datetime.now(timezone.utc).isoformat()}
    backend = _backend(extra)
    if backend == "gridfs" and portable:
        extra.update([{**meta, "encoding": "base64",
                       "data": base64.b64encode(blob).decode("ascii")}], key="_key",
                     additional_metadata=["blob_uuid", "run_id", "index"])
    elif backend == "gridfs":
        retrying(extra, gridfs_put_raw, unwrap(extra), {**meta, "encoding": "raw"}, bytes(blob),
                 what="save_checkpoint")
    elif backend == "sqlite":
        extra.update([{**meta, "encoding": "raw", "data": bytes(blob)}], key="_key")
    else:
        extra.update([{**meta, "encoding": "base64",
                       "data": base64.b64encode(blob).decode("ascii")}], key="_key")
    return key


def load_checkpoint(store: JobStore, key: str) -> bytes:
    """The posterior bytes saved under ``key``; a clear error if retention removed them."""
    from atomate2_otf.mongo import gridfs_get_raw, retrying, unwrap

    extra = _additional(store, CHECKPOINT_STORE, True)
    if _backend(extra) == "gridfs":
        blob = retrying(extra, gridfs_get_raw, unwrap(extra), key, what="load_checkpoint")
    else:
        doc = extra.query_one({"_key": key})
        blob = None if doc is None else doc["data"]
        if isinstance(blob, str):  # base64: other stores, and every store before 0.2
            blob = base64.b64decode(blob)
    if blob is None:
        raise ValueError(f"checkpoint {key!r} is not in the store (never written, or pruned "
                         f"by the retention policy)")
    return bytes(blob)


def checkpoint_placeholder(key: str) -> dict[str, str]:
    """What a job puts in its output so that a later job's reference to that output
    resolves to the bytes of checkpoint ``key``: jobflow's own pointer into an additional
    store (what ``JobStore.update`` writes for a blob), aimed at the checkpoint document,
    whose ``blob_uuid`` is its key. Loading it is jobflow's (``get_output(load=True)``), so
    any manager that resolves references (run_locally, FireWorks, jobflow-remote's runner)
    hands the job the bytes, without the job reaching the store."""
    return {"@class": "", "@module": "", "blob_uuid": key, "store": CHECKPOINT_STORE}


def checkpoint_bytes(data: Any) -> bytes:
    """The posterior bytes from a resolved :func:`checkpoint_placeholder`: raw bytes
    (SQLite, raw GridFS) or base64 text (every JSON store, maggma's GridFS encoding)."""
    if isinstance(data, str):
        return base64.b64decode(data)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise ValueError(f"a checkpoint reference resolved to {type(data).__name__}, not the "
                     f"checkpoint's bytes: was the checkpoint pruned from the store, or the "
                     f"job run without a JobStore that has the '{CHECKPOINT_STORE}' store?")


def stored_checkpoint_nbytes(store: JobStore, key: str) -> int:
    """Bytes checkpoint ``key`` occupies at rest: the GridFS file length, the SQLite BLOB
    length, or the size of the JSON document in any other store (size checks)."""
    from atomate2_otf.mongo import retrying, unwrap

    extra = _additional(store, CHECKPOINT_STORE, True)
    backend = _backend(extra)
    inner = unwrap(extra)
    if backend == "gridfs":
        doc = retrying(extra, inner._files_collection.find_one, {"metadata._key": key},
                       what="stored_checkpoint_nbytes")
        return 0 if doc is None else int(doc["length"])
    if backend == "sqlite":
        return inner.blob_nbytes({"_key": key}) or len(
            (inner.query_one({"_key": key}) or {}).get("data", ""))
    doc = extra.query_one({"_key": key})
    return 0 if doc is None else len(json.dumps(doc, default=str))


def list_checkpoints(store: JobStore, run_id: str) -> list[int]:
    """Indices of the checkpoints of ``run_id`` that are still stored, ascending."""
    extra = _additional(store, CHECKPOINT_STORE, True)
    if _backend(extra) == "gridfs":  # file metadata only: never reads the bytes
        return sorted(int(i) for i in extra.distinct("index", {"run_id": run_id}))
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
    key = f"{run_id}:{int(segment)}"  # blob_uuid: see save_checkpoint
    doc = {"_key": key, "blob_uuid": key, "run_id": run_id, "segment": int(segment),
           "frames": frames}
    if _backend(extra) == "gridfs":  # run_id/segment in the file metadata: queryable
        extra.update([doc], key="_key", additional_metadata=["run_id", "segment"])
    else:
        extra.update([doc], key="_key")
    return True


def load_trajectory(store: JobStore, run_id: str) -> list[dict[str, Any]]:
    """All stored frames of a run, in MD-step order."""
    extra = _additional(store, TRAJECTORY_STORE, False)
    if extra is None:
        return []
    docs = sorted(extra.query({"run_id": run_id}), key=lambda d: d["segment"])
    return [frame for doc in docs for frame in doc["frames"]]
