"""Cost of the Bayesian core on a GPU: SGHMC steps, ensemble evaluation, memory, scaling.

chain_cost.py's table for a device (issue 18). For each model and system (ethanol, 64-atom
Si), in one process and one run (only ratios of times taken together are compared):

- ``step_single_ms``: one SGHMC step (batch 5) of one chain.
- ``step_chains_ms``: one SGHMC step of all M chains as a run takes it on this device (one
  GPU: the chains one after another in this process), from the slope between a short and
  a longer update (the per-update overhead apart). ``step_ratio`` = step_chains /
  (M x step_single); issue 18's target on one GPU: <= 0.25 on ethanol, which only
  evaluating the chains together could reach (not built: docs/production.md#devices).
- ``pool_step_ratio``: the same with ``--same-device-workers`` ChainPool workers sharing
  the device (processes overlap their kernel launches); the best a pool reaches there.
- ``eval_one_ms``, ``eval_chains_ms``, ``eval_ratio``: one energy+forces evaluation of one
  structure (an MD step) by the M-chain ensemble / M x one model; target <= 0.25.
- ``update_min``: a paper-default update (M chains x 2000 steps), overhead + 2000 x
  step_chains (``--full-update`` also times one).
- ``model_mb``, ``peak_mb``: GPU memory of the loaded model, and the peak
  (``torch.cuda.max_memory_allocated``) of everything this process did for the row.
- ``scaling``: with G > 1 GPUs (all visible ones, or ``--scaling-devices``), a paper-default
  update with one ChainPool worker per GPU / the same on one GPU; target <= 1.25 / G.

Models: every family whose weights load (CHGNet and SevenNet-0 ship in their wheels;
NequIP, fairchem and MACE as the random models of chain_cost.py); one that does not load is
listed as skipped with the reason.

Usage: python benchmarks/gpu_cost.py [--device cuda] [--models chgnet sevenn-0 ...]
       [--systems ethanol si64] [--chains 8] [--steps 20] [--repeats 3] [--out FILE]
       python benchmarks/gpu_cost.py --device cpu --smoke   # the code path, in a minute
On a GPU machine, first the gpu-marked tests, then the table (the two weight-shipping
families first, so a short device lease still gets their rows):
       python -m pytest -m gpu -q -x && python benchmarks/gpu_cost.py --models chgnet sevenn-0
Labels are the untuned model's own predictions (labels do not change cost).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from atomate2_otf.bnn.parallel import ChainPool
from atomate2_otf.bnn.posterior import Posterior, PosteriorConfig
from atomate2_otf.bnn.sghmc import SGHMCConfig
from atomate2_otf.devices import resolve_device
from atomate2_otf.models.base import FoundationModel, load_model
from atomate2_otf.records import StructureRecord
from atomate2_otf.runtime import keep_freed_memory

sys.path.insert(0, str(Path(__file__).parent))
# the repository root: random models of the released architectures live in tests/
sys.path.insert(1, str(Path(__file__).parent.parent))
from chain_cost import systems  # noqa: E402
from report import print_markdown_table, write_report  # noqa: E402

MODELS = ["chgnet", "sevenn-0", "random_models:nequip_paper", "random_models:esen_sm",
          "tests.random_models.mace_random:random_mace_mp_medium"]
#: issue 18's targets
STEP_TARGET = EVAL_TARGET = 0.25
SCALING_TARGET = 1.25  # / G


def sync(device: torch.device) -> None:
    """Wait for the device: CUDA kernels run asynchronously to the timer."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up (CUDA kernels, caches)
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def self_labelled(model: FoundationModel, records: list[StructureRecord]) -> list[StructureRecord]:
    batch = model.batch_to(model.collate([model.prepare(r) for r in records]))
    out = model.evaluate(batch, compute_stress=records[0].periodic)
    sizes = out.n_atoms.cpu().numpy()
    forces = np.split(out.forces.double().cpu().numpy(), np.cumsum(sizes)[:-1])
    stress = (out.stress.double().cpu().numpy() if out.stress is not None
              else [None] * len(records))
    energies = out.energy.double().cpu().numpy()
    return [StructureRecord(r.numbers, r.positions, r.cell, r.pbc, energy=float(e), forces=f,
                            stress=s if r.periodic else None)
            for r, e, f, s in zip(records, energies, forces, stress, strict=True)]


def memory_mb(device: torch.device, peak: bool = False) -> float | None:
    if device.type != "cuda":
        return None
    used = torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(
        device)
    return used / 2**20


def update_times(posterior: Posterior, sg: SGHMCConfig, repeats: int, device: torch.device,
                 pool: ChainPool | None) -> tuple[float, float]:
    """(per-step time of all chains, per-update overhead) from a 2-step and a full update."""
    short = SGHMCConfig(**{**sg.to_dict(), "n_steps": 2, "burn_in": 1, "ramp": 1})

    def timed(config: SGHMCConfig) -> float:
        posterior.config.sghmc = config
        return median_time(lambda: posterior.update(pool=pool), repeats, device)

    t_short, t_long = timed(short), timed(sg)
    posterior.config.sghmc = sg
    per_step = (t_long - t_short) / (sg.n_steps - 2)
    return per_step, max(t_short - 2 * per_step, 0.0)


def pooled_update(model: FoundationModel, posterior: Posterior, sg: SGHMCConfig,
                  repeats: int, device: torch.device,
                  devices: list[str]) -> tuple[float, float]:
    """:func:`update_times` with a ChainPool of one worker per entry of ``devices``."""
    with ChainPool(model, devices=devices) as pool:
        return update_times(posterior, sg, repeats, device, pool)


def measure(model_name: str, system: str, args: argparse.Namespace,
            device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = load_model(model_name, device=device)
    model_mb = memory_mb(device)
    data = self_labelled(model, systems(system, args.frames))
    steps = args.steps
    sg = SGHMCConfig(n_steps=steps, burn_in=steps // 2, ramp=max(steps // 4, 1),
                     batch_size=5)
    config = PosteriorConfig(n_chains=args.chains, sghmc=sg, energy_sigma=0.01, seed=1)
    posterior = Posterior(model, config)
    posterior.add_labels(data)

    t_single = median_time(lambda: posterior.run_chain(0, sg), args.repeats, device) / steps
    t_chains, overhead = update_times(posterior, sg, args.repeats, device, None)
    row = {"model": model_name, "system": system, "n_atoms": data[0].n_atoms,
           "n_parameters": posterior.space.size, "device": str(device),
           "chains": args.chains, "step_single_ms": 1e3 * t_single,
           "step_chains_ms": 1e3 * t_chains,
           "step_ratio": t_chains / (args.chains * t_single),
           "update_overhead_s": overhead,
           "update_min": (overhead + 2000 * t_chains) / 60.0}
    if args.same_device_workers > 1:
        t_pool, pool_overhead = pooled_update(model, posterior, sg, args.repeats, device,
                                              [str(device)] * args.same_device_workers)
        row.update(pool_workers=args.same_device_workers, pool_step_ms=1e3 * t_pool,
                   pool_step_ratio=t_pool / (args.chains * t_single),
                   pool_update_overhead_s=pool_overhead)

    probe = [data[0].unlabelled()]
    t_ensemble = median_time(lambda: posterior.predict(probe), 3 * args.repeats, device)
    t_one = median_time(lambda: posterior.predict(probe, thetas=posterior.state.theta[:1]),
                        3 * args.repeats, device)
    row.update(eval_one_ms=1e3 * t_one, eval_chains_ms=1e3 * t_ensemble,
               eval_ratio=t_ensemble / (args.chains * t_one))

    if args.full_update:
        paper = SGHMCConfig(**{**sg.to_dict(), "n_steps": 2000, "burn_in": 400, "ramp": 100})
        posterior.config.sghmc = paper
        start = time.perf_counter()
        posterior.update()
        sync(device)
        row["update_measured_min"] = (time.perf_counter() - start) / 60.0
        posterior.config.sghmc = sg

    scaling = args.scaling_devices
    if scaling is None and device.type == "cuda" and torch.cuda.device_count() > 1:
        scaling = [f"cuda:{i}" for i in range(min(torch.cuda.device_count(), args.chains))]
    if scaling and len(scaling) > 1:
        t_g, overhead_g = pooled_update(model, posterior, sg, args.repeats, device, scaling)
        one = overhead + 2000 * t_chains
        row.update(scaling_devices=scaling, scaling_gpus=len(scaling),
                   scaling=(overhead_g + 2000 * t_g) / one,
                   scaling_target=SCALING_TARGET / len(scaling))
    row.update(model_mb=model_mb, peak_mb=memory_mb(device, peak=True))
    return row


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def verdict(value: float | None, target: float) -> str:
    return "-" if value is None else f"{value:.2f} ({'ok' if value <= target else 'above'})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda",
                        help="cuda, cuda:N, auto or cpu (default: %(default)s)")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--systems", nargs="+", default=["ethanol", "si64"])
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=10, help="labelled structures")
    parser.add_argument("--same-device-workers", type=int, default=2,
                        help="ChainPool workers sharing the device (0: not measured)")
    parser.add_argument("--scaling-devices", nargs="+", default=None,
                        help="devices of the scaling row (default: every visible GPU if >1)")
    parser.add_argument("--full-update", action="store_true",
                        help="also time one paper-default update (M x 2000 steps)")
    parser.add_argument("--smoke", action="store_true",
                        help="3 steps, 1 repeat, 6 frames: checks the code path, not the "
                             "numbers")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.repeats, args.frames = 3, 1, 6
    if args.steps < 3:
        parser.error("--steps must be >= 3 (the slope between a 2-step and a longer update)")
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    keep_freed_memory()
    rows, skipped = [], {}
    for model_name in args.models:
        for system in args.systems:
            try:
                rows.append(measure(model_name, system, args, device))
            except Exception as err:  # noqa: BLE001 - a family that does not load is listed
                skipped[f"{model_name} {system}"] = f"{type(err).__name__}: {err}"
                print(f"skipped {model_name} {system}: {skipped[f'{model_name} {system}']}",
                      flush=True)
                if os.environ.get("OTF_BENCH_TRACEBACK"):
                    traceback.print_exc()
                continue
            r = rows[-1]
            print(f"{r['model']:>12} {r['system']:>8}  step {r['step_single_ms']:7.1f} ms "
                  f"x{r['chains']} -> {r['step_chains_ms']:8.1f} ms (ratio "
                  f"{r['step_ratio']:.2f})  eval ratio {r['eval_ratio']:.2f}  update "
                  f"{r['update_min']:.1f} min  peak {fmt(r['peak_mb'], '.0f')} MB",
                  flush=True)
    header = ("model", "system", "atoms", "params", "device", "step 1 [ms]", "step M [ms]",
              f"step ratio (<= {STEP_TARGET})", "pool step ratio", "eval 1 [ms]",
              "eval M [ms]", f"eval ratio (<= {EVAL_TARGET})", "update [min]",
              "model [MB]", "peak [MB]", "GPUs", "scaling (<= 1.25/G)")
    print_markdown_table(header, ([
        r["model"], r["system"], r["n_atoms"], r["n_parameters"], r["device"],
        fmt(r["step_single_ms"]), fmt(r["step_chains_ms"]),
        verdict(r["step_ratio"], STEP_TARGET),
        fmt(r.get("pool_step_ratio"), ".2f"), fmt(r["eval_one_ms"]), fmt(r["eval_chains_ms"]),
        verdict(r["eval_ratio"], EVAL_TARGET), fmt(r["update_min"]),
        fmt(r["model_mb"], ".0f"), fmt(r["peak_mb"], ".0f"), r.get("scaling_gpus", 1),
        verdict(r.get("scaling"), r.get("scaling_target", 0.0))] for r in rows))
    for what, why in skipped.items():
        print(f"- skipped {what}: {why}")
    meta = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "visible_gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "threads": torch.get_num_threads(), "python": sys.version.split()[0],
            "machine": platform.machine(), "cpus": len(os.sched_getaffinity(0)),
            "steps": args.steps, "repeats": args.repeats, "smoke": args.smoke,
            "skipped": skipped, "loadavg": os.getloadavg()[0]}
    write_report(args.out, meta, rows)


if __name__ == "__main__":
    main()
