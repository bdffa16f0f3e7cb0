"""The command line: every command, option and default of ``atomate2-otf``."""

from __future__ import annotations

import argparse

from atomate2_otf import defaults

DEFAULT_STORE = "otf-store"
#: default folder of ``report`` (atomate2_otf.analysis.report.DEFAULT_OUT, not imported:
#: it would load pandas for --help)
REPORT_OUT = "otf-report"

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


def _add_audit_option(parser: argparse.ArgumentParser) -> None:
    """``--audit``, shared by ``demo``, ``run`` and ``batch``."""
    parser.add_argument("--audit", type=float, default=defaults.AUDIT_FRACTION,
                        metavar="FRACTION",
                        help="also label this share of the untriggered MD steps, e.g. 0.02, "
                             "and report the audited miss rate (default: off)")


def _add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device``, shared by ``demo``, ``run`` and ``batch`` (checked by the command, before
    any model loads: argparse's own errors print the usage too)."""
    parser.add_argument("--device", default=defaults.DEVICE,
                        help="where the model and the chains run: cpu, cuda, cuda:N or auto "
                             "(CUDA when available, else CPU) (default: %(default)s)")


def _add_run_options(run: argparse.ArgumentParser) -> None:
    """The settings of an on-the-fly run (shared by ``run`` and ``batch``)."""
    run.add_argument("--model", default=defaults.MODEL,
                     help="foundation model (default: %(default)s)")
    run.add_argument("--reference", default=defaults.REFERENCE,
                     help="reference: gfn2-xtb, gfn1-xtb, emt, vasp, qe or pyscf "
                          "(default: %(default)s)")
    run.add_argument("--ensemble", default=defaults.ENSEMBLE, choices=["nvt", "nve", "npt"])
    run.add_argument("--temperature", type=_temperatures, default=defaults.TEMPERATURE_K,
                     help="K, or a schedule such as 300,800,300 (default: %(default)s)")
    run.add_argument("--steps", type=int, default=defaults.N_STEPS,
                     help="MD steps (default: %(default)s)")
    run.add_argument("--timestep", type=_positive_float, default=defaults.TIMESTEP_FS,
                     help="fs (default: %(default)s)")
    run.add_argument("--threshold", type=_positive_float, default=defaults.THRESHOLD,
                     help="energy-error threshold K in eV (default: 0.5 kcal/mol = "
                          f"{defaults.THRESHOLD:.4f})")
    run.add_argument("--confidence", type=_positive_float, default=defaults.CONFIDENCE,
                     help="label when P(|e| < K) < this (default: %(default)s)")
    run.add_argument("--calibration-ema", type=_positive_float, default=None, metavar="DECAY",
                     help="follow a drifting error scale: exponentially weighted calibration "
                          "with this decay in (0, 1), e.g. 0.9 (default: exact, the paper's)")
    run.add_argument("--force-threshold", type=float, default=None, metavar="K_F",
                     help="also label when P(max_i |F_i error| < K_F) < confidence, K_F in "
                          "eV/A: the force criterion for local events (default: off)")
    _add_audit_option(run)
    run.add_argument("--chains", type=int, default=defaults.N_CHAINS,
                     help="SGHMC chains (default: %(default)s)")
    run.add_argument("--update-steps", type=int, default=defaults.UPDATE_STEPS,
                     help="SGHMC steps per update (default: %(default)s)")
    run.add_argument("--pressure", type=_positive_float, default=defaults.PRESSURE_BAR,
                     help="bar, for npt (default: %(default)s)")
    run.add_argument("--workers", type=int, default=None,
                     help="processes for the SGHMC chains (default: one per CPU, or one per "
                          "GPU with --device cuda; 1: serial)")
    _add_device_option(run)
    run.add_argument("--seed", type=int, default=defaults.SEED)
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
    _add_audit_option(demo)
    _add_device_option(demo)
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
    batch.add_argument("--warm-start", choices=["same_elements"], default=None,
                       help="start each material from the final posterior of the latest "
                            "earlier one with the same elements (runs here only)")
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

    report = sub.add_parser(
        "report", help="figures and a summary of a run or a batch",
        description="Figures (PNG and PDF), summary.md and summary.json of one run of a store "
                    "or of every run (--batch). A run still going is reported from what the "
                    "store holds so far.")
    report.add_argument("--store", default=DEFAULT_STORE, help=STORE_HELP)
    report.add_argument("--run", default=None, metavar="RUN_ID",
                        help="the run to report (default: the store's only run)")
    report.add_argument("--batch", action="store_true",
                        help="every run of the store: a figure and table across materials, "
                             "each run in OUT/RUN_ID")
    report.add_argument("--out", dest="out_dir", metavar="DIR", default=REPORT_OUT,
                        help="output folder, created if missing (default: %(default)s)")
    report.add_argument("--json", action="store_true", help="print summary.json on stdout")
    return parser
