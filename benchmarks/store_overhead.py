"""Store overhead per MD segment, MongoDB + GridFS vs embedded SQLite; checkpoint bytes at rest.

The same toy-model on-the-fly run (pair potential + EMT, a trigger every few steps, so a
segment is milliseconds of MD and the store's share is as large as it gets) runs once on
each store through ``run_flow_locally``. Every store operation (jobflow's ``Job.run``
document writes and reference resolution on the docs store, checkpoint save/load/list/
prune, trajectory saves) is timed by wrapping each store in a timing RetryingStore; the
time is reported per MD segment and split by store. MongoDB is SecantusDB started here on
127.0.0.1 (tests/mongo_server.py), so absolute numbers are SecantusDB's, not mongod's; the
ratio is measured in the same run on the same machine.

Checkpoint sizes: bytes at rest per checkpoint (GridFS file length, SQLite BLOB length)
against the posterior's bytes, for the toy run and for a CHGNet posterior with 8 chains
(its posterior bytes and the theta tensor).

    python benchmarks/store_overhead.py [--steps 100] [--every 5] [--out benchmarks/store_overhead.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOY = "tests.toy_model:ToyModel"

from atomate2_otf.mongo import RetryingStore  # noqa: E402


class TimedStore(RetryingStore):
    """A RetryingStore that also adds up the seconds spent in each operation."""

    def __init__(self, store: Any, label: str = "", seconds: dict | None = None,
                 counts: dict | None = None) -> None:
        super().__init__(store)
        self.label = label
        self.seconds = defaultdict(float) if seconds is None else seconds
        self.counts = defaultdict(int) if counts is None else counts

    def call(self, fn, *args, what=None, **kwargs):
        started = time.perf_counter()
        try:
            return super().call(fn, *args, what=what, **kwargs)
        finally:
            name = f"{self.label}.{what or getattr(fn, '__name__', 'op')}"
            self.seconds[name] += time.perf_counter() - started
            self.counts[name] += 1


def timed(job_store, seconds, counts):
    job_store.docs_store = TimedStore(job_store.docs_store, "docs", seconds, counts)
    for name, extra in list(job_store.additional_stores.items()):
        job_store.additional_stores[name] = TimedStore(extra, name, seconds, counts)
    return job_store


def run_once(spec: str, work: Path, steps: int, every: int, seed: int) -> dict:
    from ase.build import bulk

    from atomate2_otf.flows import OTFMDMaker
    from atomate2_otf.local import run_flow_locally
    from atomate2_otf.reference.makers import get_reference_maker
    from atomate2_otf.results import read_run_doc
    from atomate2_otf.store import (
        list_checkpoints,
        load_checkpoint,
        open_job_store,
        stored_checkpoint_nbytes,
    )

    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    store = timed(open_job_store(spec), seconds, counts)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.02, seed=3)
    flow = OTFMDMaker(model=TOY, reference_maker=get_reference_maker("emt"), n_steps=steps,
                      timestep_fs=1.0, temperature=300.0, n_chains=2, update_steps=3,
                      initial_update_steps=3, n_workers=1, force_trigger_every=every,
                      trajectory_interval=5, threshold=0.05, seed=seed).make(atoms)
    started = time.perf_counter()
    n_jobs = run_flow_locally(flow, store, root_dir=work / "jobs")
    wall = time.perf_counter() - started
    run_time = dict(seconds)
    doc = read_run_doc(store, flow.output.uuid)
    segments = doc.n_reference_calls  # one MD segment per reference call after call 0
    by_store: dict[str, float] = defaultdict(float)
    for name, s in run_time.items():
        by_store[name.split(".")[0]] += s
    total = sum(run_time.values())
    sizes = []
    for index in list_checkpoints(store, doc.run_id):
        key = f"{doc.run_id}:{index}"
        raw = len(load_checkpoint(store, key))
        sizes.append({"key": key, "posterior_bytes": raw,
                      "stored_bytes": stored_checkpoint_nbytes(store, key)})
    store.close()
    return {
        "spec": spec.split("?")[0], "n_jobs": n_jobs, "n_segments": segments,
        "n_reference_calls": doc.n_reference_calls, "wall_s": round(wall, 3),
        "store_s": round(total, 4),
        "store_ms_per_segment": round(1000 * total / segments, 2),
        "wall_ms_per_segment": round(1000 * wall / segments, 2),
        "store_share_of_wall": round(total / wall, 4),
        "store_ms_per_segment_by_store": {k: round(1000 * v / segments, 2)
                                          for k, v in sorted(by_store.items())},
        "operations": {k: {"n": counts[k], "ms": round(1000 * v, 2)}
                       for k, v in sorted(run_time.items())},
        "checkpoints": sizes,
    }


def chgnet_sizes(specs: dict[str, str]) -> dict:
    """Posterior bytes and theta of CHGNet with 8 chains; bytes at rest in each store."""
    from atomate2_otf.bnn.posterior import Posterior, PosteriorConfig
    from atomate2_otf.models.base import load_model
    from atomate2_otf.store import (
        load_checkpoint,
        open_job_store,
        save_checkpoint,
        stored_checkpoint_nbytes,
    )

    posterior = Posterior(load_model("chgnet"), PosteriorConfig(n_chains=8, seed=1))
    blob = posterior.to_bytes()
    theta = posterior.state.theta
    out: dict[str, Any] = {
        "n_chains": posterior.n_chains, "posterior_bytes": len(blob),
        "theta_shape": list(theta.shape),
        "theta_float32_bytes": int(theta.numel() * 4),
        "base64_json_bytes": len(base64.b64encode(blob)) + 200,
        "stores": {},
    }
    for name, spec in specs.items():
        store = open_job_store(spec)
        started = time.perf_counter()
        key = save_checkpoint(store, "chgnet8", 0, blob)
        saved = time.perf_counter() - started
        started = time.perf_counter()
        assert load_checkpoint(store, key) == blob
        loaded = time.perf_counter() - started
        stored = stored_checkpoint_nbytes(store, key)
        out["stores"][name] = {"stored_bytes": stored,
                               "stored_over_posterior": round(stored / len(blob), 4),
                               "save_ms": round(1000 * saved, 1),
                               "load_ms": round(1000 * loaded, 1)}
        store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=5, help="trigger every N model steps")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--no-chgnet", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from tests.mongo_server import MongoTestServer

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = MongoTestServer(work / "mongo" / "data").start()
        try:
            specs = {"sqlite": str(work / "embedded"), "mongodb": f"{server.uri}/bench"}
            # warm-up (imports, first model build) on a throwaway store, not timed
            run_once(str(work / "warm"), work / "w", 10, args.every, args.seed)
            runs = {name: run_once(spec, work / name, args.steps, args.every, args.seed)
                    for name, spec in specs.items()}
            chgnet = None if args.no_chgnet else chgnet_sizes(
                {"sqlite": str(work / "chgnet-embedded"), "mongodb": f"{server.uri}/chgnet"})
        finally:
            server.stop()

    sq, mg = runs["sqlite"], runs["mongodb"]
    ratio = mg["store_ms_per_segment"] / sq["store_ms_per_segment"]
    result = {
        "what": "store time per MD segment (toy model + EMT), MongoDB/GridFS (SecantusDB) vs "
                "embedded SQLite, and checkpoint bytes at rest",
        "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count(),
                    "platform": platform.platform()},
        "settings": {"n_steps": args.steps, "trigger_every": args.every, "seed": args.seed,
                     "n_chains": 2},
        "runs": runs,
        "mongo_over_sqlite_store_time_ratio": round(ratio, 3),
        "notes": "store_ms_per_segment: seconds inside store operations (docs: jobflow's "
                 "Job.run writes and reference resolution; checkpoints: save/load/list/prune; "
                 "trajectories: segment frames; runs: the local runner's journal) divided by "
                 "the number of MD segments. SecantusDB (a Python MongoDB server) on the same "
                 "2 shared cores stands in for mongod; one run, expect run-to-run noise.",
        "chgnet_8_chains": chgnet,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    print(f"{'store':<9}{'segments':>9}{'wall ms/seg':>13}{'store ms/seg':>14}"
          f"{'share':>8}   by store (ms/segment)")
    for name, r in runs.items():
        parts = ", ".join(f"{k} {v}" for k, v in r["store_ms_per_segment_by_store"].items())
        print(f"{name:<9}{r['n_segments']:>9}{r['wall_ms_per_segment']:>13}"
              f"{r['store_ms_per_segment']:>14}{r['store_share_of_wall']:>8.1%}   {parts}")
    print(f"MongoDB / SQLite store time per segment: {ratio:.2f}x")
    for name, r in runs.items():
        worst = max(c["stored_bytes"] / c["posterior_bytes"] for c in r["checkpoints"])
        print(f"toy checkpoints in {name}: {r['checkpoints'][-1]['posterior_bytes']} posterior "
              f"bytes, stored/posterior <= {worst:.4f}")
    if chgnet:
        print(f"CHGNet, 8 chains: posterior {chgnet['posterior_bytes'] / 1e6:.2f} MB, theta "
              f"{chgnet['theta_shape']} = {chgnet['theta_float32_bytes'] / 1e6:.2f} MB float32; "
              f"base64 JSON would be {chgnet['base64_json_bytes'] / 1e6:.2f} MB")
        for name, s in chgnet["stores"].items():
            print(f"  {name}: stored {s['stored_bytes'] / 1e6:.2f} MB "
                  f"({s['stored_over_posterior']}x), save {s['save_ms']} ms, "
                  f"load {s['load_ms']} ms")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
