"""What each ``atomate2-otf`` command does; heavy imports stay inside the commands, so that
``--help`` and bad input answer at once."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

from atomate2_otf.analysis.status import status_rows
from atomate2_otf.cli.parser import DEMO, UsageError
from atomate2_otf.units import EV_PER_KCAL_MOL

logger = logging.getLogger("atomate2_otf.cli")


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
    if doc.n_audit_calls:
        low, high = doc.audit_miss_rate_wilson95
        lines += [
            f"  audited frames {doc.n_audit_calls}: |error| > K on "
            f"{100 * doc.audit_miss_rate:.1f} % (95 % interval {100 * low:.1f}-"
            f"{100 * high:.1f} %)",
            f"  RMSE on audited frames: fine-tuned {doc.audit_rmse:.4f} eV, untuned "
            f"{doc.audit_rmse_untuned:.4f} eV",
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


def _device(args: argparse.Namespace) -> str:
    """``--device``, checked before any model loads: a bad value, or a GPU this machine
    lacks when the run executes here, is a UsageError naming what is accepted (runs sent to
    a FireWorks launchpad are checked for spelling only: their workers resolve it)."""
    from atomate2_otf.devices import check_device, resolve_device

    try:
        if not getattr(args, "launchpad", None):
            resolve_device(args.device)
        return check_device(args.device)
    except ValueError as err:
        raise UsageError(f"--device: {err}") from err


def cmd_demo(args: argparse.Namespace) -> int:
    device = _device(args)  # before the workflow stack is imported: a bad value answers at once
    from ase.build import molecule

    from atomate2_otf.flows import OTFMDMaker
    from atomate2_otf.reference.makers import get_reference_maker

    maker = OTFMDMaker(
        model="chgnet", reference_maker=get_reference_maker("gfn2-xtb"), ensemble="nvt",
        temperature=DEMO["temperature"], timestep_fs=DEMO["timestep"], n_steps=args.steps,
        threshold=DEMO["threshold_kcal"] * EV_PER_KCAL_MOL, n_chains=DEMO["chains"],
        update_steps=DEMO["update_steps"], initial_update_steps=DEMO["initial_update_steps"],
        seed=args.seed, audit_fraction=args.audit, progress=not args.json,
        device=device)
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
    device = _device(args)  # before the workflow stack is imported: a bad value answers at once
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
        calibration_ema=args.calibration_ema, audit_fraction=args.audit,
        force_threshold=args.force_threshold,
        update_steps=args.update_steps, pressure_bar=args.pressure, seed=args.seed,
        n_workers=args.workers, progress=not args.json,
        worker_categories=_categories(args), device=device)


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

    if args.warm_start and args.launchpad:
        raise UsageError(f"--warm-start {args.warm_start} runs a class's materials one after "
                         f"another here; with --launchpad each material is its own workflow, "
                         f"so submit BatchOTFMaker(warm_start=...).make(...) as one Flow "
                         f"(docs/workflow.md), or drop --launchpad")
    maker = BatchOTFMaker(otf_maker=_otf_maker(args), warm_start=args.warm_start)
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


def cmd_report(args: argparse.Namespace) -> int:
    """Figures, summary.md and summary.json of one run or of a batch."""
    from atomate2_otf.analysis.report import ReportInputError, write_report

    store = _open_store(args.store, must_exist=True)
    try:
        summary = write_report(store, args.out_dir, run_id=args.run, batch=args.batch,
                               progress=not args.json, where=args.store)
    except ReportInputError as err:
        raise UsageError(str(err)) from err
    if args.json:
        args.out.write(json.dumps(summary, indent=1, default=str) + "\n")
        return 0
    folder = Path(args.out_dir).expanduser().resolve()
    runs = summary["runs"] if summary["kind"] == "batch" else [summary]
    for run in runs:
        state = "" if run["completed"] else f" (not finished: {run['state']})"
        skipped = "; ".join(f"{k}: {v}" for k, v in run["skipped_figures"].items())
        args.out.write(f"run {run['run_id']}{state}: {len(run['figures'])} figures"
                       + (f", skipped {skipped}" if skipped else "") + "\n")
    args.out.write(f"report: {folder / 'summary.md'}\n")
    return 0


COMMANDS = {"demo": cmd_demo, "run": cmd_run, "batch": cmd_batch, "status": cmd_status,
            "resume": cmd_resume, "report": cmd_report}
