"""Screening many candidate materials: one on-the-fly workflow per material.

``BatchOTFMaker(otf_maker=OTFMDMaker(...)).items(sources)`` turns a folder of structure
files, a list of files/structures, or a ``{source_id: structure}`` mapping into one
:class:`BatchItem` per material: its flow, tagged with formula and source id (job metadata
``otf_formula``/``otf_source``, carried to every job the run creates later), or, for an
input that cannot be run (a corrupt file, an element the model lacks, a bad cell), the
reason. A bad input never stops the others: it is reported and the rest are built.
``make(sources)`` is the atomate2-style one-Flow view of the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobflow import Flow, Maker

from atomate2_otf.atoms import to_atoms
from atomate2_otf.flows import OTFMDMaker

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

logger = logging.getLogger(__name__)


@dataclass
class BatchItem:
    """One candidate material of a batch: its flow, or why it has none."""

    source_id: str
    formula: str | None = None
    flow: Flow | None = None
    error: str | None = None

    @property
    def metadata(self) -> dict[str, Any]:
        return {"otf_source": self.source_id, "otf_formula": self.formula}


def structure_sources(sources: str | Path | Iterable[Any] | Mapping[str, Any]
                      ) -> list[tuple[str, Any]]:
    """``(source_id, structure-or-path)`` pairs from a folder, a list or a mapping.

    A folder gives its visible files, sorted (the id is the file name); a list gives file
    names or ``item-<i>`` for in-memory structures; a mapping gives its keys.
    """
    if isinstance(sources, str | Path):
        folder = Path(sources).expanduser()
        if not folder.is_dir():
            raise ValueError(f"batch source {str(folder)!r} is not a folder; give a folder "
                             f"of structure files, a list of files or structures, or a "
                             f"mapping of source id to structure")
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"batch folder {str(folder)!r} holds no structure files")
        return [(p.name, p) for p in files]
    if hasattr(sources, "items"):
        return [(str(k), v) for k, v in sources.items()]
    pairs = []
    for i, item in enumerate(sources):
        source_id = Path(item).name if isinstance(item, str | Path) else f"item-{i}"
        pairs.append((source_id, item))
    ids = [p[0] for p in pairs]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ValueError(f"batch source ids must be unique; repeated: {duplicated} (pass a "
                         f"mapping of source id to structure)")
    if not pairs:
        raise ValueError("the batch is empty")
    return pairs


@dataclass
class BatchOTFMaker(Maker):
    """One :class:`OTFMDMaker` run per candidate material.

    Args:
        name: name of the combined flow.
        otf_maker: the settings every material runs with.
    """

    name: str = "otf batch"
    otf_maker: OTFMDMaker = field(default_factory=OTFMDMaker)

    def items(self, sources: str | Path | Iterable[Any] | Mapping[str, Any]) -> list[BatchItem]:
        """Every material's flow, validated and tagged; bad inputs carry their error."""
        items = []
        for source_id, structure in structure_sources(sources):
            item = BatchItem(source_id)
            try:
                atoms = to_atoms(structure)
                item.formula = atoms.get_chemical_formula(mode="hill")
                item.flow = self.otf_maker.make(atoms)
            except ValueError as err:  # the settings checks of make(): reported, not fatal
                item.error = str(err)
                logger.warning("batch: %s is skipped: %s", source_id, err)
                items.append(item)
                continue
            item.flow.name = f"{self.otf_maker.name} {item.formula} ({source_id})"
            item.flow.update_metadata(item.metadata, dynamic=True)
            items.append(item)
        return items

    def make(self, sources: str | Path | Iterable[Any] | Mapping[str, Any],
             prev_dir: str | Path | None = None) -> Flow:
        """All materials' flows in one Flow; rejected inputs are listed in
        ``flow.metadata["otf_rejected"]`` (``{source_id: reason}``) and logged."""
        items = self.items(sources)
        flow = Flow([i.flow for i in items if i.flow is not None], name=self.name)
        flow.metadata = {**(flow.metadata or {}),
                         "otf_rejected": {i.source_id: i.error for i in items if i.error}}
        return flow
