"""A full on-the-fly run with atomate2's VASP StaticMaker (the EMT stand-in as VASP)."""

import numpy as np
import pytest

from atomate2_otf.flows import OTFMDMaker
from tests.fake_vasp import fake_vasp_maker
from tests.reference_vasp.helpers import copper, emt_values, final_labels, record_atoms, run_otf

#: POTCAR.spec stands in for the licensed POTCARs; pymatgen's Vasprun looks for them anyway
pytestmark = pytest.mark.filterwarnings("ignore:No POTCAR file with matching TITEL:UserWarning")


def test_otf_run_with_vasp_static_maker_labels_equal_emt(store, tmp_path):
    maker = OTFMDMaker(model="toy", reference_maker=fake_vasp_maker(), n_steps=15,
                       timestep_fs=1.0, force_trigger_every=5, n_chains=2, update_steps=2,
                       n_workers=1, trajectory_interval=5, threshold=0.05)
    doc = run_otf(maker, copper(), store, tmp_path / "jobs")
    assert doc.n_md_steps == 15 and doc.reference == "VASP static (MP PBE)"
    # forced triggers at MD steps 5, 10 and 15 after call 0: 1 + 15 // 5 calls
    assert doc.n_reference_calls == 1 + 15 // 5
    assert [call.md_step for call in doc.calls] == [0, 5, 10, 15]

    # every reference job ran through atomate2's VASP path and left a VASP task document
    tasks = list(store.query({"name": {"$regex": "^otf reference"}},
                             properties=["output.task_label", "output.state",
                                         "output.input.incar.ISYM"]))
    assert len(tasks) == doc.n_reference_calls
    assert sorted(t["output"]["task_label"] for t in tasks) == [
        f"otf reference {i}" for i in range(doc.n_reference_calls)]
    assert all(t["output"]["state"] == "successful" for t in tasks)
    assert all(t["output"]["input"]["incar"]["ISYM"] == 0 for t in tasks)

    labels = final_labels(store, doc)
    assert len(labels) == doc.n_reference_calls
    for record in labels:
        energy, forces, stress = emt_values(record_atoms(record))
        assert abs(record.energy - energy) < 1e-6
        np.testing.assert_allclose(record.forces, forces, atol=1e-6)
        np.testing.assert_allclose(record.stress, stress, atol=1e-9)
    # the labels are of distinct MD snapshots, not one structure relabelled
    assert len({round(r.energy, 8) for r in labels}) == len(labels)
    for call, record in zip(doc.calls, labels, strict=True):
        assert abs(call.reference_energy - record.energy) < 1e-9
