"""Screening many candidate materials: one on-the-fly workflow per material.

``BatchOTFMaker(otf_maker=OTFMDMaker(...)).items(sources)`` turns a folder of structure
files, a list of files/structures, or a ``{source_id: structure}`` mapping into one
:class:`BatchItem` per material: its flow, tagged with formula and source id (job metadata
``otf_formula``/``otf_source``, carried to every job the run creates later), or, for an
input that cannot be run (a corrupt file, an element the model lacks, a bad cell), the
reason. A bad input never stops the others: it is reported and the rest are built.
``make(sources)`` is the atomate2-style one-Flow view of the same.

A class-level warm start (the paper's section 6) starts a material's chains, data and
calibration from the final posterior of an earlier material of its class instead of from
the pretrained model: ``BatchOTFMaker(warm_start="same_elements")`` takes the latest earlier
material with the same set of elements, so each class runs as a chain of runs, each learning
from all before it, while the classes run in parallel. A function can choose the donor
instead (:data:`WarmStartRule`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobflow import Flow, Maker

from atomate2_otf.atoms import to_atoms
from atomate2_otf.flows import OTFMDMaker

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ase import Atoms

logger = logging.getLogger(__name__)

#: chooses a material's donor: ``rule(source_id, atoms, earlier)`` with ``earlier`` the
#: ``(source_id, atoms)`` of the materials before it that have a run; returns one of those
#: source ids, or None for a cold start
WarmStartRule = Callable[[str, "Atoms", Sequence[tuple[str, "Atoms"]]], str | None]


def same_elements(source_id: str, atoms: Atoms,
                  earlier: Sequence[tuple[str, Atoms]]) -> str | None:
    """The latest earlier material with exactly this material's set of elements."""
    elements = set(atoms.get_chemical_symbols())
    donors = [sid for sid, other in earlier if set(other.get_chemical_symbols()) == elements]
    return donors[-1] if donors else None


#: the named warm-start rules ``BatchOTFMaker(warm_start=...)`` accepts
WARM_START_RULES: dict[str, WarmStartRule] = {"same_elements": same_elements}


@dataclass
class BatchItem:
    """One candidate material of a batch: its flow, or why it has none."""

    source_id: str
    formula: str | None = None
    flow: Flow | None = None
    error: str | None = None
    #: the material whose final posterior this one starts from (warm start), else None
    warm_start_from: str | None = None

    @property
    def metadata(self) -> dict[str, Any]:
        return {"otf_source": self.source_id, "otf_formula": self.formula,
                "otf_warm_start_from": self.warm_start_from}


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
        warm_start: None (every material starts from the pretrained model), a name of
            :data:`WARM_START_RULES` (``"same_elements"``) or a :data:`WarmStartRule`. A
            warm-started material's run is ``otf_maker`` with ``start_from`` the donor's
            final checkpoint, so it waits for the donor's run to finish.
    """

    name: str = "otf batch"
    otf_maker: OTFMDMaker = field(default_factory=OTFMDMaker)
    warm_start: str | WarmStartRule | None = None

    def __post_init__(self) -> None:
        self.warm_start_rule()  # a bad setting fails here, before any structure is read
        if self.warm_start is not None and self.otf_maker.start_from is not None:
            raise ValueError("BatchOTFMaker: warm_start chooses each material's start_from; "
                             "the otf_maker's own start_from "
                             f"{self.otf_maker.start_from!r} would be ignored: set one of them")
        if self.warm_start is not None and \
                getattr(self.otf_maker, "checkpoint_transport", "store") != "store":
            raise ValueError(
                f"BatchOTFMaker: warm_start needs the otf_maker's checkpoint_transport="
                f"'store' (a warm start reads the donor's checkpoint from the JobStore), "
                f"got {self.otf_maker.checkpoint_transport!r}")

    def warm_start_rule(self) -> WarmStartRule | None:
        """The donor-choosing function of ``warm_start``, or None for cold starts."""
        if self.warm_start is None or callable(self.warm_start):
            return self.warm_start
        if self.warm_start not in WARM_START_RULES:
            raise ValueError(f"warm_start={self.warm_start!r} is not a warm-start rule; "
                             f"give one of {sorted(WARM_START_RULES)}, a function "
                             f"(source_id, atoms, earlier) -> donor source id or None, or None")
        return WARM_START_RULES[self.warm_start]

    def items(self, sources: str | Path | Iterable[Any] | Mapping[str, Any]) -> list[BatchItem]:
        """Every material's flow, validated and tagged; bad inputs carry their error."""
        rule = self.warm_start_rule()
        items: list[BatchItem] = []
        built: dict[str, tuple[Atoms, Flow]] = {}  # source id -> materials with a run
        for source_id, structure in structure_sources(sources):
            item = BatchItem(source_id)
            try:
                atoms = to_atoms(structure)
                item.formula = atoms.get_chemical_formula(mode="hill")
                maker = self.otf_maker
                if rule is not None:
                    earlier = [(sid, donor_atoms) for sid, (donor_atoms, _) in built.items()]
                    item.warm_start_from = self._donor(rule, source_id, atoms, earlier)
                if item.warm_start_from is not None:
                    donor_flow = built[item.warm_start_from][1]
                    maker = dataclasses.replace(
                        maker, start_from=donor_flow.output.final_checkpoint)
                item.flow = maker.make(atoms)
            except ValueError as err:  # the settings checks of make(): reported, not fatal
                item.error = str(err)
                logger.warning("batch: %s is skipped: %s", source_id, err)
                items.append(item)
                continue
            built[source_id] = (atoms, item.flow)
            item.flow.name = f"{self.otf_maker.name} {item.formula} ({source_id})"
            item.flow.update_metadata(item.metadata, dynamic=True)
            items.append(item)
        return items

    @staticmethod
    def _donor(rule: WarmStartRule, source_id: str, atoms: Atoms,
               earlier: list[tuple[str, Atoms]]) -> str | None:
        """The rule's donor for one material, checked to be an earlier material with a run."""
        donor = rule(source_id, atoms, earlier)
        if donor is not None and donor not in {sid for sid, _ in earlier}:
            raise ValueError(f"warm start of {source_id}: the rule chose {donor!r}, which is "
                             f"not an earlier material with a run; it may choose one of "
                             f"{[sid for sid, _ in earlier]} or None")
        return donor

    def make(self, sources: str | Path | Iterable[Any] | Mapping[str, Any],
             prev_dir: str | Path | None = None) -> Flow:
        """All materials' flows in one Flow; rejected inputs are listed in
        ``flow.metadata["otf_rejected"]`` (``{source_id: reason}``) and logged."""
        items = self.items(sources)
        flow = Flow([i.flow for i in items if i.flow is not None], name=self.name)
        flow.metadata = {**(flow.metadata or {}),
                         "otf_rejected": {i.source_id: i.error for i in items if i.error}}
        return flow
