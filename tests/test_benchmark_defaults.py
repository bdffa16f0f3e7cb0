"""benchmarks/defaults.py --merge: a grid split over processes or machines is chosen from
as one run would (no model is loaded: the parts are written here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import defaults  # noqa: E402

SYSTEMS = ["methanol-xtb", "al-emt"]


def part(path: Path, sigma: float, step: float, score: float, seed: int, steps: int = 300,
         pairs: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    row = {"model": "sevenn-0", "sigma_tl": sigma, "step_size": step, "score": score,
           "seconds": 1.0, "device": "cuda",
           **{f"{s}_E": score for s in SYSTEMS}, **{f"{s}_F": score for s in SYSTEMS}}
    if pairs:
        row["heldout_pairs"] = {s: [rng.normal(0, 0.01, 10).tolist(),
                                    rng.uniform(0.005, 0.02, 10).tolist()] for s in SYSTEMS}
    settings = {"steps": steps, "chains": 4, "systems": SYSTEMS}
    path.write_text(json.dumps({"meta": {"partial": True, "settings": settings,
                                         "machine": "gpu"}, "rows": [row]}))
    return path


def test_merge_chooses_the_best_point_over_all_parts(tmp_path, capsys):
    a = part(tmp_path / "a.json", 0.2, 3e-4, 0.30, seed=1)
    b = part(tmp_path / "b.json", 0.05, 1e-3, 0.20, seed=2)
    out = tmp_path / "merged.json"
    assert defaults.main(["--merge", str(a), str(b), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    choice = doc["meta"]["choice"]["sevenn-0"]
    assert (choice["sigma_tl"], choice["step_size"], choice["score"]) == (0.05, 1e-3, 0.20)
    # (a, b) from the chosen point's pairs, in system order, as one whole run scores them
    b_row = json.loads(b.read_text())["rows"][0]
    pairs = [(e, s) for system in SYSTEMS
             for e, s in zip(*b_row["heldout_pairs"][system], strict=True)]
    scores = {f"{x},{y}": defaults.prequential(pairs, x, y)["log_score"]
              for x, y in defaults.CALIBRATIONS}
    assert choice["calibration"] == max(scores, key=scores.get)
    settings = doc["meta"]["settings"]
    assert settings["sigmas"] == [0.05, 0.2] and settings["step_sizes"] == [3e-4, 1e-3]
    assert settings["steps"] == 300 and settings["device"] == ["cuda"]
    assert [m["file"] for m in doc["meta"]["merged_from"]] == [str(a), str(b)]
    assert "sevenn-0: sigma_TL 0.05, gamma_0 0.001" in capsys.readouterr().out


def test_merge_refuses_parts_that_cannot_be_joined(tmp_path):
    a = part(tmp_path / "a.json", 0.2, 3e-4, 0.30, seed=1)
    old = part(tmp_path / "old.json", 0.2, 1e-3, 0.25, seed=2, pairs=False)
    with pytest.raises(SystemExit, match="old.json: a row without held-out pairs"):
        defaults.main(["--merge", str(a), str(old), "--out", str(tmp_path / "m.json")])
    short = part(tmp_path / "short.json", 0.2, 1e-3, 0.25, seed=2, steps=100)
    with pytest.raises(SystemExit, match=r"different --steps: \[100, 300\]"):
        defaults.main(["--merge", str(a), str(short), "--out", str(tmp_path / "m.json")])
