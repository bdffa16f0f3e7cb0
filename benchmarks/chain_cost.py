"""Cost of the Bayesian core per model and system: SGHMC steps, ensemble evaluation, memory.

For each model (CHGNet, SevenNet-0) and system (ethanol, 64-atom Si) it measures, in one
process and one run (the machines are shared and noisy, so only ratios are compared):

- ``step_ratio``: one SGHMC step (batch 5) of M chains / (M x one single-chain step). The
  M-chain update runs in the package's fastest mode (a ChainPool of worker processes when
  ``--workers`` > 1, else the serial loop); the single chain runs serially, as alone.
- ``eval_ratio``: one ensemble energy+forces evaluation of M chains / (M x one model).
- ``step_vs_eval``: one single-chain step on a batch of 5 / one batched energy+forces
  evaluation of the same 5 structures.
- ``step_floor`` / ``eval_floor``: what a perfect pool (no transfer, no contention) of
  ``--workers`` one-thread processes would reach: t(1 thread) / (workers x t(all threads))
  for the single-chain step and the one-model evaluation, timed interleaved in this process.
  A pool cannot beat it without sharing work between chains; on 2 cores it is 0.5 x the
  one-thread / two-thread time ratio.
- ``update_minutes``: a paper-default update (M x 2000 steps) extrapolated from the step time.
- ``peak_rss_mb``: peak resident memory of this process and, separately, of its workers.

Usage: python benchmarks/chain_cost.py [--models chgnet sevenn-0] [--systems ethanol si64]
       [--chains 8] [--steps 20] [--workers 2] [--out benchmarks/chain_cost.json]
Labels for the cost runs are the untuned model's own predictions (labels do not change cost).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk, molecule

from atomate2_otf.atoms import record_from_atoms
from atomate2_otf.bnn.parallel import ChainPool
from atomate2_otf.bnn.posterior import Posterior, PosteriorConfig
from atomate2_otf.bnn.sghmc import SGHMCConfig
from atomate2_otf.models.base import FoundationModel, load_model
from atomate2_otf.records import StructureRecord
from atomate2_otf.runtime import keep_freed_memory

sys.path.insert(0, str(Path(__file__).parent))
# the repository root: random models of the released architectures live in tests/
sys.path.insert(1, str(Path(__file__).parent.parent))
from report import print_markdown_table, write_report  # noqa: E402


def systems(name: str, n: int, seed: int = 0) -> list[StructureRecord]:
    rng = np.random.default_rng(seed)
    if name == "ethanol":
        atoms = molecule("CH3CH2OH")
    elif name == "si64":
        atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    else:
        raise ValueError(f"unknown system {name!r}; use ethanol or si64")
    frames = []
    for _ in range(n):
        copy = atoms.copy()
        copy.positions += rng.normal(scale=0.05, size=copy.positions.shape)
        frames.append(record_from_atoms(copy))
    return frames


def self_labelled(model: FoundationModel, records: list[StructureRecord]) -> list[StructureRecord]:
    batch = model.collate([model.prepare(r) for r in records])
    out = model.evaluate(batch, compute_stress=records[0].periodic)
    forces = np.split(out.forces.detach().double().numpy(), np.cumsum(out.n_atoms)[:-1])
    stress = (out.stress.detach().double().numpy() if out.stress is not None
              else [None] * len(records))
    return [StructureRecord(r.numbers, r.positions, r.cell, r.pbc, energy=float(e), forces=f,
                            stress=s if r.periodic else None)
            for r, e, f, s in zip(records, out.energy.detach().numpy(), forces, stress,
                                  strict=True)]


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0


def measure(model_name: str, system: str, chains: int, steps: int, workers: int,
            repeats: int) -> dict:
    model = load_model(model_name)
    data = self_labelled(model, systems(system, 10))
    sg = SGHMCConfig(n_steps=steps, burn_in=steps // 2, ramp=steps // 4, batch_size=5)
    config = PosteriorConfig(n_chains=chains, sghmc=sg, energy_sigma=0.01, seed=1)
    posterior = Posterior(model, config)
    posterior.add_labels(data)

    # one SGHMC step of M chains (fastest mode) vs M x one chain alone. The per-step cost
    # of an update is the slope between a short and a longer update, so the per-update
    # overhead (checkpoint bytes to the workers, graphs rebuilt there) is reported apart.
    short = SGHMCConfig(**{**sg.to_dict(), "n_steps": 2, "burn_in": 1, "ramp": 1})
    t_single = median_time(lambda: posterior.run_chain(0, sg), repeats) / steps
    threads = torch.get_num_threads()

    def one_thread(fn):
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)

    t_single_1t = one_thread(lambda: median_time(lambda: posterior.run_chain(0, sg),
                                                 repeats)) / steps
    pool = ChainPool(model, n_workers=workers) if workers > 1 else None
    mode = f"pool x{workers}" if pool else "serial"

    def timed_update(config: SGHMCConfig) -> float:
        posterior.config.sghmc = config
        return median_time(lambda: posterior.update(pool=pool), repeats)

    t_short, t_long = timed_update(short), timed_update(sg)
    t_multi = (t_long - t_short) / (steps - 2)
    update_overhead = t_short - 2 * t_multi

    # ensemble energy+forces of one structure: M chains vs M x one model
    probe = [data[0].unlabelled()]
    t_ensemble = median_time(lambda: posterior.predict(probe, pool=pool), repeats * 3)
    def one_model() -> float:
        return median_time(
            lambda: posterior.predict(probe, thetas=posterior.state.theta[:1]), repeats * 3)

    t_one_model = one_model()
    t_one_model_1t = one_thread(one_model)

    # single-chain step on a batch of 5 vs one batched E+F evaluation of those 5
    five = data[:5]
    batch5 = model.collate([model.prepare(r) for r in five])
    t_eval5 = median_time(lambda: model.evaluate(batch5, compute_stress=five[0].periodic),
                          repeats * 3)
    theta = posterior.state.theta[0]
    t_step5 = median_time(
        lambda: posterior._chain_gradient(theta, np.arange(5), np.ones(5)), repeats * 3)

    if pool is not None:
        pool.close()
    return {
        "update_overhead_s": update_overhead,
        "model": model_name, "system": system, "n_atoms": data[0].n_atoms,
        "n_parameters": posterior.space.size, "chains": chains, "mode": mode,
        "step_single_ms": 1e3 * t_single, "step_chains_ms": 1e3 * t_multi,
        "step_ratio": t_multi / (chains * t_single),
        "step_single_1thread_ms": 1e3 * t_single_1t,
        "step_floor": t_single_1t / (max(workers, 1) * t_single),
        "eval_one_1thread_ms": 1e3 * t_one_model_1t,
        "eval_floor": t_one_model_1t / (max(workers, 1) * t_one_model),
        "eval_one_ms": 1e3 * t_one_model, "eval_chains_ms": 1e3 * t_ensemble,
        "eval_ratio": t_ensemble / (chains * t_one_model),
        "eval5_ms": 1e3 * t_eval5, "step5_ms": 1e3 * t_step5,
        "step_vs_eval": t_step5 / t_eval5,
        "update_minutes": t_multi * 2000 / 60.0,
        "peak_rss_mb": peak_rss_mb(), "peak_rss_workers_mb": peak_rss_mb(resource.RUSAGE_CHILDREN),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["chgnet", "sevenn-0"])
    parser.add_argument("--systems", nargs="+", default=["ethanol", "si64"])
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (the package's workers and CLI "
                             "call keep_freed_memory; see benchmarks/allocator.py)")
    args = parser.parse_args(argv)
    if not args.default_malloc:
        keep_freed_memory()
    load_start = os.getloadavg()
    rows = []
    for model_name in args.models:
        for system in args.systems:
            rows.append(measure(model_name, system, args.chains, args.steps, args.workers,
                                args.repeats))
            r = rows[-1]
            print(f"{r['model']:>9} {r['system']:>8}  step {r['step_single_ms']:7.1f} ms "
                  f"x{r['chains']} -> {r['step_chains_ms']:8.1f} ms (ratio {r['step_ratio']:.2f})"
                  f" floor {r['step_floor']:.2f}  eval ratio {r['eval_ratio']:.2f}"
                  f" floor {r['eval_floor']:.2f}  step/eval5 {r['step_vs_eval']:.2f}"
                  f"  update {r['update_minutes']:.1f} min", flush=True)
    header = ("model", "system", "atoms", "mode", "step 1 [ms]", "step M [ms]", "step ratio",
              "step floor", "eval ratio", "eval floor", "step5/eval5", "update [min]", "update overhead [s]", "peak RSS [MB]", "workers RSS [MB]")
    print_markdown_table(header, ([
        r["model"], r["system"], r["n_atoms"], r["mode"], f"{r['step_single_ms']:.1f}",
        f"{r['step_chains_ms']:.1f}", f"{r['step_ratio']:.2f}", f"{r['step_floor']:.2f}",
        f"{r['eval_ratio']:.2f}", f"{r['eval_floor']:.2f}", f"{r['step_vs_eval']:.2f}",
        f"{r['update_minutes']:.1f}", f"{r['update_overhead_s']:.1f}",
        f"{r['peak_rss_mb']:.0f}", f"{r['peak_rss_workers_mb']:.0f}"] for r in rows))
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": sys.version.split()[0], "machine": platform.machine(),
            "cpus": len(os.sched_getaffinity(0)),
            "keep_freed_memory": not args.default_malloc,
            # other work on the machine distorts the ratios: the 1-minute load average
            "loadavg_start": load_start[0], "loadavg_end": os.getloadavg()[0]}
    write_report(args.out, meta, rows)


if __name__ == "__main__":
    main()
