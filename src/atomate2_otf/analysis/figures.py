"""The report's figures, drawn from the DataFrames of :mod:`atomate2_otf.analysis.frames`.

Each ``*_figure`` function returns a matplotlib Figure, or raises :class:`NoData` with the
reason it cannot be drawn (a run with no triggered call yet has no error to plot). Figures
use matplotlib's object API (``matplotlib.figure.Figure``), never pyplot, so no GUI backend
is ever selected and a notebook's backend is left alone; PNG goes through Agg. They are
meant to be read in greyscale: series differ by line style, marker and hatching, not by
colour alone. Energies are shown in meV.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from atomate2_otf.analysis.frames import RunData

logger = logging.getLogger(__name__)

MEV = 1000.0
#: the predictive interval drawn in the error figure
INTERVAL = 0.95
#: how each kind of call is drawn: marker, filled, label
KIND_STYLE = {"initial": ("o", True, "initial call"), "trigger": ("^", True, "triggered call"),
              "audit": ("s", False, "audited frame")}
FORMATS = ("png", "pdf")
DPI = 150


class NoData(ValueError):
    """A figure whose data are missing; the message says what is missing."""


@dataclass
class FigureFile:
    """A figure written (``paths``) or skipped (``skipped``: why)."""

    name: str
    title: str
    paths: list[str]
    skipped: str | None = None


def _figure(width: float = 7.0, height: float = 4.2) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _kind_scatter(ax: Any, x: Any, y: Any, kind: str, **kwargs: Any) -> None:
    marker, filled, label = KIND_STYLE.get(kind, ("x", True, kind))
    ax.plot(x, y, linestyle="none", marker=marker, markersize=6, color="black",
            markerfacecolor="black" if filled else "white", markeredgewidth=1.2,
            label=label, **kwargs)


def _by_kind(calls: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The calls grouped by kind, in a fixed order (initial, trigger, audit)."""
    order = list(KIND_STYLE)
    kinds = sorted(calls["kind"].unique(), key=lambda k: (order.index(k) if k in order
                                                          else len(order), k))
    return [(str(kind), calls[calls["kind"] == kind]) for kind in kinds]


def timeline_figure(run: RunData, calls: pd.DataFrame, traj: pd.DataFrame) -> Figure:
    """(a) Temperature over MD time, the reference calls on it, cumulative calls (twin axis)."""
    from atomate2_otf.analysis.frames import target_temperature

    if calls.empty:
        raise NoData("no reference call in the store yet")
    if calls["time_fs"].isna().all():
        raise NoData("the run's time step is not known (no settings in the store)")
    dt = float(run.timestep_fs)
    last_step = int(max(calls["md_step"].max(), traj["step"].max() if len(traj) else 0,
                        run.summary.n_md_steps if run.summary is not None else 0))
    # the whole schedule, so that a run still going shows how far it got
    planned = int((run.settings.get("md") or {}).get("n_steps") or 0)
    grid = np.arange(0, max(last_step, planned) + 1)
    target = target_temperature(run.settings, grid)
    if traj.empty and target is None:
        raise NoData("neither a stored trajectory nor a temperature schedule")
    fig = _figure()
    ax = fig.add_subplot()
    if target is not None:
        ax.plot(grid * dt, target, color="0.45", linestyle="--", linewidth=1.5,
                label="target (schedule)")
    if len(traj):
        ax.plot(traj["time_fs"], traj["temperature_K"], color="black", linestyle="-",
                linewidth=1.2, label="MD (stored frames)")
    for kind, group in _by_kind(calls):
        _kind_scatter(ax, group["time_fs"], group["temperature_K"], kind, zorder=3)
    ax.set_xlabel("MD time (fs)")
    ax.set_ylabel("temperature (K)")
    twin = ax.twinx()
    order = calls.sort_values("md_step")
    times = np.concatenate([order["time_fs"].to_numpy(float), [last_step * dt]])
    counts = np.concatenate([np.arange(1, len(order) + 1), [len(order)]])
    twin.step(times, counts, where="post", color="0.3", linestyle=":", linewidth=1.8,
              label="cumulative calls")
    twin.set_ylabel("reference calls, cumulative")
    twin.set_ylim(0, max(counts.max() * 1.15, 1))
    twin.yaxis.get_major_locator().set_params(integer=True)
    handles = ax.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    ax.legend(handles[0] + extra[0], handles[1] + extra[1], loc="upper center",
              bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False, fontsize="small")
    note = "" if run.completed else f" ({run.state}: so far)"
    ax.set_title(f"run {run.run_id}: temperature and reference calls{note}")
    return fig


def _predictive_halfwidth(scale: Any, dof: Any, level: float) -> np.ndarray:
    from scipy import stats

    return np.asarray(scale, float) * stats.t.ppf(0.5 + level / 2.0, np.asarray(dof, float))


def _scored(calls: pd.DataFrame) -> pd.DataFrame:
    return calls[calls["error"].notna()]


def error_figure(run: RunData, calls: pd.DataFrame) -> Figure:
    """(b) Energy error before each update, the +-K band and the calibrated 95 % interval."""
    scored = _scored(calls)
    if scored.empty:
        raise NoData("no scored call yet (only the initial reference call)")
    k = run.threshold
    fig = _figure()
    ax = fig.add_subplot()
    x = scored["index"].to_numpy(int)
    if k is not None:
        ax.axhspan(-k * MEV, k * MEV, facecolor="0.88", edgecolor="0.55", hatch="//",
                   linewidth=0.0, label=f"|error| < K = {k * MEV:.1f} meV")
    law = scored[scored["predictive_scale"].notna() & scored["predictive_dof"].notna()]
    if len(law):
        half = _predictive_halfwidth(law["predictive_scale"], law["predictive_dof"],
                                     INTERVAL) * MEV
        ax.errorbar(law["index"], np.zeros(len(law)), yerr=half, fmt="none", ecolor="0.35",
                    elinewidth=2.5, capsize=4,
                    label=f"calibrated {100 * INTERVAL:.0f} % predictive interval")
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    for kind, group in _by_kind(scored):
        _kind_scatter(ax, group["index"], group["error"] * MEV, kind, zorder=3)
    ax.set_xlabel("reference call")
    ax.set_ylabel("energy error before the update (meV)")
    if len(x) <= 20:
        ax.set_xticks(x)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False,
              fontsize="small")
    ax.set_title(f"run {run.run_id}: error at the calls (model before each update)")
    return fig


NOMINAL = np.linspace(0.0, 1.0, 101)


def coverage(errors: Any, scales: Any, dofs: Any, nominal: Any = NOMINAL) -> np.ndarray:
    """Observed share of errors inside the central predictive interval of each nominal
    coverage (the Student-t law of each call); the calibration curve."""
    errors = np.abs(np.asarray(errors, float))[:, None]
    nominal = np.asarray(nominal, float)[None, :]
    half = _predictive_halfwidth(np.asarray(scales, float)[:, None],
                                 np.asarray(dofs, float)[:, None], nominal)
    return np.mean(errors <= half, axis=0)


def calibration_figure(run: RunData, calls: pd.DataFrame) -> Figure:
    """(c) Observed against nominal coverage of the predictive intervals, over the
    triggered calls and, separately, the audited frames."""
    scored = _scored(calls)
    scored = scored[scored["predictive_scale"].notna() & scored["predictive_dof"].notna()]
    if scored.empty:
        raise NoData("no call with a recorded predictive law (predictive_scale/dof) yet")
    fig = _figure(5.2, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 100], [0, 100], color="0.6", linestyle="-", linewidth=1.0,
            label="perfect calibration")
    styles = {"trigger": ("-", "^", "triggered calls"), "audit": ("--", "s", "audited frames")}
    for kind, (line, marker, label) in styles.items():
        group = scored[scored["kind"] == kind]
        if group.empty:
            continue
        observed = coverage(group["error"], group["predictive_scale"], group["predictive_dof"])
        ax.plot(100 * NOMINAL, 100 * observed, color="black", linestyle=line, marker=marker,
                markevery=10, markerfacecolor="white" if kind == "audit" else "black",
                label=f"{label} (n = {len(group)})")
    ax.set_xlim(-2, 102)  # a margin: curves along 0 % and 100 % stay visible
    ax.set_ylim(-2, 102)
    ax.set_aspect("equal")
    ax.set_xlabel("nominal coverage of the central predictive interval (%)")
    ax.set_ylabel("observed coverage (%)")
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(f"run {run.run_id}: calibration")
    return fig


def untuned_figure(run: RunData, calls: pd.DataFrame) -> Figure:
    """(d) The fine-tuned ensemble's error against the untuned model's at the calls."""
    scored = _scored(calls)
    scored = scored[scored["untuned_error"].notna()]
    if scored.empty:
        raise NoData("no call with both errors (fine-tuned and untuned) yet")
    fig = _figure(5.4, 5.0)
    ax = fig.add_subplot()
    x = scored["untuned_error"].to_numpy(float) * MEV
    y = scored["error"].to_numpy(float) * MEV
    k = run.threshold
    reach = max(np.abs(np.concatenate([x, y])).max(), (k or 0.0) * MEV) * 1.12 or 1.0
    ax.plot([-reach, reach], [-reach, reach], color="0.5", linestyle="-", linewidth=1.0,
            label="fine-tuned = untuned")
    if k is not None:
        for sign in (-1, 1):
            ax.axhline(sign * k * MEV, color="0.4", linestyle="--", linewidth=1.0,
                       label=f"+-K = {k * MEV:.1f} meV" if sign < 0 else None)
            ax.axvline(sign * k * MEV, color="0.4", linestyle="--", linewidth=1.0)
    for kind, group in _by_kind(scored):
        _kind_scatter(ax, group["untuned_error"] * MEV, group["error"] * MEV, kind,
                      zorder=3)
    ax.set_xlim(-reach, reach)
    ax.set_ylim(-reach, reach)
    ax.set_aspect("equal")
    ax.set_xlabel("untuned model's energy error (meV)")
    ax.set_ylabel("fine-tuned ensemble's energy error (meV)")
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(f"run {run.run_id}: untuned against fine-tuned")
    return fig


def time_split(run: RunData) -> tuple[dict[str, float], bool]:
    """Wall time (s) by part, and whether ``other`` is known (a finished run's
    OTFRunDoc.timings; for a run still going, the calls' sums, other unknown)."""
    if run.doc is not None:
        t = run.doc.timings
        return {"MD": t.md, "reference": t.reference, "update": t.update, "other": t.other}, True
    parts = {"MD": sum(c.md_s for c in run.calls),
             "reference": sum(c.reference_s or 0.0 for c in run.calls),
             "update": sum(c.update_s for c in run.calls)}
    return parts, False


def timing_figure(run: RunData) -> Figure:
    """(e) Wall time split into MD, reference, update and other."""
    parts, complete = time_split(run)
    total = sum(parts.values())
    if not run.calls or total <= 0:
        raise NoData("no timed job in the store yet")
    fig = _figure(7.0, 3.4)
    ax = fig.add_subplot()
    hatches = {"MD": "", "reference": "///", "update": "xx", "other": ".."}
    shades = {"MD": "0.25", "reference": "0.85", "update": "0.6", "other": "white"}
    names = list(parts)
    values = [parts[n] for n in names]
    bars = ax.barh(names, values, color=[shades[n] for n in names], edgecolor="black",
                   hatch=[hatches[n] for n in names])
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(f"{value:.3g} s ({100 * value / total:.0f} %)",
                    (bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize="small")
    ax.set_xlim(0, max(values) * 1.35)
    ax.invert_yaxis()
    ax.set_xlabel("wall time (s)")
    note = "" if complete else " (run still going: other not known)"
    ax.set_title(f"run {run.run_id}: wall time {total:.3g} s{note}", fontsize="medium")
    return fig


#: a legend above its panel, where it covers no bar
_ABOVE = {"loc": "lower center", "bbox_to_anchor": (0.5, 1.0), "ncol": 2, "frameon": False,
          "fontsize": "small"}


def batch_figure(materials: pd.DataFrame) -> Figure:
    """(f) One figure across the materials of a batch: calls, share above K, RMSE, wall time."""
    if materials.empty:
        raise NoData("no run in the batch")
    labels = [f"{row.formula or '?'}\n{row.source or row.run_id}"
              + ("" if row.completed else f"\n({row.state})") for row in materials.itertuples()]
    x = np.arange(len(materials))
    width = max(7.0, 1.1 * len(materials) + 2.0)
    fig = _figure(width, 6.4)
    axes = fig.subplots(2, 2, sharex=True)

    def nums(column: str) -> np.ndarray:
        return materials[column].astype(float).to_numpy()

    ax = axes[0, 0]
    ax.bar(x, nums("n_reference_calls"), color="0.35", edgecolor="black", label="reference")
    ax.bar(x, nums("n_audit_calls"), bottom=nums("n_reference_calls"), color="white",
           edgecolor="black", hatch="//", label="audit")
    ax.set_ylabel("calls")
    ax.legend(**_ABOVE)
    ax = axes[0, 1]
    ax.bar(x, 100 * np.nan_to_num(nums("share_above_threshold")), color="0.6",
           edgecolor="black", hatch="..")
    ax.set_ylabel("calls with |error| > K (%)")
    ax = axes[1, 0]
    ax.bar(x - 0.2, MEV * np.nan_to_num(nums("rmse_at_calls")), 0.4, color="0.3",
           edgecolor="black", label="fine-tuned")
    ax.bar(x + 0.2, MEV * np.nan_to_num(nums("rmse_untuned_at_calls")), 0.4, color="white",
           edgecolor="black", hatch="xx", label="untuned")
    ax.set_ylabel("RMSE at the calls (meV)")
    ax.legend(**_ABOVE)
    ax = axes[1, 1]
    ax.bar(x, np.nan_to_num(nums("wall_s")), color="0.8", edgecolor="black", hatch="\\\\")
    ax.set_ylabel("wall time (s)")
    for ax in axes[1]:
        ax.set_xticks(x, labels, fontsize="small", rotation=0 if len(x) <= 6 else 60,
                      ha="center" if len(x) <= 6 else "right")
    for ax in axes.flat:
        ax.set_xlim(-0.6, len(materials) - 0.4)
    running = materials.loc[~materials["completed"].astype(bool), "formula"]
    note = f" ({len(running)} not finished: numbers so far)" if len(running) else ""
    fig.suptitle(f"batch of {len(materials)} materials{note}")
    return fig


#: name -> title of each figure of one run
RUN_FIGURES = {"timeline": "temperature and reference calls over MD time",
               "errors": "energy error at the calls with the calibrated interval",
               "calibration": "calibration curve of the predictive intervals",
               "untuned": "untuned against fine-tuned error at the calls",
               "timing": "wall-time split"}


def save(fig: Figure, folder: Path, name: str) -> list[str]:
    """Write ``fig`` as ``name``.png and .pdf in ``folder``; the paths written."""
    paths = []
    for fmt in FORMATS:
        path = folder / f"{name}.{fmt}"
        fig.savefig(path, dpi=DPI)
        paths.append(str(path))
    return paths


def _write(name: str, title: str, folder: Path, draw: Any) -> FigureFile:
    try:
        fig = draw()
    except NoData as reason:
        logger.info("figure %s skipped: %s", name, reason)
        return FigureFile(name, title, [], skipped=str(reason))
    return FigureFile(name, title, save(fig, folder, name))


def write_run_figures(run: RunData, calls: pd.DataFrame, traj: pd.DataFrame,
                      folder: Path) -> list[FigureFile]:
    """Every figure of one run, in ``folder``; the missing ones with their reason."""
    draws = {"timeline": lambda: timeline_figure(run, calls, traj),
             "errors": lambda: error_figure(run, calls),
             "calibration": lambda: calibration_figure(run, calls),
             "untuned": lambda: untuned_figure(run, calls),
             "timing": lambda: timing_figure(run)}
    return [_write(name, RUN_FIGURES[name], folder, draw) for name, draw in draws.items()]


def write_batch_figure(materials: pd.DataFrame, folder: Path) -> FigureFile:
    return _write("batch", "calls, share above K, RMSE and wall time per material", folder,
                  lambda: batch_figure(materials))
