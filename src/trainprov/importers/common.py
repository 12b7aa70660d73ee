"""What every importer shares: the dataflow of an imported run, typed columns, the importer agent, idempotence.

An imported run keeps the source's ids and times where it has them. Its `train` task holds
what the source logged (hyperparameters, epoch and step metrics) at the source's times; an
`import` task, at the time of the import, used the source files (recorded with size and
SHA-256) and is associated with the importer, a software agent. A run whose id the store
already has is not imported again, so a second import of the same source adds nothing.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..capture.past import PastRun, exists
from ..capture.training import training_dataflow
from ..errors import TrainprovError
from ..spec import ELEMENT_COLUMNS, Dataflow, Transformation, sanitize_name

IMPORT = "import"


class ImportSourceError(TrainprovError):
    """A source that cannot be imported (missing, unreadable, not the format it should be)."""


@dataclass
class ImportSummary:
    """What an import did: runs written and runs the store already had."""

    source: str
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The summary as text."""
        out = [f"imported {len(self.imported)} run{'s' * (len(self.imported) != 1)} from {self.source}"
               + (f"; {len(self.skipped)} already in the store" if self.skipped else "")]
        out += [f"  {r}" for r in self.imported]
        return out


def content_id(prefix: str, paths: Iterable[str]) -> str:
    """A run id for a source without ids of its own: the SHA-256 of its files' content."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return f"{prefix}-{digest.hexdigest()[:16]}"


def import_dataflow(source: str) -> Dataflow:
    """The dataflow of runs imported from a source: the training datasets and an `import` transformation."""
    return training_dataflow(f"{source}_import", extra=[Transformation(IMPORT, description=f"imported from {source}")])


def stored_types(backend: Any, dataset: str) -> dict[str, str]:
    """The attribute types the store already has for a dataset."""
    try:
        return dict(backend.query(f"SELECT name, type FROM attributes WHERE dataset = {backend.placeholder}",
                                  (dataset,)).rows)
    except Exception:  # a store without a catalog yet
        return {}


def with_columns(flow: Dataflow, dataset: str, kinds: Mapping[str, str], known: Mapping[str, str]) -> tuple[Dataflow, dict[str, str]]:
    """The dataflow with a column per source key (a safe name; the store's type where it has one) and key -> column."""
    declared = flow.datasets[dataset].types
    columns: dict[str, str] = {}
    grow: dict[str, str] = {}
    taken = set(ELEMENT_COLUMNS)
    for key, kind in kinds.items():
        column = sanitize_name(key)
        while column in taken:
            column += "_"
        have = declared.get(column) or grow.get(column) or known.get(column)
        if have is not None and have != kind and not (have == "float" and kind == "int"):
            column = f"{column}_{kind}"  # the name is taken with another type
            have = declared.get(column) or known.get(column)
        taken.add(column)
        columns[key] = column
        if column not in declared:
            grow[column] = have or kind
    return (flow.with_attributes(dataset, grow) if grow else flow), columns


def importer_agent(run: PastRun, kind: str, source: str, version: str | None = None) -> None:
    """Record the importer as the run's software agent."""
    from .. import __version__

    run.agent(f"software:trainprov-import-{kind}", "software", f"trainprov {kind} importer",
              {"importer": f"trainprov.importers.{kind}", "trainprov_version": __version__, "source": source,
               "source_format_version": version, "python_version": platform.python_version()})


def source_files(run: PastRun, paths: Iterable[str], now: float) -> None:
    """The `import` task: it used the source files (entities the run's records derive from)."""
    task = run.task(IMPORT, now, now)
    for path in paths:
        task.file(path, role="import_source", at=now)


def mtime(path: str) -> float:
    """A file's modification time (the only time some logs have)."""
    return os.stat(path).st_mtime


def now() -> float:
    """The time of the import."""
    return _dt.datetime.now(_dt.timezone.utc).timestamp()


__all__ = ["ImportSourceError", "ImportSummary", "PastRun", "exists", "content_id", "import_dataflow", "stored_types",
           "with_columns", "importer_agent", "source_files", "mtime", "now"]
