"""Production runs through FireWorks: load a launchpad, submit a run, route its jobs.

This is the way atomate2 users run flows on clusters (jobflow's ``flow_to_workflow`` and
``LaunchPad.add_wf``), with two things an on-the-fly run needs on top:

- the :class:`jobflow.JobStore` goes into every Firework's spec, so workers on other
  machines write outputs, checkpoints and trajectories to the store the submitter chose
  (and the jobs a segment creates at run time inherit it: jobflow passes the submitting
  firetask's store on to replacements);
- jobs are routed to workers by FireWorks *categories*: ``OTFMDMaker(worker_categories=
  DEFAULT_WORKER_CATEGORIES)`` sends reference calculations to CPU workers
  (``examples/my_fworker_cpu.yaml``) and MD segments, posterior updates and the initial
  preparation to GPU workers (``examples/my_fworker_gpu.yaml``), including the jobs each
  segment creates at run time (see :func:`atomate2_otf.jobflow_compat.route_segment`).

Workers are ordinary ``rlaunch -l my_launchpad.yaml -w my_fworker_gpu.yaml rapidfire``
processes. Because a run's jobs appear one cycle at a time, a worker for one category
finds nothing READY while the other category works; run workers with ``--nlaunches
infinite`` (or under a queue launcher) so they keep polling instead of exiting.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fireworks import LaunchPad
    from jobflow import Flow, Job, JobStore

logger = logging.getLogger(__name__)

#: the categories of examples/my_fworker_cpu.yaml (references) and my_fworker_gpu.yaml
DEFAULT_WORKER_CATEGORIES: dict[str, str] = {
    "reference": "otf_reference",
    "segment": "otf_md",
    "update": "otf_md",
    "prepare": "otf_md",
}

#: how long load_launchpad waits for the launchpad's database before giving up
CONNECT_TIMEOUT_S = 10.0

#: keys LaunchPad.from_dict understands; anything else in the file is ignored by FireWorks
_LAUNCHPAD_KEYS = {"host", "port", "name", "username", "password", "logdir", "strm_lvl",
                   "user_indices", "wf_user_indices", "authsource", "uri_mode",
                   "mongoclient_kwargs"}


def _where(config: dict[str, Any]) -> str:
    """host:port of a launchpad config for messages (a URI's credentials left out)."""
    host = str(config.get("host"))
    if config.get("uri_mode") or host.startswith(("mongodb://", "mongodb+srv://")):
        scheme, _, rest = host.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"
    port = config.get("port")
    return f"{host}:{port if port is not None else 27017}"


def read_launchpad_config(path: str | Path) -> dict[str, Any]:
    """The launchpad settings in ``path`` (YAML or JSON), checked for shape.

    FireWorks' own ``LaunchPad.from_file`` raises KeyError/AttributeError tracebacks for a
    file that is not a launchpad config (say an fworker file passed by mistake); this
    names the file and what is wrong with it instead.
    """
    from monty.serialization import loadfn

    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"launchpad file {str(path)!r} does not exist or is not a file")
    try:
        config = loadfn(str(path))
    except Exception as err:  # ruamel/json raise many kinds; the user needs file and why
        raise ValueError(f"launchpad file {str(path)!r} does not parse: "
                         f"{type(err).__name__}: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"launchpad file {str(path)!r} is not a launchpad config: expected a "
                         f"mapping with at least 'host', got {type(config).__name__}")
    if "host" not in config:
        raise ValueError(f"launchpad file {str(path)!r} is not a launchpad config: it has no "
                         f"'host' (keys: {', '.join(map(str, config)) or 'none'}); is it an "
                         f"fworker file?")
    unknown = sorted(set(map(str, config)) - _LAUNCHPAD_KEYS)
    if unknown:
        raise ValueError(f"launchpad file {str(path)!r} has unknown keys {unknown}; "
                         f"accepted keys are: {', '.join(sorted(_LAUNCHPAD_KEYS))}")
    port = config.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
        raise ValueError(f"launchpad file {str(path)!r}: port must be an integer, "
                         f"got {port!r}")
    if "name" in config and not isinstance(config["name"], str):
        raise ValueError(f"launchpad file {str(path)!r}: name must be a string (the database "
                         f"name), got {config['name']!r}")
    return config


def load_launchpad(path: str | Path, timeout_s: float = CONNECT_TIMEOUT_S) -> LaunchPad:
    """A connected FireWorks LaunchPad from a launchpad file (``my_launchpad.yaml``).

    Raises ValueError naming the file for a file that does not parse or is not a launchpad
    config, and naming host and port when the database does not answer within
    ``timeout_s`` (pymongo's default would wait 30 s and then print a traceback).
    """
    import pymongo
    from fireworks import LaunchPad

    config = read_launchpad_config(path)
    try:
        launchpad = LaunchPad.from_dict(config)
    except Exception as err:  # FireWorks/pymongo validate options with assorted errors
        raise ValueError(f"launchpad file {str(path)!r}: FireWorks refused the settings: "
                         f"{type(err).__name__}: {err}") from err
    try:
        with pymongo.timeout(timeout_s):
            launchpad.db.command("ping")
    except pymongo.errors.PyMongoError as err:
        raise ValueError(f"the launchpad database at {_where(config)} (from {str(path)!r}) "
                         f"did not answer within {timeout_s:g} s: {type(err).__name__}; "
                         f"is MongoDB running there and reachable from this machine?"
                         ) from err
    logger.debug("launchpad %s (database %r) is reachable", _where(config), launchpad.name)
    return launchpad


def submit_flow(flow: Flow | Job, launchpad: LaunchPad, store: JobStore | None = None,
                metadata: dict[str, Any] | None = None) -> list[int]:
    """Add ``flow`` to ``launchpad`` as one FireWorks workflow; return its Firework ids.

    ``store`` goes into every Firework's spec (jobflow's ``flow_to_workflow(flow,
    store=...)``), so workers write to that JobStore whatever their own jobflow settings
    say; None leaves the choice to each worker's ``JOB_STORE`` setting. ``metadata`` (e.g.
    formula, source id) tags the workflow, so ``lpad get_wflows -q`` can find a run; the
    flow's output uuid is added as ``otf_output_uuid``, the key that
    :func:`atomate2_otf.results.read_run_doc` needs to read the finished run document.
    """
    from jobflow.managers.fireworks import flow_to_workflow

    if launchpad.fw_id_assigner.count_documents({}) == 0:
        # FireWorks would fail half-way through add_wf with "Could not get next FW id!"
        raise ValueError(f"the launchpad database {launchpad.name!r} is not initialised; "
                         f"run 'lpad -l my_launchpad.yaml reset' once before submitting")
    tags = {"otf_output_uuid": getattr(getattr(flow, "output", None), "uuid", None),
            **(metadata or {})}
    workflow = flow_to_workflow(flow, store=store, metadata=tags)
    mapping = launchpad.add_wf(workflow)
    fw_ids = sorted(int(v) for v in mapping.values())
    logger.info("submitted workflow %r: %d fireworks (ids %s)", workflow.name, len(fw_ids),
                fw_ids)
    return fw_ids
