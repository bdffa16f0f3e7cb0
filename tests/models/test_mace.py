"""MACE adapter: a small random MACE-MP-shaped checkpoint, saved as users have it, loaded
through the adapter's file path, must give mace's own calculator's numbers, consistent
derivatives and invariant features; it must fine-tune and drive an on-the-fly run.

MACE-MP-0 weights cannot be downloaded here, so the checkpoint is a random-initialised
``ScaleShiftMACE`` of the real architecture (real interaction/product/readout blocks) with
few channels; the file goes through exactly the code that loads a real ``.model``.
These tests run in the MACE virtualenv (mace-torch pins e3nn 0.4.4, which cannot share the
main environment) and are skipped elsewhere.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

pytest.importorskip("mace", reason="mace-torch is not installed (it has its own venv: "
                    "e3nn 0.4.4 conflicts with sevenn's e3nn)")

from atomate2_otf.atoms import record_from_atoms  # noqa: E402
from atomate2_otf.models.base import load_model  # noqa: E402
from atomate2_otf.models.mace import (  # noqa: E402
    MACEModel,
    ModelNotCachedError,
    load_mace,
    mace_mp_cache_path,
    save_mace_state_dict,
)
from tests.models.conventions import (  # noqa: E402
    check_batch_equals_single,
    check_features_invariant,
    check_features_trainable,
    check_forces_are_gradient,
    check_mixed_batch_stress_nan,
    check_pickle_round_trip,
    check_short_emt_otf_run,
    check_stress_is_strain_derivative,
    check_training_graph_then_inference_unchanged,
    emt_copper_finetune_scores,
    si_pair,
)
from tests.random_models.mace_random import build_scale_shift_mace  # noqa: E402

LOADER = "atomate2_otf.models.mace:load_mace"
#: a few channels, two interactions, MACE-MP's blocks: ~10^4 parameters, ms per structure
SMALL = dict(hidden_irreps="8x0e+8x1o", max_ell=2, correlation=2, r_max=4.0, num_bessel=6,
             MLP_irreps="8x0e", radial_MLP=[16], avg_num_neighbors=10.0)
NUMBERS = [1, 6, 8, 14, 29]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A MACE checkpoint as users have it: the whole module pickled by torch.save."""
    path = tmp_path_factory.mktemp("mace") / "small.model"
    torch.save(build_scale_shift_mace(atomic_numbers=NUMBERS, **SMALL), path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint) -> MACEModel:
    return load_model(LOADER, model=str(checkpoint))


def cu_cell():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    return atoms


def single(model, record, **kwargs):
    return model.evaluate(model.collate([model.prepare(record)]), **kwargs)


def test_load_by_path_builds_mace(model, checkpoint):
    assert isinstance(model, MACEModel) and model.family == "mace"
    assert model.defaults.sigma_tl == 0.5 and model.defaults.step_size == 1e-3
    assert (model.defaults.calibration_a, model.defaults.calibration_b) == (1.5, 10.0)
    assert model.spec() == {"name": LOADER, "model": str(checkpoint)}
    params = model.parameters()
    assert params and all(p.requires_grad and p.dtype == torch.float32 for p in params)
    assert len(model.pretrained) == sum(p.numel() for p in params)
    assert model.supported_numbers == frozenset(NUMBERS)
    assert model.feature_dim == 16  # 8x0e of each of the two layers
    kinds = {type(m).__name__ for m in model.module.modules()}
    assert not {k for k in kinds if "Dropout" in k or "BatchNorm" in k}, kinds


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("make", [cu_cell, lambda: molecule("CH3CH2OH")], ids=["cu", "ethanol"])
def test_matches_mace_calculator(checkpoint, dtype, make):
    from mace.calculators import MACECalculator

    model = load_mace(str(checkpoint), dtype=dtype)
    calculator = MACECalculator(model_paths=str(checkpoint), device="cpu", default_dtype=dtype)
    atoms = make()
    periodic = bool(atoms.pbc.all())
    out = single(model, record_from_atoms(atoms), compute_stress=periodic)
    atoms.calc = calculator
    assert out.energy.shape == (1,) and out.n_atoms.tolist() == [len(atoms)]
    assert out.energy.item() == pytest.approx(atoms.get_potential_energy(), abs=1e-5)
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1e-2  # not a comparison between zeros
    np.testing.assert_allclose(out.forces.numpy(), forces, atol=1e-5)
    if periodic:
        reference = atoms.get_stress(voigt=False)
        assert np.abs(reference).max() > 1e-3
        np.testing.assert_allclose(out.stress[0].numpy(), reference, atol=1e-5)
    # features: the invariant descriptors mace itself reports
    descriptors = calculator.get_descriptors(atoms, invariants_only=True)
    np.testing.assert_allclose(out.features.detach().double().numpy(), descriptors, atol=1e-5)
    assert torch.get_default_dtype() == torch.float32  # nothing leaked a global dtype


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_state_dict_form_gives_the_same_model(checkpoint, tmp_path, dtype):
    path = tmp_path / "small.pt"
    save_mace_state_dict(torch.load(checkpoint, weights_only=False), path)
    model, other = load_mace(str(checkpoint), dtype=dtype), load_mace(str(path), dtype=dtype)
    assert torch.equal(model.pretrained, other.pretrained)
    record = record_from_atoms(cu_cell())
    a, b = single(model, record, compute_stress=True), single(other, record, compute_stress=True)
    assert a.energy.item() == b.energy.item()
    np.testing.assert_array_equal(a.forces.numpy(), b.forces.numpy())
    np.testing.assert_array_equal(a.stress.numpy(), b.stress.numpy())


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"model": {}}, path)
    with pytest.raises(TypeError, match="not a MACE checkpoint"):
        load_mace(str(path))
    with pytest.raises(FileNotFoundError, match="neither a file nor a MACE-MP model name"):
        load_mace(str(tmp_path / "missing.model"))


def test_forces_are_minus_energy_gradient(model):
    check_forces_are_gradient(model, si_pair())


def test_stress_sign_and_unit(checkpoint):
    # float64: the finite difference of the energy resolves the stress of a random model
    check_stress_is_strain_derivative(load_mace(str(checkpoint), dtype="float64"),
                                      si_pair(a=5.0, rattle=0.02, seed=2), atol=2e-5)


def test_batch_equals_single(model):
    si = bulk("Si", "diamond", a=5.43) * (2, 2, 1)
    si.rattle(0.05, seed=0)
    records = [record_from_atoms(molecule("CH3CH2OH")), record_from_atoms(si),
               record_from_atoms(cu_cell())]
    check_batch_equals_single(model, records)


def test_mixed_batch_stress_nan_for_molecule_only(model):
    check_mixed_batch_stress_nan(model, record_from_atoms(cu_cell()))


def test_training_graph_then_inference_unchanged(model):
    check_training_graph_then_inference_unchanged(model, atol=0.0, energy_atol=0.0)


def test_features_invariant_and_trainable(model):
    record = record_from_atoms(cu_cell())
    check_features_trainable(model, record)
    rotation, out, turned = check_features_invariant(model, record, atol=1e-5)
    # and the forces rotate with the structure
    np.testing.assert_allclose(turned.forces.numpy(), out.forces.numpy() @ rotation.T,
                               atol=1e-5)


def test_uncovered_element(model):
    with pytest.raises(ValueError, match=r"Fe \(Z=26\)"):
        model.prepare(record_from_atoms(bulk("Fe", "bcc", a=2.87)))


def test_pickle_round_trip(model):
    check_pickle_round_trip(model, atol=0.0)


def test_missing_mace_mp_file_names_file_and_folder(tmp_path, monkeypatch, checkpoint):
    """No cached MACE-MP-0 file and no network: a clear error, and no download attempt."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise AssertionError("the loader tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    cached, url = mace_mp_cache_path("medium")
    assert cached == tmp_path / "mace" / "20231203mace128L1_epoch199model"
    with pytest.raises(ModelNotCachedError) as info:
        load_mace("medium")
    message = str(info.value)
    assert "20231203mace128L1_epoch199model" in message and str(tmp_path / "mace") in message
    assert url in message
    # a file placed there is found by name through mace's own path
    cached.parent.mkdir(parents=True)
    cached.write_bytes(Path(checkpoint).read_bytes())
    model = load_mace("medium")
    assert model.spec() == {"name": "mace", "model": "medium"}
    with pytest.raises(ValueError, match="unknown MACE-MP model name"):
        mace_mp_cache_path("huge")


def test_random_mace_mp_medium_shape():
    """The benchmark stand-in has MACE-MP-0 medium's size and feature width."""
    model = load_model("tests.random_models.mace_random:random_mace_mp_medium")
    n = sum(p.numel() for p in model.parameters())
    assert 4.6e6 < n < 4.8e6, n  # MACE-MP-0 medium: 4.69 M
    assert model.feature_dim == 256 and model.cutoff == 6.0
    assert len(model.supported_numbers) == 89


def test_finetuning_on_emt_copper_beats_untuned(checkpoint):
    """Ten EMT-labelled Cu frames: held-out energy and force errors drop by >= 2x.

    The start is a random network, far from the labels (unlike a pretrained potential), so
    the step size is 10x MACE's gamma_0; measured: energy 0.20 -> 0.010 eV, forces 0.63 ->
    0.06 eV/A with 2 chains x 150 steps (~6 s).
    """
    scores = emt_copper_finetune_scores(load_mace(str(checkpoint)), n_steps=150,
                                        step_size=1e-2)
    print(scores)
    assert scores["energy_tuned"] * 2 <= scores["energy_untuned"], scores
    assert scores["force_tuned"] * 2 <= scores["force_untuned"], scores


def test_on_the_fly_run_completes(checkpoint, store, tmp_path):
    """A toy on-the-fly run with the MACE checkpoint and EMT as the reference."""
    check_short_emt_otf_run(LOADER, {"model": str(checkpoint)}, store, tmp_path / "jobs")
