"""A user's own reference Maker plugs into OTFMDMaker (reference/__init__.py's contract):
a plain label dict with ``stress_unit``, and a pydantic document shaped like atomate2's."""

from dataclasses import dataclass

import numpy as np
import pytest
from jobflow import Maker, job
from pydantic import BaseModel
from pymatgen.io.ase import AseAtomsAdaptor

from atomate2_otf.flows import OTFMDMaker
from atomate2_otf.reference.labels import ase_stress_to_kbar
from tests.reference_vasp.helpers import copper, emt_values, final_labels, record_atoms, run_otf


@dataclass
class PlainDictEMTMaker(Maker):
    """Returns ``{"energy", "forces", "stress", "stress_unit"}``: stress in ASE's eV/A^3."""

    name: str = "my EMT (plain dict)"

    @job
    def make(self, structure):
        energy, forces, stress = emt_values(AseAtomsAdaptor.get_atoms(structure))
        return {"energy": energy, "forces": forces.tolist(), "stress": stress.tolist(),
                "stress_unit": "eV/A^3"}


class MyOutput(BaseModel):
    energy: float
    forces: list[list[float]]
    stress: list[list[float]]  # kbar, VASP's sign: what atomate2 task documents hold
    elapsed_time: float


class MyTaskDoc(BaseModel):
    formula: str
    output: MyOutput


@dataclass
class PydanticDocEMTMaker(Maker):
    """Returns a pydantic document with ``output.energy/forces/stress`` (kbar)."""

    name: str = "my EMT (pydantic doc)"

    @job
    def make(self, structure):
        energy, forces, stress = emt_values(AseAtomsAdaptor.get_atoms(structure))
        return MyTaskDoc(formula=structure.composition.reduced_formula, output=MyOutput(
            energy=energy, forces=forces.tolist(),
            stress=ase_stress_to_kbar(stress).tolist(), elapsed_time=0.25))


@pytest.mark.parametrize("reference", [PlainDictEMTMaker(), PydanticDocEMTMaker()],
                         ids=["plain-dict", "pydantic-doc"])
def test_user_maker_labels_an_otf_run(store, tmp_path, reference):
    maker = OTFMDMaker(model="toy", reference_maker=reference, n_steps=10, timestep_fs=1.0,
                       force_trigger_every=5, n_chains=2, update_steps=2, n_workers=1,
                       trajectory_interval=5, threshold=0.05)
    doc = run_otf(maker, copper(), store, tmp_path / "jobs")
    assert doc.completed and doc.reference == reference.name
    assert doc.n_reference_calls == 1 + 10 // 5  # call 0, then forced at MD steps 5 and 10
    labels = final_labels(store, doc)
    assert len(labels) == doc.n_reference_calls
    for record in labels:
        energy, forces, stress = emt_values(record_atoms(record))
        assert abs(record.energy - energy) < 1e-9
        np.testing.assert_allclose(record.forces, forces, atol=1e-9)
        np.testing.assert_allclose(record.stress, stress, atol=1e-12)
    if isinstance(reference, PydanticDocEMTMaker):  # output.elapsed_time is the cost
        assert all(call.reference_s == pytest.approx(0.25) for call in doc.calls)


def test_a_plain_dict_without_stress_unit_is_refused(store, tmp_path):
    @dataclass
    class NoUnitMaker(PlainDictEMTMaker):
        @job
        def make(self, structure):
            energy, forces, stress = emt_values(AseAtomsAdaptor.get_atoms(structure))
            return {"energy": energy, "forces": forces.tolist(), "stress": stress.tolist()}

    maker = OTFMDMaker(model="toy", reference_maker=NoUnitMaker(), n_steps=5, n_chains=2,
                       update_steps=2, n_workers=1)
    with pytest.raises(ValueError, match="reference call 0.*stress_unit='eV/A\\^3'"):
        run_otf(maker, copper(), store, tmp_path / "jobs")
