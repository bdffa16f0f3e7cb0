"""Stores shared by the analysis tests, built once per session (a few seconds in all)."""

from __future__ import annotations

import pytest

from tests.analysis.runs import batch_runs, finished_run


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """(store folder, run id) of one finished run."""
    folder = tmp_path_factory.mktemp("finished") / "store"
    return folder, finished_run(folder)


@pytest.fixture(scope="session")
def batch(tmp_path_factory):
    """(store folder, run ids) of a batch: two finished materials and one stopped run."""
    folder = tmp_path_factory.mktemp("batch") / "store"
    return folder, batch_runs(folder)
