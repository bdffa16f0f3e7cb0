"""MongoDB in production: a JobStore on MongoDB + GridFS that survives database restarts.

- :func:`mongo_job_store`: documents in a maggma ``MongoStore`` (``outputs``), checkpoints
  and trajectories as GridFS files (``checkpoints``, ``trajectories``: a checkpoint of a
  large model is tens of MB, over MongoDB's 16 MB document limit, and GridFS keeps the
  bytes raw), and a small ``runs`` collection (key ``run_id``) that runners use as a
  journal.
- :class:`RetryingStore`: a maggma Store wrapping another one so that every operation
  jobflow and this package make retries on connection errors with exponential back-off.
  A long run must not die because the database restarted (maintenance, fail-over, a
  crash): the job that was writing simply waits. It is MSONable, so it serialises into
  FireWorks/jobflow-remote specs with the store it wraps.
- :func:`check_reachable`: fail fast (seconds, not pymongo's 30 s per operation, and not
  the retry budget) with a message that names host and port when the database is not
  there at start-up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from maggma.core import Store
from pymongo.errors import AutoReconnect, ConnectionFailure, ServerSelectionTimeoutError

if TYPE_CHECKING:
    from jobflow import JobStore

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: what a restarting or unreachable server raises (AutoReconnect and
#: ServerSelectionTimeoutError are ConnectionFailures; listed for the reader)
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    AutoReconnect, ServerSelectionTimeoutError, ConnectionFailure)

DEFAULT_DATABASE = "atomate2_otf"
#: server selection timeout of the stores open_job_store builds from a URI: an operation
#: during an outage fails after this and RetryingStore backs off and tries again
SERVER_SELECTION_MS = 5000


class StoreUnreachableError(ValueError):
    """The database of a JobStore does not answer (raised at open time, not mid-run)."""


class RetryingStore(Store):
    """A maggma Store that retries the wrapped store's operations on connection errors.

    Every operation (``query``, ``query_one``, ``count``, ``distinct``, ``groupby``,
    ``update``, ``remove_docs``, ``ensure_index``, ``connect``, and arbitrary calls through
    :meth:`call`) is retried on pymongo ``AutoReconnect``/``ConnectionFailure``/
    ``ServerSelectionTimeoutError`` after ``initial_delay_s``, doubling up to
    ``max_delay_s``, until ``budget_s`` has passed; then the last error is raised. Each
    retry is logged (warning). Writes are upserts keyed by the store's key, so repeating
    one whose acknowledgement was lost is harmless; queries are read completely inside the
    retry, so a retried query never yields a document twice.

    Args:
        store: the store to wrap (MongoStore, GridFSStore, ...).
        budget_s: total time to keep retrying one operation.
        initial_delay_s: first back-off.
        max_delay_s: longest back-off.
    """

    def __init__(self, store: Store, budget_s: float = 120.0, initial_delay_s: float = 0.5,
                 max_delay_s: float = 8.0) -> None:
        if isinstance(store, dict):  # a jobflow spec: {"type": "MongoStore", ...}
            raise TypeError("RetryingStore needs a Store, not a dict; in a jobflow config "
                            "write store: {type: MongoStore, ...}")
        self.store = store
        self.budget_s = float(budget_s)
        self.initial_delay_s = float(initial_delay_s)
        self.max_delay_s = float(max_delay_s)
        self.n_retries = 0  # retries made by this wrapper (diagnostics and tests)
        self.kwargs: dict[str, Any] = {}  # MSONable: no extra constructor arguments

    # -- forwarding ----------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # only called for attributes this wrapper lacks: database, collection_name, ...
        store = self.__dict__.get("store")
        if store is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(store, name)

    @property
    def key(self) -> str:  # type: ignore[override]
        return self.store.key

    @key.setter
    def key(self, value: str) -> None:  # jobflow sets docs_store.key = "uuid"
        self.store.key = value

    @property
    def last_updated_field(self) -> str:  # type: ignore[override]
        return self.store.last_updated_field

    @last_updated_field.setter
    def last_updated_field(self, value: str) -> None:
        self.store.last_updated_field = value

    @property
    def name(self) -> str:
        return self.store.name

    @property
    def _collection(self) -> Any:
        return self.store._collection

    def __eq__(self, other: object) -> bool:
        inner = other.store if isinstance(other, RetryingStore) else other
        return self.store == inner

    def __hash__(self) -> int:
        return hash(self.store)

    # -- the retry loop ------------------------------------------------------------------
    def call(self, fn: Callable[..., T], *args: Any, what: str | None = None,
             **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried on connection errors (see the class)."""
        what = what or getattr(fn, "__name__", "operation")
        started = time.monotonic()
        delay = self.initial_delay_s
        attempt = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except RETRYABLE_ERRORS as error:
                attempt += 1
                waited = time.monotonic() - started
                if waited + delay > self.budget_s:
                    logger.error("%s on %s failed after %d attempts in %.1f s (retry budget "
                                 "%.0f s): %s", what, _redacted(self.store.name), attempt,
                                 waited, self.budget_s, _first_words(error))
                    raise
                self.n_retries += 1
                logger.warning("%s on %s failed (%s: %s); retry %d in %.1f s",
                               what, _redacted(self.store.name), type(error).__name__,
                               _first_words(error), attempt, delay)
                time.sleep(delay)
                delay = min(2.0 * delay, self.max_delay_s)

    # -- the Store API -------------------------------------------------------------------
    def connect(self, force_reset: bool = False) -> None:
        self.call(self.store.connect, force_reset=force_reset, what="connect")

    def close(self) -> None:
        self.store.close()

    def count(self, criteria: dict | None = None, **kwargs: Any) -> int:
        return self.call(self.store.count, criteria, what="count", **kwargs)

    def query(self, criteria: dict | None = None, properties: dict | list | None = None,
              sort: dict | None = None, skip: int = 0, limit: int = 0,
              **kwargs: Any) -> Iterator[dict]:
        docs = self.call(lambda: list(self.store.query(
            criteria=criteria, properties=properties, sort=sort, skip=skip, limit=limit,
            **kwargs)), what="query")
        yield from docs

    def query_one(self, criteria: dict | None = None, properties: dict | list | None = None,
                  sort: dict | None = None, **kwargs: Any) -> dict | None:
        return self.call(self.store.query_one, criteria=criteria, properties=properties,
                         sort=sort, what="query_one", **kwargs)

    def distinct(self, field: str, criteria: dict | None = None,
                 all_exist: bool = False) -> list:
        return self.call(self.store.distinct, field, criteria=criteria, all_exist=all_exist,
                         what="distinct")

    def groupby(self, keys: list[str] | str, criteria: dict | None = None,
                properties: dict | list | None = None, sort: dict | None = None,
                skip: int = 0, limit: int = 0) -> Iterator[tuple[dict, list[dict]]]:
        groups = self.call(lambda: list(self.store.groupby(
            keys, criteria=criteria, properties=properties, sort=sort, skip=skip,
            limit=limit)), what="groupby")
        yield from groups

    def update(self, docs: list[dict] | dict, key: list | str | None = None,
               **kwargs: Any) -> None:
        self.call(self.store.update, docs, key=key, what="update", **kwargs)

    def remove_docs(self, criteria: dict) -> None:
        self.call(self.store.remove_docs, criteria, what="remove_docs")

    def ensure_index(self, key: str, unique: bool = False) -> bool:
        return self.call(self.store.ensure_index, key, unique=unique, what="ensure_index")

    @property
    def last_updated(self) -> Any:
        return self.call(lambda: self.store.last_updated, what="last_updated")


def _redacted(name: str) -> str:
    """A store name without the password a MongoDB URI may carry (names go to logs)."""
    import re

    return re.sub(r"(mongodb(?:\+srv)?://[^:/@]+):[^@/]*@", r"\1:***@", name)


def unwrap(store: Store) -> Store:
    """The store under any RetryingStore wrappers (what decides how bytes are written)."""
    while isinstance(store, RetryingStore):
        store = store.store
    return store


def retrying(store: Store, fn: Callable[..., T], *args: Any, what: str | None = None,
             **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` with ``store``'s retries if it is a RetryingStore."""
    if isinstance(store, RetryingStore):
        return store.call(fn, *args, what=what, **kwargs)
    return fn(*args, **kwargs)


def is_mongo(store: Store) -> bool:
    from maggma.stores import GridFSStore, MemoryStore, MongoStore

    return isinstance(store, MongoStore | GridFSStore) and not isinstance(store, MemoryStore)


def wrap_mongo_stores(job_store: JobStore, **retry: Any) -> JobStore:
    """Wrap the JobStore's MongoDB/GridFS stores (docs and additional) in RetryingStore."""
    if is_mongo(job_store.docs_store):
        job_store.docs_store = RetryingStore(job_store.docs_store, **retry)
    for name, extra in list(job_store.additional_stores.items()):
        if is_mongo(extra):
            job_store.additional_stores[name] = RetryingStore(extra, **retry)
    return job_store


def mongo_job_store(uri: str, database: str | None = None, **retry: Any) -> JobStore:
    """The production JobStore on the MongoDB server of ``uri`` (not connected yet).

    ``database``: default the URI's database, else ``atomate2_otf``. Collections:
    ``outputs`` (job documents), ``runs`` (journal, key ``run_id``), GridFS buckets
    ``checkpoints`` and ``trajectories``; all wrapped in :class:`RetryingStore`
    (``retry``: its options).
    """
    from jobflow import JobStore
    from maggma.stores import GridFSStore, MongoStore
    from pymongo import uri_parser

    from atomate2_otf.store import CHECKPOINT_STORE, RUNS_STORE, TRAJECTORY_STORE

    parsed = uri_parser.parse_uri(uri)
    database = database or parsed.get("database") or DEFAULT_DATABASE
    client = {} if "serverselectiontimeoutms" in {k.lower() for k in parsed["options"]} \
        else {"serverSelectionTimeoutMS": SERVER_SELECTION_MS}
    common = {"uri": uri, "mongoclient_kwargs": client}
    job_store = JobStore(
        MongoStore(database, "outputs", key="uuid", **common),
        additional_stores={
            CHECKPOINT_STORE: GridFSStore(database, CHECKPOINT_STORE, key="_key",
                                          searchable_fields=["run_id", "index"], **common),
            TRAJECTORY_STORE: GridFSStore(database, TRAJECTORY_STORE, key="_key",
                                          searchable_fields=["run_id", "segment"], **common),
            RUNS_STORE: MongoStore(database, RUNS_STORE, key="run_id", **common),
        })
    return wrap_mongo_stores(job_store, **retry)


def _address(store: Store) -> tuple[str, dict[str, Any], str]:
    """(host:port for messages, MongoClient arguments, database) of a Mongo/GridFS store."""
    from pymongo import uri_parser

    if getattr(store, "uri", None):
        nodes = uri_parser.parse_uri(store.uri)["nodelist"]
        where = ", ".join(f"{h}:{p}" for h, p in nodes)
        return where, {"host": store.uri}, store.database
    args: dict[str, Any] = {"host": store.host, "port": int(store.port)}
    if getattr(store, "username", ""):
        args.update(username=store.username, password=store.password,
                    authSource=store.auth_source)
    return f"{store.host}:{store.port}", args, store.database


def _first_words(error: Exception) -> str:
    """pymongo's message without its topology dump."""
    text = str(error).splitlines()[0]
    return text.split(", Timeout:")[0].split("Topology Description")[0][:300].rstrip(", ")


def check_reachable(job_store: JobStore, source: str, timeout_s: float = 5.0) -> None:
    """Ping every MongoDB server the JobStore uses; raise StoreUnreachableError naming
    host and port (within about ``timeout_s`` per server) if one does not answer."""
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure, PyMongoError

    stores = [job_store.docs_store, *job_store.additional_stores.values()]
    seen: set[str] = set()
    for store in (unwrap(s) for s in stores):
        if not is_mongo(store):
            continue
        where, args, database = _address(store)
        if repr(sorted(args.items())) in seen:
            continue
        seen.add(repr(sorted(args.items())))
        ms = int(1000 * timeout_s)
        client = MongoClient(**args, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms)
        try:
            client[database].command("ping")
        except OperationFailure as error:
            raise StoreUnreachableError(
                f"MongoDB at {where} (database {database!r}, configured in {source}) refused "
                f"the connection: {error}. Check the username, password and authSource "
                f"there.") from error
        except PyMongoError as error:
            raise StoreUnreachableError(
                f"cannot reach MongoDB at {where} (database {database!r}, configured in "
                f"{source}) within {timeout_s:g} s: {_first_words(error)}. "
                f"Check that the server is running and listening on that host and port, "
                f"that this machine may connect to it (firewall, VPN, SSH tunnel), and the "
                f"host/port in {source}.") from error
        finally:
            client.close()


# maggma's GridFSStore has no public handle to its GridFS bucket and files collection
# (``_collection``, ``_files_collection``); this module is the one place that uses them.
def gridfs_put_raw(fs_store: Any, meta: dict[str, Any], blob: bytes) -> None:
    """One GridFS file holding the raw bytes (maggma's update would JSON-encode them);
    then drop older files of the same key, as GridFSStore.update does (a retried write
    leaves no duplicate)."""
    fs = fs_store._collection
    fs.put(blob, metadata=meta)
    files = fs_store._files_collection
    for old in files.find({"metadata._key": meta["_key"]}, ["_id"]).sort(
            "uploadDate", -1).skip(1):
        fs.delete(old["_id"])


def gridfs_get_raw(fs_store: Any, key: str) -> bytes | None:
    """The newest GridFS file of ``key``: raw bytes, or maggma's JSON/base64 encoding."""
    import base64
    import json
    import zlib

    # a checkpoint copied by jobflow-remote into GridFS (GridFSStore.update, keyed by
    # jobflow's blob_uuid) has no _key in its metadata unless it is a searchable field
    files = list(fs_store._files_collection.find(
        {"$or": [{"metadata._key": key}, {"metadata.blob_uuid": key}]}).sort(
        "uploadDate", -1).limit(1))
    if not files:
        return None
    meta = files[0].get("metadata", {})
    data = fs_store._collection.get(files[0]["_id"]).read()
    if meta.get("encoding") == "raw":
        return data
    if meta.get("compression") == "zlib":  # written by GridFSStore.update (older versions)
        data = zlib.decompress(data)
    return base64.b64decode(json.loads(data)["data"])
