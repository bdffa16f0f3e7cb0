"""Replace cycles under jobflow's run_locally: wall time and peak RSS at 100 and 1000 cycles.

Each cycle is one MD segment that stops at a forced trigger, one EMT reference job, one
posterior update (a tiny budget) and the next segment, with the toy pair-potential model of
the tests so that jobflow and the store, not the model, are what is measured. Each cycle
count runs in a fresh process (peak RSS is per process).

    python benchmarks/replace_cycles.py [--cycles 100 1000] [--out benchmarks/replace_cycles.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(cycles: int, store_kind: str, manager: str = "jobflow") -> dict:
    """Run ``cycles`` replace cycles in this process; return the measurements."""
    import logging
    import os

    sys.path.insert(0, str(ROOT))

    import torch

    from atomate2_otf.models.base import register_model
    from atomate2_otf.store import embedded_job_store
    from tests.cycles import cycles_flow, run_with
    from tests.rss import rss_after_updates
    from tests.toy_model import ToyModel

    torch.set_num_threads(1)  # tiny model: threads only add synchronisation
    logging.disable(logging.WARNING)
    register_model("toy", ToyModel)
    folder = tempfile.mkdtemp()
    os.chdir(folder)
    if store_kind == "memory":
        from jobflow import JobStore
        from maggma.stores import MemoryStore

        store = JobStore(MemoryStore(), additional_stores={"checkpoints": MemoryStore(),
                                                           "trajectories": MemoryStore()})
    else:
        store = embedded_job_store(Path(folder) / "store")
    flow = cycles_flow(cycles, trajectory_interval=100)
    started = time.perf_counter()
    with rss_after_updates({10, 100, cycles // 2, cycles}) as rss_at:
        run_with(manager, flow, store)
    wall = time.perf_counter() - started
    doc = store.get_output(flow.output.uuid, load=True)
    calls = doc.n_reference_calls if hasattr(doc, "n_reference_calls") else doc["n_reference_calls"]
    return {"cycles": cycles, "store": store_kind, "manager": manager,
            "reference_calls": calls,
            "wall_s": round(wall, 2), "s_per_cycle": round(wall / cycles, 4),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_mb_after_update": rss_at,
            "recursion_limit": sys.getrecursionlimit()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--store", choices=["embedded", "memory"], nargs="+",
                        default=["embedded"])
    parser.add_argument("--manager", choices=["jobflow", "flat"], nargs="+",
                        default=["jobflow", "flat"],
                        help="jobflow's run_locally or atomate2_otf.local.run_flow_locally")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "replace_cycles.json"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(int(args.child[0]), args.child[1], args.child[2])))
        return
    rows = []
    for kind in args.store:
        for manager in args.manager:
            for n in args.cycles:
                out = subprocess.run([sys.executable, __file__, "--child", str(n), kind, manager],
                                     capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'store':9s} {'manager':8s} {'cycles':>7s} {'calls':>6s} {'wall s':>8s} "
          f"{'s/cycle':>8s} {'peak RSS MB':>12s}  RSS MB after update k")
    for r in rows:
        rss = ", ".join(f"{k}: {v}" for k, v in sorted(r["rss_mb_after_update"].items(),
                                                       key=lambda kv: int(kv[0])))
        print(f"{r['store']:9s} {r['manager']:8s} {r['cycles']:>7d} {r['reference_calls']:>6d} "
              f"{r['wall_s']:>8.1f} {r['s_per_cycle']:>8.3f} {r['peak_rss_mb']:>12.1f}  {rss}")
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
