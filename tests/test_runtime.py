"""Process-level settings: glibc keeps freed tensor memory for the next training step."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from atomate2_otf.runtime import MALLOC_ENV, keep_freed_memory

# Allocate, zero and free a few 1-7 MB tensors per "step", as a training step does with
# its intermediates and gradients, and count the page faults after a warm-up: a fresh
# mmap'd page faults once per 4 kB, a reused heap block not at all.
_FAULTS = """
import resource, sys, torch
from atomate2_otf.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step(i):
    xs = [torch.zeros(2**18 * (1 + (i + k) % 7)) for k in range(4)]
    del xs
for i in range(10):
    step(i)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(50):
    step(i)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt thresholds are a glibc feature")


def _page_faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True,
                         text=True, check=True, timeout=120, env=env)
    return int(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    default, kept = _page_faults("default"), _page_faults("keep")
    # default glibc: most blocks are fresh mappings (~256 faults per MB)
    assert default > 10_000, default
    assert kept < default / 10, (kept, default)


@glibc_only
def test_keep_freed_memory_reports_success_and_is_idempotent(monkeypatch):
    for name in MALLOC_ENV:
        monkeypatch.delenv(name, raising=False)
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True


@glibc_only
@pytest.mark.parametrize("name", MALLOC_ENV)
def test_users_malloc_variables_win(monkeypatch, name):
    """A user who tuned glibc with its own variables keeps their settings."""
    monkeypatch.setenv(name, str(2**30))
    assert keep_freed_memory() is False
