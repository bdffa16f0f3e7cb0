"""The atomate2-otf command: help, one-line errors with exit status 2, run --json, status."""

import json
import subprocess
import sys

import pytest
from ase.build import bulk
from ase.io import write

from atomate2_otf import cli


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "atomate2_otf.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for command in ("demo", "run", "status"):
        assert command in out


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
    assert doc["completed"] and doc["n_md_steps"] == 15 and doc["n_reference_calls"] >= 2
    assert cli.main(["status", "--store", store, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["state"], r["md_steps"]) for r in rows] == \
        [(doc["run_id"], "completed", 15)]
    assert cli.main(["status", "--store", store]) == 0
    assert doc["run_id"] in capsys.readouterr().out
