"""Changing the reference between runs: the energy offset absorbs the new energy zero, and
units are read per reference, so forces and stresses come out identical.

Run A labels with atomate2's ASE EMT Maker (an ``AseStructureTaskDoc``, stress in kbar
from ASE's stress); run B with the VASP StaticMaker whose stand-in reports EMT + a constant
(a VASP TaskDoc, stress in kbar from vasprun.xml). Same structure, same seed.
"""

import numpy as np
import pytest

from atomate2_otf.flows import OTFMDMaker
from atomate2_otf.reference.makers import EMTStaticMaker
from tests.fake_vasp import fake_vasp_maker
from tests.reference_vasp.helpers import copper, final_labels, run_otf

#: POTCAR.spec stands in for the licensed POTCARs; pymatgen's Vasprun looks for them anyway
pytestmark = pytest.mark.filterwarnings("ignore:No POTCAR file with matching TITEL:UserWarning")

SHIFT = 3.712345  # eV: another code's energy zero (e.g. PAW atoms instead of EMT's crystal)


def otf(reference) -> OTFMDMaker:
    return OTFMDMaker(model="toy", reference_maker=reference, n_steps=15, timestep_fs=1.0,
                      force_trigger_every=5, n_chains=2, update_steps=2, n_workers=1,
                      trajectory_interval=5, threshold=0.05, seed=7)


def test_offsets_differ_by_the_shift_and_forces_are_identical(store, tmp_path):
    structure = copper()
    emt = run_otf(otf(EMTStaticMaker()), structure, store, tmp_path / "emt")
    vasp = run_otf(otf(fake_vasp_maker(energy_shift=SHIFT)), structure, store,
                   tmp_path / "vasp")
    assert emt.run_id != vasp.run_id

    # offset = E_model(x0) - E_ref(x0): one reference's zero moved by SHIFT moves it by -SHIFT
    assert abs((emt.energy_offset - vasp.energy_offset) - SHIFT) < 1e-6

    labels_emt, labels_vasp = final_labels(store, emt), final_labels(store, vasp)
    # with the offset absorbing the shift the fine-tuning targets are the same, so the two
    # runs follow the same trajectory and label the same snapshots
    assert len(labels_emt) == len(labels_vasp) == emt.n_reference_calls == 1 + 15 // 5
    for a, b in zip(labels_emt, labels_vasp, strict=True):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)
        assert abs((b.energy - a.energy) - SHIFT) < 1e-6
        np.testing.assert_allclose(b.forces, a.forces, atol=1e-6)
        np.testing.assert_allclose(b.stress, a.stress, atol=1e-9)
        assert abs((a.energy + emt.energy_offset) - (b.energy + vasp.energy_offset)) < 1e-6
    for a, b in zip(emt.calls, vasp.calls, strict=True):
        assert abs((b.reference_energy - a.reference_energy) - SHIFT) < 1e-6
