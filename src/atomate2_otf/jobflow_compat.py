"""What this package does around jobflow's and FireWorks' behaviour, in one place.

Each item names the behaviour it answers and why:

- **Job configs** (:data:`STORE_CONFIG`, :data:`UPDATE_CONFIG`): jobs reach the JobStore
  themselves (checkpoints are megabytes and stay out of job arguments); the update job
  resolves the reference's output itself, since jobflow keeps a resolved document in the
  job's arguments and ``run_locally`` keeps every job of a run alive (about +0.12 MB per
  reference call, measured: docs/measurements.md).
- **Routing** (:func:`route_to_category`, :func:`route_segment`,
  :func:`route_store_inputs`): jobflow's ``pass_manager_config`` copies a replaced job's
  ``manager_config`` over its replacement, which would send references and updates to the
  segment's workers; and the ``store_inputs`` job jobflow appends to every replacement
  never passes through this package's code, so only a dynamic config update routes it.
- **store_inputs** (:func:`is_store_inputs`): the local runner must run it first, as
  ``run_locally`` does, since it maps the replaced job's uuid to its replacement's output.
- **Output schemas of replaced jobs** (:func:`release_output_schema`): jobflow 0.4.0
  gives the ``store_inputs`` job it appends to a replacement the replaced job's
  ``output_schema`` and applies it to that job's output, which is an unresolved
  ``OutputReference`` (``store_inputs`` does not resolve), so every replace of a job with
  a schema fails ("Expected output to be OTFRunDoc or dict but got output type of
  OutputReference"); the schema is checked where the document is made instead.
- **Recursion headroom** (:func:`ensure_recursion_headroom`): ``run_locally`` runs each
  replacement in a nested call (about two frames per cycle), so hundreds of reference
  calls would reach Python's recursion limit (tests/workflow: 1000 replace cycles).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from jobflow import Flow, JobConfig

if TYPE_CHECKING:
    from jobflow import Job, JobStore

#: jobs read and write checkpoints through the JobStore they run with
STORE_CONFIG = JobConfig(expose_store=True)
#: the update job resolves the reference's task document itself: jobflow would keep the
#: resolved document in the job's arguments, and run_locally keeps every job of a run alive
UPDATE_CONFIG = JobConfig(expose_store=True, resolve_references=False)

#: the kinds of job a run is made of, as keys of ``worker_categories``
WORKER_KINDS = ("reference", "segment", "update", "prepare")
#: name of the job jobflow appends to a replacement flow to carry the replaced job's output
STORE_INPUTS = "store_inputs"


def check_worker_categories(categories: dict[str, str] | None) -> dict[str, str] | None:
    """Validate ``{kind: FireWorks category}`` (kinds: :data:`WORKER_KINDS`) before a run.

    A misspelt kind would silently leave that kind's jobs without a category, and such jobs
    wait forever when every worker serves a category, so it is refused here instead.
    """
    if categories is None:
        return None
    if not isinstance(categories, dict):
        raise ValueError(f"worker_categories must be a dict {{kind: category}} with kinds "
                         f"{', '.join(WORKER_KINDS)}; got {categories!r}")
    for kind, category in categories.items():
        if kind not in WORKER_KINDS:
            raise ValueError(f"worker_categories has an unknown key {kind!r}; accepted keys "
                             f"are: {', '.join(WORKER_KINDS)}")
        if not isinstance(category, str) or not category.strip():
            raise ValueError(f"worker_categories[{kind!r}] must be a non-empty string (a "
                             f"FireWorks category), got {category!r}")
    return {str(k): str(v) for k, v in categories.items()}


def _jobs_of(job_or_flow: Any) -> list[Any]:
    """Every Job in a Job or (nested) Flow: reference Makers such as VASP's make Flows."""
    if isinstance(job_or_flow, Flow):
        return [j for child in job_or_flow.jobs for j in _jobs_of(child)]
    return [job_or_flow]


def route_to_category(job_or_flow: Any, category: str | None) -> None:
    """Send every job of ``job_or_flow`` to FireWorks workers of ``category``.

    jobflow copies ``manager_config`` into the Firework spec, and FireWorks gives a
    Firework with ``_category`` only to a worker whose fworker file lists that category.
    Other ``manager_config`` entries (``_fworker``, ``_priority``, ...) are kept.
    """
    if category is None:
        return
    for one in _jobs_of(job_or_flow):
        one.config.manager_config = {**(one.config.manager_config or {}), "_category": category}


def route_segment(segment: Any, categories: dict[str, str] | None) -> None:
    """Route an MD segment job and what jobflow derives from its replacement.

    jobflow's ``pass_manager_config`` (on by default) copies the replaced job's
    ``manager_config`` over every job of the replacement flow, which would send reference
    k and update k to the segment's workers; it is switched off here, and md_segment
    routes each job it creates itself. jobflow also appends a ``store_inputs`` job (same
    uuid as the segment, carries its output on) that md_segment never sees: a dynamic
    config update, inherited by each following segment, gives it the segment category.
    """
    if not categories:
        return
    route_to_category(segment, categories.get("segment"))
    segment.config.pass_manager_config = False
    route_store_inputs(segment, categories.get("segment"))


def route_store_inputs(segment: Any, category: str | None) -> None:
    """Idempotently register the dynamic update that routes jobflow's store_inputs job
    (idempotent, so the list of updates stays one long over a thousand cycles)."""
    if category is None:
        return
    for update in segment.config_updates:
        if update.get("name_filter") == STORE_INPUTS:
            return
    segment.update_config({"manager_config": {"_category": category}},
                          name_filter=STORE_INPUTS, attributes="manager_config", dynamic=True)


def release_output_schema() -> None:
    """Before a job with an ``output_schema`` returns ``Response(replace=...)``: drop the
    schema from the running job, so that jobflow's ``store_inputs`` job (which carries the
    replacement's output, an unresolved reference) does not inherit it (module docstring).
    The job that finally makes the document keeps the schema and is checked against it;
    the flow's ``output`` reference keeps it too, so attribute access is still validated.
    """
    from jobflow import CURRENT_JOB

    if CURRENT_JOB.job is not None:
        CURRENT_JOB.job.output_schema = None


def current_store() -> JobStore:
    """The JobStore of the running job (jobs are created with ``expose_store=True``)."""
    from jobflow import CURRENT_JOB

    if CURRENT_JOB.store is None:
        raise RuntimeError("no JobStore is exposed to this job; run it through jobflow "
                           "(run_locally or a FireWorks/jobflow-remote worker)")
    return CURRENT_JOB.store


def ensure_recursion_headroom(margin: int = 2000) -> None:
    """jobflow's run_locally runs each replacement flow in a nested call (about two Python
    frames per cycle), so a run with hundreds of reference calls would hit Python's
    recursion limit. Pure-Python frames cost no C stack on CPython >= 3.11, so raising the
    limit as the nesting deepens is safe; it is only ever raised, and only as needed."""
    depth = 0
    frame = sys._getframe()
    while frame is not None:
        depth += 1
        frame = frame.f_back
    if sys.getrecursionlimit() < depth + margin:
        sys.setrecursionlimit(depth + 2 * margin)


def is_store_inputs(job: Job) -> bool:
    """jobflow's ``store_inputs`` job: it stores its input reference unresolved."""
    function = getattr(job.function, "__wrapped__", job.function)
    return getattr(function, "__name__", "") == STORE_INPUTS and \
        getattr(function, "__module__", "") == "jobflow.core.job" and \
        not job.config.resolve_references
