"""Resident memory right after chosen posterior-update jobs of a run (tests, benchmarks).

Peak RSS also holds the end of a run (reading a thousand call records back); the RSS after
update k is the steady state that tells whether a long run keeps its jobs alive.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def rss_after_updates(at: set[int] | tuple[int, ...]) -> Iterator[dict[int, float]]:
    """Within the block, record the process's RSS (MB) after the k-th ``otf update`` job."""
    import jobflow.core.job as jobflow_job
    import psutil

    process, samples, seen = psutil.Process(), {}, [0]
    run = jobflow_job.Job.run

    def run_and_sample(self, store, job_dir=None):
        response = run(self, store, job_dir)
        if self.name.startswith("otf update"):
            seen[0] += 1
            if seen[0] in at:
                gc.collect()
                samples[seen[0]] = round(process.memory_info().rss / 2**20, 1)
        return response

    jobflow_job.Job.run = run_and_sample
    try:
        yield samples
    finally:
        jobflow_job.Job.run = run
