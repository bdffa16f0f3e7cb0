"""fairchem adapter (fairchem-core 2.x) on small random-initialised models of the real
architectures (UMA with MoLE experts, eSEN direct-force), written in the format of
fairchem's released checkpoints and loaded through the same code path as a real one.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

pytest.importorskip("fairchem.core")

from atomate2_otf.atoms import record_from_atoms  # noqa: E402
from atomate2_otf.models.base import load_model  # noqa: E402
from atomate2_otf.models.fairchem import FairChemModel, ModelNotCachedError, load_fairchem  # noqa: E402
from tests.models.conventions import (  # noqa: E402
    check_batch_equals_single,
    check_features_invariant,
    check_features_trainable,
    check_forces_are_gradient,
    check_pickle_round_trip,
    check_short_emt_otf_run,
    check_stress_is_strain_derivative,
    check_training_graph_then_inference_unchanged,
    emt_copper_finetune_scores,
    si_pair,
)
from tests.random_models.fairchem_random import save_random_checkpoint  # noqa: E402

LOADER = "atomate2_otf.models.fairchem:load_fairchem"


@pytest.fixture(scope="module")
def uma_file(tmp_path_factory):
    return save_random_checkpoint(tmp_path_factory.mktemp("uma") / "uma.pt", "tiny",
                                  datasets=("omat", "omol"))


@pytest.fixture(scope="module")
def direct_file(tmp_path_factory):
    return save_random_checkpoint(tmp_path_factory.mktemp("direct") / "direct.pt", "tiny",
                                  datasets=("omol",), direct_forces=True)


@pytest.fixture(scope="module", params=["omat", "omol"])
def model(request, uma_file) -> FairChemModel:
    return load_fairchem(uma_file, task_name=request.param)


def calculator(path, task):
    from fairchem.core.calculate.ase_calculator import FAIRChemCalculator

    return FAIRChemCalculator.from_model_checkpoint(str(path), task_name=task,
                                                    inference_settings="batch", device="cpu")


def cu_cell(a=3.5, rattle=0.05, seed=1, repeat=(2, 2, 2)):
    atoms = bulk("Cu", "fcc", a=a) * repeat
    atoms.rattle(rattle, seed=seed)
    return atoms


def single(model, record, **kwargs):
    return model.evaluate(model.collate([model.prepare(record)]), **kwargs)


def test_load_through_registry_task_validation_and_spec(uma_file):
    loaded = load_model(LOADER, model=str(uma_file))
    assert isinstance(loaded, FairChemModel) and loaded.family == "fairchem"
    assert loaded.task_name == "omat"  # default when the model has it
    assert loaded.spec() == {"name": LOADER, "task_name": "omat", "model": str(uma_file)}
    assert not loaded.module.training and not loaded.direct_forces
    assert len(loaded.pretrained) == sum(p.numel() for p in loaded.parameters())
    assert loaded.defaults.sigma_tl == 0.02
    with pytest.raises(ValueError, match=r"task_name 'oc20' is not one of its tasks"):
        load_fairchem(uma_file, task_name="oc20")
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize("make", [lambda: molecule("CH3CH2OH"), cu_cell],
                         ids=["ethanol", "cu8"])
def test_matches_fairchem_calculator(model, uma_file, make):
    atoms = make()
    periodic = bool(atoms.pbc.all())
    out = single(model, record_from_atoms(atoms), compute_stress=periodic)
    atoms.calc = calculator(uma_file, model.task_name)
    assert out.energy.shape == (1,) and out.n_atoms.tolist() == [len(atoms)]
    assert out.energy.item() == pytest.approx(atoms.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(out.forces.numpy(), atoms.get_forces(), atol=1e-5)
    if periodic:
        reference = atoms.get_stress(voigt=False)
        assert np.abs(reference).max() > 1e-3
        np.testing.assert_allclose(out.stress[0].numpy(), reference, atol=1e-6)


def test_forces_are_minus_energy_gradient(model):
    check_forces_are_gradient(model, si_pair(), atol=1e-3)


def test_stress_is_strain_derivative(model):
    check_stress_is_strain_derivative(model, record_from_atoms(
        cu_cell(a=3.3, rattle=0.02, seed=2, repeat=(2, 1, 1))), atol=1e-5)


def test_batch_equals_single(model):
    check_batch_equals_single(model, [record_from_atoms(molecule("CH3CH2OH")),
                                      record_from_atoms(cu_cell())])


def test_features_invariant_and_trainable(model):
    record = record_from_atoms(cu_cell())
    check_features_trainable(model, record)
    check_features_invariant(model, record, atol=1e-4)


def test_training_graph_then_inference_unchanged(model):
    check_training_graph_then_inference_unchanged(model)


def test_pickle_round_trip(model):
    check_pickle_round_trip(model, atol=1e-6)


def test_direct_force_model(direct_file):
    """Direct forces match fairchem's; they are the force head's output (not -dE/dx), and
    their loss still has gradients w.r.t. the parameters."""
    direct = load_fairchem(direct_file)
    assert direct.direct_forces and direct.task_name == "omol"
    atoms = molecule("CH3CH2OH")
    out = single(direct, record_from_atoms(atoms), create_graph=True)
    atoms.calc = calculator(direct_file, "omol")
    assert out.energy.item() == pytest.approx(atoms.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(out.forces.detach().numpy(), atoms.get_forces(), atol=1e-5)
    grads = torch.autograd.grad(out.forces.pow(2).sum() + out.energy.sum(),
                                direct.parameters(), allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    cu = single(direct, record_from_atoms(cu_cell()), compute_stress=True)
    assert cu.stress is None  # no stress head in this model


def test_named_model_not_cached_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRCHEM_CACHE_DIR", str(tmp_path / "hf"))

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ModelNotCachedError) as info:
        load_fairchem("uma-s-1p1")
    message = str(info.value)
    assert "uma-s-1p1.pt" in message and "facebook/UMA" in message
    assert str(tmp_path / "hf") in message
    with pytest.raises(FileNotFoundError, match="neither a checkpoint file"):
        load_fairchem(tmp_path / "nothing.pt")


# -- fine-tuning and the on-the-fly loop ------------------------------------------------
@pytest.mark.slow
def test_finetuning_on_emt_copper_beats_untuned(uma_file):
    scores = emt_copper_finetune_scores(load_fairchem(uma_file, task_name="omat"),
                                        n_steps=400, step_size=3e-3, sigma_tl=2.0,
                                        n_workers=2)
    print({k: round(v, 4) for k, v in scores.items()})
    assert scores["force_tuned"] * 2 <= scores["force_untuned"], scores
    assert scores["energy_tuned"] * 2 <= scores["energy_untuned"], scores


@pytest.mark.slow
def test_short_on_the_fly_run_completes(uma_file, store, tmp_path):
    check_short_emt_otf_run(LOADER, {"model": str(uma_file), "task_name": "omat"}, store,
                            tmp_path / "jobs")
