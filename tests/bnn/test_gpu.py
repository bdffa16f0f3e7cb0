"""The posterior, its checkpoints and ChainPool on CUDA (``gpu`` marker: skipped, with the
reason, where torch sees no GPU; ``OTF_GPU_TESTS_ON=cpu`` runs them on the CPU to check
the tests themselves)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from atomate2_otf.bnn.posterior import Posterior
from atomate2_otf.devices import resolve_device
from tests.bnn.device_paths import labelled_copper, run_path, small_config
from tests.toy_model import ToyModel

pytestmark = pytest.mark.gpu


def test_everything_that_computes_lives_on_the_device(gpu):
    device = resolve_device(gpu)
    posterior = Posterior(ToyModel(), small_config(), device=gpu)
    posterior.add_labels(labelled_copper(4))
    posterior.update()
    tensors = {"theta": posterior.state.theta, "v": posterior.state.v,
               "theta0": posterior.theta0, "prior": posterior.prior.center,
               "mass": posterior.mass_scale, "model": posterior.model.pretrained,
               **{f"head.{n}": p for n, p in posterior.head.named_parameters()},
               **{f"module.{n}": p for n, p in posterior.model.module.named_parameters()}}
    assert {name: t.device for name, t in tensors.items()} == dict.fromkeys(tensors, device)
    assert {rng.torch.device.type for rng in posterior.rngs} == {device.type}
    batch, targets = posterior._minibatch(np.arange(3))
    assert batch[0][0].device == device and targets.forces.device == device


def test_without_noise_the_gpu_chains_follow_the_cpu_ones(gpu):
    """Burn-in only (T = 0): no random numbers, so CPU and GPU differ by rounding alone."""
    runs = []
    for device in ("cpu", gpu):
        posterior = Posterior(ToyModel(), small_config(n_steps=20, burn_in=20), device=device)
        posterior.add_labels(labelled_copper(5))
        posterior.update()
        runs.append((posterior.state.theta.cpu(),
                     posterior.predict(labelled_copper(1), compute_stress=True)))
    (theta_cpu, cpu), (theta_gpu, gpu_prediction) = runs
    torch.testing.assert_close(theta_gpu, theta_cpu, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(gpu_prediction.energy, cpu.energy, atol=1e-4)
    np.testing.assert_allclose(gpu_prediction.forces, cpu.forces, atol=1e-4)
    np.testing.assert_allclose(gpu_prediction.stress, cpu.stress, atol=1e-5)


def test_the_run_path_on_the_gpu(gpu):
    out = run_path(ToyModel(), device=gpu)
    assert all(np.isfinite(v).all() for v in out.values())


def test_checkpoints_go_cpu_gpu_cpu_with_every_chain_bit_identical(gpu):
    posterior = Posterior(ToyModel(), small_config(keep_mass=True), device="cpu")
    posterior.add_labels(labelled_copper(4))
    posterior.update()
    on_gpu = Posterior.from_bytes(posterior.to_bytes(), model=ToyModel(), device=gpu)
    assert on_gpu.state.theta.device == resolve_device(gpu)
    blob = on_gpu.to_bytes()
    payload = torch.load(io.BytesIO(blob), weights_only=True)  # no map_location: as written
    assert payload["theta"].device.type == "cpu" and payload["v_hat"].device.type == "cpu"
    back = Posterior.from_bytes(blob, model=ToyModel(), device="cpu")
    for name in ("theta", "v", "v_hat"):
        expected = getattr(posterior.state, name).float()
        assert torch.equal(getattr(on_gpu.state, name).float().cpu(), expected), name
        assert torch.equal(getattr(back.state, name).float(), expected), name
    # a GPU update, written and read back on the GPU, continues identically
    on_gpu.update()
    again = Posterior.from_bytes(on_gpu.to_bytes(), model=ToyModel(), device=gpu)
    assert torch.equal(again.state.theta, on_gpu.state.theta)


def test_a_pool_worker_on_the_gpu_equals_the_serial_gpu_update(gpu):
    from atomate2_otf.bnn.parallel import ChainPool

    data = labelled_copper(5)
    serial, pooled = (Posterior(ToyModel(), small_config(), device=gpu) for _ in range(2))
    for posterior in (serial, pooled):
        posterior.add_labels(data)
    serial.update()
    with ChainPool(ToyModel(), devices=[str(resolve_device(gpu))]) as pool:
        pooled.update(pool=pool)
        np.testing.assert_allclose(pooled.predict(data[:1], pool=pool).forces,
                                   serial.predict(data[:1]).forces, atol=1e-5)
    torch.testing.assert_close(pooled.state.theta, serial.state.theta, atol=1e-5, rtol=1e-5)


def test_chains_spread_over_two_gpus(gpu):
    from atomate2_otf.bnn.parallel import ChainPool

    if gpu == "cuda" and torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs, torch sees {torch.cuda.device_count()}")
    devices = ["cuda:0", "cuda:1"] if gpu == "cuda" else [gpu, gpu]
    data = labelled_copper(5)
    serial, pooled = (Posterior(ToyModel(), small_config(), device=devices[0])
                      for _ in range(2))
    for posterior in (serial, pooled):
        posterior.add_labels(data)
    serial.update()
    with ChainPool(ToyModel(), devices=devices) as pool:
        assert pool.devices == devices
        pooled.update(pool=pool)
    torch.testing.assert_close(pooled.state.theta, serial.state.theta, atol=1e-5, rtol=1e-5)


def test_a_run_pools_one_worker_per_visible_gpu(gpu):
    from atomate2_otf.resources import Resources

    resources = Resources()
    try:
        model = resources.model("tests.toy_model:ToyModel", device=gpu)
        assert model.device == resolve_device(gpu)
        pool = resources.pool(model, n_chains=8, n_workers=None, device=gpu)
        gpus = torch.cuda.device_count() if gpu == "cuda" else 0
        if gpus > 1:
            assert pool is not None and pool.devices == [f"cuda:{i}"
                                                         for i in range(min(gpus, 8))]
        elif gpu == "cuda":
            assert pool is None  # one GPU: the chains take turns in this process
    finally:
        resources.close()
