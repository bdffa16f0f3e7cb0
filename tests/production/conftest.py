"""Fixtures of the production tests: a real MongoDB server (SecantusDB) per session."""

from __future__ import annotations

import uuid

import pytest

from tests.mongo_server import MongoTestServer


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory):
    """One SecantusDB server for the session, on 127.0.0.1 at a free port."""
    server = MongoTestServer(tmp_path_factory.mktemp("secantus") / "data").start()
    yield server
    server.stop()


@pytest.fixture
def database(mongo_server) -> str:
    """A fresh database name per test (tests share the server, never data)."""
    return f"otf_{uuid.uuid4().hex[:10]}"
