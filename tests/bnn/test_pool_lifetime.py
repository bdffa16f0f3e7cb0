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


UNGUARDED = """
from atomate2_otf.bnn.parallel import ChainPool
from atomate2_otf.bnn.posterior import Posterior, PosteriorConfig
from atomate2_otf.bnn.sghmc import SGHMCConfig
from atomate2_otf.records import StructureRecord
from tests.toy_model import ToyModel

model = ToyModel()
posterior = Posterior(model, PosteriorConfig(n_chains=2, sghmc=SGHMCConfig(
    n_steps=5, burn_in=1, ramp=1, batch_size=2)))
positions = [[0, 0, 0], [1.1, 0, 0], [0, 1.2, 0]]
posterior.add_labels([StructureRecord([6, 1, 1], positions, energy=-1.0 - 0.1 * i,
                                      forces=[[0.1 * i, 0, 0]] * 3) for i in range(3)])
pool = ChainPool(model, n_workers=2)
posterior.update(pool=pool)
print("updated")
"""


def test_an_unguarded_script_gets_an_error_not_a_hang(tmp_path):
    """Spawned workers re-import the main script; without an ``if __name__ ==
    "__main__":`` guard they die making their own pool. The parent must say so instead of
    waiting for ever on a task pipe nobody reads."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=subprocess_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "updated" not in out.stdout
    assert "exited while starting" in out.stderr and "__main__" in out.stderr, \
        out.stderr[-2000:]
