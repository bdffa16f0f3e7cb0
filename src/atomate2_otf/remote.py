"""Route an on-the-fly run's jobs to jobflow-remote workers by job name.

jobflow-remote (optional: ``pip install "atomate2-otf[remote]"``) picks a job's worker from
``job.config.manager_config["worker"]``, set by its ``set_run_config``; a job that has none
gets the worker of the job it was created by (or the ``submit_flow`` default). An
on-the-fly run creates most of its jobs at run time (each MD segment replaces itself with
``[otf reference k, otf update k, otf md segment k+1]``), so the routes are registered as
*dynamic* config updates: jobflow applies them, by name, to every job a segment creates.

What this answers on top of a bare ``set_run_config`` call (read from jobflow 0.4 and
jobflow-remote 1.0.1):

- ``name_filter`` is a case-sensitive *substring* match on the job name (``name_filter in
  job.name``), so ``"otf reference"`` also routes ``"otf reference 3 audit"`` and
  ``"otf update"`` routes ``"otf update 3 audit"``.
- jobflow's ``pass_manager_config`` (on by default) copies the replaced segment's whole
  ``manager_config`` over every job of its replacement *after* the dynamic updates ran, so
  reference k would land on the segment's (GPU) worker. It is switched off here for every
  segment, present and future; the ``store_inputs`` job jobflow appends to each
  replacement then falls back to the segment's worker, as jobflow-remote gives a job
  without a worker its creator's.

**Checkpoints travel as job outputs.** jobflow-remote's workers never open the JobStore:
each job runs against a file store of its own that the runner copies into the database
afterwards, and the references in a job's arguments are resolved by the runner before
the upload. So an on-the-fly flow for jobflow-remote is made with
``OTFMDMaker(checkpoint_transport="outputs")``: each job's output points at its checkpoint
(jobflow's own blob pointer), the next job's argument references it, and the last segment
gets the run's reference calls as arguments instead of querying the store. This module
refuses a flow made with the default "store" transport (its first segment would find no
checkpoint), and ProductionMDMaker's job, which reads its checkpoint from the store.
Tested end to end with jobflow-remote 1.0.1, two local workers and a MongoDB server
(tests/production/test_jobflow_remote.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobflow import Flow, Job

logger = logging.getLogger(__name__)

#: job-name substrings of the reference calculations (audits included: "otf reference k audit")
REFERENCE_NAMES: tuple[str, ...] = ("otf reference",)
#: job-name substrings of the jobs that run the model: MD segments, posterior updates, the
#: initial preparation (first update), the start-from-a-posterior check, ProductionMDMaker's MD
#: and the "outputs" transport's checkpoint pointer (which needs nothing: any worker will do)
MD_NAMES: tuple[str, ...] = (
    "otf md segment", "otf update", "otf prepare", "otf start", "otf production md",
    "otf checkpoint")
#: the jobs that create further jobs at run time
SEGMENT_NAME = "otf md segment"


def _set_run_config() -> Any:
    try:
        from jobflow_remote import set_run_config
    except ImportError as err:
        raise ImportError("route_for_jobflow_remote needs jobflow-remote: pip install "
                          "'atomate2-otf[remote]' (jobflow-remote==1.0.1; it pins "
                          "pymongo<4.11)") from err
    return set_run_config


def check_runs_without_the_store(flow: Flow | Job) -> None:
    """Refuse, before anything is submitted, a flow whose jobs would read the JobStore
    (module docstring): on-the-fly runs made with the "store" checkpoint transport, and
    ProductionMDMaker's job."""
    from jobflow import Flow

    jobs = [j for j, _ in flow.iterflow()] if isinstance(flow, Flow) else [flow]
    for one in jobs:
        if one.name.startswith("otf production md"):
            raise ValueError(f"job {one.name!r} reads its checkpoint from the JobStore, which "
                             f"jobflow-remote workers do not reach: run production MD with "
                             f"the local runner or FireWorks, or atomate2's ForceFieldMDMaker "
                             f"with atomate2_otf.atomate2_calculator on a machine that does")
        for arg in (*one.function_args, *one.function_kwargs.values()):
            if isinstance(arg, dict) and "run_id" in arg and "checkpoint_transport" in arg \
                    and arg["checkpoint_transport"] != "outputs":
                raise ValueError(
                    f"job {one.name!r} of run {arg['run_id']} has checkpoint_transport="
                    f"{arg['checkpoint_transport']!r}: its jobs read checkpoints from the "
                    f"JobStore, which jobflow-remote workers do not reach; make the flow "
                    f"with OTFMDMaker(checkpoint_transport='outputs')")


def route_for_jobflow_remote(
    flow: Flow | Job,
    reference_worker: str = "cpu",
    md_worker: str = "gpu",
    reference_exec_config: Any = None,
    md_exec_config: Any = None,
    reference_resources: Any = None,
    md_resources: Any = None,
    reference_names: Sequence[str] = REFERENCE_NAMES,
    md_names: Sequence[str] = MD_NAMES,
) -> Flow | Job:
    """Send reference jobs to ``reference_worker`` and MD/update jobs to ``md_worker``.

    Modifies ``flow`` in place (and returns it) before ``jobflow_remote.submit_flow``; the
    jobs each segment creates at run time inherit the routes. Workers are names from the
    jobflow-remote project file (``examples/jobflow_remote_project.yaml``); exec configs
    are names or ``ExecutionConfig`` objects, resources dicts or ``QResources``, as
    ``set_run_config`` takes them (None leaves the worker's or submit_flow's defaults).

    A reference Maker that makes a Flow (rather than a Job) keeps its own job names
    inside it: add them to ``reference_names``, or its jobs run on ``md_worker``. A flow
    that reads the JobStore from its jobs is refused (:func:`check_runs_without_the_store`).
    """
    from jobflow import Flow

    set_run_config = _set_run_config()
    check_runs_without_the_store(flow)
    for value, what in ((reference_worker, "reference_worker"), (md_worker, "md_worker")):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{what} must be a jobflow-remote worker name, got {value!r}")
    routes = [(name, reference_worker, reference_exec_config, reference_resources)
              for name in reference_names]
    routes += [(name, md_worker, md_exec_config, md_resources) for name in md_names]
    for name, worker, exec_config, resources in routes:
        set_run_config(flow, name_filter=name, worker=worker, exec_config=exec_config,
                       resources=resources, dynamic=True)
    # jobflow would copy a segment's manager_config over its replacement (references
    # included) after the updates above: off for segment 0 and, dynamically, for segment k
    flow.update_config({"_set": {"pass_manager_config": False}}, name_filter=SEGMENT_NAME,
                       dynamic=True, dict_mod=True)
    jobs = list(flow.iterflow()) if isinstance(flow, Flow) else [(flow, None)]
    unrouted = [j.name for j, _ in jobs if not j.config.manager_config.get("worker")]
    if unrouted:
        logger.warning("jobs %s match no route; they run on submit_flow's worker", unrouted)
    return flow
