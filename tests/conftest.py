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
