"""``atomate2-otf``: run on-the-fly fine-tuning MD from the shell.

    atomate2-otf demo                      # ethanol, 300 K, CHGNet + GFN2-xTB, embedded store
    atomate2-otf run POSCAR --reference emt --steps 2000 --store runs/ [--json]
    atomate2-otf batch candidates/ --reference emt --store runs/ [--launchpad my_launchpad.yaml]
    atomate2-otf status --store runs/
    atomate2-otf resume --store runs/ [--json]   # finish runs killed mid-way

``--store`` is a folder (the embedded store), a jobflow store file (.yaml/.json, e.g.
MongoDB + GridFS) or a ``mongodb://`` URI.

Bad input prints one line starting with "error:" and exits with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

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


STORE_HELP = ("store: a folder (embedded, created if missing), a jobflow store file "
              "(.yaml/.json) or a mongodb:// URI (default: %(default)s)")


def _add_run_options(run: argparse.ArgumentParser) -> None:
    """The settings of an on-the-fly run (shared by ``run`` and ``batch``)."""
    run.add_argument("--model", default="chgnet", help="foundation model (default: %(default)s)")
    run.add_argument("--reference", default="gfn2-xtb",
                     help="reference: gfn2-xtb, gfn1-xtb, emt, vasp, qe or pyscf "
                          "(default: %(default)s)")
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
    run.add_argument("--workers", type=int, default=None,
                     help="processes for the SGHMC chains (default: one per CPU; 1: serial)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--store", default=DEFAULT_STORE, help=STORE_HELP)
    run.add_argument("--work-dir", default=None,
                     help="folder for the jobs' files (default: STORE/jobs for a folder store, "
                          "./otf-jobs otherwise)")


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
    demo.add_argument("--store", default=DEFAULT_STORE, help=STORE_HELP)
    demo.add_argument("--steps", type=int, default=DEMO["steps"], help="MD steps")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", action="store_true", help="print the OTFRunDoc as JSON")

    run = sub.add_parser("run", help="on-the-fly MD of one structure file",
                         description="On-the-fly MD of one structure (any file ASE reads).")
    run.add_argument("structure", help="structure file (POSCAR, CIF, XYZ, ...)")
    _add_run_options(run)
    run.add_argument("--json", action="store_true", help="print the OTFRunDoc as JSON on stdout")

    batch = sub.add_parser(
        "batch", help="one on-the-fly run per candidate material",
        description="One on-the-fly run per structure file (folders are expanded). Each run "
                    "is tagged with its formula and source file; an input that cannot run is "
                    "reported and the others go on. Runs here one after another, or, with "
                    "--launchpad, is submitted to FireWorks.")
    batch.add_argument("sources", nargs="+", help="structure files and/or folders of them")
    _add_run_options(batch)
    batch.add_argument("--launchpad", default=None,
                       help="FireWorks launchpad file: submit instead of running here")
    batch.add_argument("--route-workers", action="store_true",
                       help="FireWorks categories: reference jobs to 'otf_reference', MD "
                            "segments and updates to 'otf_md' (examples/my_fworker_*.yaml)")
    batch.add_argument("--json", action="store_true", help="status rows as JSON on stdout")

    resume = sub.add_parser(
        "resume", help="finish the unfinished runs of a store",
        description="Finish every run of the store that was killed, failed or never started "
                    "(batch), from its journal: finished reference calculations are reused.")
    resume.add_argument("--store", default=DEFAULT_STORE, help=STORE_HELP)
    resume.add_argument("--run", action="append", dest="runs", default=None, metavar="RUN_ID",
                        help="resume only this run (repeatable)")
    resume.add_argument("--json", action="store_true",
                        help="print the finished OTFRunDoc as JSON (a list if several)")

    status = sub.add_parser("status", help="one row per run in a store")
    status.add_argument("--store", default=DEFAULT_STORE, help=STORE_HELP)
    status.add_argument("--launchpad", default=None,
                        help="FireWorks launchpad file: states of submitted runs from there")
    status.add_argument("--json", action="store_true", help="rows as JSON")
    return parser


def _is_folder_spec(spec: str) -> bool:
    return not (spec.startswith("mongodb://") or spec.startswith("mongodb+srv://")
                or Path(spec).suffix.lower() in (".yaml", ".yml", ".json"))


def _open_store(spec: str, must_exist: bool = False):
    """The JobStore ``--store`` names (folder, jobflow store file or mongodb:// URI),
    connected; an unreachable database or a bad file is a UsageError (one line)."""
    from atomate2_otf.store import open_job_store

    path = Path(spec).expanduser()
    if _is_folder_spec(spec):
        if must_exist and not path.is_dir():
            raise UsageError(f"store folder {str(path)!r} does not exist")
        if path.exists() and not path.is_dir():
            raise UsageError(f"--store {str(path)!r} is a file; give a folder, a jobflow "
                             f"store file (.yaml/.json) or a mongodb:// URI")
    try:
        store = open_job_store(spec)
    except ValueError as err:
        raise UsageError(str(err)) from err
    return store


def _work_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "work_dir", None):
        return Path(args.work_dir).expanduser()
    if _is_folder_spec(args.store):
        return Path(args.store).expanduser() / "jobs"
    return Path("otf-jobs")


def run_flow(maker, structure: Any, store_spec: str, verbose: bool = False,
             work_dir: str | Path | None = None):
    """Build the flow (validating everything first), run it in this process with
    :func:`atomate2_otf.local.run_flow_locally` (flat memory over long runs, journalled for
    ``resume``), return the OTFRunDoc."""
    try:
        flow = maker.make(structure)
    except ValueError as err:
        raise UsageError(str(err)) from err
    store = _open_store(store_spec)
    # one folder per job: file-based codes (VASP through custodian) must not see the
    # previous call's files
    jobs_dir = Path(store_spec).expanduser() / "jobs" if work_dir is None else Path(work_dir)
    return _run_and_read(flow, store, store_spec, jobs_dir)


def _run_and_read(flow, store, store_spec: str, jobs_dir: Path, **journal_fields: Any):
    from atomate2_otf.local import run_flow_locally
    from atomate2_otf.results import read_run_doc

    try:
        run_flow_locally(flow, store, root_dir=jobs_dir, create_folders=True,
                         journal_fields=journal_fields or None)
    except Exception as err:  # a job failed; everything written so far stays in the store
        logger.debug("the run failed", exc_info=True)
        raise RuntimeError(f"the run stopped: {type(err).__name__}: {err} (store "
                           f"{store_spec!r}; rerun with -v for the traceback; "
                           f"'atomate2-otf resume --store {store_spec}' retries it)") from err
    doc = read_run_doc(store, flow.output.uuid)
    if doc is None:
        raise RuntimeError(f"the run did not finish; see the store {store_spec!r}")
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


def _emit(out: TextIO, doc, as_json: bool, store_folder: str) -> None:
    if as_json:
        from monty.json import MontyEncoder

        out.write(json.dumps(doc.model_dump(), cls=MontyEncoder, indent=1) + "\n")
    else:
        out.write(_summary(doc) + f"\n  store: {Path(store_folder).resolve()}\n")


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
    _emit(args.out, doc, args.json, args.store)
    return 0


def _launchpad(path: str):
    """The launchpad of ``--launchpad``. FireWorks logs to stdout; inside
    :func:`command_stdout` that is stderr, so its log handler is created pointing there."""
    from atomate2_otf.fireworks import load_launchpad

    try:
        return load_launchpad(path)
    except ValueError as err:
        raise UsageError(str(err)) from err


def _otf_maker(args: argparse.Namespace):
    """The OTFMDMaker of ``run``/``batch``'s options (settings are checked by make())."""
    from atomate2_otf.flows import OTFMDMaker
    from atomate2_otf.reference.makers import get_reference_maker

    try:
        reference = get_reference_maker(args.reference)
    except ValueError as err:
        raise UsageError(str(err)) from err
    return OTFMDMaker(
        model=args.model, reference_maker=reference, ensemble=args.ensemble,
        temperature=args.temperature, timestep_fs=args.timestep, n_steps=args.steps,
        threshold=args.threshold, confidence=args.confidence, n_chains=args.chains,
        update_steps=args.update_steps, pressure_bar=args.pressure, seed=args.seed,
        n_workers=args.workers, progress=not args.json,
        worker_categories=_categories(args))


def _categories(args: argparse.Namespace) -> dict[str, str] | None:
    if not getattr(args, "route_workers", False):
        return None
    from atomate2_otf.fireworks import DEFAULT_WORKER_CATEGORIES

    return dict(DEFAULT_WORKER_CATEGORIES)


def cmd_run(args: argparse.Namespace) -> int:
    from atomate2_otf.atoms import to_atoms

    maker = _otf_maker(args)
    try:
        atoms = to_atoms(args.structure)
    except ValueError as err:
        raise UsageError(str(err)) from err
    doc = run_flow(maker, atoms, args.store, args.verbose, work_dir=_work_dir(args))
    _emit(args.out, doc, args.json, args.store)
    return 0


def _batch_sources(paths: list[str]) -> dict[str, Any]:
    """``{source_id: path}`` of the files given and the files in the folders given."""
    from atomate2_otf.batch import structure_sources

    sources: dict[str, Any] = {}
    for text in paths:
        path = Path(text).expanduser()
        if path.is_dir():
            try:
                pairs = structure_sources(path)
            except ValueError as err:
                raise UsageError(str(err)) from err
        elif path.is_file():
            pairs = [(path.name, path)]
        else:
            raise UsageError(f"batch source {text!r} is neither a file nor a folder")
        for source_id, item in pairs:
            key = source_id if source_id not in sources else str(item)
            sources[key] = item
    return sources


def cmd_batch(args: argparse.Namespace) -> int:
    """Build every material's run (bad inputs reported), then run or submit them all."""
    from tqdm.auto import tqdm

    from atomate2_otf.batch import BatchOTFMaker
    from atomate2_otf.local import register_run

    maker = BatchOTFMaker(otf_maker=_otf_maker(args))
    sources = _batch_sources(args.sources)
    launchpad = _launchpad(args.launchpad) if args.launchpad else None
    store = _open_store(args.store)
    items = maker.items(sources)
    for item in items:
        if item.error:
            sys.stderr.write(f"error: {item.source_id}: {item.error}\n")
    runnable = [item for item in items if item.flow is not None]
    failed = [item.source_id for item in items if item.error]
    if launchpad is not None:
        from atomate2_otf.fireworks import submit_flow

        for item in runnable:
            fw_ids = submit_flow(item.flow, launchpad, store=store, metadata=item.metadata)
            register_run(store, item.flow, state="submitted", fw_ids=list(fw_ids),
                         source=item.source_id, formula=item.formula)
        sys.stderr.write(f"submitted {len(runnable)} runs to {args.launchpad}\n")
    else:
        for item in runnable:  # journalled first: status lists them, resume can run them
            register_run(store, item.flow, state="queued", source=item.source_id,
                         formula=item.formula)
        jobs_dir = _work_dir(args)
        for item in tqdm(runnable, desc="materials", unit="run", disable=args.json):
            try:
                _run_and_read(item.flow, store, args.store, jobs_dir,
                              source=item.source_id, formula=item.formula)
            except RuntimeError as err:  # one material failing does not stop the others
                failed.append(item.source_id)
                sys.stderr.write(f"error: {item.source_id}: {err}\n")
    _print_status(args.out, status_rows(store), args.json, args.store)
    return 1 if failed else 0


def cmd_resume(args: argparse.Namespace) -> int:
    from atomate2_otf.local import resume_runs
    from atomate2_otf.results import read_run_doc

    store = _open_store(args.store, must_exist=True)
    try:
        outcomes = resume_runs(store, run_ids=args.runs)
    except ValueError as err:
        raise UsageError(str(err)) from err
    if not outcomes:
        sys.stderr.write(f"nothing to resume in {args.store}\n")
    docs = []
    for outcome in outcomes:
        if outcome.state == "completed":
            doc = read_run_doc(store, outcome.output_uuid) if outcome.output_uuid else None
            if doc is not None:
                docs.append(doc)
                if not args.json:
                    args.out.write(_summary(doc) + "\n")
            sys.stderr.write(f"run {outcome.run_id}: finished ({outcome.jobs_run} jobs run, "
                             f"{outcome.jobs_skipped} already done)\n")
        else:
            sys.stderr.write(f"error: run {outcome.run_id}: {outcome.state}: "
                             f"{outcome.error}\n")
    if args.json:
        from monty.json import MontyEncoder

        payload = docs[0].model_dump() if len(docs) == 1 else [d.model_dump() for d in docs]
        args.out.write(json.dumps(payload, cls=MontyEncoder, indent=1) + "\n")
    return 0 if all(o.state == "completed" for o in outcomes) else 1


def status_rows(store, launchpad=None) -> list[dict[str, Any]]:
    """One row per run (material) in the store.

    Finished runs come from their OTFRunDoc, running ones from their newest job, and the
    runs' journals add what jobs cannot tell: runs that are queued, submitted to FireWorks,
    failed, or interrupted (journalled as running by a process that is gone: resume them).
    With ``launchpad``, submitted runs take their state from their Fireworks.
    """
    from atomate2_otf.local import journal_store, owner_alive

    rows: dict[str, dict[str, Any]] = {}

    def row_of(run_id: str) -> dict[str, Any]:
        return rows.setdefault(run_id, {"run_id": run_id, "source": None, "state": "running",
                                        "formula": None, "md_steps": 0, "reference_calls": 0,
                                        "share_above_k": None, "wall_s": None, "error": None})

    for doc in store.query({"metadata.otf_kind": {"$in": ["prepare", "update", "segment"]}},
                           properties=["metadata", "output", "completed_at", "name"]):
        meta = doc["metadata"]
        row = row_of(meta["otf_run_id"])
        row["source"] = row["source"] or meta.get("otf_source")
        row["formula"] = row["formula"] or meta.get("otf_formula")
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
    runs = journal_store(store)
    for journal in [] if runs is None else runs.query({}, properties=[
            "run_id", "state", "source", "formula", "error", "host", "pid", "fw_ids"]):
        row = row_of(str(journal["run_id"]))
        row["source"] = journal.get("source") or row["source"]
        row["formula"] = row["formula"] or journal.get("formula")
        if row["state"] == "completed":
            continue
        state = journal.get("state", "running")
        if state == "running" and not owner_alive(journal):
            state = "interrupted"
        if state == "submitted" and launchpad is not None and journal.get("fw_ids"):
            state = _fireworks_state(launchpad, journal["fw_ids"])
        if state == "completed":  # journal done, document not readable: report as is
            state = "running"
        row["state"] = state
        row["error"] = journal.get("error") if state == "failed" else None
    return sorted(rows.values(), key=lambda r: (str(r["source"] or ""), r["run_id"]))


def _fireworks_state(launchpad, fw_ids: list[int]) -> str:
    """One state for a run's Fireworks: failed if any fizzled, running if any runs."""
    states = {doc["state"] for doc in launchpad.fireworks.find(
        {"fw_id": {"$in": [int(i) for i in fw_ids]}}, {"state": 1})}
    if "FIZZLED" in states:
        return "failed"
    if "RUNNING" in states or "RESERVED" in states:
        return "running"
    if states <= {"COMPLETED"}:
        return "running"  # the run's later Fireworks are detours not listed here
    return "submitted"


def _print_status(out: TextIO, rows: list[dict[str, Any]], as_json: bool,
                  store_spec: str) -> None:
    if as_json:
        out.write(json.dumps(rows, indent=1) + "\n")
        return
    header = f"{'source':18s} {'run':13s} {'formula':10s} {'state':11s} {'MD steps':>9s} " \
             f"{'calls':>6s} {'>K %':>6s} {'wall s':>8s}"
    out.write(header + "\n")
    for r in rows:
        share = "-" if r["share_above_k"] is None else f"{100 * r['share_above_k']:.1f}"
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.0f}"
        out.write(f"{str(r['source'] or '-')[:18]:18s} {r['run_id'][:13]:13s} "
                         f"{str(r['formula'] or '-'):10s} {r['state']:11s} "
                         f"{r['md_steps'] or 0:>9d} {r['reference_calls'] or 0:>6d} "
                         f"{share:>6s} {wall:>8s}\n")
    if not rows:
        out.write(f"(no runs in {store_spec})\n")


def cmd_status(args: argparse.Namespace) -> int:
    launchpad = _launchpad(args.launchpad) if args.launchpad else None
    store = _open_store(args.store, must_exist=True)
    _print_status(args.out, status_rows(store, launchpad), args.json, args.store)
    return 0


COMMANDS = {"demo": cmd_demo, "run": cmd_run, "batch": cmd_batch, "status": cmd_status,
            "resume": cmd_resume}


@contextlib.contextmanager
def command_stdout() -> Iterator[TextIO]:
    """Yield the stream for the command's own output (a summary, a ``--json`` document);
    anything else written to stdout while the command runs goes to stderr.

    Models and reference codes print on stdout (CHGNet announces its parameter count, C
    libraries write to file descriptor 1), which would break ``--json > out.json``. So the
    real stdout is set aside and descriptor 1, which worker processes inherit, points to
    stderr until the command ends. Where stdout is not a file descriptor (an in-process
    capture), Python-level prints are redirected only.
    """
    ours = sys.stdout
    try:
        fd = ours.fileno()
        err_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    saved = None
    if fd is not None:
        ours.flush()
        saved = os.dup(fd)
        os.dup2(err_fd, fd)
        ours = open(saved, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield ours
    finally:
        ours.flush()
        if saved is not None:
            sys.stdout.flush()
            os.dup2(saved, fd)
            os.close(saved)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`~atomate2_otf.local.RunInterrupted` in the main
    thread, so the runner journals the run as interrupted and :func:`main` stops the chain
    workers; a second signal while that happens acts as the signal's default."""
    import signal
    import threading

    from atomate2_otf.local import RunInterrupted

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        raise RunInterrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:  # known third-party chatter would bury the summary (-v shows it)
        from atomate2_otf.runtime import silence_known_warnings

        silence_known_warnings()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from atomate2_otf.local import RunInterrupted
    from atomate2_otf.runtime import keep_freed_memory, resources

    keep_freed_memory()  # the command owns its process (see the function's docstring)
    with command_stdout() as out, interruptible():
        args.out = out
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
        except RunInterrupted as err:
            resources().close(timeout=0)  # the chain workers stop now, not at exit
            store = getattr(args, "store", DEFAULT_STORE)
            sys.stderr.write(f"error: {err}; the run is journalled as interrupted: "
                             f"'atomate2-otf resume --store {store}' finishes it\n")
            return 128 + err.signum


if __name__ == "__main__":
    sys.exit(main())
