"""The atomate2-otf command: help, one-line errors with exit status 2, run --json, status."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ase.build import bulk
from ase.io import write

from atomate2_otf import cli


def console_script() -> str:
    """The installed ``atomate2-otf`` entry point (the one next to this Python first)."""
    beside = Path(sys.executable).with_name("atomate2-otf")
    found = str(beside) if beside.exists() else shutil.which("atomate2-otf")
    assert found, "the atomate2-otf console script is not installed"
    return found


def listed_commands(help_text: str) -> list[str]:
    """The subcommands ``atomate2-otf --help`` lists under its positional arguments."""
    listing = help_text.split("positional arguments:", 1)[1].split("options:", 1)[0]
    return re.findall(r"^ {4}([a-z][\w-]*)\s", listing, flags=re.MULTILINE)


def test_every_listed_command_has_help():
    """``atomate2-otf --help``, then ``atomate2-otf <command> --help`` for each command it
    lists (timeouts only guard against a hang)."""
    script = console_script()
    top = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=300,
                         check=False)
    assert top.returncode == 0, top.stderr
    assert top.stdout.startswith("usage: atomate2-otf ")
    commands = listed_commands(top.stdout)
    assert {"run", "status"} <= set(commands), top.stdout  # the listing was parsed
    for command in commands:
        result = subprocess.run([script, command, "--help"], capture_output=True, text=True,
                                timeout=300, check=False)
        assert result.returncode == 0, (command, result.stderr)
        usage = result.stdout.splitlines()[0]
        assert usage.startswith(f"usage: atomate2-otf {command} "), (command, usage)


@pytest.mark.parametrize("command", ["demo", "run", "status"])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert "--store" in capsys.readouterr().out


@pytest.fixture
def poscar(tmp_path):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.02, seed=4)
    path = tmp_path / "POSCAR"
    write(path, atoms, format="vasp")
    return path


@pytest.mark.parametrize("args, message", [
    (["run", "missing.cif"], "does not exist"),
    (["run", "{poscar}", "--reference", "dft-magic"], "unknown reference 'dft-magic'"),
    (["run", "{poscar}", "--temperature", "-10"], "-10"),
    (["run", "{poscar}", "--timestep", "0"], "timestep"),
    (["run", "{poscar}", "--steps", "0"], "n_steps"),
    (["run", "{poscar}", "--model", "gpt"], "unknown model name 'gpt'"),
    (["status", "--store", "no/such/folder"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, poscar, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli.main([a.format(poscar=poscar) for a in args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err


def test_run_json_and_status(poscar, tmp_path, capsys, monkeypatch):
    from atomate2_otf.models.base import register_model
    from tests.toy_model import ToyModel

    register_model("toy", ToyModel)
    monkeypatch.chdir(tmp_path)
    store = str(tmp_path / "store")
    code = cli.main(["run", str(poscar), "--model", "toy", "--reference", "emt", "--steps", "15",
                     "--timestep", "1", "--chains", "2", "--update-steps", "2",
                     "--threshold", "0.001", "--store", store, "--json"])
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads(out)
    assert doc["completed"] and doc["n_md_steps"] == 15
    # K = 0.001 eV is chosen to trigger (the calibrated trigger: no setting fixes the count);
    # calls are numbered in order, at increasing MD steps, the first at the start
    steps = [c["md_step"] for c in doc["calls"]]
    assert doc["n_reference_calls"] == len(steps) >= 2
    assert [c["index"] for c in doc["calls"]] == list(range(len(steps)))
    assert steps[0] == 0 and steps == sorted(set(steps)) and steps[-1] <= 15
    assert cli.main(["status", "--store", store, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["state"], r["md_steps"], r["reference_calls"]) for r in rows] == \
        [(doc["run_id"], "completed", 15, doc["n_reference_calls"])]
    assert cli.main(["status", "--store", store]) == 0
    assert doc["run_id"] in capsys.readouterr().out
