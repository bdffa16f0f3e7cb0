"""Share of an on-the-fly run's wall time spent outside MD, reference and update.

What is left (jobflow scheduling and serialisation, store reads and writes, checkpoint
(de)serialisation, building task documents) is the workflow layer's overhead. Two cases on
the embedded store: ``realistic`` (ethanol, CHGNet, GFN2-xTB, the demo's settings but
fewer steps) and ``worst`` (the toy pair model and EMT, where MD, reference and update take
milliseconds, so the overhead is as large a share as it can be).

    python benchmarks/otf_overhead.py [--cases realistic worst] [--out benchmarks/otf_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def cycle_overheads(store, doc) -> list[dict]:
    """Per cycle (segment k-1, reference k, update k), from the jobs' completion times:
    wall = completed_at(update k) - completed_at(update k-1), other = wall - MD - ref - update.
    The first cycle also pays start-up (model load, pool start, first imports)."""
    from datetime import datetime

    done = {}
    for d in store.query({"metadata.otf_run_id": doc.run_id,
                          "metadata.otf_kind": {"$in": ["prepare", "update"]}},
                         properties=["metadata", "completed_at"]):
        done[d["metadata"]["otf_index"]] = datetime.fromisoformat(d["completed_at"])
    rows = []
    for call in doc.calls[1:]:
        k = call.index
        if k - 1 not in done or k not in done:
            continue
        wall = (done[k] - done[k - 1]).total_seconds()
        other = wall - call.md_s - (call.reference_s or 0.0) - call.update_s
        rows.append({"cycle": k, "wall_s": round(wall, 3), "other_s": round(other, 3),
                     "other_share": round(other / wall, 4) if wall > 0 else None})
    return rows


def run_case(case: str, steps: int) -> dict:
    from ase.build import bulk, molecule
    from jobflow import run_locally

    from atomate2_otf.cli.parser import DEMO
    from atomate2_otf.flows import OTFMDMaker
    from atomate2_otf.reference.makers import EMTStaticMaker, get_reference_maker
    from atomate2_otf.results import read_run_doc
    from atomate2_otf.store import embedded_job_store
    from atomate2_otf.units import EV_PER_KCAL_MOL

    folder = tempfile.mkdtemp()
    os.chdir(folder)
    store = embedded_job_store(Path(folder) / "store")
    if case == "realistic":
        atoms = molecule("CH3CH2OH")
        maker = OTFMDMaker(model="chgnet", reference_maker=get_reference_maker("gfn2-xtb"),
                           temperature=DEMO["temperature"], timestep_fs=DEMO["timestep"],
                           n_steps=steps, threshold=DEMO["threshold_kcal"] * EV_PER_KCAL_MOL,
                           n_chains=DEMO["chains"], update_steps=DEMO["update_steps"],
                           initial_update_steps=DEMO["initial_update_steps"])
    else:
        sys.path.insert(0, str(ROOT))
        from atomate2_otf.models.base import register_model
        from tests.toy_model import ToyModel

        register_model("toy", ToyModel)
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.rattle(0.02, seed=1)
        maker = OTFMDMaker(model="toy", reference_maker=EMTStaticMaker(), n_steps=steps,
                           timestep_fs=1.0, n_chains=2, update_steps=20, n_workers=1,
                           force_trigger_every=10)
    flow = maker.make(atoms)
    started = time.perf_counter()
    run_locally(flow, store=store, log=False, ensure_success=True)
    wall = time.perf_counter() - started
    doc = read_run_doc(store, flow.output.uuid)
    t = doc.timings
    per_cycle = cycle_overheads(store, doc)
    steady = [c["other_share"] for c in per_cycle[1:]]
    return {"per_cycle": per_cycle,
            "first_cycle_other_share": per_cycle[0]["other_share"] if per_cycle else None,
            "median_other_share_after_first": float(np.median(steady)) if steady else None,
            "case": case, "md_steps": doc.n_md_steps, "reference_calls": doc.n_reference_calls,
            "wall_s": round(wall, 2), "md_s": round(t.md, 2), "reference_s": round(t.reference, 2),
            "update_s": round(t.update, 2), "other_s": round(t.other, 2),
            "other_per_segment_s": round(t.other / doc.n_reference_calls, 3),
            "other_share": round(t.other_share, 4)}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["realistic", "worst"],
                        choices=["realistic", "worst"])
    parser.add_argument("--steps", type=int, default=None,
                        help="MD steps (default: 300 realistic, 200 worst)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "otf_overhead.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    rows = [run_case(c, args.steps or (300 if c == "realistic" else 200)) for c in args.cases]
    print(f"{'case':10s} {'steps':>6s} {'calls':>6s} {'wall s':>8s} {'MD s':>7s} {'ref s':>7s} "
          f"{'update s':>9s} {'other s':>8s} {'other/segment s':>16s} {'other share':>12s} "
          f"{'1st cycle':>10s} {'later cycles':>13s}")
    for r in rows:
        print(f"{r['case']:10s} {r['md_steps']:>6d} {r['reference_calls']:>6d} {r['wall_s']:>8.1f} "
              f"{r['md_s']:>7.1f} {r['reference_s']:>7.2f} {r['update_s']:>9.1f} "
              f"{r['other_s']:>8.2f} {r['other_per_segment_s']:>16.3f} "
              f"{100 * r['other_share']:>11.2f}% {_pct(r['first_cycle_other_share']):>10s} "
              f"{_pct(r['median_other_share_after_first']):>13s}")
    print("other share per cycle: 1st = its own (start-up included); later = median of the "
          "rest")
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
