"""A random nequip/Allegro model, packaged by nequip's own tools (``.nequip.zip``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: model shapes for :func:`package_random_model`: ``tiny`` for tests; ``paper`` like the
#: paper's NequIP (64 invariant features, as the paper's 64 -> 32 -> 16 -> 1 noise head
#: implies; l_max 2, 4 layers, r_max 5 A, nequip's standard choices); ``allegro-tiny``.
RANDOM_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"_target_": "nequip.model.NequIPGNNModel", "l_max": 1, "num_layers": 2,
             "num_features": 8, "radial_mlp_depth": 1, "radial_mlp_width": 8},
    "paper": {"_target_": "nequip.model.NequIPGNNModel", "l_max": 2, "num_layers": 4,
              "num_features": 64, "radial_mlp_depth": 2, "radial_mlp_width": 64},
    "allegro-tiny": {
        "_target_": "allegro.model.AllegroModel", "l_max": 1, "num_layers": 1,
        "radial_chemical_embed": {"_target_": "allegro.nn.TwoBodyBesselScalarEmbed",
                                  "num_bessels": 8},
        "radial_chemical_embed_dim": 8, "scalar_embed_mlp_hidden_layers_width": 16,
        "num_scalar_features": 16, "num_tensor_features": 4,
        "allegro_mlp_hidden_layers_width": 16, "readout_mlp_hidden_layers_width": 8},
}


def package_random_model(folder: str | os.PathLike[str], shape: str = "tiny",
                         type_names: Sequence[str] = ("H", "C", "O", "Si", "Cu"),
                         r_max: float = 4.0, seed: int = 1,
                         model_dtype: str = "float32") -> Path:
    """Build a randomly initialised nequip model and package it as users' files are made.

    Runs ``nequip-train`` for one epoch at learning rate 0 on nequip's EMT test data (so the
    weights stay at their random initialisation) and ``nequip-package build`` on the
    resulting checkpoint. Returns the ``.nequip.zip``; ``last.ckpt`` lies beside it. For
    tests and benchmarks only.
    """
    import subprocess
    import sys

    import yaml

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    names = list(type_names)
    model = dict(RANDOM_SHAPES[shape])
    model.update(seed=seed, model_dtype=model_dtype, type_names=names, r_max=r_max,
                 avg_num_neighbors=20.0, per_type_energy_scales=0.5,
                 per_type_energy_shifts={t: -1.0 - 0.1 * i for i, t in enumerate(names)})
    species = {t: t for t in names}
    loader = {"_target_": "torch.utils.data.DataLoader", "batch_size": 2}
    config = {
        "run": ["train"], "seed": seed,
        "data": {
            "_target_": "nequip.data.datamodule.NequIPDataModule", "seed": seed,
            "split_dataset": {
                "dataset": {
                    "_target_": "nequip.data.dataset.EMTTestDataset",
                    "transforms": [
                        {"_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
                         "model_type_names": names,
                         "chemical_species_to_atom_type_map": species},
                        {"_target_": "nequip.data.transforms.NeighborListTransform",
                         "r_max": r_max}],
                    "supercell": [2, 2, 2], "seed": seed, "num_frames": 4, "element": "Cu"},
                "train": 2, "val": 2},
            "train_dataloader": loader, "val_dataloader": loader},
        "trainer": {"_target_": "lightning.Trainer", "max_epochs": 1,
                    "num_sanity_val_steps": 0, "logger": False,
                    "enable_progress_bar": False,
                    "callbacks": [{"_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "dirpath": str(folder), "save_last": True}]},
        "training_module": {
            "_target_": "nequip.train.NequIPLightningModule",
            "loss": {"_target_": "nequip.train.EnergyForceLoss", "per_atom_energy": True,
                     "coeffs": {"total_energy": 1.0, "forces": 1.0}},
            "val_metrics": {"_target_": "nequip.train.EnergyForceMetrics",
                            "coeffs": {"total_energy_mae": 1.0, "forces_mae": 1.0}},
            "optimizer": {"_target_": "torch.optim.Adam", "lr": 0.0},
            "model": model},
    }
    (folder / "conf.yaml").write_text(yaml.safe_dump(config))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for command in ([str(bin_dir / "nequip-train"), "-cn", "conf",
                     f"hydra.run.dir={folder / 'run'}"],
                    [str(bin_dir / "nequip-package"), "build", str(folder / "last.ckpt"),
                     str(folder / f"{shape}.nequip.zip")]):
        result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return folder / f"{shape}.nequip.zip"
