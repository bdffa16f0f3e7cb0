"""Class-level warm start against cold starts (issue 17.4, the paper's section 6).

A batch of similar materials is run twice with the same settings, each in its own store:

- cold: every material starts from the pretrained model (``warm_start=None``);
- warm: ``BatchOTFMaker(warm_start="same_elements")``, each material starts from the final
  posterior of the one before it (all share their elements, so the batch is one chain).

Systems (``--system``): ``molecules-xtb``, small C/H/O molecules (methanol, ethanol,
dimethyl ether, methoxyethane) at 300 K, 0.5 fs steps, GFN2-xTB labels, K = 1 kcal/mol as
the demo; ``cu-emt``, 16-atom fcc Cu cells with and without a vacancy, strained by up to
+-2 %, 600 K, 1 fs, EMT labels, K = 0.05 eV (CHGNet's periodic graphs make this one slow
on a CPU: hours).

Per material and in total: reference calls (the initial one included), the share of
triggered calls whose error exceeded K, the RMSE of those errors, and the run's wall time.
The labels are cheap here, so the update and MD cost dominate the wall time, as with DFT
they would not: the calls are the number that matters. JSON beside the table.

Usage: python benchmarks/warm_start.py [--system molecules-xtb] [--model chgnet] [--steps 500]
       [--chains 4] [--materials 4]
       [--update-steps 100] [--threshold 0.05] [--store-root benchmarks/warm_start]
       [--out benchmarks/warm_start.json]
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from atomate2_otf.units import EV_PER_KCAL_MOL

sys.path.insert(0, str(Path(__file__).parent))
from report import print_markdown_table, write_report  # noqa: E402

#: the molecules of ``molecules-xtb``, in batch order (ase.build.molecule names)
MOLECULES = ["CH3OH", "CH3CH2OH", "CH3OCH3", "CH3CH2OCH3"]

#: per system: reference, temperature (K), time step (fs), K (eV)
SYSTEMS = {"molecules-xtb": ("gfn2-xtb", 300.0, 0.5, 1.0 * EV_PER_KCAL_MOL),
           "cu-emt": ("emt", 600.0, 1.0, 0.05)}


def materials(system: str, seed: int = 0, count: int = 6) -> dict[str, object]:
    """The batch of ``system``, in order, at most ``count`` materials."""
    if system == "molecules-xtb":
        from ase.build import molecule

        return {name: molecule(name) for name in MOLECULES[:count]}
    return cu_cells(seed, count)


def cu_cells(seed: int = 0, count: int = 6) -> dict[str, object]:
    """The batch, in order: ``count`` (at most 6) 16-atom Cu cells (2x2x1 conventional),
    strained and with a vacancy, each rattled (seeded)."""
    from ase.build import bulk

    out = {}
    for i, (strain, vacancy) in enumerate([(0.0, False), (0.0, True), (0.02, False),
                                           (-0.02, True), (-0.02, False), (0.02, True)][:count]):
        atoms = bulk("Cu", "fcc", a=3.61 * (1 + strain), cubic=True).repeat((2, 2, 1))
        if vacancy:
            del atoms[5]
        atoms.rattle(0.03, seed=seed + i)
        out[f"Cu{len(atoms)}{'v' if vacancy else ''}{strain:+.2f}"] = atoms
    return out


def run_batch(args: argparse.Namespace, warm: bool):
    """One batch (cold or warm) into its own fresh store; yields a row per material, so
    the caller can interleave the two batches and a killed run keeps matched pairs."""
    from atomate2_otf.batch import BatchOTFMaker
    from atomate2_otf.flows import OTFMDMaker
    from atomate2_otf.local import run_flow_locally
    from atomate2_otf.reference.makers import get_reference_maker
    from atomate2_otf.results import read_run_doc
    from atomate2_otf.store import open_job_store

    root = args.store_root / ("warm" if warm else "cold")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    store = open_job_store(str(root))
    store.connect()
    reference, temperature, timestep, threshold = SYSTEMS[args.system]
    maker = OTFMDMaker(
        model=args.model, reference_maker=get_reference_maker(reference), ensemble="nvt",
        temperature=temperature, timestep_fs=timestep, friction_per_fs=0.01,
        n_steps=args.steps, threshold=threshold, confidence=0.95, n_chains=args.chains,
        update_steps=args.update_steps, initial_update_steps=2 * args.update_steps,
        n_workers=args.workers, seed=args.seed, progress=False)
    batch = BatchOTFMaker(otf_maker=maker, warm_start="same_elements" if warm else None)
    for item in batch.items(materials(args.system, args.seed, args.materials)):
        if item.flow is None:
            raise SystemExit(f"{item.source_id}: {item.error}")
        start = time.perf_counter()
        run_flow_locally(item.flow, store, root_dir=root / "jobs")
        wall = time.perf_counter() - start
        doc = read_run_doc(store, item.flow.output.uuid)
        errors = np.asarray(doc.call_errors, dtype=float)
        row = {
            "start": "warm" if warm else "cold", "material": item.source_id,
            "donor": item.warm_start_from, "n_atoms": len(doc.structure),
            "n_md_steps": doc.n_md_steps,
            "reference_calls": doc.n_reference_calls,
            "share_calls_above_k": float(np.mean(np.abs(errors) > doc.threshold))
            if errors.size else None,
            "rmse_calls": float(np.sqrt(np.mean(errors**2))) if errors.size else None,
            "wall_s": wall}
        print(f"{row['start']} {item.source_id}: {doc.n_reference_calls} calls, "
              f"{wall:.0f} s", flush=True)
        yield row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", choices=sorted(SYSTEMS), default="molecules-xtb")
    parser.add_argument("--model", default="chgnet")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--update-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--materials", type=int, default=4, choices=range(2, 7))
    parser.add_argument("--store-root", type=Path,
                        default=Path(__file__).with_name("warm_start_stores"))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("warm_start.json"))
    args = parser.parse_args(argv)

    from atomate2_otf.runtime import keep_freed_memory, silence_known_warnings

    keep_freed_memory()
    silence_known_warnings()
    rows = []
    for pair in zip(run_batch(args, False), run_batch(args, True)):  # material by material
        rows += pair
        write_report(args.out, {"partial": True}, rows)  # a killed run keeps its rows

    def total(start: str, key: str) -> float:
        return sum(r[key] for r in rows if r["start"] == start)

    print_markdown_table(
        ["start", "material", "donor", "calls", "calls above K", "RMSE at calls (meV)",
         "wall s"],
        [[r["start"], r["material"], r["donor"] or "-", r["reference_calls"],
          "-" if r["share_calls_above_k"] is None else f"{100 * r['share_calls_above_k']:.0f} %",
          "-" if r["rmse_calls"] is None else f"{1000 * r['rmse_calls']:.1f}",
          f"{r['wall_s']:.0f}"] for r in rows])
    summary = {s: {"reference_calls": total(s, "reference_calls"), "wall_s": total(s, "wall_s")}
               for s in ("cold", "warm")}
    summary["calls_warm_over_cold"] = (summary["warm"]["reference_calls"]
                                       / summary["cold"]["reference_calls"])
    summary["wall_warm_over_cold"] = summary["warm"]["wall_s"] / summary["cold"]["wall_s"]
    print(f"total calls cold {summary['cold']['reference_calls']}, warm "
          f"{summary['warm']['reference_calls']} (ratio {summary['calls_warm_over_cold']:.2f}); "
          f"wall time ratio warm/cold {summary['wall_warm_over_cold']:.2f}")
    meta = {"machine": platform.node(),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "summary": summary,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    write_report(args.out, meta, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
