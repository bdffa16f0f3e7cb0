"""ChainPool workers die with their parent, however it dies.

A script makes a pool of two workers, prints their pids and sleeps; the test kills it with
SIGKILL and expects the workers gone within seconds. In the main thread the kernel's
parent-death signal ends them; from another thread (where that signal would follow the
thread, so the pool does not use it) the end of the task pipe and the parent check do.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.processes import ROOT, alive, subprocess_env

SCRIPT = """
import sys, threading, time
from atomate2_otf.bnn.parallel import ChainPool
from tests.toy_model import ToyModel

pools = []
def make():
    pools.append(ChainPool(ToyModel(), n_workers=2))
if sys.argv[1] == "thread":
    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
else:
    make()
print(" ".join(str(pid) for pid in pools[0].pids), flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("where", ["main", "thread"])
def test_workers_exit_when_their_parent_is_killed(where):
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, where], cwd=ROOT,
                               env=subprocess_env(),
                               stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in process.stdout.readline().split()]
    assert len(pids) == 2
    time.sleep(3.0)  # the workers are up and waiting for tasks
    assert all(alive(pid) for pid in pids)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    start = time.monotonic()
    while any(alive(pid) for pid in pids):
        assert time.monotonic() - start < 10, f"workers {pids} outlived their parent"
        time.sleep(0.1)
