"""Devices (issue 18), checked on a CPU: the device setting, device discipline on the
predict / update / MD path, device-independent checkpoints and ChainPool's device list.

Device discipline: every tensor on that path is made on an explicit device. With torch's
default device set to "meta", a tensor made without one is a meta tensor, and the first
operation that meets a CPU tensor fails; the path must run through and give the same
numbers as without it. (The real adapters are checked on CUDA by the gpu-marked tests:
their libraries make tensors without a device, which meta cannot tell from a bug here.)
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from atomate2_otf.bnn.posterior import Posterior
from atomate2_otf.devices import check_device, pool_devices, resolve_device
from atomate2_otf.models.base import load_model
from tests.bnn.device_paths import default_device, labelled_copper, run_path, small_config
from tests.toy_model import ToyModel

HAS_CUDA = torch.cuda.is_available()


def test_the_cpu_path_names_its_device_everywhere():
    """Run with torch's default device "meta": same numbers as with the default CPU."""
    expected = run_path(ToyModel())
    model = ToyModel()  # built outside: the toy's module is not part of the path
    with default_device("meta"):
        got = run_path(model)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert model.device == torch.device("cpu")


def test_a_checkpoint_round_trip_keeps_every_chain_bit_identical():
    model = ToyModel()
    posterior = Posterior(model, small_config(keep_mass=True), device="cpu")
    posterior.add_labels(labelled_copper(4))
    posterior.update()
    reloaded = Posterior.from_bytes(posterior.to_bytes(), device="cpu", model=ToyModel())
    for name in ("theta", "v", "v_hat"):
        a, b = getattr(posterior.state, name), getattr(reloaded.state, name)
        assert b.device == torch.device("cpu") and torch.equal(a.float(), b.float()), name
    assert torch.equal(posterior.theta0, reloaded.theta0)
    # and the chains go on identically (same random streams)
    posterior.update()
    reloaded.update()
    assert torch.equal(posterior.state.theta, reloaded.state.theta)


def test_a_checkpoint_written_on_cuda_loads_on_the_cpu(monkeypatch):
    """torch records each tensor's device in the file; a checkpoint written on a GPU names
    "cuda:0" there, which a plain torch.load refuses on a machine without CUDA. Simulated
    here by tagging the CPU tensors "cuda:0" while the checkpoint is written."""
    posterior = Posterior(ToyModel(), small_config(keep_mass=True), device="cpu")
    posterior.add_labels(labelled_copper(4))
    posterior.update()
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        blob = posterior.to_bytes()
    if not HAS_CUDA:  # the file really does say cuda:0
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(io.BytesIO(blob), weights_only=True)
    reloaded = Posterior.from_bytes(blob, model=ToyModel())
    assert reloaded.device == torch.device("cpu")
    assert torch.equal(reloaded.state.theta, posterior.state.theta)
    assert torch.equal(reloaded.state.v_hat, posterior.state.v_hat)


def test_a_random_state_of_another_device_kind_seeds_the_stream_reproducibly():
    from atomate2_otf.bnn.space import ChainRNG

    seq = np.random.SeedSequence(3)
    state = ChainRNG.from_seed(seq).get_state()
    assert state["torch_device"] == "cpu"
    foreign = {**state, "torch_device": "cuda"}  # as a GPU-written checkpoint says
    draws = []
    for _ in range(2):
        rng = ChainRNG.from_seed(np.random.SeedSequence(4))
        rng.set_state(foreign)
        draws.append(torch.randn(5, generator=rng.torch, device="cpu"))
    assert torch.equal(*draws)
    older = {k: v for k, v in state.items() if k != "torch_device"}  # before issue 18
    rng = ChainRNG.from_seed(np.random.SeedSequence(4))
    rng.set_state(older)
    assert torch.equal(rng.torch.get_state(), state["torch"])


@pytest.mark.parametrize("spec", ["cpu", "cuda", "cuda:0", "cuda:12", "auto"])
def test_device_spellings_accepted(spec):
    assert check_device(spec) == spec
    assert check_device(torch.device("cpu")) == "cpu"


@pytest.mark.parametrize("bad", ["tpu", "gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "", None,
                                 0, "cpu "])
def test_bad_device_spellings_are_refused_with_what_is_accepted(bad):
    with pytest.raises(ValueError) as err:
        check_device(bad)
    message = str(err.value)
    assert repr(bad) in message and "'cpu'" in message and "'auto'" in message


@pytest.mark.skipif(HAS_CUDA, reason="checks a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:3"])
def test_cuda_without_cuda_is_refused_and_auto_is_the_cpu(spec):
    with pytest.raises(ValueError, match=f"device '{spec}' is not available here") as err:
        resolve_device(spec)
    assert "'cpu'" in str(err.value) and "'auto'" in str(err.value)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.fixture
def four_gpus(monkeypatch):
    """torch.cuda as it looks with four visible GPUs (nothing is allocated on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_auto_and_cuda_resolve_to_the_current_gpu(four_gpus):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:3") == torch.device("cuda", 3)
    with pytest.raises(ValueError, match=r"'cuda:4' is not available here \(4 CUDA"):
        resolve_device("cuda:4")


def test_chains_spread_over_the_visible_gpus(four_gpus):
    def names(*args):
        return [str(d) for d in pool_devices(*args, available_cpus=2)]

    assert names("cuda", 8, None) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert names("auto", 2, None) == ["cuda:0", "cuda:1"]  # at most one worker per chain
    assert names("cuda", 8, 6) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0",
                                   "cuda:1"]
    assert names("cuda:2", 8, None) == []  # one GPU named: its chains in this process
    assert names("cuda:2", 8, 3) == ["cuda:2"] * 3
    assert names("cuda", 8, 1) == []


def test_cpu_workers_are_as_before():
    assert pool_devices("cpu", 8, None, available_cpus=2) == [torch.device("cpu")] * 2
    assert pool_devices("cpu", 1, None, available_cpus=2) == []
    assert pool_devices("cpu", 8, 3, available_cpus=2) == [torch.device("cpu")] * 3
    assert pool_devices("cpu", 8, 0, available_cpus=2) == []


#: calls of :func:`counting_toy`
FACTORY_CALLS: list[int] = []


def counting_toy() -> ToyModel:
    FACTORY_CALLS.append(1)
    return ToyModel()


def test_load_model_puts_the_model_on_the_device_and_refuses_bad_ones_first():
    FACTORY_CALLS.clear()
    name = "tests.bnn.test_devices:counting_toy"
    model = load_model(name, device="cpu" if HAS_CUDA else "auto")
    assert model.device == torch.device("cpu") and FACTORY_CALLS == [1]
    with pytest.raises(ValueError, match="'tpu'"):
        load_model(name, device="tpu")
    if not HAS_CUDA:
        with pytest.raises(ValueError, match="'cuda' is not available"):
            load_model(name, device="cuda")
    assert FACTORY_CALLS == [1]  # refused before the factory ran


def test_chain_pool_runs_its_workers_on_the_devices_listed():
    from atomate2_otf.bnn.parallel import ChainPool

    with pytest.raises(ValueError, match="'tpu'"):
        ChainPool(ToyModel(), devices=["cpu", "tpu"])
    data = labelled_copper(4)
    serial, pooled = (Posterior(ToyModel(), small_config(), device="cpu") for _ in range(2))
    for posterior in (serial, pooled):
        posterior.add_labels(data)
    serial.update()
    with ChainPool(ToyModel(), devices=["cpu", "cpu"]) as pool:
        assert pool.n_workers == 2 and pool.devices == ["cpu", "cpu"]
        pooled.update(pool=pool)
        np.testing.assert_array_equal(pooled.predict(data[:1], pool=pool).forces,
                                      serial.predict(data[:1]).forces)
    assert torch.equal(pooled.state.theta, serial.state.theta)
