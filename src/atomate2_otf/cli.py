"""``atomate2-otf``: run on-the-fly fine-tuning MD from the shell.

    atomate2-otf demo                      # ethanol, 300 K, CHGNet + GFN2-xTB, embedded store
    atomate2-otf run POSCAR --reference emt --steps 2000 --store runs/ [--json]
    atomate2-otf status --store runs/

Bad input prints one line starting with "error:" and exits with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from atomate2_otf.schemas import EV_PER_KCAL_MOL

logger = logging.getLogger("atomate2_otf.cli")

DEFAULT_STORE = "otf-store"

#: the demo: small enough for 2 CPU cores in minutes, the paper's ethanol setting otherwise
DEMO = {"temperature": 300.0, "steps": 1000, "timestep": 0.5, "threshold_kcal": 1.0,
        "chains": 4, "update_steps": 100, "initial_update_steps": 200}


class UsageError(Exception):
    """Bad input: reported in one line with exit status 2."""


def _positive_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _temperatures(text: str) -> float | list[float]:
    """"300" or "300,800,300" (a piecewise-linear schedule over the run)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"temperature must be a number or a comma-separated list, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"no temperature in {text!r}")
    return values[0] if len(values) == 1 else values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atomate2-otf",
        description="On-the-fly Bayesian fine-tuning of foundation potentials during MD.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log jobflow's progress")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="ethanol at 300 K, CHGNet fine-tuned on GFN2-xTB",
                          description="Ethanol at 300 K for 1000 steps of 0.5 fs with CHGNet "
                                      "(offline) fine-tuned on GFN2-xTB labels; a few minutes "
                                      "on 2 CPU cores.")
    demo.add_argument("--store", default=DEFAULT_STORE, help="store folder (default: %(default)s)")
    demo.add_argument("--steps", type=int, default=DEMO["steps"], help="MD steps")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", action="store_true", help="print the OTFRunDoc as JSON")

    run = sub.add_parser("run", help="on-the-fly MD of one structure file",
                         description="On-the-fly MD of one structure (any file ASE reads).")
    run.add_argument("structure", help="structure file (POSCAR, CIF, XYZ, ...)")
    run.add_argument("--model", default="chgnet", help="foundation model (default: %(default)s)")
    run.add_argument("--reference", default="gfn2-xtb",
                     help="reference: gfn2-xtb, gfn1-xtb or emt (default: %(default)s)")
    run.add_argument("--ensemble", default="nvt", choices=["nvt", "nve", "npt"])
    run.add_argument("--temperature", type=_temperatures, default=300.0,
                     help="K, or a schedule such as 300,800,300 (default: 300)")
    run.add_argument("--steps", type=int, default=1000, help="MD steps (default: %(default)s)")
    run.add_argument("--timestep", type=_positive_float, default=0.5, help="fs (default: 0.5)")
    run.add_argument("--threshold", type=_positive_float, default=0.5 * EV_PER_KCAL_MOL,
                     help="energy-error threshold K in eV (default: 0.5 kcal/mol = 0.0217)")
    run.add_argument("--confidence", type=_positive_float, default=0.95,
                     help="label when P(|e| < K) < this (default: 0.95)")
    run.add_argument("--chains", type=int, default=8, help="SGHMC chains (default: 8)")
    run.add_argument("--update-steps", type=int, default=2000,
                     help="SGHMC steps per update (default: 2000)")
    run.add_argument("--pressure", type=_positive_float, default=1.0, help="bar, for npt")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--store", default=DEFAULT_STORE, help="store folder (default: %(default)s)")
    run.add_argument("--json", action="store_true", help="print the OTFRunDoc as JSON on stdout")

    status = sub.add_parser("status", help="one row per run in a store")
    status.add_argument("--store", default=DEFAULT_STORE, help="store folder (default: %(default)s)")
    status.add_argument("--json", action="store_true", help="rows as JSON")
    return parser


def _open_store(folder: str, must_exist: bool = False):
    from atomate2_otf.store import embedded_job_store

    path = Path(folder).expanduser()
    if must_exist and not path.is_dir():
        raise UsageError(f"store folder {str(path)!r} does not exist")
    if path.exists() and not path.is_dir():
        raise UsageError(f"--store {str(path)!r} is a file; give a folder")
    store = embedded_job_store(path)
    store.connect()
    return store


def run_flow(maker, structure: Any, store_folder: str, verbose: bool = False):
    """Build the flow (validating everything first), run it in this process with
    :func:`atomate2_otf.local.run_flow_locally` (flat memory over long runs), return the
    OTFRunDoc."""
    from atomate2_otf.jobs import read_run_doc
    from atomate2_otf.local import run_flow_locally

    try:
        flow = maker.make(structure)
    except ValueError as err:
        raise UsageError(str(err)) from err
    store = _open_store(store_folder)
    # one folder per job: file-based codes (VASP through custodian) must not see the
    # previous call's files
    jobs_dir = Path(store_folder).expanduser() / "jobs"
    try:
        run_flow_locally(flow, store, root_dir=jobs_dir, create_folders=True)
    except Exception as err:  # a job failed; everything written so far stays in the store
        logger.debug("the run failed", exc_info=True)
        raise RuntimeError(f"the run stopped: {type(err).__name__}: {err} (store "
                           f"{store_folder!r}; rerun with -v for the traceback)") from err
    doc = read_run_doc(store, flow.output.uuid)
    if doc is None:
        raise RuntimeError(f"the run did not finish; see the store {store_folder!r}")
    return doc


def _summary(doc) -> str:
    kcal = 1.0 / EV_PER_KCAL_MOL
    lines = [
        f"run {doc.run_id}: {doc.formula}, {doc.model} + {doc.reference}, {doc.ensemble}",
        f"  MD steps {doc.n_md_steps}, reference calls {doc.n_reference_calls}",
        f"  K = {doc.threshold:.4f} eV ({doc.threshold * kcal:.2f} kcal/mol)",
    ]
    if doc.call_errors:
        lines += [
            f"  share of calls with |error| > K: {100 * doc.share_above_threshold:.1f} %",
            f"  RMSE at calls: fine-tuned {doc.rmse_at_calls:.4f} eV, untuned "
            f"{doc.rmse_untuned_at_calls:.4f} eV",
        ]
    t = doc.timings
    lines.append(f"  wall time {t.total:.0f} s (MD {t.md:.0f} s, reference {t.reference:.0f} s, "
                 f"updates {t.update:.0f} s)")
    lines.append(f"  final checkpoint {doc.final_checkpoint}")
    return "\n".join(lines)


def _emit(doc, as_json: bool, store_folder: str) -> None:
    if as_json:
        from monty.json import MontyEncoder

        sys.stdout.write(json.dumps(doc.model_dump(), cls=MontyEncoder, indent=1) + "\n")
    else:
        sys.stdout.write(_summary(doc) + f"\n  store: {Path(store_folder).resolve()}\n")


def cmd_demo(args: argparse.Namespace) -> int:
    from ase.build import molecule

    from atomate2_otf.flows import OTFMDMaker
    from atomate2_otf.reference.makers import get_reference_maker

    maker = OTFMDMaker(
        model="chgnet", reference_maker=get_reference_maker("gfn2-xtb"), ensemble="nvt",
        temperature=DEMO["temperature"], timestep_fs=DEMO["timestep"], n_steps=args.steps,
        threshold=DEMO["threshold_kcal"] * EV_PER_KCAL_MOL, n_chains=DEMO["chains"],
        update_steps=DEMO["update_steps"], initial_update_steps=DEMO["initial_update_steps"],
        seed=args.seed, progress=not args.json)
    doc = run_flow(maker, molecule("CH3CH2OH"), args.store, args.verbose)
    _emit(doc, args.json, args.store)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from atomate2_otf.flows import OTFMDMaker, to_atoms
    from atomate2_otf.reference.makers import get_reference_maker

    try:
        reference = get_reference_maker(args.reference)
        atoms = to_atoms(args.structure)
    except ValueError as err:
        raise UsageError(str(err)) from err
    maker = OTFMDMaker(
        model=args.model, reference_maker=reference, ensemble=args.ensemble,
        temperature=args.temperature, timestep_fs=args.timestep, n_steps=args.steps,
        threshold=args.threshold, confidence=args.confidence, n_chains=args.chains,
        update_steps=args.update_steps, pressure_bar=args.pressure, seed=args.seed,
        progress=not args.json)
    doc = run_flow(maker, atoms, args.store, args.verbose)
    _emit(doc, args.json, args.store)
    return 0


def status_rows(store) -> list[dict[str, Any]]:
    """One row per run in the store: finished runs from their OTFRunDoc, running ones from
    their newest segment."""
    rows: dict[str, dict[str, Any]] = {}
    for doc in store.query({"metadata.otf_kind": {"$in": ["prepare", "update", "segment"]}},
                           properties=["metadata", "output", "completed_at", "name"]):
        meta = doc["metadata"]
        run_id = meta["otf_run_id"]
        row = rows.setdefault(run_id, {"run_id": run_id, "state": "running", "formula": None,
                                       "md_steps": 0, "reference_calls": 0,
                                       "share_above_k": None, "wall_s": None})
        output = doc.get("output") or {}
        if meta["otf_kind"] in ("prepare", "update"):
            row["reference_calls"] = max(row["reference_calls"], meta["otf_index"] + 1)
        if isinstance(output, dict) and output.get("completed"):
            row.update(state="completed", formula=output.get("formula"),
                       md_steps=output.get("n_md_steps"),
                       reference_calls=output.get("n_reference_calls"),
                       share_above_k=output.get("share_above_threshold"),
                       wall_s=(output.get("timings") or {}).get("total"))
        if isinstance(output, dict) and row["state"] == "running":
            step = output.get("md_step", (output.get("state") or {}).get("step", 0))
            row["md_steps"] = max(row["md_steps"] or 0, int(step))
    return sorted(rows.values(), key=lambda r: r["run_id"])


def cmd_status(args: argparse.Namespace) -> int:
    store = _open_store(args.store, must_exist=True)
    rows = status_rows(store)
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return 0
    header = f"{'run':14s} {'formula':10s} {'state':10s} {'MD steps':>9s} {'calls':>6s} " \
             f"{'>K %':>6s} {'wall s':>8s}"
    sys.stdout.write(header + "\n")
    for r in rows:
        share = "-" if r["share_above_k"] is None else f"{100 * r['share_above_k']:.1f}"
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.0f}"
        sys.stdout.write(f"{r['run_id']:14s} {str(r['formula'] or '-'):10s} {r['state']:10s} "
                         f"{r['md_steps'] or 0:>9d} {r['reference_calls']:>6d} {share:>6s} "
                         f"{wall:>8s}\n")
    if not rows:
        sys.stdout.write(f"(no runs in {args.store})\n")
    return 0


COMMANDS = {"demo": cmd_demo, "run": cmd_run, "status": cmd_status}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:  # third-party deprecation chatter would bury the summary
        import warnings

        for category in (UserWarning, FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except UsageError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    except RuntimeError as err:  # a job failed: its traceback is in the log (-v)
        if args.verbose:
            logger.exception("run failed")
        sys.stderr.write(f"error: {err}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
