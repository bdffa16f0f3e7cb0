"""The VASP stand-in as atomate2 sees it: a command, and the labelling Maker that runs it.

``fake_vasp.py`` is run exactly where VASP would be: atomate2 writes the inputs, custodian
starts the command in the job directory and validates the outputs, emmet parses them into a
``TaskDoc``. The only test-specific settings are, each for a stated reason:

- the command (``vasp_cmd``/``vasp_gamma_cmd``): this script under the running Python, so
  the venv's ASE is used whether or not the venv is activated;
- ``potcar_spec=True``: atomate2 writes ``POTCAR.spec`` (the POTCAR symbols) instead of
  POTCARs, which are licensed and absent here; no ``PMG_VASP_PSP_DIR`` is needed;
- no ``PositiveEnergyErrorHandler``: it flags a positive total energy, which in real PAW
  calculations means a broken SCF, but EMT's zero is the ideal crystal, so any warm or
  strained snapshot has E > 0 (its "fix" for a static run is to give up);
- custodian polls every 20 ms instead of every second.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from custodian.vasp.handlers import PositiveEnergyErrorHandler

from atomate2_otf.reference.vasp import LABELLING_HANDLERS, vasp_reference_maker

FAKE_VASP_SCRIPT = Path(__file__).with_name("fake_vasp.py")

#: the labelling handlers less the one whose premise (PAW energies < 0) EMT breaks
FAKE_VASP_HANDLERS = tuple(h for h in LABELLING_HANDLERS
                           if not isinstance(h, PositiveEnergyErrorHandler))

FAKE_CUSTODIAN_KWARGS: dict[str, Any] = {"polling_time_step": 0.02, "monitor_freq": 10}


def fake_vasp_command(calculator: str = "emt", energy_shift: float = 0.0, *,
                      scf_fails_with: str | None = None, crash: bool = False,
                      faulty_runs: str | None = None,
                      run_counter: str | Path | None = None) -> str:
    """The shell command that runs the stand-in with the current interpreter.

    ``scf_fails_with`` (ALGO values, comma-separated, or ``"any"``), ``crash``,
    ``faulty_runs`` and ``run_counter``: simulated failures (``fake_vasp.py``'s docstring).
    """
    args = [sys.executable, str(FAKE_VASP_SCRIPT), "--calculator", calculator]
    if energy_shift:
        args += ["--energy-shift", repr(float(energy_shift))]
    if scf_fails_with:
        args += ["--scf-fails-with", str(scf_fails_with)]
    if crash:
        args += ["--crash"]
    if faulty_runs is not None:
        args += ["--faulty-runs", str(faulty_runs)]
    if run_counter is not None:
        args += ["--run-counter", str(run_counter)]
    return shlex.join(args)


#: fake_vasp_command's failure options, accepted by fake_vasp_maker too
_FAILURE_OPTIONS = ("scf_fails_with", "crash", "faulty_runs", "run_counter")


def fake_vasp_maker(calculator: str = "emt", energy_shift: float = 0.0, **kwargs: Any):
    """:func:`vasp_reference_maker` (the production settings) running the stand-in; the
    failure options of :func:`fake_vasp_command` pass through to the command."""
    failures = {key: kwargs.pop(key) for key in _FAILURE_OPTIONS if key in kwargs}
    command = fake_vasp_command(calculator, energy_shift, **failures)
    kwargs.setdefault("handlers", FAKE_VASP_HANDLERS)
    kwargs.setdefault("custodian_kwargs", FAKE_CUSTODIAN_KWARGS)
    kwargs.setdefault("write_input_set_kwargs", {"potcar_spec": True})
    return vasp_reference_maker(vasp_cmd=command, vasp_gamma_cmd=command, **kwargs)
