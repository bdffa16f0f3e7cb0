"""A random fairchem inference checkpoint in the format of the released ones."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

#: backbone shapes of released fairchem models (fairchem's training configs): eSEN-sm
#: (K4L2 without experts, ~6 M parameters), UMA-S (K4L2 with 32 MoLE experts), and a
#: tiny one for tests. Used by :func:`save_random_checkpoint`.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(sphere_channels=16, hidden_channels=16, edge_channels=16,
                 num_distance_basis=16, num_layers=2, lmax=2, mmax=2, num_experts=4),
    "esen-sm": dict(sphere_channels=128, hidden_channels=128, edge_channels=128,
                    num_distance_basis=64, num_layers=4, lmax=2, mmax=2, num_experts=0),
    "uma-s": dict(sphere_channels=128, hidden_channels=128, edge_channels=128,
                  num_distance_basis=64, num_layers=4, lmax=2, mmax=2, num_experts=32),
}


def save_random_checkpoint(path: str | os.PathLike[str], shape: str = "tiny",
                           datasets: Sequence[str] = ("omat", "omol"),
                           direct_forces: bool = False, seed: int = 0,
                           energy_rmsd: float = 1.423) -> Path:
    """Write a randomly initialised fairchem inference checkpoint of a released shape.

    The file has the format of fairchem's released checkpoints (``MLIPInferenceCheckpoint``:
    model config, weights, EMA weights, tasks with normalisers and element references) so
    that it loads through the same code path as a real one. For tests and benchmarks only:
    the weights are random. ``direct_forces`` builds a direct-force model (energy head plus
    an equivariant force head) instead of a conserving one.
    """
    import hydra
    from fairchem.core.units.mlip_unit.api.inference import MLIPInferenceCheckpoint

    dims = dict(SHAPES[shape])
    experts = dims.pop("num_experts")
    datasets = list(datasets)
    backbone: dict[str, Any] = dict(
        max_num_elements=100, otf_graph=True, max_neighbors=300, cutoff=6.0,
        regress_forces=True, regress_stress=not direct_forces, direct_forces=direct_forces,
        norm_type="rms_norm_sh", act_type="gate", ff_type="spectral",
        chg_spin_emb_type="rand_emb", cs_emb_grad=True, dataset_list=datasets, **dims)
    if experts:
        backbone.update(model="fairchem.core.models.uma.escn_moe.eSCNMDMoeBackbone",
                        num_experts=experts, use_composition_embedding=True,
                        model_version=1.1)
    else:
        backbone.update(model="fairchem.core.models.uma.escn_md.eSCNMDBackbone")
    if direct_forces:
        heads: dict[str, Any] = {
            "energy": {"module": "fairchem.core.models.uma.escn_md.MLP_Energy_Head"},
            "forces": {"module": "fairchem.core.models.uma.escn_md.Linear_Force_Head"}}
        prefix = ""
        if len(datasets) != 1:
            raise ValueError("a direct-force checkpoint here has exactly one dataset")
    else:
        heads = {"efs": {"module": "fairchem.core.models.uma.escn_moe."
                                   "DatasetSpecificSingleHeadWrapper",
                         "head_cls": "fairchem.core.models.uma.escn_md.MLP_EFS_Head",
                         "head_kwargs": {"wrap_property": False}, "dataset_names": datasets}}
        prefix = "{}_"
    config = {"_target_": "fairchem.core.models.base.HydraModel", "backbone": backbone,
              "heads": heads, "pass_through_head_outputs": not direct_forces}
    torch.manual_seed(seed)
    module = hydra.utils.instantiate(copy.deepcopy(config))
    ema = torch.optim.swa_utils.AveragedModel(module)
    norm = "fairchem.core.modules.normalization.normalizer.Normalizer"
    refs = [0.0] + [-1.0 - 0.02 * z for z in range(1, 100)]  # eV per element, arbitrary
    tasks = []
    for dataset in datasets:
        name = prefix.format(dataset)
        properties = [("energy", "system", [1]), ("forces", "atom", [3])]
        if not direct_forces:
            properties.append(("stress", "system", [1, 9]))
        for prop, level, dim in properties:
            task: dict[str, Any] = {
                "_target_": "fairchem.core.units.mlip_unit.mlip_unit.Task",
                "name": f"{name}{prop}", "level": level, "property": prop,
                "out_spec": {"_target_": "fairchem.core.units.mlip_unit.mlip_unit.OutputSpec",
                             "dim": dim, "dtype": "float32"},
                "normalizer": {"_target_": norm, "mean": 0.0, "rmsd": energy_rmsd},
                "datasets": [dataset]}
            if prop == "energy":
                task["element_references"] = {
                    "_target_": "fairchem.core.modules.normalization.element_references."
                                "ElementReferences",
                    "element_references": {"_target_": "torch.DoubleTensor", "_args_": [refs]}}
            tasks.append(task)
    checkpoint = MLIPInferenceCheckpoint(model_config=config,
                                         model_state_dict=module.state_dict(),
                                         ema_state_dict=ema.state_dict(), tasks_config=tasks)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path
