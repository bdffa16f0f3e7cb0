"""Batch screening through FireWorks: six materials, two rapidfire workers, one MongoDB.

``atomate2-otf batch --launchpad`` submits one workflow per material (tagged with formula
and source file); a CPU worker takes the reference jobs and a "GPU" worker the MD segments
and updates (FireWorks categories); afterwards every material's OTFRunDoc is in the store
and ``atomate2-otf status`` lists all six as completed.
"""

from __future__ import annotations

import json
import time

from ase.build import bulk, molecule
from ase.io import write

from atomate2_otf.fireworks import DEFAULT_WORKER_CATEGORIES, load_launchpad
from atomate2_otf.results import read_run_doc
from atomate2_otf.store import open_job_store
from tests import fw_workers
from tests.production.helpers import RUN_OPTIONS, cli


def _six_materials(folder):
    folder.mkdir()
    structures = {
        "Cu-a355.cif": bulk("Cu", "fcc", a=3.55, cubic=True),
        "Cu-a361.cif": bulk("Cu", "fcc", a=3.61, cubic=True),
        "Cu-a367.cif": bulk("Cu", "fcc", a=3.67, cubic=True),
        "Cu8.cif": bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1),
        "Cu-bcc.cif": bulk("Cu", "bcc", a=2.89, cubic=True) * (2, 2, 2),
        "H2O.xyz": molecule("H2O"),
    }
    for i, (name, atoms) in enumerate(structures.items()):
        atoms.rattle(0.02, seed=i)
        write(folder / name, atoms)
    return sorted(structures)


def _wait_for_all(launchpad, workers, timeout: float) -> None:
    """Until every workflow is COMPLETED (failing early on a fizzle or dead workers)."""
    deadline = time.monotonic() + timeout
    while True:
        states = [w["state"] for w in launchpad.workflows.find({}, {"state": 1})]
        if states and all(state == "COMPLETED" for state in states):
            return
        fizzled = launchpad.fireworks.count_documents({"state": "FIZZLED"})
        alive = any(worker.alive() for worker in workers)
        if fizzled or not alive or time.monotonic() > deadline:
            logs = "\n".join(f"--- {w.name} ---\n{w.read_log()[-3000:]}" for w in workers)
            raise AssertionError(f"workflows {states}, {fizzled} fizzled, workers alive: "
                                 f"{alive}; logs:\n{logs}")
        time.sleep(0.5)


def test_batch_of_six_through_fireworks_with_two_workers(mongo_server, database, tmp_path):
    sources = _six_materials(tmp_path / "candidates")
    lpad_file = fw_workers.write_launchpad_file(tmp_path / "my_launchpad.yaml",
                                                mongo_server.host, mongo_server.port,
                                                f"{database}_fw")
    launchpad = load_launchpad(lpad_file)
    launchpad.reset("", require_password=False)
    uri = f"{mongo_server.uri}/{database}"

    submitted = cli("batch", str(tmp_path / "candidates"), *RUN_OPTIONS, "--store", uri,
                    "--launchpad", str(lpad_file), "--route-workers", "--json", cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    rows = {r["source"]: r for r in json.loads(submitted.stdout)}
    assert sorted(rows) == sources and {r["state"] for r in rows.values()} == {"submitted"}
    workflows = list(launchpad.workflows.find({}, {"nodes": 1, "metadata": 1}))
    assert sorted(w["metadata"]["otf_source"] for w in workflows) == sources
    assert {w["metadata"]["otf_formula"] for w in workflows} == {"Cu4", "Cu8", "Cu16", "H2O"}

    fw_config = fw_workers.write_fw_config(tmp_path / "FW_config.yaml", ping_s=5)
    fworkers = {
        "cpu-worker": fw_workers.write_fworker_file(tmp_path / "cpu.yaml", "cpu-worker",
                                                    DEFAULT_WORKER_CATEGORIES["reference"]),
        "gpu-worker": fw_workers.write_fworker_file(tmp_path / "gpu.yaml", "gpu-worker",
                                                    DEFAULT_WORKER_CATEGORIES["segment"]),
    }
    workers = fw_workers.start_workers(lpad_file, fworkers, tmp_path / "launches", fw_config)
    started = time.perf_counter()
    try:
        _wait_for_all(launchpad, workers, timeout=600)
    finally:
        fw_workers.stop_workers(workers)
    elapsed = time.perf_counter() - started

    store = open_job_store(uri)
    calls = {}
    for workflow in workflows:
        doc = read_run_doc(store, workflow["metadata"]["otf_output_uuid"])
        assert doc is not None and doc.completed, workflow["metadata"]
        assert doc.formula == workflow["metadata"]["otf_formula"]
        assert doc.n_md_steps == 12
        calls[workflow["metadata"]["otf_source"]] = doc.n_reference_calls
    # the calibrated trigger decides how many calls a run makes; each of them, and no other
    # job, was one Firework of the reference category
    reference_category = DEFAULT_WORKER_CATEGORIES["reference"]
    assert launchpad.fireworks.count_documents({"spec._category": reference_category}) == \
        sum(calls.values())
    # both workers did work of their own category only
    ran = {}
    for launch in launchpad.launches.find({}, {"fw_id": 1, "fworker": 1}):
        fw = launchpad.fireworks.find_one({"fw_id": launch["fw_id"]}, {"spec._category": 1})
        ran.setdefault(launch["fworker"]["name"], set()).add(fw["spec"].get("_category"))
    assert ran == {"cpu-worker": {"otf_reference"}, "gpu-worker": {"otf_md"}}

    status = cli("status", "--store", uri, "--launchpad", str(lpad_file), "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    final = {r["source"]: r for r in json.loads(status.stdout)}
    assert sorted(final) == sources
    for source, row in final.items():
        assert row["state"] == "completed", row
        assert row["md_steps"] == 12 and row["reference_calls"] == calls[source]
        assert row["wall_s"] > 0
    table = cli("status", "--store", uri, cwd=tmp_path).stdout
    assert all(source[:18] in table for source in sources)
    print(f"\nbatch of 6 through FireWorks, 2 workers: {elapsed:.0f} s")
