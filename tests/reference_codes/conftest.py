"""Fixtures of the reference-code tests: toy models (with Si for QE), a store, skips.

pw.x and PySCF are optional here (CI installs both); without them their tests are skipped
with the reason, and the tests of the retry machinery that need neither still run.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from atomate2_otf.models.base import register_model
from atomate2_otf.reference.qe import default_pseudo_dir
from tests.toy_model import ToyModel

needs_pw = pytest.mark.skipif(
    shutil.which("pw.x") is None or not Path(default_pseudo_dir()).is_dir(),
    reason="Quantum ESPRESSO is not installed (apt-get install quantum-espresso "
           "quantum-espresso-data: pw.x and /usr/share/espresso/pseudo)")

needs_pyscf = pytest.mark.skipif(importlib.util.find_spec("pyscf") is None,
                                 reason="PySCF is not installed (pip install pyscf)")


class ToySiModel(ToyModel):
    """The toy pair potential, also accepting Si (the QE tests label silicon)."""

    @property
    def supported_numbers(self) -> frozenset[int]:
        return frozenset({1, 6, 8, 14, 29})


@pytest.fixture(scope="session", autouse=True)
def toy_models_registered():
    """``"toy"`` (H, C, O, Cu) and ``"toy-si"`` (plus Si); milliseconds per step."""
    register_model("toy", ToyModel)
    register_model("toy-si", ToySiModel)


@pytest.fixture
def store(tmp_path, monkeypatch):
    from atomate2_otf.store import embedded_job_store

    monkeypatch.chdir(tmp_path)  # atomate2's ASE Makers and pw.x write into the working dir
    job_store = embedded_job_store(tmp_path / "store")
    job_store.connect()
    return job_store


@pytest.fixture
def counting_command(tmp_path):
    """``make(tail)``: an executable that counts its calls in a file, then runs ``tail``
    (a shell line, ``"$@"`` are pw.x's arguments); ``calls()`` reads the count."""

    class Command:
        counter = tmp_path / "calls.txt"

        def make(self, tail: str, name: str = "pw-wrapper") -> str:
            script = tmp_path / name
            script.write_text(f'#!/bin/sh\necho x >> "{self.counter}"\n{tail}\n')
            script.chmod(0o755)
            return str(script)

        def calls(self) -> int:
            return len(self.counter.read_text().split()) if self.counter.exists() else 0

    return Command()


def energy_forces(result) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces (eV/A) of an atomate2 ``AseResult`` (``maker.run_ase``)."""
    traj = result.trajectory
    if hasattr(traj, "frame_properties"):  # pymatgen Trajectory
        frame = traj.frame_properties[-1]
        return float(frame["energy"]), np.asarray(frame["forces"], dtype=float)
    return float(traj.energy[-1]), np.asarray(traj.forces[-1], dtype=float)  # emmet
