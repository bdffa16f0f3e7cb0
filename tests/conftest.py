"""Suite-wide settings: one torch thread per process.

The models in the fast tests are tiny and the CI machine has two cores, often shared with a
ChainPool's workers; torch's intra-op threads then only add synchronisation (measured here:
a tiny posterior update 8.5 s with 2 threads against 0.16 s with 1).
"""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh embedded JobStore in a temporary folder, which is also the working directory
    (atomate2's ASE makers write a file there). Shared by the workflow and model tests."""
    from atomate2_otf.store import embedded_job_store

    monkeypatch.chdir(tmp_path)
    job_store = embedded_job_store(tmp_path / "store")
    job_store.connect()
    return job_store
