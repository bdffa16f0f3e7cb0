"""The device setting of the Makers, the calculators and the CLI (issue 18).

Checked here: a misspelt device is refused when the Maker is made (before any work), a
GPU device is accepted there (the flow may run on a GPU worker) and travels to the jobs;
"auto" on a machine without CUDA runs the same run as "cpu"; ``--device`` with a GPU the
machine lacks, or a bad value, is one ``error:`` line and exit status 2 before any model
loads; the gpu-marked run does the whole loop and production MD on CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from jobflow import run_locally

from atomate2_otf.flows import OTFMDMaker, ProductionMDMaker
from atomate2_otf.jobs import RunConfig
from atomate2_otf.results import read_run_doc
from tests.processes import refused_cli_line
from tests.workflow.helpers import copper, otf_job, toy_maker

HAS_CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("maker", [OTFMDMaker, ProductionMDMaker])
@pytest.mark.parametrize("bad", ["tpu", "gpu:0", "cuda:x", None])
def test_a_misspelt_device_is_refused_when_the_maker_is_made(maker, bad):
    with pytest.raises(ValueError) as err:
        maker(device=bad)
    assert repr(bad) in str(err.value) and "'cuda:N'" in str(err.value)


def test_a_gpu_device_is_accepted_when_building_and_reaches_the_jobs():
    """Built here, run on a GPU worker: no CUDA check until a job runs."""
    flow = toy_maker(device="cuda:1").make(copper())
    config = RunConfig.from_dict(otf_job(flow, "prepare").function_args[2])
    assert config.device == "cuda:1"
    assert RunConfig.from_dict({**config.to_dict(), "device": "cpu"}).device == "cpu"
    # journalled flows from before issue 18 have no device: the CPU
    old = {k: v for k, v in config.to_dict().items() if k != "device"}
    assert RunConfig.from_dict(old).device == "cpu"


@pytest.mark.skipif(HAS_CUDA, reason="'auto' is the CPU only on a machine without CUDA")
def test_auto_without_cuda_is_the_cpu_run(store):
    docs = []
    for device in ("cpu", "auto"):
        flow = toy_maker(n_steps=15, device=device).make(copper())
        run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)
        docs.append(read_run_doc(store, flow.output.uuid))
    cpu, auto = docs
    assert auto.call_errors == cpu.call_errors
    np.testing.assert_array_equal(auto.final_state["positions"], cpu.final_state["positions"])


def test_the_calculators_refuse_a_bad_device_before_reading_anything(tmp_path):
    from atomate2_otf.atomate2_calculator import fine_tuned_calculator

    with pytest.raises(ValueError, match="'tpu'"):
        fine_tuned_calculator(str(tmp_path / "nowhere"), "run:0", device="tpu")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(("command", "bad"), [("run", "cuda"), ("run", "cuda:3"),
                                              ("run", "tpu"), ("demo", "cuda")])
def test_a_device_this_machine_lacks_is_one_error_line_before_any_model_loads(
        command, bad, tmp_path, cu_cif):
    if bad.startswith("cuda") and torch.cuda.device_count() > int(bad.partition(":")[2] or 0):
        pytest.skip(f"this machine has {bad}")
    args = ([command, str(cu_cif), "--reference", "emt"] if command == "run" else [command])
    line = refused_cli_line(*args, "--device", bad, store=tmp_path / "store")
    assert line.startswith("error: --device"), line
    assert f"'{bad}'" in line and "'cpu'" in line and "'auto'" in line


@pytest.mark.gpu
def test_a_run_and_its_production_md_on_the_gpu(store, gpu):
    flow = toy_maker(n_steps=15, device=gpu).make(copper())
    run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)
    doc = read_run_doc(store, flow.output.uuid)
    assert doc.n_md_steps == 15 and np.isfinite(doc.call_errors).all()
    production = ProductionMDMaker(checkpoint=doc.final_checkpoint, n_steps=5, threshold=0.05,
                                   device=gpu).make(doc.final_structure)
    responses = run_locally(production, store=store, log=False, ensure_success=True,
                            raise_immediately=True)
    assert responses[production.uuid][1].output["n_md_steps"] == 5
