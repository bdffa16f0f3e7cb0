"""jobflow-remote: routing by job name (references to a CPU worker, MD/updates to a GPU
worker), including the jobs that segments create at run time, and the example project file.

jobflow-remote pins pymongo<4.11, so it lives in its own environment (docs/production.md);
these tests skip where it is not installed. The worker a job gets is computed with
jobflow-remote's own ``get_initial_job_doc_dict`` (job's ``manager_config["worker"]``, else
the worker of the job that created it), the function its queue uses for new jobs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from jobflow import Flow, Response, job

pytest.importorskip("jobflow_remote")

from jobflow_remote import set_run_config  # noqa: E402
from jobflow_remote.jobs.data import get_initial_job_doc_dict  # noqa: E402

from atomate2_otf.remote import route_for_jobflow_remote  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def memory_store():
    from jobflow import JobStore
    from maggma.stores import MemoryStore

    store = JobStore(MemoryStore())
    store.connect()
    return store


def worker_of(one, creator_worker: str | None) -> str:
    """The worker jobflow-remote's queue assigns to ``one`` (created by a job on
    ``creator_worker``, or submitted with that default)."""
    return get_initial_job_doc_dict(one, [], "1", worker=creator_worker, exec_config=None,
                                    resources=None, priority=0)["worker"]


@job
def toy_reference(index: int) -> dict:
    return {"energy": float(index)}


@job
def toy_update(label: dict) -> dict:
    return label


@job
def toy_segment(index: int, n_cycles: int, previous: dict | None = None) -> Response | dict:
    """Replaces itself as md_segment does: [reference k audit, update k audit, segment k]."""
    if index >= n_cycles:
        return {"done": index}
    k = index + 1
    reference = toy_reference(k)
    reference.name = f"otf reference {k} audit"
    update = toy_update(reference.output)
    update.name = f"otf update {k} audit"
    following = toy_segment(k, n_cycles, update.output)
    following.name = f"otf md segment {k}"
    return Response(replace=Flow([reference, update, following], output=following.output))


def toy_flow(n_cycles: int = 3) -> Flow:
    reference = toy_reference(0)
    reference.name = "otf reference 0"
    segment = toy_segment(0, n_cycles, reference.output)
    segment.name = "otf md segment 0"
    return Flow([reference, segment])


def run_and_route(flow: Flow, store, default: str = "gpu") -> list[tuple[str, str, int]]:
    """Run ``flow`` job by job as jobflow-remote would (each job's Response through Job.run)
    and return (name, worker, number of dynamic config updates) for every job run."""
    queue = [(one, default) for one, _ in flow.iterflow()]
    seen = []
    while queue:
        one, creator = queue.pop(0)
        worker = worker_of(one, creator)
        seen.append((one.name, worker, len(one.config_updates)))
        response = one.run(store)
        if response.replace is not None:
            queue = [(new, worker) for new, _ in response.replace.iterflow()] + queue
    return seen


def expected_worker(name: str) -> str:
    return "cpu" if name.startswith("otf reference") else "gpu"


def test_run_time_jobs_audits_included_go_to_their_workers(memory_store):
    seen = run_and_route(route_for_jobflow_remote(toy_flow(3)), memory_store, default="gpu")
    names = [name for name, _, _ in seen]
    assert "otf reference 3 audit" in names and "otf update 2 audit" in names
    assert names.count("store_inputs") == 3
    for name, worker, _ in seen:
        assert worker == expected_worker(name), (name, worker)
    # the dynamic updates are carried, not accumulated, from one cycle to the next
    assert len({n for _, _, n in seen}) == 1


def test_references_route_to_cpu_even_when_submitted_to_gpu_by_default(memory_store):
    seen = run_and_route(route_for_jobflow_remote(toy_flow(1)), memory_store, default="cpu")
    for name, worker, _ in seen:
        if name != "store_inputs":  # it follows the segment that created it
            assert worker == expected_worker(name), (name, worker)


def test_bare_set_run_config_sends_run_time_references_to_the_segment_worker(memory_store):
    """Why route_for_jobflow_remote switches pass_manager_config off: jobflow copies the
    segment's manager_config over its replacement after the name-filtered updates."""
    flow = toy_flow(1)
    set_run_config(flow, name_filter="otf reference", worker="cpu", dynamic=True)
    set_run_config(flow, name_filter="otf md segment", worker="gpu", dynamic=True)
    seen = dict((name, worker) for name, worker, _ in run_and_route(flow, memory_store))
    assert seen["otf reference 0"] == "cpu"
    assert seen["otf reference 1 audit"] == "gpu"  # misrouted


def test_exec_config_and_resources_follow_the_kind(memory_store):
    flow = route_for_jobflow_remote(toy_flow(1), reference_exec_config="vasp",
                                    md_resources={"gres": "gpu:1"})
    reference, segment = (one for one, _ in flow.iterflow())  # connected: in this order
    assert reference.config.manager_config == {"worker": "cpu", "exec_config": "vasp"}
    assert segment.config.manager_config == {"worker": "gpu", "resources": {"gres": "gpu:1"}}
    assert segment.config.pass_manager_config is False
    with pytest.raises(ValueError, match="md_worker"):
        route_for_jobflow_remote(toy_flow(1), md_worker="")


def test_an_otf_run_routes_every_job(tmp_path):
    """A real OTFMDMaker flow (toy model, EMT), two forced reference calls."""
    from ase.build import bulk

    from atomate2_otf.flows import OTFMDMaker
    from atomate2_otf.reference.makers import EMTStaticMaker
    from atomate2_otf.store import embedded_job_store

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.02, seed=3)
    maker = OTFMDMaker(model="tests.toy_model:ToyModel", reference_maker=EMTStaticMaker(),
                       n_steps=10, timestep_fs=1.0, n_chains=2, update_steps=2,
                       initial_update_steps=2, n_workers=1, force_trigger_every=4,
                       threshold=0.05, seed=1, checkpoint_transport="outputs")
    store = embedded_job_store(tmp_path / "store")
    store.connect()
    seen = run_and_route(route_for_jobflow_remote(maker.make(atoms)), store, default="gpu")
    names = [name for name, _, _ in seen]
    for name in ("otf reference 0", "otf prepare", "otf md segment 0", "otf reference 1",
                 "otf checkpoint 1", "otf update 1", "otf md segment 1", "otf reference 2",
                 "otf md segment 2"):
        assert name in names
    for name, worker, _ in seen:
        assert worker == expected_worker(name), (name, worker)


def test_example_project_file_is_a_valid_project():
    from jobflow_remote.config.base import Project
    from monty.serialization import loadfn

    project = Project.model_validate(loadfn(EXAMPLES / "jobflow_remote_project.yaml"))
    assert set(project.workers) == {"cpu", "gpu"}
    store = project.get_jobstore()
    assert {"checkpoints", "trajectories", "runs", "data"} <= set(store.additional_stores)


def toy_otf_maker(**kwargs):
    from atomate2_otf.flows import OTFMDMaker
    from atomate2_otf.reference.makers import EMTStaticMaker

    settings = {"model": "tests.toy_model:ToyModel", "reference_maker": EMTStaticMaker(),
                "n_steps": 10, "timestep_fs": 1.0, "n_chains": 2, "update_steps": 2,
                "initial_update_steps": 2, "n_workers": 1, "force_trigger_every": 4,
                "threshold": 0.05, "seed": 1}
    return OTFMDMaker(**{**settings, **kwargs})


def copper():
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.02, seed=3)
    return atoms


def test_flows_whose_jobs_read_the_store_are_refused():
    with pytest.raises(ValueError, match="checkpoint_transport='store'.*OTFMDMaker"
                                         r"\(checkpoint_transport='outputs'\)"):
        route_for_jobflow_remote(toy_otf_maker().make(copper()))
    from atomate2_otf.flows import ProductionMDMaker

    production = ProductionMDMaker(checkpoint="abc:1", n_steps=5).make(copper())
    with pytest.raises(ValueError, match="'otf production md' reads its checkpoint"):
        route_for_jobflow_remote(production)


@pytest.mark.slow
def test_an_otf_run_completes_under_jobflow_remote(tmp_path, monkeypatch, mongo_server,
                                                   database):
    """End to end: jobflow-remote's own runner and two local workers (cpu: references,
    gpu: the rest), queue and JobStore in MongoDB (documents) and GridFS (checkpoints,
    trajectories). The run's calls and final posterior equal those of the same run under
    the local runner with the default transport, bit for bit."""
    import sys

    import jobflow_remote
    import yaml
    from jobflow_remote import ConfigManager, submit_flow
    from jobflow_remote.jobs.runner import Runner

    from atomate2_otf.local import run_flow_locally
    from atomate2_otf.results import read_run_doc
    from atomate2_otf.store import embedded_job_store, load_checkpoint, load_trajectory

    server_host, server_port = mongo_server.host, mongo_server.port
    monkeypatch.chdir(tmp_path)

    def mongo(collection, **extra):
        return {"type": "MongoStore", "host": server_host, "port": server_port,
                "database": database, "collection_name": collection, **extra}

    def gridfs(collection, fields):
        return {"type": "GridFSStore", "host": server_host, "port": server_port,
                "database": database, "collection_name": collection,
                "searchable_fields": fields}

    repo = Path(__file__).resolve().parents[2]
    pre_run = (f"export PATH={Path(sys.executable).parent}:$PATH; "
               f"export PYTHONPATH={repo}; export OMP_NUM_THREADS=1")
    project = {
        "name": "otftest", "base_dir": str(tmp_path / "base"),
        "runner": {"delay_checkout": 1, "delay_check_run_status": 1,
                   "delay_advance_status": 1},
        "workers": {w: {"type": "local", "scheduler_type": "shell",
                        "work_dir": str(tmp_path / w), "pre_run": pre_run}
                    for w in ("cpu", "gpu")},
        "queue": {"store": mongo("jobs")},
        "jobstore": {"docs_store": mongo("outputs"), "additional_stores": {
            "checkpoints": gridfs("checkpoints", ["run_id", "index"]),
            "trajectories": gridfs("trajectories", ["run_id", "segment"]),
            "runs": mongo("runs", key="run_id"), "data": gridfs("data", [])}}}
    (tmp_path / "projects").mkdir()
    (tmp_path / "projects" / "otftest.yaml").write_text(yaml.safe_dump(project))
    monkeypatch.setattr(jobflow_remote.SETTINGS, "projects_folder", str(tmp_path / "projects"))
    monkeypatch.setattr(jobflow_remote.SETTINGS, "project", "otftest")
    config = ConfigManager().get_project("otftest")
    config.get_job_controller().reset()

    flow = route_for_jobflow_remote(toy_otf_maker(checkpoint_transport="outputs").make(
        copper()))
    submit_flow(flow, worker="gpu", project="otftest")
    try:
        Runner("otftest").run_all_jobs(max_seconds=300)
    finally:
        states = [(info.name, info.state.name, info.worker)
                  for info in config.get_job_controller().get_jobs_info()]
    assert all(state == "COMPLETED" for _, state, _ in states), states
    assert {(name.rsplit(" ", 1)[0] if name[-1].isdigit() else name, worker)
            for name, _, worker in states} >= {
        ("otf reference", "cpu"), ("otf prepare", "gpu"), ("otf md segment", "gpu"),
        ("otf update", "gpu"), ("otf checkpoint", "gpu")}
    store = config.get_jobstore()
    store.connect()
    remote = read_run_doc(store, flow.output.uuid)
    assert remote is not None and remote.completed and remote.n_reference_calls == 3

    local_store = embedded_job_store(tmp_path / "local")
    local_store.connect()
    local_flow = toy_otf_maker().make(copper())
    run_flow_locally(local_flow, local_store, root_dir=tmp_path / "local_jobs")
    local = read_run_doc(local_store, local_flow.output.uuid)
    fields = ("index", "kind", "md_step", "reference_energy", "predicted_energy", "error",
              "sigma", "prob_within")
    assert [[getattr(c, f) for f in fields] for c in remote.calls] == \
        [[getattr(c, f) for f in fields] for c in local.calls]
    assert load_checkpoint(store, remote.final_checkpoint) == \
        load_checkpoint(local_store, local.final_checkpoint)
    assert len(load_trajectory(store, remote.run_id)) == \
        len(load_trajectory(local_store, local.run_id)) > 0

