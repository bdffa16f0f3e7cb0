"""``atomate2-otf report``: a run's (or a batch's) figures, ``summary.md`` and ``summary.json``.

The JSON holds every number the markdown shows, under the OTFRunDoc's own field names
(eV, s), so a script or a test can check the report against the store. A run still going
is reported from what its jobs wrote so far, and the summary says so. Bad input (no run, an
unknown run id, several runs and no choice, a folder that cannot be written) raises
:class:`ReportInputError` before any figure is drawn.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobflow import JobStore

    from atomate2_otf.analysis.figures import FigureFile
    from atomate2_otf.analysis.frames import RunData

logger = logging.getLogger(__name__)

#: default output folder of the report command
DEFAULT_OUT = "otf-report"
#: the OTFRunDoc fields a report carries, unchanged (eV, fractions)
DOC_NUMBERS = ("n_md_steps", "n_reference_calls", "n_audit_calls", "threshold", "confidence",
               "share_above_threshold", "rmse_at_calls", "rmse_untuned_at_calls",
               "audit_miss_rate", "audit_miss_rate_wilson95", "audit_rmse",
               "audit_rmse_untuned", "energy_offset")
#: rows of the calls table in summary.md (calls.csv and summary.json hold all of them)
MD_CALL_ROWS = 60
MEV = 1000.0


class ReportInputError(ValueError):
    """Input the report cannot work with; the message names the bad value."""


def choose_runs(ids: list[str], run_id: str | None, batch: bool, where: str) -> list[str]:
    """The run ids to report: the one named, all (``batch``) or the store's only one."""
    if run_id is not None and batch:
        raise ReportInputError("give either --run or --batch, not both")
    if not ids:
        raise ReportInputError(f"no runs in the store {where}")
    if run_id is not None:
        if run_id not in ids:
            raise ReportInputError(f"no run {run_id!r} in the store {where}; its runs: "
                                   f"{', '.join(ids)}")
        return [run_id]
    if batch or len(ids) == 1:
        return list(ids)
    raise ReportInputError(f"the store {where} holds {len(ids)} runs ({', '.join(ids)}): "
                           f"choose one with --run RUN_ID or report all with --batch")


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove a file can be written there."""
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ReportInputError(f"cannot write the report to {str(path)!r}: {reason}") from err
    return path


def _plain(value: Any) -> Any:
    """JSON-ready: NaN and numpy scalars to None / Python numbers, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def key_settings(run: RunData) -> dict[str, Any]:
    """The settings a reader needs first (the full RunConfig is under ``run_config``)."""
    s = run.settings
    md = s.get("md") or {}
    posterior = s.get("posterior") or {}
    return {"model": s.get("model"), "reference": s.get("reference"),
            "ensemble": md.get("ensemble"), "temperature_knots": md.get("temperature"),
            "timestep_fs": md.get("timestep_fs"), "n_steps": md.get("n_steps"),
            "threshold": s.get("threshold"), "confidence": s.get("confidence"),
            "n_chains": posterior.get("n_chains"), "update_steps": s.get("update_steps"),
            "initial_update_steps": s.get("initial_update_steps"),
            "calibration_ema": posterior.get("calibration_ema"),
            "audit_fraction": s.get("audit_fraction"),
            "force_trigger_every": s.get("force_trigger_every"),
            "max_reference_calls": s.get("max_reference_calls"), "seed": posterior.get("seed")}


def run_numbers(run: RunData, calls: Any) -> dict[str, Any]:
    """The key numbers: the OTFRunDoc's (or, for a run still going, the same statistics of
    the calls so far) and the observed coverage of the 95 % predictive intervals."""
    from atomate2_otf.analysis.figures import INTERVAL, coverage, time_split

    doc = run.summary
    numbers: dict[str, Any] = {name: getattr(doc, name) if doc is not None else None
                               for name in DOC_NUMBERS}
    if doc is None:  # no settings: only what needs none
        numbers.update(n_md_steps=int(run.row.get("md_steps") or 0),
                       n_reference_calls=sum(c.kind != "audit" for c in run.calls),
                       n_audit_calls=sum(c.kind == "audit" for c in run.calls))
    parts, complete = time_split(run)
    if run.doc is not None:
        numbers["timings"] = run.doc.timings.model_dump()
    else:
        numbers["timings"] = {"md": parts["MD"], "reference": parts["reference"],
                              "update": parts["update"], "other": None,
                              "total": sum(parts.values())}
    numbers["timings_complete"] = complete
    for kind, key in (("trigger", "coverage95_at_calls"), ("audit", "coverage95_audits")):
        law = calls[(calls["kind"] == kind) & calls["error"].notna()
                    & calls["predictive_scale"].notna() & calls["predictive_dof"].notna()]
        numbers[key] = (None if law.empty else float(coverage(
            law["error"], law["predictive_scale"], law["predictive_dof"], [INTERVAL])[0]))
    numbers["final_checkpoint"] = run.doc.final_checkpoint if run.doc is not None else None
    return _plain(numbers)


def run_summary(run: RunData, calls: Any, figures: list[FigureFile],
                folder: Path) -> dict[str, Any]:
    """summary.json of one run."""
    return _plain({
        "run_id": run.run_id, "formula": run.summary.formula if run.summary else
        run.row.get("formula"), "source": run.row.get("source"), "state": run.state,
        "completed": run.completed, "settings": key_settings(run),
        "numbers": run_numbers(run, calls),
        "figures": {f.name: [os.path.relpath(p, folder) for p in f.paths]
                    for f in figures if not f.skipped},
        "skipped_figures": {f.name: f.skipped for f in figures if f.skipped},
        "calls": calls.drop(columns=["run_id"]).to_dict(orient="records"),
        "run_config": run.settings,
    })


def _secs(value: Any) -> str:
    return "-" if value is None else f"{value:.3g} s"


def _fmt(value: Any, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool) or isinstance(value, int) and scale == 1.0:
        return f"{value}{unit}"
    return f"{value * scale:.{digits}f}{unit}"


def run_markdown(summary: dict[str, Any], heading: str = "#") -> str:
    """summary.md of one run, from its summary.json (so both hold the same numbers)."""
    s, n, t = summary["settings"], summary["numbers"], summary["numbers"]["timings"]
    lines = [f"{heading} Run {summary['run_id']}: {summary['formula'] or '?'}", ""]
    if not summary["completed"]:
        lines += [f"**This run is not finished (state: {summary['state']}).** The numbers "
                  f"and figures cover what the store holds so far: {n['n_md_steps']} MD "
                  f"steps, {n['n_reference_calls']} reference calls.", ""]
    if summary["source"]:
        lines += [f"Source: `{summary['source']}`", ""]
    lines += [f"{heading}# Settings", "", "| setting | value |", "|---|---|"]
    labels = {"threshold": ("threshold K", MEV, 2, " meV"), "timestep_fs": ("time step", 1, 3,
              " fs")}
    for key, value in s.items():
        label, scale, digits, unit = labels.get(key, (key.replace("_", " "), 1, 4, ""))
        text = _fmt(value, scale, digits, unit) if isinstance(value, float) else \
            ("-" if value is None else f"`{value}`" if isinstance(value, list) else str(value))
        lines.append(f"| {label} | {text} |")
    wilson = n["audit_miss_rate_wilson95"]
    rows = [
        ("MD steps", _fmt(n["n_md_steps"])),
        ("reference calls (initial + triggered)", _fmt(n["n_reference_calls"])),
        ("audited frames", _fmt(n["n_audit_calls"])),
        ("share of triggered calls with \\|error\\| > K", _fmt(n["share_above_threshold"], 100,
                                                              1, " %")),
        ("RMSE at the calls, fine-tuned (before each update)",
         _fmt(n["rmse_at_calls"], MEV, 2, " meV")),
        ("RMSE at the calls, untuned", _fmt(n["rmse_untuned_at_calls"], MEV, 2, " meV")),
        ("observed coverage of the 95 % predictive interval, calls",
         _fmt(n["coverage95_at_calls"], 100, 1, " %")),
        ("audited miss rate (\\|error\\| > K)", _fmt(n["audit_miss_rate"], 100, 1, " %")),
        ("its 95 % Wilson interval", "-" if wilson is None else
         f"{100 * wilson[0]:.1f} - {100 * wilson[1]:.1f} %"),
        ("RMSE on audited frames, fine-tuned", _fmt(n["audit_rmse"], MEV, 2, " meV")),
        ("RMSE on audited frames, untuned", _fmt(n["audit_rmse_untuned"], MEV, 2, " meV")),
        ("observed coverage of the 95 % predictive interval, audits",
         _fmt(n["coverage95_audits"], 100, 1, " %")),
        ("energy offset E_model(x0) - E_ref(x0)", _fmt(n["energy_offset"], 1, 4, " eV")),
        ("wall time, total" + ("" if n["timings_complete"] else " (calls only)"),
         _secs(t["total"])),
        ("wall time, MD / reference / update / other",
         " / ".join(_secs(t[k]) for k in ("md", "reference", "update", "other"))),
        ("final checkpoint", n["final_checkpoint"] or "-"),
    ]
    lines += ["", f"{heading}# Key numbers", "", "| quantity | value |", "|---|---|",
              *(f"| {a} | {b} |" for a, b in rows), ""]
    lines += [f"{heading}# Figures", ""]
    from atomate2_otf.analysis.figures import RUN_FIGURES

    for name, paths in summary["figures"].items():
        png = next(p for p in paths if p.endswith(".png"))
        pdf = next((p for p in paths if p.endswith(".pdf")), None)
        lines += [f"![{RUN_FIGURES.get(name, name)}]({png})", "",
                  f"*{RUN_FIGURES.get(name, name)}* ([PDF]({pdf}))", ""]
    for name, reason in summary["skipped_figures"].items():
        lines += [f"- {RUN_FIGURES.get(name, name)}: not drawn ({reason})"]
    if summary["skipped_figures"]:
        lines.append("")
    lines += _calls_table(summary["calls"], heading)
    return "\n".join(lines)


def _calls_table(calls: list[dict[str, Any]], heading: str) -> list[str]:
    lines = [f"{heading}# Reference calls", "",
             "| call | kind | MD step | time (fs) | T (K) | error (meV) | sigma (meV) | "
             "P(\\|e\\| < K) | untuned error (meV) |", "|---|---|---|---|---|---|---|---|---|"]
    for c in calls[:MD_CALL_ROWS]:
        lines.append(
            f"| {c['index']} | {c['kind']} | {c['md_step']} | {_fmt(c['time_fs'], 1, 1)} | "
            f"{_fmt(c['temperature_K'], 1, 1)} | {_fmt(c['error'], MEV, 2)} | "
            f"{_fmt(c['sigma'], MEV, 2)} | {_fmt(c['prob_within'], 1, 3)} | "
            f"{_fmt(c['untuned_error'], MEV, 2)} |")
    if len(calls) > MD_CALL_ROWS:
        lines.append(f"\n({len(calls) - MD_CALL_ROWS} more calls in calls.csv and "
                     f"summary.json)")
    return [*lines, ""]


def _write_text(path: Path, text: str) -> None:
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


def report_run(run: RunData, folder: Path, **extra: Any) -> dict[str, Any]:
    """Figures, calls.csv, summary.md and summary.json of one run, in ``folder``
    (``extra``: fields put first in summary.json)."""
    from atomate2_otf.analysis.figures import write_run_figures
    from atomate2_otf.analysis.frames import calls_frame, trajectory_frame

    folder.mkdir(parents=True, exist_ok=True)
    calls = calls_frame(run)
    figures = write_run_figures(run, calls, trajectory_frame(run), folder)
    calls.to_csv(folder / "calls.csv", index=False)
    summary = {**_plain(extra), **run_summary(run, calls, figures, folder)}
    _write_text(folder / "summary.json", json.dumps(summary, indent=1, default=str))
    _write_text(folder / "summary.md", run_markdown(summary))
    return summary


def batch_markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Batch report: {len(summary['materials'])} materials", "",
             f"Store: `{summary['store']}`", ""]
    unfinished = [m for m in summary["materials"] if not m["completed"]]
    if unfinished:
        lines += [f"**{len(unfinished)} of the runs are not finished**; their rows and "
                  f"reports cover what the store holds so far.", ""]
    lines += ["| formula | source | run | state | MD steps | reference calls | audits | "
              "\\|error\\| > K | RMSE fine-tuned (meV) | RMSE untuned (meV) | audited miss "
              "rate | wall time |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in summary["materials"]:
        lines.append(
            f"| {m['formula'] or '-'} | {m['source'] or '-'} | [{m['run_id']}]"
            f"({m['run_id']}/summary.md) | {m['state']} | {m['n_md_steps']} | "
            f"{m['n_reference_calls']} | {m['n_audit_calls']} | "
            f"{_fmt(m['share_above_threshold'], 100, 1, ' %')} | "
            f"{_fmt(m['rmse_at_calls'], MEV, 2)} | {_fmt(m['rmse_untuned_at_calls'], MEV, 2)} "
            f"| {_fmt(m['audit_miss_rate'], 100, 1, ' %')} | {_secs(m['wall_s'])} |")
    lines.append("")
    figure = summary["figures"].get("batch")
    if figure:
        png = next(p for p in figure if p.endswith(".png"))
        lines += [f"![calls, share above K, RMSE and wall time per material]({png})", ""]
    for name, reason in summary["skipped_figures"].items():
        lines.append(f"- {name}: not drawn ({reason})")
    return "\n".join(lines)


def write_report(store: JobStore | str, out: str | Path = DEFAULT_OUT,
                 run_id: str | None = None, batch: bool = False,
                 progress: bool = False, where: str | None = None) -> dict[str, Any]:
    """Write the report of one run (``run_id``, or the store's only run) or of every run
    (``batch``: the batch figure and table in ``out``, each run in ``out/RUN_ID``).

    Returns the summary written to ``out/summary.json``. Raises ReportInputError for
    input it cannot use, before anything is written. ``where``: how to name the store in
    messages and the summary (default: the spec, or the JobStore's name).
    """
    from atomate2_otf.analysis.frames import as_store, load_run, materials_frame
    from atomate2_otf.analysis.status import status_rows

    if where is None:
        where = str(store) if isinstance(store, str | Path) else str(getattr(store, "name", ""))
    job_store = as_store(store)
    rows = status_rows(job_store)
    chosen = choose_runs([row["run_id"] for row in rows], run_id, batch, where)
    folder = check_writable(out)
    if not batch:
        run = load_run(job_store, chosen[0], rows)
        return report_run(run, folder, store=where, kind="run")
    from tqdm.auto import tqdm

    from atomate2_otf.analysis.figures import write_batch_figure

    runs, summaries = [], []
    for one in tqdm(chosen, desc="runs", unit="run", disable=not progress):
        run = load_run(job_store, one, rows)
        runs.append(run)
        summaries.append(report_run(run, folder / one, store=where, kind="run"))
    materials = materials_frame(runs)
    figure = write_batch_figure(materials, folder)
    summary = _plain({
        "store": where, "kind": "batch",
        "materials": materials.to_dict(orient="records"),
        "figures": {figure.name: [os.path.relpath(p, folder) for p in figure.paths]}
        if not figure.skipped else {},
        "skipped_figures": {figure.name: figure.skipped} if figure.skipped else {},
        "runs": summaries,
    })
    _write_text(folder / "summary.json", json.dumps(summary, indent=1, default=str))
    _write_text(folder / "summary.md", batch_markdown(summary))
    return summary
