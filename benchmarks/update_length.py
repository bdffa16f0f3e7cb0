"""How long must an update be? (issue 14.5)

The paper's update is 8 chains x 2000 SGHMC steps: 13-18 min for CHGNet on 2 CPU cores
(benchmarks/chain_cost_ethanol.json). This script runs the ethanol experiment of
``paper_table.py`` (300 K, K = 0.5 kcal/mol, confidence 0.95, GFN2-xTB labels) once per
update length, and with ``--keep-mass`` also with the AMSGrad mass carried across updates,
each in its own store, and reports per length:

- reference calls (and per ps after the first), the share of calls with |error| > K;
- the random-frame miss rate (frames of the run's trajectory labelled afterwards, scored by
  the final ensemble) with its 95 % Wilson interval, and the untuned/fine-tuned RMSE ratio;
- the wall time of the run and of its updates.

The smallest length whose random-frame miss rate stays within the 95 % claim (the Wilson
interval reaches 5 %) is the candidate default for CPU runs.

A row already measured by ``paper_table.py`` with the same model, MD length, chains and
number of frames (its JSON, ``--include``) is taken as it is instead of being run again;
the run of each length costs up to hours on 2 CPU cores.

Usage: python benchmarks/update_length.py [--lengths 100 250 500 1000 2000] [--keep-mass]
       [--md-steps 1000] [--frames 100] [--model chgnet] [--threshold-kcal 0.5]
       [--stores benchmarks/update_length]
       [--include benchmarks/paper_table_chgnet.json]
       [--out benchmarks/update_length_chgnet.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import paper_table  # noqa: E402
from report import print_markdown_table, write_report  # noqa: E402


def included_rows(args: argparse.Namespace) -> dict[tuple[int, bool], dict]:
    """Rows of earlier JSON reports run with this model, MD length, chains and frames, keyed
    by (update steps, keep mass); only those whose initial update is twice the update, as
    here."""
    found = {}
    for path in args.include:
        for row in json.loads(path.read_text())["rows"]:
            same = (row.get("model") == args.model and row["md_steps"] == args.md_steps
                    and abs(row.get("threshold_kcal", 0.5) - args.threshold_kcal) < 1e-9
                    and row["chains"] == args.chains and row["n_frames"] == args.frames
                    and row["initial_update_steps"] == 2 * row["update_steps"])
            if same:
                found[(row["update_steps"], bool(row.get("keep_mass")))] = row
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", nargs="+", type=int, default=[100, 250, 500, 1000, 2000])
    parser.add_argument("--keep-mass", action="store_true",
                        help="also run every length with the mass carried across updates")
    parser.add_argument("--model", default="chgnet")
    parser.add_argument("--md-steps", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--threshold-kcal", type=float, default=0.5,
                        help="K in kcal/mol: the paper's 0.5 fires every few MD steps with "
                             "CHGNet (docs/measurements.md), which a CPU cannot afford with "
                             "long updates; 1.0 is the demo's")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stores", type=Path, default=Path("benchmarks/update_length"))
    parser.add_argument("--include", nargs="*", type=Path, default=[],
                        help="paper_table/update_length JSON whose matching rows are reused")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(__file__).with_name(f"update_length_{args.model}.json")

    from atomate2_otf.runtime import keep_freed_memory, silence_known_warnings

    keep_freed_memory()
    silence_known_warnings()
    rows = []
    measured = included_rows(args)
    for keep_mass in [False, True] if args.keep_mass else [False]:
        for length in args.lengths:
            tag = f"{length}{'-keep' if keep_mass else ''}"
            if (length, keep_mass) in measured:
                rows.append(measured[(length, keep_mass)])
                print(f"{tag}: reused from --include", flush=True)
                continue
            run_args = paper_table.build_parser().parse_args([
                "--model", args.model, "--md-steps", str(args.md_steps),
                "--update-steps", str(length), "--initial-update-steps", str(2 * length),
                "--chains", str(args.chains), "--workers", str(args.workers),
                "--threshold-kcal", str(args.threshold_kcal),
                "--frames", str(args.frames), "--store", str(args.stores / tag),
                *(["--keep-mass"] if keep_mass else [])])
            run_args.quiet = True
            row, _, _ = paper_table.experiment(run_args)
            rows.append(row)
            write_report(out, {"partial": True}, rows)  # a killed sweep keeps its rows
            print(f"{tag}: {row['reference_calls']} calls, miss "
                  f"{100 * row['frame_miss_rate']:.1f} %, {row['wall_s']['run'] / 60:.1f} min",
                  flush=True)
    print_markdown_table(
        ["update steps", "keep mass", "calls (per ps)", "calls above K",
         "random frames above K (95 % CI)", "untuned/tuned RMSE", "run min", "updates min"],
        [[r["update_steps"], r["keep_mass"],
          f"{r['reference_calls']} ({r['calls_per_ps']:.0f})",
          "-" if r["share_calls_above_k"] is None else f"{100 * r['share_calls_above_k']:.1f} %",
          f"{100 * r['frame_miss_rate']:.1f} % ({100 * r['frame_miss_rate_wilson95'][0]:.1f}-"
          f"{100 * r['frame_miss_rate_wilson95'][1]:.1f})",
          f"{r['untuned_over_finetuned_rmse']:.1f}", f"{r['wall_s']['run'] / 60:.1f}",
          f"{r['run_timings_s']['update'] / 60:.1f}"] for r in rows])
    meta = {"machine": platform.node(), "settings": {k: str(v) for k, v in vars(args).items()}}
    write_report(out, meta, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
