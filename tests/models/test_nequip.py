"""NequIP/Allegro adapter (nequip 0.19) on small random-initialised models of the real
architectures, packaged with nequip's own tools (``nequip-train`` at learning rate 0, then
``nequip-package``) and loaded through the same code path as a downloaded foundation model.
"""

from __future__ import annotations

import socket
import warnings

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

pytest.importorskip("nequip")

from atomate2_otf.atoms import record_from_atoms  # noqa: E402
from atomate2_otf.models.base import load_model  # noqa: E402
from atomate2_otf.models.nequip import (  # noqa: E402
    ModelNotCachedError,
    NequIPModel,
    _preserved_global_state,
    load_nequip,
)
from tests.models.conventions import (  # noqa: E402
    check_batch_equals_single,
    check_features_invariant,
    check_features_trainable,
    check_forces_are_gradient,
    check_mixed_batch_stress_nan,
    check_short_emt_otf_run,
    check_stress_is_strain_derivative,
    check_training_graph_then_inference_unchanged,
    emt_copper_finetune_scores,
    si_pair,
)
from tests.random_models.nequip_random import package_random_model  # noqa: E402

LOADER = "atomate2_otf.models.nequip:load_nequip"


@pytest.fixture(scope="module", params=["tiny", "allegro-tiny"])
def packaged(request, tmp_path_factory):
    if request.param.startswith("allegro"):
        pytest.importorskip("allegro")
    return package_random_model(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def model(packaged) -> NequIPModel:
    return load_nequip(packaged)


def calculator(path):
    from nequip.integrations.ase import NequIPCalculator

    # nequip's calculator sets nequip's global state (float64 default dtype, e3nn code
    # generation, seeds) for the whole process; later tests (SevenNet) must not inherit it
    with warnings.catch_warnings(), _preserved_global_state():
        warnings.simplefilter("ignore")
        return NequIPCalculator._from_saved_model(str(path),
                                                  chemical_species_to_atom_type_map=True)


def cu_cell(a=3.5, rattle=0.05, seed=1, repeat=(2, 2, 2)):
    atoms = bulk("Cu", "fcc", a=a) * repeat
    atoms.rattle(rattle, seed=seed)
    return atoms


def single(model, record, **kwargs):
    return model.evaluate(model.collate([model.prepare(record)]), **kwargs)


def test_load_through_registry_and_spec(model, packaged):
    loaded = load_model(LOADER, model=str(packaged))
    assert isinstance(loaded, NequIPModel) and loaded.family == "nequip"
    assert loaded.spec() == {"name": LOADER, "model": str(packaged)}
    assert not loaded.module.training
    assert all(p.requires_grad for p in loaded.parameters())
    assert len(loaded.pretrained) == sum(p.numel() for p in loaded.parameters())
    assert loaded.defaults.sigma_tl == 0.2 and loaded.defaults.step_size == 3e-5
    assert (loaded.defaults.calibration_a, loaded.defaults.calibration_b) == (3.0, 10.0)
    # nequip's global state (float64 default dtype, reseeding) must not leak out
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize("make", [lambda: molecule("CH3CH2OH"), cu_cell],
                         ids=["ethanol", "cu8"])
def test_matches_nequip_calculator(model, packaged, make):
    atoms = make()
    periodic = bool(atoms.pbc.all())
    out = single(model, record_from_atoms(atoms), compute_stress=periodic)
    atoms.calc = calculator(packaged)
    assert out.energy.shape == (1,) and out.n_atoms.tolist() == [len(atoms)]
    assert out.energy.item() == pytest.approx(atoms.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(out.forces.numpy(), atoms.get_forces(), atol=1e-5)
    if periodic:
        reference = atoms.get_stress(voigt=False)
        assert np.abs(reference).max() > 1e-3
        np.testing.assert_allclose(out.stress[0].numpy(), reference, atol=1e-6)


def test_checkpoint_loads_to_the_same_model(model, packaged):
    """The training checkpoint (.ckpt) beside the package is the other user format."""
    from_ckpt = load_nequip(packaged.parent / "last.ckpt")
    record = record_from_atoms(cu_cell())
    a, b = single(model, record), single(from_ckpt, record)
    assert a.energy.item() == pytest.approx(b.energy.item(), abs=1e-5)
    np.testing.assert_allclose(a.forces.numpy(), b.forces.numpy(), atol=1e-5)


def test_forces_are_minus_energy_gradient(model):
    check_forces_are_gradient(model, si_pair(), atol=1e-3)


def test_stress_is_strain_derivative(model):
    # a compressed Cu cell: the random model's stress is small, so a tighter tolerance
    check_stress_is_strain_derivative(model, record_from_atoms(
        cu_cell(a=3.3, rattle=0.02, seed=2, repeat=(2, 1, 1))), atol=1e-5)


def test_batch_equals_single(model):
    check_batch_equals_single(model, [record_from_atoms(molecule("CH3CH2OH")),
                                      record_from_atoms(cu_cell())])


def test_mixed_batch_stress_nan_for_molecule_only(model):
    check_mixed_batch_stress_nan(model, record_from_atoms(cu_cell()))


def test_features_invariant_and_trainable(model):
    record = record_from_atoms(cu_cell())
    check_features_trainable(model, record)
    _, out, _ = check_features_invariant(model, record, atol=1e-5)
    assert out.features.dtype == torch.float32


def test_training_graph_then_inference_unchanged(model):
    check_training_graph_then_inference_unchanged(model)


def test_pickle_round_trip_keeps_live_parameters(model):
    """ChainPool sends the model as torch-pickled bytes; a packaged module is rebuilt from
    its file and gets the live (sampled) parameter values."""
    from atomate2_otf.bnn.parallel import model_from_bytes, model_to_bytes

    record = record_from_atoms(molecule("CH3CH2OH"))
    original = [p.detach().clone() for p in model.parameters()]
    try:
        with torch.no_grad():
            model.parameters()[0].mul_(1.5)
        clone = model_from_bytes(model_to_bytes(model))
        np.testing.assert_allclose(single(clone, record).forces.numpy(),
                                   single(model, record).forces.numpy(), atol=1e-7)
        assert torch.equal(clone.pretrained, model.pretrained)
    finally:
        with torch.no_grad():
            for p, value in zip(model.parameters(), original, strict=True):
                p.copy_(value)


def test_uncovered_element(model):
    with pytest.raises(ValueError, match=r"Au \(Z=79\)"):
        model.prepare(record_from_atoms(bulk("Au", "fcc", a=4.08)))


def test_named_model_not_cached_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NEQUIP_CACHE_DIR", str(tmp_path / "cache"))

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(socket, "create_connection", no_network)
    for name in ("nequip-oam-l", "nequip.net:mir-group/NequIP-OAM-L:0.1"):
        with pytest.raises(ModelNotCachedError) as info:
            load_nequip(name)
        message = str(info.value)
        assert str(tmp_path / "cache") in message and "NequIP-OAM-L" in message
        assert ".nequip.zip" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_nequip(tmp_path / "missing.nequip.zip")


def test_named_model_found_in_cache(packaged, tmp_path, monkeypatch):
    import json
    import shutil

    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(packaged, cache / "abc.nequip.zip")
    (cache / "abc.metadata.json").write_text(json.dumps(
        {"model_id": "mir-group/NequIP-OAM-L:0.1", "download_url": "x", "file_sha256": "y"}))
    monkeypatch.setenv("NEQUIP_CACHE_DIR", str(cache))
    assert load_nequip("nequip-oam-l").path == str(cache / "abc.nequip.zip")


# -- fine-tuning and the on-the-fly loop (NequIP only: the same code path for Allegro) ----
@pytest.fixture(scope="module")
def nequip_package(tmp_path_factory):
    return package_random_model(tmp_path_factory.mktemp("ft"), "tiny")


@pytest.mark.slow
def test_finetuning_on_emt_copper_beats_untuned(nequip_package):
    scores = emt_copper_finetune_scores(load_nequip(nequip_package), n_steps=400,
                                        step_size=1e-2, sigma_tl=2.0, n_workers=2)
    print({k: round(v, 4) for k, v in scores.items()})
    assert scores["force_tuned"] * 2 <= scores["force_untuned"], scores
    assert scores["energy_tuned"] * 2 <= scores["energy_untuned"], scores


@pytest.mark.slow
def test_short_on_the_fly_run_completes(nequip_package, store, tmp_path):
    check_short_emt_otf_run(LOADER, {"model": str(nequip_package)}, store, tmp_path / "jobs")
