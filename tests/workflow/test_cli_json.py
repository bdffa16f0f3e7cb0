"""``--json`` at the user's boundary: every command, run as a subprocess, writes exactly one
JSON document on stdout, whatever the model prints (from Python, from C, in its workers).

The fast tests use ``ChattyToyModel`` (prints on stdout at construction and in every chain
worker) and CHGNet (prints its parameter count); the demo tests (slow) run the real demo.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.processes import ROOT, subprocess_env

CHATTY = "tests.toy_model:ChattyToyModel"
TOY_RUN = ["--model", CHATTY, "--reference", "emt", "--steps", "12", "--chains", "2",
           "--update-steps", "10", "--workers", "2"]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atomate2_otf.cli", *args], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


def _json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)  # the whole of stdout: one document, nothing else


def test_run_and_status_json_with_a_model_that_prints(tmp_path, cu_cif):
    store = tmp_path / "store"
    result = _cli("run", str(cu_cif), *TOY_RUN, "--store", str(store), "--json")
    doc = _json(result)
    assert doc["completed"] and doc["n_md_steps"] == 12 and doc["formula"] == "Cu4"
    # what the model printed went to stderr, from the command and from both workers
    assert "ChattyToyModel initialized" in result.stderr
    assert result.stderr.count("a worker writes here") == 2

    rows = _json(_cli("status", "--store", str(store), "--json"))
    assert [(row["run_id"], row["state"]) for row in rows] == [(doc["run_id"], "completed")]


def test_run_json_with_chgnet(tmp_path):
    """The reported case: CHGNet's "initialized with 412,525 parameters" before the JSON."""
    from ase.build import molecule

    path = tmp_path / "ethanol.xyz"
    molecule("CH3CH2OH").write(path)
    doc = _json(_cli("run", str(path), "--steps", "5", "--chains", "2", "--update-steps", "4",
                     "--workers", "2", "--store", str(tmp_path / "store"), "--json"))
    assert doc["model"] == "chgnet" and doc["formula"] == "C2H6O"


def test_batch_json(tmp_path, cu_cif):
    from ase.build import bulk

    folder = tmp_path / "materials"
    folder.mkdir()
    cu_cif.rename(folder / "cu.cif")
    (bulk("Cu", "fcc", a=3.66, cubic=True) * (2, 1, 1)).write(folder / "cu8.cif")
    rows = _json(_cli("batch", str(folder), *TOY_RUN, "--store", str(tmp_path / "store"),
                      "--json"))
    assert sorted((row["formula"], row["state"]) for row in rows) == [
        ("Cu4", "completed"), ("Cu8", "completed")]


def test_resume_json_of_a_queued_run(tmp_path, cu_cif):
    from atomate2_otf.atoms import to_atoms
    from atomate2_otf.flows import OTFMDMaker
    from atomate2_otf.local import register_run
    from atomate2_otf.reference.makers import get_reference_maker
    from atomate2_otf.store import open_job_store

    store = open_job_store(str(tmp_path / "store"))
    flow = OTFMDMaker(model=CHATTY, reference_maker=get_reference_maker("emt"), n_steps=12,
                      n_chains=2, update_steps=10, n_workers=2).make(to_atoms(str(cu_cif)))
    run_id = register_run(store, flow, state="queued")
    doc = _json(_cli("resume", "--store", str(tmp_path / "store"), "--json"))
    assert doc["run_id"] == run_id and doc["completed"]


@pytest.mark.slow
def test_demo_json(tmp_path):
    doc = _json(_cli("demo", "--steps", "20", "--store", str(tmp_path / "store"), "--json",
                     timeout=900))
    assert doc["model"] == "chgnet" and doc["n_md_steps"] == 20


@pytest.mark.slow
def test_default_demo_shows_progress_and_summary_and_no_warning(tmp_path):
    result = _cli("demo", "--steps", "20", "--store", str(tmp_path / "store"), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("run ") and "reference calls" in result.stdout
    assert "initial update" in result.stderr and "MD segment 0" in result.stderr  # tqdm bars
    assert "Warning" not in result.stderr and "warn" not in result.stderr.lower(), \
        result.stderr[-3000:]
