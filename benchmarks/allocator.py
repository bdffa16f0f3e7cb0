"""Effect of :func:`atomate2_otf.runtime.keep_freed_memory` on a training step and an evaluation.

For each model, fresh processes alternate between glibc's default malloc settings and the
package's (``keep``), each timing one single-chain SGHMC gradient (batch 5) and one batched
energy+forces evaluation of the same 5 structures, and recording peak RSS and page faults.
The ratio keep/default of the medians over the pairs is reported (one run, interleaved, so
machine noise hits both sides alike).

Usage: python benchmarks/allocator.py [--models chgnet sevenn-0] [--system ethanol]
       [--pairs 3] [--threads 2] [--out benchmarks/allocator.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
sys.path.insert(0, {bench!r})
from chain_cost import systems, self_labelled
from atomate2_otf.bnn.posterior import Posterior, PosteriorConfig
from atomate2_otf.models.base import load_model
from atomate2_otf.runtime import keep_freed_memory
mode, name, system, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if mode == "keep":
    keep_freed_memory()
torch.set_num_threads(threads)
model = load_model(name)
data = self_labelled(model, systems(system, 10))
posterior = Posterior(model, PosteriorConfig(n_chains=1, seed=1))
posterior.add_labels(data)
theta, idx, w = posterior.state.theta[0], np.arange(5), np.ones(5)
batch5 = model.collate([model.prepare(r) for r in data[:5]])
periodic = data[0].periodic
def timed(fn, n):
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step = timed(lambda: posterior._chain_gradient(theta, idx, w), 20)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 23
evaluation = timed(lambda: model.evaluate(batch5, compute_stress=periodic), 40)
print(json.dumps({{"step_ms": 1e3 * step, "eval5_ms": 1e3 * evaluation,
                  "faults_per_step": faults,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run_child(mode: str, model: str, system: str, threads: int) -> dict:
    code = _CHILD.format(bench=str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code, mode, model, system, str(threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["chgnet", "sevenn-0"])
    parser.add_argument("--system", default="ethanol")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    rows = []
    for model in args.models:
        runs: dict[str, list[dict]] = {"default": [], "keep": []}
        for _ in range(args.pairs):
            for mode in ("default", "keep"):
                runs[mode].append(run_child(mode, model, args.system, args.threads))
        row = {"model": model, "system": args.system, "threads": args.threads,
               "pairs": args.pairs}
        for mode, results in runs.items():
            for key in ("step_ms", "eval5_ms", "faults_per_step", "peak_rss_mb"):
                row[f"{mode}_{key}"] = statistics.median(r[key] for r in results)
            row[f"{mode}_step_vs_eval"] = row[f"{mode}_step_ms"] / row[f"{mode}_eval5_ms"]
        row["step_ratio"] = row["keep_step_ms"] / row["default_step_ms"]
        row["eval_ratio"] = row["keep_eval5_ms"] / row["default_eval5_ms"]
        rows.append(row)
        print(f"{model}: step {row['default_step_ms']:.1f} -> {row['keep_step_ms']:.1f} ms "
              f"({row['step_ratio']:.2f}), eval5 {row['default_eval5_ms']:.1f} -> "
              f"{row['keep_eval5_ms']:.1f} ms ({row['eval_ratio']:.2f})", flush=True)
    header = ("model", "system", "step default [ms]", "step keep [ms]", "ratio",
              "eval5 default [ms]", "eval5 keep [ms]", "ratio", "step/eval5 default",
              "step/eval5 keep", "faults/step default", "faults/step keep",
              "peak RSS default [MB]", "peak RSS keep [MB]")
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['model']} | {r['system']} | {r['default_step_ms']:.1f} | "
              f"{r['keep_step_ms']:.1f} | {r['step_ratio']:.2f} | {r['default_eval5_ms']:.1f} | "
              f"{r['keep_eval5_ms']:.1f} | {r['eval_ratio']:.2f} | "
              f"{r['default_step_vs_eval']:.2f} | {r['keep_step_vs_eval']:.2f} | "
              f"{r['default_faults_per_step']:.0f} | {r['keep_faults_per_step']:.0f} | "
              f"{r['default_peak_rss_mb']:.0f} | {r['keep_peak_rss_mb']:.0f} |")
    meta = {"cpus": len(os.sched_getaffinity(0)), "loadavg_start": load_start,
            "loadavg_end": os.getloadavg()[0], "python": sys.version.split()[0]}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
