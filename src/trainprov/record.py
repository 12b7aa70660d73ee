"""One run's record as plain Python values: what `diff` compares and `reproduce` rebuilds.

It reads whatever the run recorded (every piece is optional: a run of a hand-written
dataflow may have no layers, a run started outside git no code state) from any store, so a
run copied from a laptop into the team's PostgreSQL store reads the same.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .spec import ELEMENT_COLUMNS

if TYPE_CHECKING:  # a Reader is passed in: query.py imports this module for Reader.run
    from .query import Reader

#: the files a training writes (outcomes, not inputs): left out of a run's data
OUTPUT_DATASETS = ("checkpoints",)
#: the names of the program agent's details that describe the code
CODE_KEYS = ("script", "notebook", "git_remote", "git_commit", "git_branch", "git_dirty", "git_changed_files",
             "git_untracked_sources")


@dataclass
class RunRecord:
    """Everything one run recorded that tells how it was produced and what came out."""

    run_id: str
    store: str
    run: dict[str, Any]
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    data: list[dict[str, Any]] = field(default_factory=list)
    program: dict[str, Any] = field(default_factory=dict)
    software: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    adaptations: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    test_results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def packages(self) -> dict[str, str]:
        """Installed distributions at the run's start, name to version."""
        return dict(self.software.get("packages") or {})

    @property
    def patch(self) -> dict[str, Any] | None:
        """The uncommitted changes of the run's code (text, sha256, size), if there were any."""
        return self.program.get("git_patch")

    def _repr_html_(self) -> str:  # notebooks: summary, curves, adaptations
        from .display import run_html

        return run_html(self)


def _json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _values(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _json(v) for k, v in row.items() if k not in ELEMENT_COLUMNS}


def _datasets(reader: Reader) -> set[str]:
    return {r["name"] for r in reader.rows("SELECT name FROM datasets")}


def _rows(reader: Reader, datasets: set[str], name: str, run_id: str, order: str) -> list[dict[str, Any]]:
    if name not in datasets:
        return []
    p = reader.backend.placeholder
    # a run of several processes: rank 0's rows (the other ranks repeat the configuration)
    rank = (f" AND task_id IN (SELECT task_id FROM tasks WHERE run_id = {p} AND (rank IS NULL OR rank = 0))")
    return [_values(r) for r in reader.rows(
        f"SELECT * FROM {name} WHERE run_id = {p}{rank} ORDER BY {order}", (run_id, run_id))]


def read(reader: Reader, ref: str) -> RunRecord:
    """The record of one run (an id, a unique prefix or 'latest') in an open store."""
    run_id = reader.resolve_run(ref)
    p = reader.backend.placeholder
    run = reader.rows(f"SELECT * FROM runs WHERE run_id = {p}", (run_id,))[0]
    record = RunRecord(run_id=run_id, store=reader.url, run=run)
    for agent in reader.rows(f"SELECT agent_id, kind, details FROM agents WHERE run_id = {p}", (run_id,)):
        details = _json(agent["details"]) or {}
        if agent["agent_id"].startswith("software:program:"):
            record.program = details
        elif agent["agent_id"].startswith("software:python-"):
            record.software = details
        elif agent["kind"] == "machine":
            record.machine = details
    datasets = _datasets(reader)
    first = _rows(reader, datasets, "hyperparameters", run_id, "recorded_at, element_seq")
    record.hyperparameters = first[0] if first else {}
    record.layers = _rows(reader, datasets, "layers", run_id, "layer_index, element_seq")
    record.adaptations = _rows(reader, datasets, "adaptations", run_id, "recorded_at, element_seq")
    record.epochs = _rows(reader, datasets, "epoch_metrics", run_id, "epoch, recorded_at")
    record.test_results = _rows(reader, datasets, "test_results", run_id, "recorded_at, element_seq")
    record.data = [
        f for f in reader.rows(
            f"SELECT path, role, dataset, size_bytes, sha256 FROM files WHERE run_id = {p} ORDER BY recorded_at, file_id",
            (run_id,))
        if f["dataset"] not in OUTPUT_DATASETS
    ]
    return record


def finite(value: Any) -> bool:
    """Whether a value is a finite number."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
