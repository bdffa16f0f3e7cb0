"""The CLI against production stores: a MongoDB URI, an unreachable database, a launchpad
file that does not parse. Each runs ``atomate2-otf`` as a user does, in a new process."""

from __future__ import annotations

import json

from ase.build import bulk
from ase.io import write

from tests.mongo_server import free_port
from tests.production.helpers import RUN_OPTIONS, cli


def test_run_status_resume_against_a_mongodb_uri(mongo_server, database, tmp_path):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.02, seed=1)
    write(tmp_path / "Cu.cif", atoms)
    uri = f"{mongo_server.uri}/{database}"
    run = cli("run", str(tmp_path / "Cu.cif"), *RUN_OPTIONS, "--store", uri, "--json",
              cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(run.stdout)
    assert doc["completed"] and doc["n_md_steps"] == 12
    assert (tmp_path / "otf-jobs").is_dir()  # job folders go to ./otf-jobs for a URI store
    status = cli("status", "--store", uri, "--json", cwd=tmp_path)
    [row] = json.loads(status.stdout)
    assert row["run_id"] == doc["run_id"] and row["state"] == "completed"
    assert row["reference_calls"] == doc["n_reference_calls"]
    resume = cli("resume", "--store", uri, cwd=tmp_path)
    assert resume.returncode == 0 and "nothing to resume" in resume.stderr
    # the documents live in the server: another client sees the run's journal
    client = mongo_server.client()
    assert client[database]["runs"].find_one({"run_id": doc["run_id"]})["state"] == "completed"


def test_unreachable_database_is_one_line_naming_host_and_port(tmp_path):
    port = free_port()  # nothing listens there
    for command in (["status"], ["resume"], ["run", "x.cif", *RUN_OPTIONS]):
        out = cli(*command, "--store", f"mongodb://127.0.0.1:{port}/otf", cwd=tmp_path)
        if command[0] == "run":  # a missing structure file is found before the database
            assert out.returncode == 2 and "x.cif" in out.stderr
            continue
        # the reachability check's server-selection timeout (5 s) gave up, not the 120 s
        # retry budget of a store that once answered (the message says which one)
        assert "within 5 s" in out.stderr, out.stderr
        assert out.returncode == 2, out.stderr
        assert f"127.0.0.1:{port}" in out.stderr
        assert "Traceback" not in out.stderr and out.stderr.startswith("error:")
        assert len(out.stderr.strip().splitlines()) == 1


def test_launchpad_file_that_does_not_parse_is_reported_before_anything_runs(tmp_path):
    bad = tmp_path / "my_launchpad.yaml"
    bad.write_text("host: [unclosed\n  port: :\n")
    write(tmp_path / "Cu.cif", bulk("Cu", "fcc", a=3.61, cubic=True))
    out = cli("batch", str(tmp_path / "Cu.cif"), *RUN_OPTIONS, "--store",
              str(tmp_path / "store"), "--launchpad", str(bad), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error:") and "my_launchpad.yaml" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "store").exists()  # nothing was created or run
    status = cli("status", "--store", str(tmp_path / "s2"), "--launchpad", str(bad),
                 cwd=tmp_path)
    assert status.returncode == 2 and "my_launchpad.yaml" in status.stderr
