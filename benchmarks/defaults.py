"""Family defaults from data (issue 14.4): sigma_TL, gamma_0 and the calibration's (a, b).

For CHGNet and SevenNet-0 (the families whose pretrained weights load offline) the method's
free numbers are chosen on held-out frames of systems that no test uses:

- molecules labelled by GFN2-xTB (tblite): methanol, acetone, methylamine (500 K MD);
- solids labelled by EMT: 8-atom fcc Al and Ni (800 K MD).

Each system gives 20 frames of reference-driven Langevin MD; the even ones train (one
posterior update), the odd ones are held out.

1. **sigma_TL x gamma_0**, over the grid of ``--sigmas`` x ``--steps-sizes``: the score of a
   setting is the mean over systems of (tuned RMSE / untuned RMSE), energies and forces
   averaged, on the held-out frames: lower is better. A setting whose update diverges (a
   non-finite prediction) scores infinity.
2. **(a, b)** of the Gamma calibration, over ``--calibrations``, with the chosen sigma_TL and
   gamma_0: the held-out (error, sigma) pairs of every system are fed to the calibration in
   order, as reference calls would be, and each error is scored by the log density of the
   Student-t predictive law made *before* it was added (the prequential log score). Higher
   is better; the coverage of the central 95 % interval is reported beside it.

JSON beside the table: the grid, every score, each row's held-out (error, sigma) pairs,
the choice. The families without offline weights (MACE, NequIP, fairchem) keep the paper's
values (docs/models.md, family defaults).

A grid can be split over processes or machines (one grid point each, ``--device cuda
--workers 0`` on a GPU) and its JSON files joined afterwards: ``--merge a.json b.json``
chooses from all their rows as one run would have.

Usage: python benchmarks/defaults.py [--models chgnet sevenn-0] [--sigmas 0.05 0.2 0.5]
       [--step-sizes 1e-4 3e-4 1e-3] [--steps 300] [--chains 4] [--workers 2]
       [--systems methanol-xtb acetone-xtb methylamine-xtb al-emt ni-emt]
       [--device cpu] [--out benchmarks/defaults.json]
       python benchmarks/defaults.py --merge part1.json part2.json [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
from heldout import MOLECULES, SOLIDS, finetune_heldout  # noqa: E402
from report import print_markdown_table, write_report  # noqa: E402

#: (a, b) candidates: the paper's NequIP and MACE values and neighbours
CALIBRATIONS = [(1.5, 10.0), (3.0, 10.0), (1.5, 3.0), (3.0, 3.0), (1.5, 30.0), (5.0, 10.0)]


def finetune(model, system: str, sigma_tl: float, step_size: float, args) -> dict:
    """One update on the training frames; held-out error ratios, errors and stds."""
    # frames seed 11, burn-in 1/5 and ramp 1/20 of the update (the reference's proportions)
    out = finetune_heldout(model, system, frames_seed=11, n_steps=args.steps,
                           n_chains=args.chains, workers=args.workers, burn_in_frac=0.2,
                           ramp_frac=0.05, sigma_tl=sigma_tl, step_size=step_size)
    return {"finite": out.finite,
            "energy_ratio": out.energy_ratio, "force_ratio": out.force_ratio,
            "errors": out.energy_errors.tolist(), "sigmas": out.energy_stds.tolist()}


def prequential(pairs: list[tuple[float, float]], a: float, b: float) -> dict:
    """Feed (error, sigma) pairs in order; score each by the log density of the predictive
    Student-t before it was added; coverage of the central 95 % interval."""
    from atomate2_otf.bnn.calibration import GammaCalibration

    calibration = GammaCalibration(a, b)
    log_scores, inside = [], []
    for error, sigma in pairs:
        scale = float(calibration.predictive_scale(sigma))
        log_scores.append(float(stats.t.logpdf(error, df=calibration.dof, scale=scale)))
        inside.append(abs(error) <= stats.t.ppf(0.975, df=calibration.dof) * scale)
        calibration.update(error, sigma)
    return {"log_score": float(np.mean(log_scores)), "coverage95": float(np.mean(inside))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["chgnet", "sevenn-0"])
    parser.add_argument("--sigmas", nargs="+", type=float, default=[0.05, 0.2, 0.5])
    parser.add_argument("--step-sizes", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3])
    parser.add_argument("--systems", nargs="+", default=[*MOLECULES, *SOLIDS])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu",
                        help="where the model and chains run (cpu, cuda, cuda:N)")
    parser.add_argument("--merge", nargs="+", type=Path, default=None,
                        help="join these JSON files of earlier grid runs; run nothing")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("defaults.json"))
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args)

    import torch

    from atomate2_otf.models.base import load_model
    from atomate2_otf.runtime import keep_freed_memory, silence_known_warnings

    keep_freed_memory()
    silence_known_warnings()
    torch.set_num_threads(1)
    rows, choices = [], {}
    for name in args.models:
        model = load_model(name, device=args.device)
        for sigma_tl, step_size in itertools.product(args.sigmas, args.step_sizes):
            start = time.perf_counter()
            per_system = {s: finetune(model, s, sigma_tl, step_size, args)
                          for s in args.systems}
            score = float(np.mean([(r["energy_ratio"] + r["force_ratio"]) / 2
                                   for r in per_system.values()]))
            row = {"model": name, "sigma_tl": sigma_tl, "step_size": step_size,
                   "score": score, "seconds": time.perf_counter() - start,
                   "device": args.device,
                   **{f"{s}_E": r["energy_ratio"] for s, r in per_system.items()},
                   **{f"{s}_F": r["force_ratio"] for s, r in per_system.items()},
                   "heldout_pairs": {s: [r["errors"], r["sigmas"]]
                                     for s, r in per_system.items()}}
            rows.append(row)
            write_report(args.out, {"partial": True}, rows)  # a killed grid keeps its rows
            print(f"{name} sigma_TL {sigma_tl} gamma_0 {step_size}: score {score:.3f} "
                  f"({row['seconds']:.0f} s)", flush=True)
        choices[name] = choose(rows, name, args.systems) | {
            "current_default": vars(model.defaults)}
    report(args, rows, choices)
    return 0


def choose(rows: list[dict], name: str, systems: list[str]) -> dict:
    """The grid point of ``name`` with the lowest score, and the (a, b) with the best
    prequential log score on that point's held-out (error, sigma) pairs."""
    best = min((r for r in rows if r["model"] == name), key=lambda r: r["score"])
    pairs = [(e, s) for system in systems
             for e, s in zip(*best["heldout_pairs"][system], strict=True)]
    calib = {f"{a},{b}": prequential(pairs, a, b) for a, b in CALIBRATIONS}
    best_ab = max(calib, key=lambda k: calib[k]["log_score"])
    return {"sigma_tl": best["sigma_tl"], "step_size": best["step_size"],
            "score": best["score"], "calibration": best_ab, "calibration_scores": calib}


def report(args: argparse.Namespace, rows: list[dict], choices: dict,
           **extra_meta: object) -> None:
    """The grid and calibration tables, the choice, and the JSON."""
    print_markdown_table(
        ["model", "sigma_TL", "gamma_0", "score (tuned/untuned RMSE, mean)",
         *[f"{s} E/F" for s in args.systems]],
        [[r["model"], r["sigma_tl"], r["step_size"], f"{r['score']:.3f}",
          *[f"{r[f'{s}_E']:.2f}/{r[f'{s}_F']:.2f}" for s in args.systems]] for r in rows])
    print_markdown_table(
        ["model", "(a, b)", "prequential log score", "95 % coverage"],
        [[name, ab, f"{v['log_score']:.3f}", f"{100 * v['coverage95']:.0f} %"]
         for name, c in choices.items() for ab, v in c["calibration_scores"].items()])
    for name, c in choices.items():
        print(f"{name}: sigma_TL {c['sigma_tl']}, gamma_0 {c['step_size']}, (a, b) "
              f"{c['calibration']} (now {c.get('current_default', '?')})")
    meta = {"machine": platform.node(), "cpus": len(os.sched_getaffinity(0)),
            "settings": json.loads(json.dumps(vars(args), default=str)),  # paths as text
            "metric": "mean over systems of (tuned/untuned held-out RMSE, energy and force "
                      "averaged); (a, b): prequential Student-t log score",
            "calibration_grid": CALIBRATIONS, "choice": choices, **extra_meta}
    write_report(args.out, meta, rows)


def merge(args: argparse.Namespace) -> int:
    """Join the rows of several partial grids (``--merge``) and choose from all of them."""
    rows, systems, merged_from = [], None, []
    for path in args.merge:
        doc = json.loads(Path(path).read_text())
        settings = doc["meta"].get("settings", {})
        for row in doc["rows"]:
            if "heldout_pairs" not in row:
                raise SystemExit(f"{path}: a row without held-out pairs (written before "
                                 "they were kept); rerun that grid point")
            rows.append(row)
            if systems is None:
                systems = list(row["heldout_pairs"])
            elif list(row["heldout_pairs"]) != systems:
                raise SystemExit(f"{path}: systems {list(row['heldout_pairs'])} differ "
                                 f"from the other files' {systems}")
        merged_from.append({"file": str(path), "machine": doc["meta"].get("machine"),
                            "settings": settings})
    if not rows:
        raise SystemExit(f"no rows in {args.merge}")
    # the settings of the parts, not this parser's defaults: the grid that the rows cover,
    # and the update settings, which must agree across the parts
    for key in ("steps", "chains"):
        values = {m["settings"].get(key) for m in merged_from}
        if len(values) != 1:
            raise SystemExit(f"the parts ran with different --{key}: {sorted(values)}")
        setattr(args, key, values.pop())
    args.systems = systems
    args.models = sorted({r["model"] for r in rows})
    args.sigmas = sorted({r["sigma_tl"] for r in rows})
    args.step_sizes = sorted({r["step_size"] for r in rows})
    args.device = sorted({r.get("device", "cpu") for r in rows})
    choices = {name: choose(rows, name, systems) for name in args.models}
    report(args, rows, choices, merged_from=merged_from)
    return 0


if __name__ == "__main__":
    sys.exit(main())
