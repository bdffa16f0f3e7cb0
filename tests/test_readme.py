"""The documentation runs as written.

Every ```python block of README.md and docs/*.md runs in its own process, in an empty
temporary folder, and must exit with status 0. An HTML comment on the line(s) right above a
block changes that:

- ``<!-- not executed: reason -->``: the block is only compiled (it needs a server, or
  names defined elsewhere);
- ``<!-- slow: reason -->``: the block runs with the slow tests (``-m slow``).

The shell lines are checked too: every ``atomate2-otf`` option written in the Markdown must
exist in that command's ``--help``, docs/cli.md must name every option of every command,
and the README keeps the two one-command install lines that CI and users copy.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLI_DOC = ROOT / "docs" / "cli.md"
BLOCK_TIMEOUT_S = 1800

INSTALL_AND_DEMO = ("python3 -m venv .venv && . .venv/bin/activate && pip install -e . "
                    "&& atomate2-otf demo")
INSTALL_AND_TEST = ('python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" '
                    '&& python -m pytest -m "not slow" -q -n auto')

_FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
_MARK = re.compile(r"^<!--\s*(not executed|slow)\s*:\s*(.+?)\s*-->\s*$")


@dataclass
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marks: dict[str, str]

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def code_blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path``, with the marks of the HTML comments right above each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"{path}:{i + 1}: code fence is never closed")
        marks, k = {}, i - 1
        while k >= 0 and lines[k].lstrip().startswith("<!--"):
            mark = _MARK.match(lines[k].strip())
            if mark:
                marks[mark.group(1)] = mark.group(2)
            k -= 1
        blocks.append(Block(path, i + 1, opening.group(1).lower(), "\n".join(lines[i + 1:end]),
                            marks))
        i = end + 1
    return blocks


def python_blocks() -> list[Block]:
    return [b for path in markdown_files() for b in code_blocks(path) if b.lang == "python"]


def run_block(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` as a script of its own in ``cwd``, as a user would paste it."""
    script = cwd / "doc_block.py"
    script.write_text(code + "\n", encoding="utf-8")
    return subprocess.run([sys.executable, str(script)], cwd=cwd, capture_output=True,
                          text=True, timeout=BLOCK_TIMEOUT_S, check=False,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _block_params() -> list:
    params = []
    for block in python_blocks():
        if "not executed" in block.marks:
            continue
        marks = [pytest.mark.slow] if "slow" in block.marks else []
        params.append(pytest.param(block, id=block.id, marks=marks))
    return params


@pytest.mark.parametrize("block", _block_params())
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    result = run_block(block.code, tmp_path)
    assert result.returncode == 0, (
        f"{block.id} exited with status {result.returncode}\n--- stdout ---\n"
        f"{result.stdout[-2000:]}\n--- stderr ---\n{result.stderr[-4000:]}")


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id) for b in python_blocks()
                                   if "not executed" in b.marks])
def test_not_executed_block_compiles(block: Block) -> None:
    compile(block.code, block.id, "exec")


def test_every_python_block_is_accounted_for() -> None:
    blocks = python_blocks()
    assert any(b.path == README for b in blocks), "the README has no python example"
    for block in blocks:
        compile(block.code, block.id, "exec")  # a syntax error fails fast here
        if "not executed" in block.marks:
            assert block.marks["not executed"].strip(), f"{block.id}: say why it is not run"


def test_the_runner_can_fail(tmp_path: Path) -> None:
    """A block with an undefined name (the old "ten lines" example) must fail the test."""
    result = run_block("import math\nprint(math.pi)\nposterior.add_labels(labelled_frames)",
                       tmp_path)
    assert result.returncode != 0
    assert "NameError" in result.stderr
    assert run_block("print('ok')", tmp_path).returncode == 0


def test_marks_are_read(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("text\n\n<!-- not executed: needs a server -->\n```python\nx = 1\n```\n"
                    "<!-- slow: minutes -->\n```python\ny = 2\n```\n```bash\nls\n```\n"
                    "```python\nz = 3\n```\n", encoding="utf-8")
    blocks = code_blocks(page)
    assert [(b.lang, b.code, b.marks) for b in blocks] == [
        ("python", "x = 1", {"not executed": "needs a server"}),
        ("python", "y = 2", {"slow": "minutes"}),
        ("bash", "ls", {}),
        ("python", "z = 3", {}),
    ]
    assert [b.line for b in blocks] == [4, 8, 11, 14]


# --- the README's shape ------------------------------------------------------------------

def _headings(path: Path) -> list[str]:
    lines, inside, out = path.read_text(encoding="utf-8").splitlines(), False, []
    for line in lines:
        if line.startswith("```"):
            inside = not inside
        elif not inside and line.startswith("## "):
            out.append(line[3:].strip())
    return out


def test_readme_is_short_and_in_order() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    lines = [line.strip() for line in text.splitlines()]
    assert INSTALL_AND_DEMO in lines, "the one-command install-and-demo line changed"
    assert INSTALL_AND_TEST in lines, "the one-command install-and-test line changed"
    assert "DOI" in text and "Digital Discovery" in text
    wanted = ["loop", "quick start", "command line", "otfmdmaker", "python api",
              "model", "production"]
    headings = [h.lower() for h in _headings(README)]
    positions = []
    for word in wanted:
        found = [i for i, h in enumerate(headings) if word in h]
        assert found, f"no README section about {word!r}: {headings}"
        positions.append(found[0])
    assert positions == sorted(positions), f"README sections out of order: {headings}"


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of the headings of ``path``."""
    out, inside = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_links_resolve() -> None:
    for path in markdown_files():
        links = re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", path.read_text("utf-8"))
        for target, anchor in links:
            if "://" in target:
                continue
            linked = (path.parent / target) if target else path
            assert linked.exists(), f"{path.name}: broken link {target}"
            if anchor and linked.suffix == ".md":
                assert anchor in _anchors(linked), f"{path.name}: no #{anchor} in {target}"
    readme = README.read_text(encoding="utf-8")
    for name in ("workflow", "method", "models", "production", "cli", "measurements",
                 "development"):
        assert f"(docs/{name}.md)" in readme, f"the README does not link docs/{name}.md"


def _table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first table after ``## heading``."""
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split(" | ")] for row in rows[2:]]


def test_settings_table_matches_otfmdmaker() -> None:
    from atomate2_otf.flows import OTFMDMaker

    fields = {f.name: f for f in dataclasses.fields(OTFMDMaker)}
    listed = set()
    for cells in _table_rows(README.read_text(encoding="utf-8"), "`OTFMDMaker` settings"):
        names = re.findall(r"`(\w+)`", cells[0])
        values = re.findall(r"`([^`]+)`", cells[1])
        for i, name in enumerate(names):
            assert name in fields, f"README lists {name!r}, which OTFMDMaker does not have"
            listed.add(name)
            field = fields[name]
            if field.default is not dataclasses.MISSING:
                default = field.default
            elif field.default_factory in (dict, list):
                default = field.default_factory()
            else:
                continue  # a Maker made by a factory: described in words
            assert i < len(values), f"README gives no default for {name!r}"
            shown = ast.literal_eval(values[i])
            if isinstance(default, float) and not isinstance(shown, bool):
                assert math.isclose(shown, default, rel_tol=5e-3), (name, shown, default)
            else:
                assert shown == default, f"README default of {name!r}: {shown!r} != {default!r}"
    must = {"model", "reference_maker", "temperature", "n_steps", "threshold", "confidence",
            "n_chains", "update_steps", "n_workers"}
    assert must <= listed, f"README settings table lacks {sorted(must - listed)}"


# --- the shell lines ---------------------------------------------------------------------

@cache
def cli_help(command: str | None = None) -> str:
    args = [sys.executable, "-m", "atomate2_otf.cli", *([command] if command else []), "--help"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def cli_commands() -> list[str]:
    text = cli_help().split("positional arguments:", 1)[1].split("options:", 1)[0]
    return re.findall(r"^ {4}([a-z][\w-]*)\s", text, flags=re.MULTILINE)


def _options(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", help_text)) - {"-h", "--help"}


def command_lines(path: Path) -> list[str]:
    """``atomate2-otf ...`` command lines of shell blocks and inline code spans."""
    out = []
    for block in code_blocks(path):
        if block.lang in ("bash", "sh", "shell", "console", ""):
            out += [line for line in block.code.replace("\\\n", " ").splitlines()
                    if "atomate2-otf " in line]
    prose = re.sub(r"^```.*?^```", "", path.read_text("utf-8"), flags=re.MULTILINE | re.DOTALL)
    out += [span for span in re.findall(r"`([^`\n]+)`", prose) if span.startswith("atomate2-otf ")]
    return out


def test_documented_command_lines_match_help() -> None:
    commands = cli_commands()
    assert set(commands) >= {"demo", "run", "batch", "resume", "status"}, commands
    checked = 0
    for path in markdown_files():
        for line in command_lines(path):
            words = line.split("#", 1)[0].split("atomate2-otf", 1)[1].replace("[", " ").split()
            command = next((w for w in words if not w.startswith("-")), None)
            if command in (None, "COMMAND", "[-h]", "..."):
                continue
            assert command in commands, f"{path.name}: unknown command in {line!r}"
            before = words[:words.index(command)]
            top = {w.rstrip("]") for w in before}
            assert top <= _options(cli_help()) | {"-h"}, f"{path.name}: {line!r}"
            allowed = _options(cli_help(command))
            used = {w.rstrip("]").split("=")[0] for w in words[words.index(command) + 1:]
                    if w.startswith("-")}
            assert used <= allowed, (f"{path.name}: {line!r} uses {sorted(used - allowed)}, "
                                     f"not in 'atomate2-otf {command} --help'")
            checked += 1
    assert checked >= 5


def test_readme_table_and_cli_doc_cover_every_command_and_option() -> None:
    readme, cli_doc = README.read_text("utf-8"), CLI_DOC.read_text("utf-8")
    readme_options = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", readme))
    every_option = set().union(*(_options(cli_help(c)) for c in cli_commands()))
    every_option |= _options(cli_help())
    assert readme_options <= every_option, sorted(readme_options - every_option)
    for command in cli_commands():
        assert f"| `{command}` |" in readme, f"README's command table lacks {command!r}"
        assert f"`{command}" in cli_doc, f"docs/cli.md lacks {command!r}"
        for option in _options(cli_help(command)):
            assert f"`{option}" in cli_doc, f"docs/cli.md lacks {command} {option}"
