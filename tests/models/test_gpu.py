"""Every model family on CUDA (``gpu`` marker: skipped, with the reason, where torch sees no
GPU): the adapter moves everything the model needs (module, index tensors, normalisers,
batches), predicts what it predicts on the CPU, and a posterior samples on it.

Families whose package is missing are skipped; NequIP, fairchem and MACE use small random
models of the released architectures, as their other tests do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from atomate2_otf.atoms import record_from_atoms
from atomate2_otf.bnn.posterior import Posterior, PosteriorConfig
from atomate2_otf.bnn.sghmc import SGHMCConfig
from atomate2_otf.devices import resolve_device
from atomate2_otf.models.base import load_model
from tests.models.conventions import si_pair

pytestmark = pytest.mark.gpu

FAMILIES = ["chgnet", "sevenn-0", "nequip", "fairchem", "mace"]


@pytest.fixture(scope="module", params=FAMILIES)
def loader(request, tmp_path_factory) -> tuple[str, dict]:
    """(name, kwargs) of :func:`load_model` for one family."""
    family = request.param
    if family in ("chgnet", "sevenn-0"):
        pytest.importorskip(family.split("-")[0])
        return family, {}
    if family == "nequip":
        pytest.importorskip("nequip")
        from tests.random_models.nequip_random import package_random_model

        path = package_random_model(tmp_path_factory.mktemp("nequip"), "tiny")
        return "atomate2_otf.models.nequip:load_nequip", {"model": str(path)}
    if family == "fairchem":
        pytest.importorskip("fairchem.core")
        from tests.random_models.fairchem_random import save_random_checkpoint

        path = save_random_checkpoint(tmp_path_factory.mktemp("fairchem") / "uma.pt", "tiny",
                                      datasets=("omat",))
        return "atomate2_otf.models.fairchem:load_fairchem", {"model": str(path),
                                                              "task_name": "omat"}
    pytest.importorskip("mace")
    return "tests.random_models.mace_random:random_mace_mp_medium", {}


def records():
    return [record_from_atoms(molecule("CH3CH2OH")), si_pair()]


def test_the_gpu_model_predicts_what_the_cpu_model_does(loader, gpu):
    name, kwargs = loader
    on_cpu = load_model(name, device="cpu", **kwargs)
    on_gpu = load_model(name, device=gpu, **kwargs)
    assert on_gpu.device == resolve_device(gpu)
    assert {p.device for p in on_gpu.module.parameters()} == {on_gpu.device}
    outs = []
    for model in (on_cpu, on_gpu):
        batch = model.batch_to(model.collate([model.prepare(r) for r in records()]))
        out = model.evaluate(batch, compute_stress=True)
        assert out.energy.device == model.device and out.features.device == model.device
        outs.append(out)
    cpu, gpu_out = outs
    scale = float(cpu.forces.abs().max())
    torch.testing.assert_close(gpu_out.energy.cpu(), cpu.energy, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(gpu_out.forces.cpu(), cpu.forces, atol=1e-4 * max(scale, 1.0),
                               rtol=1e-4)
    torch.testing.assert_close(gpu_out.stress[1].cpu(), cpu.stress[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gpu_out.features.cpu(), cpu.features, atol=1e-4, rtol=1e-4)


def test_a_posterior_samples_and_predicts_on_the_gpu(loader, gpu):
    name, kwargs = loader
    model = load_model(name, device=gpu, **kwargs)
    data = []
    for seed in range(3):
        record = si_pair(seed=seed)
        out = model.evaluate(model.batch_to(model.collate([model.prepare(record)])),
                             compute_stress=True)
        data.append(type(record)(record.numbers, record.positions, record.cell, record.pbc,
                                 energy=float(out.energy[0]) + 0.1,
                                 forces=1.05 * out.forces.double().cpu().numpy(),
                                 stress=out.stress[0].double().cpu().numpy()))
    config = PosteriorConfig(n_chains=2, seed=1, energy_sigma=0.01,
                             sghmc=SGHMCConfig(n_steps=4, burn_in=1, ramp=1, batch_size=2))
    posterior = Posterior(model, config)
    posterior.add_labels(data)
    posterior.update()
    assert posterior.state.theta.device == model.device
    assert torch.isfinite(posterior.state.theta).all()
    prediction = posterior.predict([data[0].unlabelled()], compute_stress=True)
    assert np.isfinite(prediction.energy).all() and np.isfinite(prediction.forces_var).all()
    back = Posterior.from_bytes(posterior.to_bytes(), model=load_model(name, **kwargs),
                                device="cpu")
    assert torch.equal(back.state.theta, posterior.state.theta.cpu())
