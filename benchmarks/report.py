"""What every benchmark ends with: a Markdown table on stdout and a JSON file beside it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def print_markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """One table, preceded by a blank line; cells are formatted by the caller."""
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for cells in rows:
        print("| " + " | ".join(str(cell) for cell in cells) + " |")


def write_report(path: str | Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """``{"meta": ..., "rows": ...}`` as indented JSON, and say where it went."""
    Path(path).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {path}")
