"""Suite-wide settings: one torch thread per process; ``gpu`` tests only where CUDA is.

The models in the fast tests are tiny and the CI machine has two cores, often shared with a
ChainPool's workers; torch's intra-op threads then only add synchronisation (measured here:
a tiny posterior update 8.5 s with 2 threads against 0.16 s with 1).
"""

import os

import pytest
import torch

#: where the gpu-marked tests run: CUDA; ``OTF_GPU_TESTS_ON=cpu`` runs them on the CPU
#: instead, to check their own code on a machine without a GPU
GPU_TESTS_ON = os.environ.get("OTF_GPU_TESTS_ON", "cuda")


@pytest.fixture
def gpu() -> str:
    """The device setting of a gpu-marked test ("cuda", or the OTF_GPU_TESTS_ON override)."""
    return GPU_TESTS_ON


def pytest_collection_modifyitems(config, items):
    """Skip ``@pytest.mark.gpu`` tests, saying why, on a machine where torch sees no GPU."""
    if torch.cuda.is_available() or GPU_TESTS_ON != "cuda":
        return
    why = ("a CPU-only build of torch " + torch.__version__ if torch.version.cuda is None
           else "torch finds no CUDA device")
    skip = pytest.mark.skip(reason=f"needs CUDA: {why}")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not keywords: a param id "gpu"
            item.add_marker(skip)


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
