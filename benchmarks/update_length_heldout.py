"""How long must an update be? The posterior's side of it, on held-out frames (issue 14.5).

``update_length.py`` answers the question with whole on-the-fly runs, which cost hours per
length on 2 CPU cores at the paper's K. This script measures what the update length does to
the posterior itself, where the call rate comes from: at K = 0.5 kcal/mol the ensemble's
spread underestimated the error at the calls threefold (docs/measurements.md), so the
calibration inflates it and the trigger fires every few steps. If longer updates mix the
chains better, the spread comes closer to the error and fewer calls follow.

For each length L: one update of ``--chains`` chains x L SGHMC steps (burn-in 20 %, noise
ramp 5 %, the reference code's proportions; the family defaults otherwise) on the ten
training frames of each held-out system (heldout.py: molecules labelled by GFN2-xTB, which
no test uses), scored on its ten held-out frames:

- tuned/untuned energy and force RMSE (lower is better);
- spread/error: the ensemble's RMS energy sigma over the energy RMSE (1: a spread that the
  calibration need not inflate; below 1: the ensemble is overconfident);
- the update's wall time.

Usage: python benchmarks/update_length_heldout.py [--model chgnet]
       [--lengths 100 250 500 1000 2000] [--systems methanol-xtb acetone-xtb]
       [--chains 4] [--workers 2] [--out benchmarks/update_length_heldout_chgnet.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from heldout import MOLECULES, finetune_heldout  # noqa: E402
from report import print_markdown_table, write_report  # noqa: E402


def measure(model, system: str, length: int, args: argparse.Namespace) -> dict:
    out = finetune_heldout(model, system, frames_seed=11, n_steps=length,
                           n_chains=args.chains, workers=args.workers, burn_in_frac=0.2,
                           ramp_frac=0.05)
    return {"model": args.model, "system": system, "update_steps": length,
            "chains": args.chains, "finite": out.finite,
            "energy_ratio": out.energy_ratio, "force_ratio": out.force_ratio,
            "energy_rmse_ev": out.energy_rmse, "force_rmse_ev_a": out.force_rmse,
            "spread_over_error": float(np.sqrt(np.mean(np.square(out.energy_stds))))
            / out.energy_rmse,
            "force_spread_over_error": out.force_sigma / out.force_rmse,
            "update_s": out.update_s,
            "errors": out.energy_errors.tolist(), "sigmas": out.energy_stds.tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="chgnet")
    parser.add_argument("--lengths", nargs="+", type=int, default=[100, 250, 500, 1000, 2000])
    parser.add_argument("--systems", nargs="+", default=["methanol-xtb", "acetone-xtb"],
                        choices=list(MOLECULES))
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(__file__).with_name(f"update_length_heldout_{args.model}.json")

    import torch

    from atomate2_otf.models.base import load_model
    from atomate2_otf.runtime import keep_freed_memory, silence_known_warnings

    keep_freed_memory()
    silence_known_warnings()
    torch.set_num_threads(1)
    model = load_model(args.model)
    meta = {"machine": platform.node(), "cpus": len(os.sched_getaffinity(0)),
            "settings": {k: str(v) if isinstance(v, Path) else v
                         for k, v in vars(args).items()},
            "family_defaults": vars(model.defaults)}
    rows = []
    for length in args.lengths:  # shortest first: a stopped run keeps the cheap rows
        for system in args.systems:
            rows.append(measure(model, system, length, args))
            r = rows[-1]
            print(f"{system} {length} steps: E {r['energy_ratio']:.3f} F "
                  f"{r['force_ratio']:.3f} spread/error {r['spread_over_error']:.2f} "
                  f"({r['update_s']:.0f} s)", flush=True)
            write_report(out, meta | {"partial": True}, rows)
    table = []
    for length in args.lengths:
        mine = [r for r in rows if r["update_steps"] == length]
        table.append([length, f"{np.mean([r['energy_ratio'] for r in mine]):.3f}",
                      f"{np.mean([r['force_ratio'] for r in mine]):.3f}",
                      f"{np.mean([r['spread_over_error'] for r in mine]):.2f}",
                      f"{np.mean([r['force_spread_over_error'] for r in mine]):.2f}",
                      f"{np.mean([r['update_s'] for r in mine]):.0f}"])
    print_markdown_table(["update steps", "tuned/untuned energy RMSE", "tuned/untuned force "
                          "RMSE", "energy spread/error", "force spread/error",
                          "update s (mean)"], table)
    write_report(out, meta, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
