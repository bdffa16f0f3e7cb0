"""Runs that continue from a stored posterior (issue 17.3): the paper's CaZrS3 protocol in
small (Langevin, then NVE from the first run's final posterior and MD state), and the
refusals of a start_from that cannot continue."""

import numpy as np
import pytest
import torch
from jobflow import Flow, run_locally

from atomate2_otf.atoms import record_from_atoms
from atomate2_otf.bnn.posterior import Posterior
from atomate2_otf.md.state import MDState
from atomate2_otf.models.base import register_model
from atomate2_otf.results import read_run_doc
from atomate2_otf.store import load_checkpoint
from tests.toy_model import ToyModel
from tests.workflow.helpers import (
    BrokenReferenceMaker,
    broken_reference_calls,
    copper,
    run_id_of,
    toy_maker,
)


def run(flow, store):
    run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)


def posterior_of(store, key) -> Posterior:
    return Posterior.from_bytes(load_checkpoint(store, key))


def prepare_output(store, run_id):
    return store.query_one({"metadata.otf_run_id": run_id, "metadata.otf_kind": "prepare"},
                           properties=["output"])["output"]


@pytest.fixture
def langevin_run(store):
    """Stage 1: a Langevin (nvt) toy run with EMT labels."""
    flow = toy_maker(ensemble="nvt", n_steps=14).make(copper())
    run(flow, store)
    return read_run_doc(store, flow.output.uuid)


def test_nve_run_continues_the_langevin_runs_posterior_and_state(store, langevin_run):
    first = langevin_run
    carried = posterior_of(store, first.final_checkpoint)
    n_data, n_calibration = len(carried.data), carried.calibration.n
    assert n_data == first.n_reference_calls and n_calibration == first.n_reference_calls - 1
    final_state = MDState.from_dict(first.final_state)
    # what the carried posterior predicts at the second run's start, before its label
    expected = carried.predict([record_from_atoms(final_state.to_atoms())])
    flow = toy_maker(ensemble="nve", n_steps=14, start_from=first.final_checkpoint,
                     seed=1).make(final_state)
    assert [job.name for job in flow.jobs][:2] == ["otf start", "otf reference 0"]
    run(flow, store)
    second = read_run_doc(store, flow.output.uuid)
    assert second.completed and second.ensemble == "nve" and second.n_md_steps == 14
    assert second.start_from == first.final_checkpoint
    # the dynamics continue: positions and momenta of the first run's end
    start = MDState.from_dict(prepare_output(store, second.run_id)["state"])
    np.testing.assert_allclose(start.positions, final_state.positions, atol=1e-12)
    np.testing.assert_allclose(start.momenta, final_state.momenta, atol=1e-12)
    assert start.step == 0
    # the first prediction is the carried posterior's, scored with its calibration
    call0 = second.calls[0]
    assert call0.kind == "initial" and call0.error is not None
    assert call0.predicted_energy == pytest.approx(float(expected.energy[0]), abs=1e-9)
    assert call0.sigma == pytest.approx(float(expected.energy_std[0]), rel=1e-9)
    assert call0.predictive_dof == pytest.approx(carried.calibration.dof, rel=1e-12)
    assert call0.prob_within == pytest.approx(
        float(carried.calibration.prob_within(call0.sigma, 0.05)), rel=1e-9)
    assert second.energy_offset == pytest.approx(first.energy_offset, abs=1e-12)
    # the initial call is not a triggered one
    assert len(second.call_errors) == second.n_reference_calls - 1
    # data and calibration carried over: the first run's, plus every call of the second
    final = posterior_of(store, second.final_checkpoint)
    assert len(final.data) == n_data + second.n_reference_calls
    assert final.calibration.n == n_calibration + second.n_reference_calls
    assert final.energy_offset == pytest.approx(carried.energy_offset, abs=1e-12)


def test_start_from_a_reference_to_an_earlier_run_in_the_same_flow(store):
    first = toy_maker(n_steps=8).make(copper())
    second = toy_maker(n_steps=8, start_from=first.output.final_checkpoint).make(copper())
    run(Flow([first, second]), store)
    one = read_run_doc(store, first.output.uuid)
    two = read_run_doc(store, second.output.uuid)
    assert two.start_from == one.final_checkpoint
    assert len(posterior_of(store, two.final_checkpoint).data) == (
        one.n_reference_calls + two.n_reference_calls)


@pytest.fixture
def counted_reference():
    """A reference Maker that counts its calls (labels with EMT until far past a run)."""
    broken_reference_calls.n = 0
    return BrokenReferenceMaker(calls_before_failure=1000)


def test_an_unknown_checkpoint_is_refused_before_the_reference_runs(store, counted_reference):
    flow = toy_maker(start_from="nosuchrun:3", reference_maker=counted_reference).make(copper())
    with pytest.raises(ValueError, match="nosuchrun:3"):
        run(flow, store)
    assert broken_reference_calls.n == 0


def test_another_reference_is_refused_before_it_runs(store, langevin_run, counted_reference):
    flow = toy_maker(start_from=langevin_run.final_checkpoint,
                     reference_maker=counted_reference).make(copper())
    with pytest.raises(ValueError, match="EMT static.*broken reference"):
        run(flow, store)
    assert broken_reference_calls.n == 0


class OtherToyModel(ToyModel):
    """The toy architecture with other pretrained weights."""

    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            for parameter in self.module.parameters():
                parameter.add_(0.1)
        self.pretrained = torch.nn.utils.parameters_to_vector(self.module.parameters())


def test_another_model_is_refused_before_the_reference_runs(store, langevin_run):
    register_model("toy-other", OtherToyModel)
    broken_reference_calls.n = 0
    flow = toy_maker(start_from=langevin_run.final_checkpoint,
                     model="toy-other").make(copper())
    with pytest.raises(ValueError, match="model='toy-other'"):
        run(flow, store)
    names = {d["name"] for d in store.query({"metadata.otf_run_id": run_id_of(flow)},
                                            properties=["name"])}
    assert "otf reference 0" not in names


@pytest.mark.parametrize("bad", ["", "no-index", "run:", "run:x", 3])
def test_a_malformed_start_from_is_refused_when_the_flow_is_built(bad):
    with pytest.raises(ValueError, match="start_from"):
        toy_maker(start_from=bad).make(copper())
