"""Effect of :func:`atomate2_otf.runtime.keep_freed_memory` on a training step and an evaluation.

For each model, fresh processes take turns with glibc's default malloc settings, the
package's (``keep``: blocks up to 32 MB from the heap, 1 GB kept) and the large-cell opt-in
(``large``: 256 MB blocks, 1 GB trim, as with MALLOC_MMAP_THRESHOLD_ and
MALLOC_TRIM_THRESHOLD_), each timing one
single-chain SGHMC gradient (batch 5) and one batched energy+forces evaluation of the same 5
structures (wall and CPU time: CPU time is less disturbed by other tenants of a shared
machine), and recording peak RSS and page faults. Ratios to ``default`` of the medians
over the rounds are reported (one run, interleaved, so machine noise hits all alike).

Usage: python benchmarks/allocator.py [--models chgnet sevenn-0] [--system ethanol]
       [--pairs 3] [--threads 2] [--modes default keep large] [--out benchmarks/allocator.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from atomate2_otf.runtime import MALLOC_ENV

sys.path.insert(0, str(Path(__file__).parent))
from report import print_markdown_table, write_report  # noqa: E402

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
    assert keep_freed_memory()
elif mode == "large":
    assert keep_freed_memory(256 * 2**20, 2**30)
torch.set_num_threads(threads)
model = load_model(name)
data = self_labelled(model, systems(system, 10))
posterior = Posterior(model, PosteriorConfig(n_chains=1, seed=1))
posterior.add_labels(data)
theta, idx, w = posterior.state.theta[0], np.arange(5), np.ones(5)
batch5 = model.collate([model.prepare(r) for r in data[:5]])
periodic = data[0].periodic
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
def timed(fn, n):
    for _ in range(3):
        fn()
    start, start_cpu = time.perf_counter(), cpu()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n, (cpu() - start_cpu) / n
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step, step_cpu = timed(lambda: posterior._chain_gradient(theta, idx, w), 20)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 23
evaluation, evaluation_cpu = timed(lambda: model.evaluate(batch5, compute_stress=periodic), 40)
print(json.dumps({{"step_ms": 1e3 * step, "eval5_ms": 1e3 * evaluation,
                  "step_cpu_ms": 1e3 * step_cpu, "eval5_cpu_ms": 1e3 * evaluation_cpu,
                  "faults_per_step": faults,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run_child(mode: str, model: str, system: str, threads: int) -> dict:
    code = _CHILD.format(bench=str(Path(__file__).parent))
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    out = subprocess.run([sys.executable, "-c", code, mode, model, system, str(threads)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["chgnet", "sevenn-0"])
    parser.add_argument("--system", default="ethanol")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["default", "keep", "large"],
                        choices=["default", "keep", "large"])
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args(argv)
    if "default" not in args.modes:
        parser.error("--modes must include default (the ratios are relative to it)")
    load_start = os.getloadavg()[0]
    rows = []
    for model in args.models:
        runs: dict[str, list[dict]] = {mode: [] for mode in args.modes}
        for _ in range(args.pairs):
            for mode in args.modes:
                runs[mode].append(run_child(mode, model, args.system, args.threads))
        for mode, results in runs.items():
            row = {"model": model, "system": args.system, "threads": args.threads,
                   "rounds": args.pairs, "mode": mode}
            for key in ("step_ms", "eval5_ms", "step_cpu_ms", "eval5_cpu_ms",
                        "faults_per_step", "peak_rss_mb"):
                row[key] = statistics.median(r[key] for r in results)
            row["step_vs_eval"] = row["step_ms"] / row["eval5_ms"]
            rows.append(row)
        base = next(r for r in rows if r["model"] == model and r["mode"] == "default")
        for row in rows:
            if row["model"] == model:
                row["step_ratio"] = row["step_ms"] / base["step_ms"]
                row["step_cpu_ratio"] = row["step_cpu_ms"] / base["step_cpu_ms"]
                row["eval_ratio"] = row["eval5_ms"] / base["eval5_ms"]
                row["rss_ratio"] = row["peak_rss_mb"] / base["peak_rss_mb"]
                print(f"{model} {row['mode']:>7}: step {row['step_ms']:.1f} ms "
                      f"({row['step_ratio']:.2f}), eval5 {row['eval5_ms']:.1f} ms "
                      f"({row['eval_ratio']:.2f}), peak RSS {row['peak_rss_mb']:.0f} MB "
                      f"({row['rss_ratio']:.2f})", flush=True)
    header = ("model", "system", "malloc", "step [ms]", "step ratio", "step CPU [ms]",
              "CPU ratio", "eval5 [ms]",
              "eval ratio", "step/eval5", "faults/step", "peak RSS [MB]", "RSS ratio")
    print_markdown_table(header, ([
        r["model"], r["system"], r["mode"], f"{r['step_ms']:.1f}", f"{r['step_ratio']:.2f}",
        f"{r['step_cpu_ms']:.1f}", f"{r['step_cpu_ratio']:.2f}", f"{r['eval5_ms']:.1f}",
        f"{r['eval_ratio']:.2f}", f"{r['step_vs_eval']:.2f}", f"{r['faults_per_step']:.0f}",
        f"{r['peak_rss_mb']:.0f}", f"{r['rss_ratio']:.2f}"] for r in rows))
    meta = {"cpus": len(os.sched_getaffinity(0)), "loadavg_start": load_start,
            "loadavg_end": os.getloadavg()[0], "python": sys.version.split()[0]}
    write_report(args.out, meta, rows)


if __name__ == "__main__":
    main()
