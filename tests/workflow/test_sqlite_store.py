"""SQLiteStore: maggma Store semantics (what jobflow and the package use), indexes."""

import pytest

from atomate2_otf.sqlite_store import SQLiteStore


@pytest.fixture
def sqlite(tmp_path):
    store = SQLiteStore("docs", str(tmp_path / "db.sqlite"), key="uuid")
    store.connect()
    yield store
    store.close()


def test_upsert_query_sort_project_remove(sqlite):
    sqlite.update([{"uuid": "a", "index": 1, "output": {"x": 1}, "metadata": {"k": "u"}},
                   {"uuid": "a", "index": 2, "output": {"x": 2}},
                   {"uuid": "b", "index": 1, "output": {"x": 3}, "metadata": {"k": "v"}}],
                  key=["uuid", "index"])
    sqlite.update({"uuid": "a", "index": 2, "output": {"x": 20}}, key=["uuid", "index"])
    assert sqlite.count() == 3
    assert sqlite.query_one({"uuid": "a"}, sort={"index": -1})["output"] == {"x": 20}
    assert sqlite.query_one({"uuid": "a"}, sort={"index": 1})["output"] == {"x": 1}
    assert [d["output"]["x"] for d in sqlite.query({"uuid": {"$in": ["a", "b"]}},
                                                   sort={"output.x": -1})] == [20, 3, 1]
    assert list(sqlite.query({"metadata.k": "v"}, properties=["output.x"])) == \
        [{"output": {"x": 3}}]
    assert sqlite.count({"output.x": {"$gt": 2}}) == 2  # not indexed: scanned
    assert sqlite.count({"metadata": {"$exists": True}}) == 2
    assert sorted(sqlite.distinct("uuid")) == ["a", "b"]
    sqlite.remove_docs({"uuid": "a", "index": {"$in": [1]}})
    assert sqlite.count({"uuid": "a"}) == 1
    assert sqlite.count({"uuid": 1}) == 0  # 1 and "1" are different values


def test_persistent_and_shared_between_connections(tmp_path):
    path = str(tmp_path / "db.sqlite")
    first = SQLiteStore("c", path, key="_key")
    first.connect()
    first.update({"_key": "k", "data": "x" * 100_000})
    second = SQLiteStore("c", path, key="_key")
    second.connect()
    assert second.query_one({"_key": "k"})["data"] == "x" * 100_000
    first.close()
    second.close()


def test_indexed_lookups_do_not_scan(sqlite):
    """The property MontyDB lacks: a uuid lookup among 5000 documents searches the index and
    reads the matching documents by primary key, never a scan (SQLite's query plans of the
    statements it ran; how fast that is, is a benchmark's question, not a test's)."""
    sqlite.update([{"uuid": f"u{i}", "index": 1, "output": {"v": list(range(20))}}
                   for i in range(5000)], key=["uuid", "index"])
    connection = sqlite._collection
    statements: list[str] = []
    connection.set_trace_callback(statements.append)
    try:
        for i in range(20):
            assert sqlite.query_one({"uuid": f"u{i * 7}"}, sort={"index": -1})["uuid"] == \
                f"u{i * 7}"
    finally:
        connection.set_trace_callback(None)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) >= 20
    for statement in selects:
        plan = " ".join(row[-1] for row in connection.execute(f"EXPLAIN QUERY PLAN {statement}"))
        assert "SEARCH" in plan and "SCAN" not in plan, (statement, plan)


def test_works_as_jobflow_store(tmp_path):
    from jobflow import JobStore, job, run_locally

    @job
    def add(a, b):
        return a + b

    store = JobStore(SQLiteStore("outputs", str(tmp_path / "db.sqlite"), key="uuid"))
    first = add(1, 2)
    second = add(first.output, 4)
    run_locally([first, second], store=store, log=False, ensure_success=True)
    assert store.get_output(second.uuid) == 7


def test_bad_collection_name(tmp_path):
    with pytest.raises(ValueError, match="identifier.*'a b'"):
        SQLiteStore("a b", str(tmp_path / "x.sqlite"))


def test_bytes_fields_are_blobs_loaded_only_when_asked(sqlite, tmp_path):
    import os
    import sqlite3

    blob = os.urandom(50_000)
    sqlite.update({"uuid": "a", "data": blob, "nested": {"small": b"\x00\x01"}, "n": 1})
    assert sqlite.query_one({"uuid": "a"})["data"] == blob
    assert sqlite.query_one({"uuid": "a"})["nested"] == {"small": b"\x00\x01"}
    assert list(sqlite.query({"uuid": "a"}, properties=["n"])) == [{"n": 1}]
    assert sqlite.query_one({"uuid": "a"}, properties=["data"])["data"] == blob
    assert sqlite.blob_nbytes({"uuid": "a"}) == len(blob)
    replaced = os.urandom(10)
    sqlite.update({"uuid": "a", "data": replaced})
    assert sqlite.query_one({"uuid": "a"})["data"] == replaced
    assert sqlite.blob_nbytes() == 10
    sqlite.update({"uuid": "b", "data": blob})
    sqlite.remove_docs({"uuid": "a"})
    conn = sqlite3.connect(sqlite.database_path)
    assert conn.execute("SELECT length(data) FROM docs__blobs").fetchall() == [(len(blob),)]
    conn.close()
    assert sqlite.count({"data": {"$exists": True}}) == 1
    assert sqlite.count({"data": {"$exists": False}}) == 0
