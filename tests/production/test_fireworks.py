"""On-the-fly runs through FireWorks on a real MongoDB server, with rlaunch workers.

Workers are separate processes (``tests/fw_workers.py``): one serving the reference
category, one the MD category. The run's jobs, including those each segment creates at
run time, must land on the worker their category names; a worker killed with -9 in the
middle of an MD segment, a reference calculation or a posterior update must cost at most
that one job: FireWorks' lost-run detection reruns it and the run ends as an uninterrupted
run of the same seed does, with every label and at most one repeated reference call.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from jobflow import run_locally

from atomate2_otf.fireworks import (
    DEFAULT_WORKER_CATEGORIES,
    load_launchpad,
    submit_flow,
)
from atomate2_otf.flows import OTFMDMaker
from atomate2_otf.results import read_run_doc, run_calls
from atomate2_otf.schemas import OTFRunDoc
from atomate2_otf.store import list_checkpoints
from tests import fw_workers
from tests.fw_workers import HoldingEMTMaker

MODEL = "tests.fw_workers:HoldingToyModel"
N_STEPS = 20  # force_trigger_every=7: reference calls 0, 1, 2 (two replace cycles)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CPU = "cpu-worker"
GPU = "gpu-worker"


def copper():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.02, seed=3)
    return atoms


def otf_maker(reference_maker=None, model_kwargs=None, categories=DEFAULT_WORKER_CATEGORIES):
    return OTFMDMaker(
        model=MODEL, model_kwargs=model_kwargs or {},
        reference_maker=reference_maker or HoldingEMTMaker(), n_steps=N_STEPS,
        timestep_fs=1.0, temperature=300.0, n_chains=2, update_steps=3,
        initial_update_steps=3, n_workers=1, force_trigger_every=7, trajectory_interval=5,
        threshold=0.05, seed=11, worker_categories=categories)


def mongo_job_store(host: str, port: int, database: str):
    """Job documents in MongoDB, checkpoints and trajectories in GridFS (built here, not
    through the package's store helpers, so this test depends on FireWorks alone)."""
    from jobflow import JobStore
    from maggma.stores import GridFSStore, MongoStore

    def gridfs(name: str, fields: list[str]) -> GridFSStore:
        return GridFSStore(database, name, host=host, port=port, key="_key",
                           searchable_fields=fields)

    return JobStore(MongoStore(database, "outputs", host=host, port=port, key="uuid"),
                    additional_stores={"checkpoints": gridfs("checkpoints", ["run_id", "index"]),
                                       "trajectories": gridfs("trajectories",
                                                              ["run_id", "segment"])})


@pytest.fixture
def fw_setup(mongo_server, database, tmp_path):
    """A reset launchpad (own database), the JobStore, fworker files and FW settings."""
    lpad_file = fw_workers.write_launchpad_file(tmp_path / "my_launchpad.yaml",
                                                mongo_server.host, mongo_server.port,
                                                f"{database}_fw")
    launchpad = load_launchpad(lpad_file)
    launchpad.reset("", require_password=False)
    store = mongo_job_store(mongo_server.host, mongo_server.port, database)
    store.connect()
    setup = {
        "launchpad": launchpad, "lpad_file": lpad_file, "store": store, "tmp": tmp_path,
        "fw_config": fw_workers.write_fw_config(tmp_path / "FW_config.yaml", ping_s=1),
        "fworkers": {
            CPU: fw_workers.write_fworker_file(tmp_path / "fworker_cpu.yaml", CPU,
                                               DEFAULT_WORKER_CATEGORIES["reference"]),
            GPU: fw_workers.write_fworker_file(tmp_path / "fworker_gpu.yaml", GPU,
                                               DEFAULT_WORKER_CATEGORIES["segment"]),
        },
        "workers": [],
    }
    yield setup
    fw_workers.stop_workers(setup["workers"])
    store.close()


def start(setup, name: str, label: str | None = None) -> fw_workers.Worker:
    worker = fw_workers.start_worker(setup["lpad_file"], setup["fworkers"][name],
                                     setup["tmp"] / "launches", label or name,
                                     fw_config=setup["fw_config"])
    setup["workers"].append(worker)
    return worker


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> OTFRunDoc:
    """The same run (same seed) under run_locally, never interrupted: what every FireWorks
    run here must reproduce."""
    from atomate2_otf.store import embedded_job_store

    store = embedded_job_store(tmp_path_factory.mktemp("uninterrupted"))
    flow = otf_maker().make(copper())
    run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)
    doc = read_run_doc(store, flow.output.uuid)
    assert isinstance(doc, OTFRunDoc) and doc.n_reference_calls == 3
    return doc


def workflow_fireworks(launchpad, fw_id: int) -> list[dict]:
    nodes = launchpad.workflows.find_one({"nodes": fw_id})["nodes"]
    return list(launchpad.fireworks.find({"fw_id": {"$in": nodes}}))


def launches_of(launchpad, fireworks: list[dict]) -> list[dict]:
    return list(launchpad.launches.find({"fw_id": {"$in": [f["fw_id"] for f in fireworks]}}))


def assert_same_run(doc: OTFRunDoc, expected: OTFRunDoc) -> None:
    """Same labels at the same MD steps and the same trajectory end: nothing lost/redone."""
    assert doc.completed and doc.n_md_steps == expected.n_md_steps
    assert doc.n_reference_calls == expected.n_reference_calls
    assert [c.md_step for c in doc.calls] == [c.md_step for c in expected.calls]
    np.testing.assert_allclose([c.reference_energy for c in doc.calls],
                               [c.reference_energy for c in expected.calls], rtol=0, atol=1e-10)
    np.testing.assert_allclose(doc.call_errors, expected.call_errors, rtol=0, atol=1e-8)
    np.testing.assert_allclose(doc.final_state["positions"], expected.final_state["positions"],
                               rtol=0, atol=1e-8)


def test_run_through_fireworks_routes_every_job_by_category(fw_setup, uninterrupted):
    setup = fw_setup
    launchpad, store = setup["launchpad"], setup["store"]
    flow = otf_maker().make(copper())
    fw_ids = submit_flow(flow, launchpad, store=store, metadata={"formula": "Cu4",
                                                                  "source_id": "test-1"})
    assert len(fw_ids) == 3
    wf = launchpad.workflows.find_one({"nodes": fw_ids[0]})
    assert wf["metadata"]["formula"] == "Cu4" and wf["metadata"]["source_id"] == "test-1"
    started = time.perf_counter()
    workers = [start(setup, CPU), start(setup, GPU)]
    fw_workers.wait_for_workflow(launchpad, fw_ids[0], workers, timeout=240)
    elapsed = time.perf_counter() - started

    doc = read_run_doc(store, wf["metadata"]["otf_output_uuid"])
    assert isinstance(doc, OTFRunDoc), "the run's OTFRunDoc is not in the MongoDB store"
    assert_same_run(doc, uninterrupted)
    assert list_checkpoints(store, doc.run_id)  # in GridFS, written by the workers

    fireworks = workflow_fireworks(launchpad, fw_ids[0])
    names = {f["name"] for f in fireworks}
    # the jobs segments created at run time are in the workflow too
    assert {"otf reference 2", "otf update 2", "otf md segment 2", "store_inputs"} <= names
    expected_category = {"reference": "otf_reference", "segment": "otf_md",
                         "update": "otf_md", "prepare": "otf_md"}
    worker_of = {"otf_reference": CPU, "otf_md": GPU}
    launches = {launch["launch_id"]: launch for launch in launches_of(launchpad, fireworks)}
    for fw in fireworks:
        category = fw["spec"].get("_category")
        kind = fw["spec"].get("otf_kind", "segment" if fw["name"] == "store_inputs" else None)
        assert category == expected_category[kind], (fw["name"], category)
        assert fw["state"] == "COMPLETED" and len(fw["launches"]) == 1, fw["name"]
        ran_on = launches[fw["launches"][0]]["fworker"]["name"]
        assert ran_on == worker_of[category], (fw["name"], ran_on)
    assert {launches[f["launches"][0]]["fworker"]["name"] for f in fireworks} == {CPU, GPU}
    print(f"\nFireWorks run, 2 workers: {len(fireworks)} fireworks in {elapsed:.1f} s")


def test_load_launchpad_names_the_file_and_the_problem(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("host: [127.0.0.1,\n")
    with pytest.raises(ValueError, match="broken.yaml.*does not parse"):
        load_launchpad(broken)
    with pytest.raises(ValueError, match="my_fworker_cpu.yaml.*not a launchpad config.*'host'"):
        load_launchpad(EXAMPLES / "my_fworker_cpu.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- host\n")
    with pytest.raises(ValueError, match="list.yaml.*not a launchpad config"):
        load_launchpad(listed)
    typo = tmp_path / "typo.yaml"
    typo.write_text("host: 127.0.0.1\nprot: 27017\n")
    with pytest.raises(ValueError, match="typo.yaml.*unknown keys.*prot"):
        load_launchpad(typo)
    with pytest.raises(ValueError, match="missing.yaml.*does not exist"):
        load_launchpad(tmp_path / "missing.yaml")


def test_load_launchpad_names_host_and_port_of_an_unreachable_database(tmp_path):
    from tests.mongo_server import free_port

    port = free_port()  # nothing listens there
    path = fw_workers.write_launchpad_file(tmp_path / "lp.yaml", "127.0.0.1", port, "x")
    with pytest.raises(ValueError, match=f"127.0.0.1:{port}.*did not answer within 1 s") as info:
        load_launchpad(path, timeout_s=1)
    # pymongo's own error: it gave up after at most the 1 s given (its default is 30 s)
    timeout = re.search(r"Timeout: ([\d.]+)s", str(info.value.__cause__))
    assert timeout is not None and float(timeout.group(1)) <= 1.0, info.value.__cause__


def test_example_worker_files_serve_the_default_categories():
    from fireworks import FWorker

    from atomate2_otf.fireworks import read_launchpad_config

    cpu = FWorker.from_file(str(EXAMPLES / "my_fworker_cpu.yaml"))
    gpu = FWorker.from_file(str(EXAMPLES / "my_fworker_gpu.yaml"))
    assert cpu.category == [DEFAULT_WORKER_CATEGORIES["reference"]]
    assert set(gpu.category) == {DEFAULT_WORKER_CATEGORIES[k]
                                 for k in ("segment", "update", "prepare")}
    assert read_launchpad_config(EXAMPLES / "my_launchpad.yaml")["host"]


def test_worker_categories_are_checked_and_reach_every_initial_job():
    from jobflow import Flow, Maker, job

    with pytest.raises(ValueError, match="unknown key 'refrence'.*reference, segment, update"):
        otf_maker(categories={"refrence": "cpu"}).make(copper())
    with pytest.raises(ValueError, match="worker_categories\\['segment'\\]"):
        otf_maker(categories={"segment": ""}).make(copper())

    @job
    def step(x):
        return x

    class FlowReference(Maker):  # a VASP-like reference: a Flow of several jobs
        name = "two-step reference"

        def make(self, structure):
            first = step(1)
            return Flow([first, Flow([step(first.output)])], output=first.output)

    maker = otf_maker(categories=DEFAULT_WORKER_CATEGORIES)
    maker.reference_maker = FlowReference()
    reference, prepare, segment = maker.make(copper()).jobs
    inner = [j for j, _ in reference.iterflow()]
    assert [j.config.manager_config for j in inner] == [{"_category": "otf_reference"}] * 2
    assert prepare.config.manager_config == {"_category": "otf_md"}
    assert segment.config.manager_config == {"_category": "otf_md"}
    assert segment.config.pass_manager_config is False  # or jobflow would overwrite
    plain = otf_maker(categories=None).make(copper())
    assert all(not j.config.manager_config and j.config.pass_manager_config for j in plain)
    # the jobs made by one decorated function must not share one JobConfig: each kind
    # keeps its own category when they differ
    distinct = {"reference": "r", "prepare": "p", "segment": "s", "update": "u"}
    _, prepare, segment = otf_maker(categories=distinct).make(copper()).jobs
    assert prepare.config.manager_config == {"_category": "p"}
    assert segment.config.manager_config == {"_category": "s"}
    assert prepare.config is not segment.config


def test_submit_flow_refuses_an_uninitialised_launchpad(mongo_server, database, tmp_path):
    path = fw_workers.write_launchpad_file(tmp_path / "lp.yaml", mongo_server.host,
                                           mongo_server.port, f"{database}_fw")
    with pytest.raises(ValueError, match="not initialised.*lpad .*reset"):
        submit_flow(otf_maker().make(copper()), load_launchpad(path))


KILLS = [("segment", GPU), ("reference", CPU), ("update", GPU)]


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "victim"), KILLS, ids=[k for k, _ in KILLS])
def test_killed_worker_costs_at_most_the_job_it_ran(fw_setup, uninterrupted, kind, victim):
    setup = fw_setup
    launchpad, store, tmp = setup["launchpad"], setup["store"], setup["tmp"]
    marker = tmp / f"hold-{kind}"
    calls_file = tmp / "reference_calls.txt"
    index = 1  # the first jobs a segment creates at run time
    if kind == "reference":
        reference = HoldingEMTMaker(hold_index=index, hold_marker=str(marker),
                                    calls_file=str(calls_file))
        model_kwargs = {}
    else:
        reference = HoldingEMTMaker(calls_file=str(calls_file))
        model_kwargs = {"hold_kind": kind, "hold_index": index, "hold_marker": str(marker)}
    flow = otf_maker(reference, model_kwargs).make(copper())
    fw_ids = submit_flow(flow, launchpad, store=store)
    started = time.perf_counter()
    workers = {CPU: start(setup, CPU), GPU: start(setup, GPU)}

    held = fw_workers.wait_for_hold(launchpad, marker, kind, index, list(workers.values()))
    killed_launch = held["launches"][-1]
    fw_workers.kill_worker(workers[victim])
    lost = fw_workers.rerun_lost(launchpad, held["fw_id"], expiration_s=3)
    assert held["fw_id"] in lost
    assert launchpad.launches.find_one({"launch_id": killed_launch})["state"] == "FIZZLED"
    replacement = start(setup, victim, label=f"{victim}-restarted")
    alive = [w for w in setup["workers"] if w.alive()]
    assert replacement in alive and workers[victim] not in alive
    fw_workers.wait_for_workflow(launchpad, fw_ids[0], alive, timeout=300)
    elapsed = time.perf_counter() - started

    doc = read_run_doc(store, flow.output.uuid)
    assert isinstance(doc, OTFRunDoc)
    assert_same_run(doc, uninterrupted)  # no labelled structure lost
    assert [c.index for c in run_calls(store, doc.run_id)] == list(range(doc.n_reference_calls))

    repeated = 1 if kind == "reference" else 0
    calls = [int(line) for line in calls_file.read_text().split()]
    assert len(calls) == uninterrupted.n_reference_calls + repeated
    assert sorted(set(calls)) == list(range(uninterrupted.n_reference_calls))
    fireworks = workflow_fireworks(launchpad, fw_ids[0])
    reference_fws = [f for f in fireworks if f["spec"].get("otf_kind") == "reference"]
    assert len(launches_of(launchpad, reference_fws)) == doc.n_reference_calls + repeated
    # the killed Firework ran twice (the lost launch archived), every other one once
    rerun = next(f for f in fireworks if f["fw_id"] == held["fw_id"])
    assert rerun["state"] == "COMPLETED" and rerun["archived_launches"] == [killed_launch]
    assert all(len(f["launches"]) == 1 and not f.get("archived_launches")
               for f in fireworks if f["fw_id"] != held["fw_id"])
    print(f"\nkill -9 during {kind} {index}: run completed in {elapsed:.1f} s")
