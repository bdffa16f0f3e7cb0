"""The paper's ethanol experiment (sec. 5.2, METHOD.md sec. 7), run with this package.

1. An on-the-fly run: ethanol, 300 K, Langevin friction 0.01/fs, 0.5 fs steps, K = 0.5
   kcal/mol, confidence 0.95, 8 chains, GFN2-xTB labels (tblite), the model of ``--model``,
   with ``OTFMDMaker`` and the crash-safe local runner into an embedded store. A killed
   benchmark continues its run with ``--resume`` (finished references are reused).
2. The paper's check: ``--frames`` frames drawn at random (seeded) from the run's stored
   trajectory (every ``--trajectory-interval`` MD steps), labelled with GFN2-xTB, scored by
   the final ensemble and by the untuned model. Both use the run's energy zero (the offset
   from the first label); the RMSE with each model's mean error removed is given too.
3. A table beside the paper's numbers (ethanol, MACE): reference calls per ps (65 over 10
   ps), share of calls with |error| > K (4.55 %), RMSE on the random frames fine-tuned vs
   untuned (0.142 vs 0.958 kcal/mol), random frames above K (1 of 150), with the miss
   rate's 95 % Wilson interval. JSON beside it (``--out``).

The MD length and update length are arguments: the paper's 10 ps with 2000-step updates
cost days on 2 CPU cores; the JSON records what was used. ``--partial`` scores a run that
is still going or was stopped, as far as it got: its newest checkpoint (the ensemble after
the last update), the trajectory of its finished segments and its calls so far; the JSON
then says ``"partial": true`` and the MD length reached.

Usage: python benchmarks/paper_table.py --model chgnet --md-steps 2000 --update-steps 250
       [--initial-update-steps 500] [--chains 8] [--workers 2] [--frames 150]
       [--store benchmarks/paper_table_store] [--out benchmarks/paper_table_chgnet.json]
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

from atomate2_otf.stats import wilson_interval
from atomate2_otf.units import EV_PER_KCAL_MOL

sys.path.insert(0, str(Path(__file__).parent))
from report import print_markdown_table, write_report  # noqa: E402

#: the paper's ethanol numbers (sec. 5.2, MACE, 10 ps)
PAPER = {"calls_per_ps": 6.5, "share_calls_above_k": 0.0455, "rmse_finetuned_kcal": 0.142,
         "rmse_untuned_kcal": 0.958, "frames_above_k": 1, "n_frames": 150}


def run_otf(args: argparse.Namespace):
    """The on-the-fly run (or the finished one already in the store); its OTFRunDoc."""
    from ase.build import molecule

    from atomate2_otf.flows import OTFMDMaker
    from atomate2_otf.local import resume_runs, run_flow_locally
    from atomate2_otf.reference.makers import get_reference_maker
    from atomate2_otf.results import read_run_doc
    from atomate2_otf.store import open_job_store

    store = open_job_store(str(args.store))
    store.connect()
    if args.resume:
        outcomes = resume_runs(store)
        done = [o for o in outcomes if o.state == "completed"]
        if not done:
            raise SystemExit(f"nothing resumed in {args.store}: {outcomes}")
        return store, read_run_doc(store, done[-1].output_uuid)
    maker = OTFMDMaker(
        model=args.model, reference_maker=get_reference_maker("gfn2-xtb"), ensemble="nvt",
        temperature=300.0, timestep_fs=0.5, friction_per_fs=0.01, n_steps=args.md_steps,
        threshold=getattr(args, "threshold_kcal", 0.5) * EV_PER_KCAL_MOL, confidence=0.95, n_chains=args.chains,
        update_steps=args.update_steps, initial_update_steps=args.initial_update_steps,
        n_workers=args.workers, trajectory_interval=args.trajectory_interval, seed=args.seed,
        sghmc={"keep_mass": bool(getattr(args, "keep_mass", False))},
        progress=not getattr(args, "quiet", False))
    flow = maker.make(molecule("CH3CH2OH"))
    run_flow_locally(flow, store, root_dir=Path(args.store) / "jobs")
    return store, read_run_doc(store, flow.output.uuid)


def partial_run(args: argparse.Namespace):
    """The run in --store as far as it got (running or stopped): an OTFRunDoc whose MD
    length is the last stored frame and whose final checkpoint is the newest update's."""
    from ase.build import molecule

    from atomate2_otf.analysis.frames import load_runs
    from atomate2_otf.atoms import to_pymatgen
    from atomate2_otf.store import open_job_store

    store = open_job_store(str(args.store))
    store.connect()
    runs = load_runs(store)
    if len(runs) != 1 or runs[0].summary is None:
        raise SystemExit(f"--partial needs exactly one run with settings in {args.store}, "
                         f"found {[r.run_id for r in runs]}")
    run = runs[0]
    steps = [f["step"] for f in run.trajectory]
    last = max(run.calls, key=lambda c: c.index)
    doc = run.summary.model_copy(update={
        "n_md_steps": max(steps) if steps else 0, "final_checkpoint": last.checkpoint,
        "final_structure": to_pymatgen(molecule("CH3CH2OH"))})
    return store, doc


def random_frames(store, doc, n_frames: int, seed: int) -> list:
    """``n_frames`` structures drawn without replacement from the stored trajectory."""
    from ase import Atoms

    from atomate2_otf.store import load_trajectory

    frames = [f for f in load_trajectory(store, doc.run_id) if "positions" in f]
    if len(frames) < n_frames:
        raise SystemExit(f"the trajectory holds {len(frames)} frames with positions, fewer "
                         f"than --frames {n_frames}: run longer or store more often")
    numbers = doc.final_structure.atomic_numbers if doc.final_structure is not None else None
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(frames), size=n_frames, replace=False))
    return [(frames[i]["step"], Atoms(numbers=numbers, positions=frames[i]["positions"]))
            for i in picked]


def score_frames(store, doc, frames: list) -> dict:
    """GFN2-xTB labels and the final ensemble's and the untuned model's energy errors."""
    from tblite.ase import TBLite

    from atomate2_otf.atoms import record_from_atoms
    from atomate2_otf.bnn.posterior import Posterior
    from atomate2_otf.reference.makers import _xtb_kwargs
    from atomate2_otf.store import load_checkpoint

    kwargs = {k: v for k, v in _xtb_kwargs("GFN2-xTB").items()
              if k not in ("cache_api",)}
    reference = []
    for _, atoms in frames:
        atoms.calc = TBLite(**kwargs)
        reference.append(atoms.get_potential_energy())
    posterior = Posterior.from_bytes(load_checkpoint(store, doc.final_checkpoint))
    records = [record_from_atoms(atoms) for _, atoms in frames]
    tuned = posterior.predict(records)
    untuned = posterior.predict_untuned(records)
    reference = np.asarray(reference)
    # the calibrated predictive law (Student-t, METHOD.md sec. 5): P(|e| < K) per frame and
    # whether the error lies inside the central 95 % predictive interval
    calibration = posterior.calibration
    errors = tuned.energy - reference
    p_within_k = calibration.prob_within(tuned.energy_std, threshold=doc.threshold)
    p_within_error = np.array([calibration.prob_within(s, threshold=abs(e)) for s, e
                               in zip(tuned.energy_std, errors, strict=True)])
    return {"steps": [int(s) for s, _ in frames], "reference": reference,
            "tuned_error": errors, "tuned_sigma": tuned.energy_std,
            "prob_within_k": np.asarray(p_within_k), "inside_95": p_within_error <= 0.95,
            "untuned_error": untuned.energy - reference}


def rmse(errors: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(errors))))


def summarise(args: argparse.Namespace, doc, scores: dict, wall: dict) -> dict:
    kcal = 1.0 / EV_PER_KCAL_MOL
    k = doc.threshold
    md_ps = doc.n_md_steps * 0.5 / 1000.0
    calls_after_start = doc.n_reference_calls - 1  # the initial label is not a trigger
    call_errors = np.asarray(doc.call_errors)
    tuned, untuned = scores["tuned_error"], scores["untuned_error"]
    above = int(np.sum(np.abs(tuned) > k))
    low, high = wilson_interval(above, len(tuned))
    inside = scores["inside_95"]
    return {
        "md_steps": doc.n_md_steps, "md_ps": md_ps, "threshold_kcal": k * kcal,
        "update_steps": args.update_steps,
        "initial_update_steps": args.initial_update_steps, "chains": args.chains,
        "reference_calls": doc.n_reference_calls,
        "calls_per_ps": calls_after_start / md_ps if md_ps else None,
        "share_calls_above_k": float(np.mean(np.abs(call_errors) > k))
        if len(call_errors) else None,
        "n_frames": len(tuned), "frames_above_k": above, "frame_miss_rate": above / len(tuned),
        "frame_miss_rate_wilson95": [low, high],
        "rmse_finetuned_kcal": rmse(tuned) * kcal, "rmse_untuned_kcal": rmse(untuned) * kcal,
        "rmse_finetuned_mean_removed_kcal": rmse(tuned - tuned.mean()) * kcal,
        "rmse_untuned_mean_removed_kcal": rmse(untuned - untuned.mean()) * kcal,
        "untuned_over_finetuned_rmse": rmse(untuned) / rmse(tuned),
        "frames_inside_calibrated_95": float(np.mean(inside)),
        "mean_prob_within_k": float(np.mean(scores["prob_within_k"])),
        "untuned_frames_above_k": int(np.sum(np.abs(untuned) > k)),
        "wall_s": wall, "run_timings_s": doc.timings.model_dump(),
    }


def experiment(args: argparse.Namespace) -> tuple[dict, dict, object]:
    """Run (or resume) the on-the-fly run and score random frames: (row, per-frame, doc)."""
    start = time.perf_counter()
    store, doc = partial_run(args) if getattr(args, "partial", False) else run_otf(args)
    run_s = time.perf_counter() - start
    frames = random_frames(store, doc, args.frames, args.seed + 1)
    start = time.perf_counter()
    scores = score_frames(store, doc, frames)
    row = summarise(args, doc, scores, {"run": run_s, "scoring": time.perf_counter() - start})
    row["model"] = args.model
    row["partial"] = bool(getattr(args, "partial", False))
    if row["partial"]:
        row["wall_s"]["run"] = doc.timings.total  # accounted: MD + references + updates
    row["keep_mass"] = bool(getattr(args, "keep_mass", False))
    return row, scores, doc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="chgnet")
    parser.add_argument("--md-steps", type=int, default=2000)
    parser.add_argument("--update-steps", type=int, default=250)
    parser.add_argument("--initial-update-steps", type=int, default=None)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--threshold-kcal", type=float, default=0.5,
                        help="K in kcal/mol (the paper's: 0.5)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--trajectory-interval", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", type=Path, default=Path("benchmarks/paper_table_store"))
    parser.add_argument("--resume", action="store_true",
                        help="finish the killed run in --store instead of starting one")
    parser.add_argument("--partial", action="store_true",
                        help="score the run in --store as far as it got (still going or "
                             "stopped): newest checkpoint, stored frames, calls so far")
    parser.add_argument("--keep-mass", action="store_true",
                        help="carry the AMSGrad mass across updates")
    parser.add_argument("--out", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out or Path(__file__).with_name(f"paper_table_{args.model}.json")

    from atomate2_otf.runtime import keep_freed_memory, silence_known_warnings

    keep_freed_memory()
    silence_known_warnings()  # CHGNet's stress-code warning, once per process and worker
    row, scores, doc = experiment(args)
    run_s = row["wall_s"]["run"]

    kcal = 1.0 / EV_PER_KCAL_MOL
    low, high = row["frame_miss_rate_wilson95"]
    print_markdown_table(["quantity", "paper (MACE, 10 ps, 2000-step updates)",
                          f"here ({args.model}, {row['md_ps']:.2f} ps, "
                          f"{args.update_steps}-step updates)"], [
        ["reference calls per ps (after the first)", f"{PAPER['calls_per_ps']:.1f}",
         f"{row['calls_per_ps']:.1f} ({row['reference_calls']} calls)"],
        ["share of calls with abs(error) > K", f"{100 * PAPER['share_calls_above_k']:.2f} %",
         f"{100 * row['share_calls_above_k']:.2f} %"],
        ["RMSE on random frames, fine-tuned (kcal/mol)", f"{PAPER['rmse_finetuned_kcal']}",
         f"{row['rmse_finetuned_kcal']:.3f}"],
        ["RMSE on random frames, untuned (kcal/mol)", f"{PAPER['rmse_untuned_kcal']}",
         f"{row['rmse_untuned_kcal']:.3f}"],
        ["untuned / fine-tuned RMSE",
         f"{PAPER['rmse_untuned_kcal'] / PAPER['rmse_finetuned_kcal']:.1f}",
         f"{row['untuned_over_finetuned_rmse']:.1f}"],
        ["random frames above K", f"{PAPER['frames_above_k']} of {PAPER['n_frames']}",
         f"{row['frames_above_k']} of {row['n_frames']} ({100 * row['frame_miss_rate']:.1f} %, "
         f"95 % CI {100 * low:.1f}-{100 * high:.1f} %)"],
        ["random frames inside the calibrated 95 % interval", "-",
         f"{100 * row['frames_inside_calibrated_95']:.1f} %"],
        ["mean calibrated P(abs(error) < K) on random frames", "-",
         f"{row['mean_prob_within_k']:.3f}"],
        ["RMSE with mean error removed, fine-tuned / untuned (kcal/mol)", "-",
         f"{row['rmse_finetuned_mean_removed_kcal']:.3f} / "
         f"{row['rmse_untuned_mean_removed_kcal']:.3f}"],
    ])
    print(f"\nK = {doc.threshold * kcal:.2f} kcal/mol; wall time {run_s / 60:.1f} min run, "
          f"{row['wall_s']['scoring']:.0f} s scoring")
    meta = {"machine": platform.node(), "python": platform.python_version(),
            "cpus": len(__import__("os").sched_getaffinity(0)),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "paper": PAPER, "settings": vars(args) | {"store": str(args.store),
                                                        "out": str(out)},
            "per_frame": {k: np.asarray(v).tolist() for k, v in scores.items()}}
    write_report(out, meta, [row])
    return 0


if __name__ == "__main__":
    sys.exit(main())
