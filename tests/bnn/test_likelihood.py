import math

import numpy as np
import torch

from atomate2_otf.bnn.likelihood import Targets, log_likelihood
from atomate2_otf.records import StructureRecord


def test_gaussian_terms_and_stress_mask():
    mol = StructureRecord([1, 1], [[0, 0, 0], [0.7, 0, 0]], energy=-1.0,
                          forces=[[0.1, 0, 0], [-0.1, 0, 0]])
    crystal = StructureRecord([29], [[0, 0, 0]], cell=np.eye(3) * 2.5, pbc=True, energy=-3.0,
                              forces=[[0, 0, 0]], stress=np.eye(3) * 0.01)
    targets = Targets.from_records([mol, crystal], energy_offset=0.5)
    energy = torch.tensor([-0.4, -2.5], requires_grad=True)
    forces = torch.zeros(3, 3)
    sigma = torch.tensor([0.1, 0.2, 0.05])
    stress = torch.stack([torch.full((3, 3), float("nan")), torch.zeros(3, 3)])
    ll = log_likelihood(energy, forces, sigma, targets, energy_sigma=0.1, stress=stress,
                        stress_sigma=0.02)
    e_mol = -0.5 * ((-0.4 - (-0.5)) / 0.1) ** 2 - math.log(0.1)
    f_mol = (-0.5 * (0.1 / 0.1) ** 2 - 3 * math.log(0.1)
             - 0.5 * (0.1 / 0.2) ** 2 - 3 * math.log(0.2))
    e_cu = -0.5 * ((-2.5 - (-2.5)) / 0.1) ** 2 - math.log(0.1)
    f_cu = -3 * math.log(0.05)
    s_cu = 3 * (-0.5 * (0.01 / 0.02) ** 2) - 6 * math.log(0.02)
    np.testing.assert_allclose(ll.detach().numpy(), [e_mol + f_mol, e_cu + f_cu + s_cu],
                               rtol=1e-5)
    ll.sum().backward()
    assert torch.isfinite(energy.grad).all()  # the molecule's NaN stress never leaks
