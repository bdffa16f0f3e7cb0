"""The physics loop: ASE molecular dynamics driven by the posterior, split at triggers.

ASE-based and free of jobflow: the workflow layer calls :func:`run_segment` with a plain
:class:`MDState` and gets one back, so a run can stop for a reference calculation and
continue in another job (or process) exactly where it left off.
"""

from atomate2_otf.md.calculator import PosteriorCalculator
from atomate2_otf.md.schedule import TemperatureSchedule
from atomate2_otf.md.segment import (
    SegmentResult,
    check_structure_for_md,
    initial_state,
    run_segment,
)
from atomate2_otf.md.settings import ENSEMBLES, MDSettings
from atomate2_otf.md.state import MDState
from atomate2_otf.md.trigger import CalibratedTrigger, TriggerEvent

__all__ = [
    "CalibratedTrigger",
    "ENSEMBLES",
    "MDSettings",
    "MDState",
    "PosteriorCalculator",
    "SegmentResult",
    "TemperatureSchedule",
    "TriggerEvent",
    "check_structure_for_md",
    "initial_state",
    "run_segment",
]
