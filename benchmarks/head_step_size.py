"""Does the noise head need its own SGHMC step size? (issue 14.3; not in the paper)

``PosteriorConfig.head_step_size`` gives the noise head's parameters a larger step than the
foundation model's gamma_0 (a constant per-parameter mass, so the posterior is unchanged).
This script fine-tunes each family on held-out systems that no test uses, once with the
package's head step (1e-3) and once without (the head moves with gamma_0, as in the paper),
and compares on held-out frames:

- energy and force RMSE of the fine-tuned ensemble (the untuned model's beside them);
- sigma/RMSE for forces (the predicted per-component std over the RMSE) and for energies:
  1 is calibrated before any Gamma calibration, << 1 overconfident, >> 1 underconfident.

Systems: methanol at 500 K labelled by GFN2-xTB, and (periodic) 8-atom fcc Al at 800 K
labelled by EMT; ten frames to train, ten held out, from reference-driven Langevin MD.
The head step only matters where it differs from the family's gamma_0: CHGNet's and MACE's
gamma_0 is 1e-3 already, so for them both settings are the same sampler (measured: CHGNet
on methanol gave identical numbers to four digits) and they are skipped. Families measured:
SevenNet-0 (pretrained, offline; gamma_0 3e-4, so the head moves 3.3x faster) and a small
random NequIP model at NequIP's gamma_0 3e-5 (the head 33x faster; no pretrained NequIP
weights load offline, so its prior is widened to 2.0, and it sees methanol only, the
elements it was built for). fairchem (gamma_0 1e-4) is not run: its eSEN-sm shape costs
~6 M parameters per chain on a CPU.

Usage: python benchmarks/head_step_size.py [--families chgnet sevenn-0 nequip-tiny]
       [--systems methanol-xtb al-emt] [--steps 400] [--chains 4] [--workers 2]
       [--out benchmarks/head_step_size.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
# the repository root: random models of the released architectures live in tests/
sys.path.insert(1, str(Path(__file__).parent.parent))
from heldout import finetune_heldout  # noqa: E402
from report import print_markdown_table, write_report  # noqa: E402

#: head step sizes compared: the package's default and none (the model's gamma_0)
SETTINGS = {"head 1e-3": 1e-3, "no head step": None}
#: per family: (extra PosteriorConfig/SGHMC settings, systems it may see, why)
FAMILIES = {
    "sevenn-0": ({}, ("methanol-xtb", "al-emt"), "pretrained, family defaults"),
    "nequip-tiny": ({"sigma_tl": 2.0}, ("methanol-xtb",),
                    "random weights: wide prior, NequIP's gamma_0"),
    "chgnet": ({}, ("methanol-xtb", "al-emt"), "pretrained; gamma_0 = head step: skipped"),
}


def load(family: str):
    from atomate2_otf.models.base import load_model

    if family == "nequip-tiny":
        from atomate2_otf.models.nequip import load_nequip
        from tests.random_models.nequip_random import package_random_model

        cache = Path(os.environ.get("OTF_RANDOM_MODELS", Path.home() / ".cache" /
                                    "atomate2_otf" / "random")) / "nequip-tiny-hss"
        path = cache / "tiny.nequip.zip"
        if not path.is_file():
            path = package_random_model(cache, "tiny")
        return load_nequip(path)
    return load_model(family)


def score(family: str, system: str, head_step: float | None, args) -> dict:
    extra, _, _ = FAMILIES[family]
    # frames seed 7, burn-in 1/4 and ramp 1/10 of the update: the settings of the JSON
    out = finetune_heldout(load(family), system, frames_seed=7, n_steps=args.steps,
                           n_chains=args.chains, workers=args.workers, burn_in_frac=0.25,
                           ramp_frac=0.1, head_step_size=head_step, **extra)
    return {
        "family": family, "system": system, "head_step_size": head_step,
        "energy_rmse_untuned": out.energy_rmse_untuned, "energy_rmse": out.energy_rmse,
        "force_rmse_untuned": out.force_rmse_untuned, "force_rmse": out.force_rmse,
        "force_sigma_over_rmse": out.force_sigma / out.force_rmse,
        "energy_sigma_over_rmse": out.energy_sigma / out.energy_rmse,
        "update_s": out.update_s,
    }


def verdict(rows: list[dict]) -> dict[str, str]:
    """Per family: does the head step help? Better (lower) force and energy RMSE and a
    force sigma/RMSE closer to 1 (in log), over the family's systems."""
    out = {}
    for family in dict.fromkeys(r["family"] for r in rows):
        wins = losses = 0
        for system in dict.fromkeys(r["system"] for r in rows if r["family"] == family):
            pair = {r["head_step_size"]: r for r in rows
                    if r["family"] == family and r["system"] == system}
            if len(pair) != 2:
                continue
            with_head, without = pair[1e-3], pair[None]
            for better in (with_head["force_rmse"] < without["force_rmse"],
                           with_head["energy_rmse"] < without["energy_rmse"],
                           abs(np.log(with_head["force_sigma_over_rmse"])) <
                           abs(np.log(without["force_sigma_over_rmse"]))):
                wins += bool(better)
                losses += not better
        out[family] = f"head step better in {wins} of {wins + losses} comparisons"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=["sevenn-0", "nequip-tiny"])
    parser.add_argument("--systems", nargs="+", default=["methanol-xtb", "al-emt"])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).with_name("head_step_size.json"))
    args = parser.parse_args(argv)

    import torch

    from atomate2_otf.runtime import keep_freed_memory, silence_known_warnings

    keep_freed_memory()
    silence_known_warnings()
    torch.set_num_threads(1)
    rows = []
    for family in args.families:
        for system in args.systems:
            if system not in FAMILIES[family][1]:
                continue
            gamma_0 = FAMILIES[family][0].get("step_size") or load(family).defaults.step_size
            if gamma_0 == SETTINGS["head 1e-3"]:
                print(f"{family}: gamma_0 = {gamma_0} = the head step: one sampler, skipped")
                continue
            for label, head_step in SETTINGS.items():
                row = score(family, system, head_step, args)
                row["setting"] = label
                row["head_over_gamma0"] = (head_step or gamma_0) / gamma_0
                rows.append(row)
                write_report(args.out.with_suffix(".partial.json"), {}, rows)
                print(f"{family} {system} {label}: F {row['force_rmse']:.4f} "
                      f"E {row['energy_rmse']:.4f} sF/RMSE "
                      f"{row['force_sigma_over_rmse']:.2f}", flush=True)
    print_markdown_table(
        ["family", "system", "setting", "E RMSE untuned -> tuned (meV)",
         "F RMSE untuned -> tuned (meV/A)", "sigma_F/RMSE_F", "sigma_E/RMSE_E", "update s"],
        [[r["family"], r["system"], r["setting"],
          f"{1000 * r['energy_rmse_untuned']:.1f} -> {1000 * r['energy_rmse']:.1f}",
          f"{1000 * r['force_rmse_untuned']:.0f} -> {1000 * r['force_rmse']:.0f}",
          f"{r['force_sigma_over_rmse']:.2f}", f"{r['energy_sigma_over_rmse']:.2f}",
          f"{r['update_s']:.0f}"] for r in rows])
    verdicts = verdict(rows)
    for family, text in verdicts.items():
        print(f"{family}: {text}")
    meta = {"machine": platform.node(), "cpus": len(os.sched_getaffinity(0)),
            "settings": {k: (str(v) if isinstance(v, Path) else v)
                         for k, v in vars(args).items()},
            "families": {k: {"extra": v[0], "systems": v[1], "why": v[2]}
                         for k, v in FAMILIES.items()},
            "verdict": verdicts}
    write_report(args.out, meta, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
