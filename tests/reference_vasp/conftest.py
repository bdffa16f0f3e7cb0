"""Fixtures of the VASP-path tests: the toy model, a store, EMT as the ground truth."""

from __future__ import annotations

import pytest

from atomate2_otf.models.base import register_model
from tests.toy_model import ToyModel


@pytest.fixture(scope="session", autouse=True)
def toy_model_registered():
    """``load_model("toy")``: a pair potential covering H, C, O, Cu; milliseconds per step."""
    register_model("toy", ToyModel)


@pytest.fixture
def store(tmp_path, monkeypatch):
    from atomate2_otf.store import embedded_job_store

    monkeypatch.chdir(tmp_path)
    job_store = embedded_job_store(tmp_path / "store")
    job_store.connect()
    return job_store

