"""Recording a run that happened before: its ids and times given, not taken from the clock.

Importers (MLflow, TensorBoard, CSV logs) and Optuna trials recorded after the fact use
it. Rows go through the process's writer like a live run's; the runs row goes last, so a
reader sees the run when the rest of it is there, and `exists` tells an importer that a
source was imported before (imports are idempotent).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import os
import socket
from typing import Any, Iterable, Mapping

from ..errors import CaptureError
from ..spec import Dataflow
from ..store.catalog import element_item, element_target, target
from . import agents, groups
from .writer import writer_for

_RUN = target("runs", ("run_id", "dataflow", "dataflow_version", "name", "status", "started_at", "ended_at", "duration_s",
                       "heartbeat_at", "host", "user_name", "command", "error", "group_name", "parent_run_id"))
_TASK = target("tasks", ("task_id", "run_id", "transformation", "iteration", "status", "started_at", "ended_at", "duration_s"))
_DEPENDENCY = target("task_dependencies", mode="link")
_FILE = target("files")
_AGENT = target("agents")


def _seconds(value: float | _dt.datetime | None) -> float | None:
    """A time as seconds since the epoch (a naive datetime is UTC)."""
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, _dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)).timestamp()
    raise CaptureError(f"a time is seconds since the epoch or a datetime, got {type(value).__name__}")


def exists(run_id: str, store: str | os.PathLike | None = None) -> bool:
    """True if the store has a run with this id."""
    backend = writer_for(store).backend
    try:
        return bool(backend.query(f"SELECT 1 FROM runs WHERE run_id = {backend.placeholder}", (run_id,)).rows)
    except Exception:  # a store without a catalog yet has no runs
        return False


class PastTask:
    """A task of a past run: elements with the times they were recorded at."""

    def __init__(self, run: "PastRun", transformation: str, task_id: str, iteration: int) -> None:
        self.run, self.transformation, self.id, self.iteration = run, transformation, task_id, iteration
        spec = run.dataflow.transformation(transformation)
        self._roles = {**{n: "uses" for n in spec.used_names}, **{n: "generates" for n in spec.generated_names}}
        self._seq = itertools.count(1)

    def element(self, dataset: str, at: float | _dt.datetime | None, /, **values: Any) -> int:
        """Record one element of a dataset the task uses or generates, recorded at `at`; returns its number."""
        if dataset not in self._roles:
            raise CaptureError(f"transformation {self.transformation!r} neither uses nor generates dataset {dataset!r}")
        ds = self.run.dataflow.datasets[dataset]
        ds.check(values)
        seq = next(self._seq)
        tgt = self.run._targets[dataset]
        self.run._items.append(element_item(tgt, (self.run.id, self.id, seq, _seconds(at)), values))
        return seq

    def file(self, path: str | os.PathLike, *, role: str, at: float | _dt.datetime | None = None,
             dataset: str | None = None, element_seq: int | None = None) -> str:
        """Record a file (a source log, an artifact) with its size and SHA-256; returns its id."""
        path = os.path.abspath(os.fspath(path))
        try:
            stat = os.stat(path)
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise CaptureError(f"cannot record file {path}: {exc.strerror or exc}") from None
        file_id = f"{self.run.id}.f{next(self.run._files)}"
        recorded = _seconds(at) if at is not None else stat.st_mtime
        self.run._items.append((_FILE, (file_id, self.run.id, self.id, path, role, stat.st_size, digest.hexdigest(),
                                        stat.st_mtime, recorded, dataset, element_seq)))
        return file_id


class PastRun:
    """A run written with given ids and times; call `write()` once everything is added."""

    def __init__(self, dataflow: Dataflow, store: str | os.PathLike | None = None, *, run_id: str,
                 started: float | _dt.datetime, ended: float | _dt.datetime | None, status: str = "finished",
                 name: str | None = None, group: str | None = None, parent: str | None = None,
                 tags: Mapping[str, Any] | None = None, user: str | None = None, host: str | None = None,
                 command: str | None = None, error: str | None = None) -> None:
        self.dataflow = dataflow
        self._writer = writer_for(store)
        self.dataflow_version = self._writer.backend.declare(dataflow)
        self.id = run_id
        self.started, self.ended = _seconds(started), _seconds(ended)
        self.status, self.name, self.error = status, name, error
        self.group = groups.check_group(group) if group is not None else None
        self.parent = parent
        self.tags = groups.check_tags(tags)
        self.user, self.host, self.command = user, host, command
        self._targets = {n: element_target(ds) for n, ds in dataflow.datasets.items()}
        self._items: list[tuple] = []
        self._tasks = itertools.count(1)
        self._files = itertools.count(1)
        self._iterations: dict[str, int] = {}

    def task(self, transformation: str, started: float | _dt.datetime | None, ended: float | _dt.datetime | None, *,
             status: str = "finished", depends_on: Iterable[PastTask] = ()) -> PastTask:
        """A task of the run, with its times."""
        iteration = self._iterations[transformation] = self._iterations.get(transformation, 0) + 1
        task = PastTask(self, transformation, f"{self.id}.{next(self._tasks)}", iteration)
        start, end = _seconds(started), _seconds(ended)
        self._items.append((_TASK, (task.id, self.id, transformation, iteration, status, start, end,
                                    None if start is None or end is None else end - start)))
        for dep in depends_on:
            self._items.append((_DEPENDENCY, (task.id, dep.id)))
        return task

    def agent(self, agent_id: str, kind: str, name: str, details: Mapping[str, Any] | None = None,
              acted_on_behalf_of: str | None = None) -> None:
        """Add an agent (the importer, the person named by the source)."""
        self._items.append((_AGENT, (self.id, agent_id, kind, name, dict(details or {}), acted_on_behalf_of)))

    def write(self) -> None:
        """Write the run: its rows, then the runs row, and wait until a reader sees them."""
        writer = self._writer
        for item in self._items:
            writer.put(item)
        if self.group is not None:
            for item in groups.group_rows(self.group, created=self.started):
                writer.put(item)
        for item in groups.tag_rows(self.id, self.tags, replace=False):
            writer.put(item)
        duration = None if self.ended is None or self.started is None else self.ended - self.started
        writer.put((_RUN, _RUN.row(
            run_id=self.id, dataflow=self.dataflow.name, dataflow_version=self.dataflow_version, name=self.name,
            status=self.status, started_at=self.started, ended_at=self.ended, duration_s=duration,
            heartbeat_at=self.ended or self.started, host=self.host or socket.gethostname(),
            user_name=self.user or agents.user(), command=self.command, error=self.error, group_name=self.group,
            parent_run_id=self.parent,
        )))
        self._items = []
        writer.flush()
