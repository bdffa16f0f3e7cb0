"""The data set inside a checkpoint: packed into flat tensors, exact, fast to load."""

import io
import time

import numpy as np
import torch

from atomate2_otf.bnn.checkpoint import pack_records, unpack_records
from atomate2_otf.records import StructureRecord


def _records(n: int) -> list[StructureRecord]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        atoms = 3 + i % 4
        periodic = i % 2 == 0
        out.append(StructureRecord(
            numbers=rng.integers(1, 30, atoms), positions=rng.normal(size=(atoms, 3)),
            cell=np.eye(3) * 5 if periodic else np.zeros((3, 3)), pbc=periodic,
            energy=float(rng.normal()), forces=rng.normal(size=(atoms, 3)),
            stress=rng.normal(size=(3, 3)) if periodic else None))
    return out


def test_round_trip_is_exact_with_and_without_stress():
    records = _records(7)
    back = unpack_records(pack_records(records))
    assert len(back) == 7
    for a, b in zip(records, back, strict=True):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.cell, b.cell)
        np.testing.assert_array_equal(a.pbc, b.pbc)
        assert a.energy == b.energy
        np.testing.assert_array_equal(a.forces, b.forces)
        assert (a.stress is None) == (b.stress is None)
        if a.stress is not None:
            np.testing.assert_array_equal(a.stress, b.stress)
    assert unpack_records(pack_records([])) == []


def test_weights_only_load_of_a_large_data_set_is_fast():
    """500 labelled structures load in well under a second with weights_only=True (the
    nested-list form took ~35 ms for a few dozen small ones)."""
    buffer = io.BytesIO()
    torch.save({"data": pack_records(_records(500))}, buffer)
    started = time.perf_counter()
    payload = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    records = unpack_records(payload["data"])
    assert len(records) == 500
    assert time.perf_counter() - started < 0.5
