"""Is an SGHMC step overhead-bound or compute-bound? Step time against minibatch size.

Vectorising M chains (``torch.func.vmap`` over stacked parameters, or one graph holding the
M chains' minibatches) turns M steps on ``b`` structures into one pass over ``M * b``
structures. That can only win where the time of a step grows slower than its batch. This
script measures one chain's gradient (energy + forces likelihood, the double backward) on
minibatches of 5, 10, 20 and 40 structures, at 1 and at all threads, in one process.

``scale_40_over_5`` near 8 means compute-bound: one pass over 8 x 5 structures costs as
much as 8 passes over 5, so no vectorisation of 8 chains can beat the loop, and the best a
pool of one-thread processes on ``c`` cores can reach is ``t(1 thread) / (c * t(c threads))``
(``step_floor`` in chain_cost.py).

Usage: python benchmarks/batch_scaling.py [--models chgnet sevenn-0] [--system ethanol]
       [--sizes 5 10 20 40] [--out benchmarks/batch_scaling.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from chain_cost import self_labelled, systems  # noqa: E402
from report import print_markdown_table, write_report  # noqa: E402

from atomate2_otf.bnn.posterior import Posterior, PosteriorConfig  # noqa: E402
from atomate2_otf.models.base import load_model  # noqa: E402
from atomate2_otf.runtime import keep_freed_memory  # noqa: E402


def step_ms(posterior: Posterior, size: int, repeats: int) -> float:
    theta = posterior.state.theta[0]
    indices, weights = np.arange(size), np.ones(size)
    posterior._chain_gradient(theta, indices, weights)  # warm-up (and cached collation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        posterior._chain_gradient(theta, indices, weights)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["chgnet", "sevenn-0"])
    parser.add_argument("--system", default="ethanol")
    parser.add_argument("--sizes", nargs="+", type=int, default=[5, 10, 20, 40])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args(argv)
    kept = keep_freed_memory()
    all_threads = torch.get_num_threads()
    load_start = os.getloadavg()[0]
    rows = []
    for name in args.models:
        model = load_model(name)
        data = self_labelled(model, systems(args.system, max(args.sizes)))
        posterior = Posterior(model, PosteriorConfig(n_chains=1, seed=1))
        posterior.add_labels(data)
        for threads in sorted({1, all_threads}):
            torch.set_num_threads(threads)
            times = {size: step_ms(posterior, size, args.repeats) for size in args.sizes}
            row = {"model": name, "system": args.system, "threads": threads,
                   "step_ms": {str(k): v for k, v in times.items()},
                   "scale_largest_over_smallest":
                       times[max(args.sizes)] / times[min(args.sizes)],
                   "size_ratio": max(args.sizes) / min(args.sizes)}
            rows.append(row)
            print(f"{name} {threads} thread(s): " + ", ".join(
                f"{k}: {v:.1f} ms" for k, v in times.items()), flush=True)
        torch.set_num_threads(all_threads)
    sizes = args.sizes
    header = ("model", "system", "threads", *(f"batch {s} [ms]" for s in sizes),
              f"t({sizes[-1]}) / t({sizes[0]})", "batch ratio")
    print_markdown_table(header, ([
        r["model"], r["system"], r["threads"], *(f"{r['step_ms'][str(s)]:.1f}" for s in sizes),
        f"{r['scale_largest_over_smallest']:.2f}", f"{r['size_ratio']:.0f}"] for r in rows))
    meta = {"cpus": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "loadavg_start": load_start, "loadavg_end": os.getloadavg()[0],
            "keep_freed_memory": kept}
    write_report(args.out, meta, rows)


if __name__ == "__main__":
    main()
