"""``report --store mongodb://...``: the same report from a run kept in MongoDB + GridFS
(a real wire-protocol server, as the production tests use)."""

from __future__ import annotations

import json
import uuid

import pytest

from atomate2_otf.local import run_flow_locally
from atomate2_otf.results import read_run_doc
from atomate2_otf.store import open_job_store
from tests.analysis.runs import FIGURES, SETTINGS, check_numbers, report_cli
from tests.mongo_server import MongoTestServer
from tests.workflow.helpers import copper, run_id_of, toy_maker


@pytest.fixture(scope="module")
def mongo_uri(tmp_path_factory):
    server = MongoTestServer(tmp_path_factory.mktemp("secantus") / "data").start()
    yield f"{server.uri}/otf_{uuid.uuid4().hex[:10]}"
    server.stop()


def test_report_from_a_mongodb_uri(mongo_uri, tmp_path):
    store = open_job_store(mongo_uri)
    flow = toy_maker(**SETTINGS).make(copper())
    run_flow_locally(flow, store, root_dir=tmp_path / "jobs")
    doc = read_run_doc(store, flow.output.uuid)
    out = tmp_path / "report"
    result = report_cli("--store", mongo_uri, "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["run_id"] == run_id_of(flow) and summary["store"] == mongo_uri
    check_numbers(summary, doc)
    # the trajectory came from GridFS: temperatures are the MD's, not the schedule's
    assert {c["temperature_source"] for c in summary["calls"]} == {"trajectory"}
    assert all((out / f"{name}.png").exists() for name in FIGURES)
