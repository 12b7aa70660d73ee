"""Runs and tasks: the retrospective provenance a training records as it goes."""

from __future__ import annotations

import hashlib
import itertools
import operator
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
import warnings
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

from ..errors import CaptureError, SpecError
from ..spec import INT_MAX, INT_MIN, Dataflow, check_text
from ..store import liveness
from ..store.catalog import Target, element_target, handle, target
from . import agents, groups
from .writer import Writer, before_close, writer_for

_RUN = target("runs")
_RUN_SHARED = target("runs", mode="link")  # every rank of a run inserts it; the first one counts
_RANK = target("run_ranks")
_RANK_END = target("run_ranks", ("run_id", "rank", "status", "ended_at", "duration_s", "error"), mode="end_rank")
_RUN_END = target("runs", ("run_id", "status", "ended_at", "duration_s", "error"), mode="update")
_TASK = target("tasks", ("task_id", "run_id", "transformation", "iteration", "status", "started_at", "rank"))
_TASK_END = target("tasks", ("task_id", "status", "ended_at", "duration_s", "error"), mode="update")
_DEPENDENCY = target("task_dependencies", mode="link")
_USAGE = target("usages", mode="link")
_FILE = target("files")
_DERIVATION = target("file_derivations", mode="link")
_AGENT = target("agents")

_new_tuple = tuple.__new__  # builds an Element without NamedTuple's Python-level __new__

STATUSES = ("running", "finished", "failed", "interrupted")


class Element(NamedTuple):
    """A reference to one recorded element (a row of a dataset table)."""

    dataset: str
    task_id: str
    seq: int
    #: the files recorded for the element's `file` attributes
    files: tuple["FileRef", ...] = ()


class FileRef(NamedTuple):
    """A recorded file: its id, path, size and SHA-256."""

    file_id: str
    path: str
    size_bytes: int
    sha256: str


class SignalInterrupt(SystemExit):
    """Raised in the main thread on SIGTERM so that runs end as interrupted and rows are written."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def new_run_id() -> str:
    """A sortable, unique run id: UTC start time and random hex."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


def check_run_id(run_id: object, source: str = "run_id") -> str:
    """Return run_id if it is a valid run id (what a URL, a file name and a PROV id take as is), else raise CaptureError."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id):
        shown = repr(run_id) if len(repr(run_id)) <= 80 else repr(run_id)[:77] + "..."
        raise CaptureError(
            f"{source}={shown} is not a valid run id: use 1 to 128 letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (for example a job id such as 4711 or 20261204-job7)"
        )
    return run_id


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise CaptureError(f"{name}={value!r} is not a whole number") from None
    return None


def rank_of_process(run_id: str | None, rank: int | None, world_size: int | None) -> tuple[str | None, int | None, int | None]:
    """(run id to join, rank, world size) from the arguments, else TRAINPROV_RUN_ID / RANK / WORLD_SIZE."""
    if run_id is not None and run_id != "":
        check_run_id(run_id)
    else:
        run_id = None
    if run_id is None and os.environ.get("TRAINPROV_RUN_ID"):
        run_id = check_run_id(os.environ["TRAINPROV_RUN_ID"], "TRAINPROV_RUN_ID")
    if run_id is None:
        return None, None, None
    rank = rank if rank is not None else _env_int("TRAINPROV_RANK", "RANK")
    world_size = world_size if world_size is not None else _env_int("TRAINPROV_WORLD_SIZE", "WORLD_SIZE")
    if rank is None or world_size is None:
        raise CaptureError(
            f"this process joins run {run_id} (TRAINPROV_RUN_ID) but does not know its "
            f"{'rank' if rank is None else 'world size'}: set TRAINPROV_RANK (or RANK) and "
            "TRAINPROV_WORLD_SIZE (or WORLD_SIZE), as torchrun does"
        )
    if not 0 <= rank < world_size:
        raise CaptureError(f"rank {rank} is outside a world of {world_size} processes (0 .. {world_size - 1})")
    return run_id, rank, world_size


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def status_for(exc: BaseException | None) -> tuple[str, str | None]:
    """How a run or task ends after an exception (or none): (status, error text)."""
    if exc is None:
        return "finished", None
    if isinstance(exc, SignalInterrupt):
        return "interrupted", f"signal {signal.Signals(exc.signum).name}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "KeyboardInterrupt (SIGINT)"
    if isinstance(exc, SystemExit) and exc.code in (None, 0):
        return "finished", None
    return "failed", _describe(exc)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in blocks."""
    with open(path, "rb") as f:
        if hasattr(hashlib, "file_digest"):
            return hashlib.file_digest(f, "sha256").hexdigest()
        digest = hashlib.sha256()
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
        return digest.hexdigest()


class Task:
    """One execution of a transformation inside a run; records the elements it uses and generates."""

    def __init__(self, run: "Run", transformation: str, iteration: int, depends_on: Iterable["Task | str"]) -> None:
        run.dataflow.transformation(transformation)  # an unknown name fails here, before anything is queued
        self.run = run
        self.transformation = transformation
        self.iteration = iteration
        self.id = f"{run._task_prefix}{next(run._task_numbers)}"
        self.started = time.time()
        self.status = "running"
        self._run_id = run.id
        self._put = run._writer.put
        self._queue = run._writer._queue
        self._soft_limit = run._writer.batch_rows
        self._seq = itertools.count(1)
        self._files = run._file_numbers
        self._bind(run.dataflow)
        self._put((_TASK, (self.id, run.id, transformation, iteration, "running", self.started, run.rank)))
        for dep in depends_on:
            dep_id = dep.id if isinstance(dep, Task) else str(dep)
            self._put((_DEPENDENCY, (self.id, dep_id)))

    def _bind(self, dataflow: Dataflow) -> None:
        # what this task may record, resolved once (and again when the run's dataflow grows)
        spec = dataflow.transformation(self.transformation)
        datasets, targets = dataflow.datasets, self.run._targets

        def entries(names: tuple[str, ...]) -> dict[str, tuple[int, tuple[str, ...], Any, bool]]:
            return {n: (handle(targets[n]), targets[n].columns[targets[n].prefix:], datasets[n].check,
                        bool(datasets[n].file_attributes)) for n in names}

        self._uses = entries(spec.used_names)
        self._generates = entries(spec.generated_names)

    # ---- elements ---------------------------------------------------------------------

    def generated(self, dataset: str, /, **values: Any) -> Element:
        """Record one element this task generated; returns a reference to it."""
        entry = self._generates.get(dataset)
        if entry is None or self.status != "running":
            raise self._refuse(dataset, "generates")
        return self._record(dataset, entry, values)

    def prepared(self, dataset: str, names: Sequence[str]) -> Callable[[tuple], Element]:
        """Record many elements of one dataset alike (a training's steps): call the result with values in `names` order.

        Values of the type an attribute stores as it is (float, int in 64 bits) are queued
        without building a dict; any other value, and any call once the task has ended,
        takes the checked way of `generated`.
        """
        if dataset not in self._generates or self.status != "running":
            raise self._refuse(dataset, "generates")
        names = tuple(names)
        generated = self.generated

        def checked(values: tuple) -> Element:
            return generated(dataset, **dict(zip(names, values)))

        def plan() -> tuple[Any, tuple | None, tuple[int, ...], tuple, Callable[[tuple], tuple]]:
            """How to queue the values under the task's dataflow now (types None: always the checked way)."""
            bound = self._generates
            tgt, columns, _, has_files = bound[dataset]
            declared = self.run.dataflow.datasets[dataset]
            kinds = tuple(declared.exact_type(name) for name in names)
            if has_files or len(set(names)) < len(names) or any(kind not in (float, int) for kind in kinds):
                return bound, None, (), (), tuple
            position = {name: i for i, name in enumerate(names)}
            # an attribute not among the names takes the None appended after the values
            positions = [position.get(column, len(names)) for column in columns]
            pick = operator.itemgetter(*positions) if len(positions) > 1 else lambda v: (v[positions[0]],)
            ints = tuple(i for i, kind in enumerate(kinds) if kind is int)
            return bound, kinds, ints, (tgt, self._run_id, self.id), pick

        bound, kinds, ints, head, pick = plan()
        seq, queue, limit = self._seq, self._queue, self._soft_limit

        def record(values: tuple) -> Element:
            nonlocal bound, kinds, ints, head, pick
            if self._generates is not bound:  # the run's dataflow has grown: new columns, a new target
                bound, kinds, ints, head, pick = plan()
            if self.status != "running" or tuple(map(type, values)) != kinds:
                return checked(values)
            for i in ints:
                if not INT_MIN <= values[i] <= INT_MAX:
                    return checked(values)  # which says what does not fit
            number = next(seq)
            item = (*head, number, time.time(), *pick((*values, None)))
            if len(queue) < limit:
                queue.append(item)
            else:
                self._put(item)
            return _new_tuple(Element, (dataset, self.id, number, ()))

        return record

    def used(self, what: "str | Element", /, **values: Any) -> Element:
        """Record that this task used an element: a new one (dataset name and values) or a recorded one."""
        if isinstance(what, Element):
            if values:
                raise CaptureError("used(element) takes no values: the element is already recorded")
            if self.status != "running":
                raise self._refuse(what.dataset, "uses")
            self._put((_USAGE, (self._run_id, self.id, what.dataset, what.task_id, what.seq, time.time())))
            return what
        entry = self._uses.get(what)
        if entry is None or self.status != "running":
            raise self._refuse(what, "uses")
        return self._record(what, entry, values)

    def _record(self, dataset: str, entry: tuple[int, tuple[str, ...], Any, bool], values: dict[str, Any]) -> Element:
        # The hot path of capture: check, number, queue. The writer thread does the rest.
        # The item is one flat tuple of plain values (see catalog.handle): the collector stops tracking it.
        tgt, columns, check, has_files = entry
        if values:
            check(values)
        seq = next(self._seq)
        files = self._record_files(dataset, seq, values) if has_files else ()
        item = (tgt, self._run_id, self.id, seq, time.time(), *map(values.get, columns))
        queue = self._queue
        if len(queue) < self._soft_limit:
            queue.append(item)
        else:
            self._put(item)
        return _new_tuple(Element, (dataset, self.id, seq, files))

    def _refuse(self, dataset: object, role: str) -> Exception:
        if self.status == "forked":
            return CaptureError(
                f"task {self.id} belongs to process {self.run.pid}, not to this forked child "
                f"({os.getpid()}); start a run in the child to capture there"
            )
        if self.status != "running":
            return CaptureError(f"task {self.id} ({self.transformation}) has ended ({self.status}); start a new task")
        verb, other_verb, other_call = (
            ("use", "generates", "task.generated()") if role == "uses" else ("generate", "uses", "task.used()")
        )
        if dataset in (self._generates if role == "uses" else self._uses):
            return SpecError(
                f"transformation {self.transformation!r} does not {verb} dataset {dataset!r}; "
                f"it {other_verb} it: record it with {other_call}"
            )
        declared = ", ".join(self._uses if role == "uses" else self._generates) or "(none)"
        return SpecError(
            f"transformation {self.transformation!r} does not {verb} a dataset named {dataset!r}; "
            f"it {role}: {declared}"
        )

    # ---- files ------------------------------------------------------------------------

    def file(
        self,
        path: str | os.PathLike,
        *,
        role: str | None = None,
        derived_from: Iterable[FileRef | str] = (),
        dataset: str | None = None,
        element_seq: int | None = None,
    ) -> FileRef:
        """Record a file (data, checkpoint, model) with its size and SHA-256, hashed now."""
        path = os.path.abspath(os.fspath(path))
        try:
            stat = os.stat(path)
            digest = file_sha256(path)
        except OSError as exc:
            raise CaptureError(f"cannot record file {path}: {exc.strerror or exc}") from None
        file_id = f"{self.run._task_prefix}f{next(self._files)}"
        now = time.time()
        self._put((_FILE, _FILE.row(
            file_id=file_id, run_id=self._run_id, task_id=self.id, path=path, role=role, size_bytes=stat.st_size,
            sha256=digest, modified_at=stat.st_mtime, recorded_at=now, dataset=dataset, element_seq=element_seq,
        )))
        ref = FileRef(file_id, path, stat.st_size, digest)
        self.derive(ref, derived_from)
        return ref

    def _record_files(self, dataset: str, seq: int, values: dict[str, Any]) -> tuple[FileRef, ...]:
        names = self.run.dataflow.datasets[dataset].file_attributes
        refs = []
        for name in names:
            if values.get(name) is not None:
                role = dataset if len(names) == 1 else f"{dataset}.{name}"
                refs.append(self.file(values[name], role=role, dataset=dataset, element_seq=seq))
                values[name] = refs[-1].path  # the column holds the absolute path, as `files` does
        return tuple(refs)

    def derive(self, file: FileRef | str, sources: Iterable[FileRef | str]) -> None:
        """Record that a file was derived from other files (a checkpoint from the previous one)."""
        file_id = file.file_id if isinstance(file, FileRef) else str(file)
        for source in sources:
            self._put((_DERIVATION, (file_id, source.file_id if isinstance(source, FileRef) else str(source))))

    # ---- end --------------------------------------------------------------------------

    def end(self, status: str = "finished", error: str | None = None) -> None:
        """End the task (finished, failed or interrupted); later records are refused."""
        if self.status != "running":
            return
        if status not in STATUSES[1:]:
            raise ValueError(f"status must be one of {', '.join(STATUSES[1:])}, got {status!r}")
        self.status = status
        now = time.time()
        self._put((_TASK_END, (self.id, status, now, now - self.started, error)))
        self.run._tasks.discard(self)

    def __enter__(self) -> "Task":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.end(*status_for(exc))

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.transformation} {self.status}>"


class Run:
    """One execution of a dataflow. Use as a context manager, or call end()."""

    def __init__(
        self,
        dataflow: Dataflow,
        store: str | os.PathLike | None = None,
        *,
        name: str | None = None,
        record_agents: bool = True,
        handle_signals: bool = True,
        run_id: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        seeds: Mapping[str, int] | None = None,
        group: str | None = None,
        parent: "Run | str | None" = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(dataflow, Dataflow):
            raise SpecError(f"start_run needs a Dataflow, got {type(dataflow).__name__}")
        # refused here, not by the store: a run row the writer cannot write would lose the run
        if name is not None:
            name = check_text("the run name", name)
        if run_id is not None:
            run_id = check_text("the run id", run_id)
        inside = groups.ambient()
        if inside is not None and group is None:  # a run started inside an Optuna trial, say
            group, tags = inside.group, {**inside.tags, **(tags or {})}
            parent = parent if parent is not None else (inside.run or inside.parent)
        self.group = groups.check_group(group) if group is not None else None
        if parent is not None and not isinstance(parent, (Run, str)):
            raise CaptureError(f"a parent run is a Run or a run id, got {type(parent).__name__}")
        self.parent_id = parent.id if isinstance(parent, Run) else parent
        tag_values = groups.check_tags(tags)
        shared_id, self.rank, self.world_size = rank_of_process(run_id, rank, world_size)
        self._writer: Writer = writer_for(store)
        backend = self._writer.backend
        self.dataflow = dataflow
        self.id = shared_id or new_run_id()
        self._version: int | None = None
        # The writer declares (no DDL here); while the store is down the run starts anyway,
        # and its rows, the declaration first, wait in the spool.
        declared = self._declare(dataflow, None)
        if declared:
            liveness.reap(backend)
        self.store = backend.url
        # a rank's tasks and files are numbered apart from the other ranks': RUN.r1.4, RUN.r1.f2
        self._task_prefix = f"{self.id}." if self.rank is None else f"{self.id}.r{self.rank}."
        self.name = name
        self.started = time.time()
        self.status = "running"
        self._targets = {n: element_target(ds) for n, ds in dataflow.datasets.items()}
        self._task_numbers = itertools.count(1)
        self._file_numbers = itertools.count(1)
        self._iterations: dict[str, int] = {}
        self._tasks: set[Task] = set()
        #: how the run ends if the interpreter exits while it is open (an integration may
        #: know better, e.g. that its training finished)
        self.exit_status: tuple[str, str | None] = ("interrupted", "the process exited without ending the run")
        self.pid = pid = os.getpid()
        ranked = self.rank is not None
        host = socket.gethostname()
        run_target = _RUN_SHARED if ranked else _RUN
        self._writer.put((run_target, run_target.row(
            run_id=self.id, dataflow=dataflow.name, dataflow_version=self.dataflow_version, name=name,
            status="running", started_at=self.started, heartbeat_at=self.started, host=host,
            # a run of several processes is alive while any rank sends heartbeats
            pid=None if ranked else pid, process_started=None if ranked else liveness.process_started(pid),
            user_name=agents.user(), command=" ".join(sys.argv), working_dir=os.getcwd(),
            world_size=self.world_size, group_name=self.group, parent_run_id=self.parent_id,
        )))
        if self.group is not None:  # before the run's row is read by anyone: same flush
            for item in groups.group_rows(self.group, created=self.started):
                self._writer.put(item)
        for item in groups.tag_rows(self.id, tag_values, replace=False):
            self._writer.put(item)
        if ranked:
            self._writer.put((_RANK, _RANK.row(run_id=self.id, rank=self.rank, host=host, pid=pid, status="running",
                                               started_at=self.started)))
        if record_agents and (not ranked or self.rank == 0):
            for row in agents.collect(self.id, seeds=seeds):
                self._writer.put((_AGENT, row))
        if not declared:  # the run's row gets the version once the store has the dataflow
            self._writer.declare(dataflow, self.id)
        self._writer.watch_run(self.id, True)
        self._writer.flush()
        if inside is not None and self.group == inside.group:
            inside.claim(self)
        _open_runs.add(self)
        if handle_signals:
            _signals.install()
        self._handles_signals = handle_signals

    def task(self, transformation: str, *, depends_on: Iterable[Task | str] = ()) -> Task:
        """Start a task of a transformation; use it as a context manager or call end()."""
        if self.status == "forked":
            raise CaptureError(f"run {self.id} belongs to process {self.pid}, not to this forked child")
        if self.status != "running":
            raise CaptureError(f"run {self.id} has ended ({self.status}); start a new run")
        iteration = self._iterations.get(transformation, 0) + 1
        task = Task(self, transformation, iteration, depends_on)
        self._iterations[transformation] = iteration
        self._tasks.add(task)
        return task

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """The rows of one read-only statement (`?` placeholders) on the run's store, e.g. another run's profile."""
        return self._writer.backend.query(sql, params).dicts()

    @property
    def tasks(self) -> list[Task]:
        """The tasks of this process that have not ended, oldest first."""
        return sorted(self._tasks, key=lambda t: t.started)

    def stored_attributes(self, dataset: str) -> dict[str, tuple[str, str | None]] | None:
        """The attributes the store has for a dataset: name -> (type, original name); None while the store is down."""
        backend = self._writer.backend
        try:
            rows = backend.query(
                f"SELECT name, type, original_name FROM attributes WHERE dataset = {backend.placeholder}", (dataset,)
            ).rows
        except Exception as exc:
            if not backend.is_outage(exc):
                raise
            return None
        return {name: (kind, original) for name, kind, original in rows}

    def write_row(self, target: Target, row: tuple) -> None:
        """Queue one row of a store table (a catalog update, say); written in order with the run's other rows."""
        self._writer.put((target, row))

    def tag(self, **tags: Any) -> None:
        """Set tags on the run (a tag set before takes the new value); written with the next flush."""
        for item in groups.tag_rows(self.id, groups.check_tags(tags)):
            self._writer.put(item)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags whose names are not Python identifiers ('mlflow.user', say)."""
        for item in groups.tag_rows(self.id, groups.check_tags(tags)):
            self._writer.put(item)

    def evolve(self, dataflow: Dataflow) -> int:
        """Continue the run under a grown dataflow (more attributes or transformations); returns its version."""
        if dataflow.name != self.dataflow.name:
            raise SpecError(f"run {self.id} runs dataflow {self.dataflow.name!r}, not {dataflow.name!r}")
        for name, t in self.dataflow.transformations.items():
            grown = dataflow.transformations.get(name)
            if grown is None or not set(t.used_names) <= set(grown.used_names) or not set(t.generated_names) <= set(grown.generated_names):
                raise SpecError(f"a running run's dataflow may only grow: transformation {name!r} lost datasets or is gone")
        for name, ds in self.dataflow.datasets.items():
            missing = set(ds.types.items()) - set(dataflow.datasets[name].types.items())
            if missing:
                raise SpecError(f"a running run's dataflow may only grow: dataset {name!r} lost or changed {sorted(missing)}")
        self.dataflow = dataflow
        self._targets = {n: element_target(ds) for n, ds in dataflow.datasets.items()}
        for task in list(self._tasks):
            task._bind(dataflow)
        self._declare(dataflow, self.id)
        return self.dataflow_version

    def _declare(self, dataflow: Dataflow, run_id: str | None) -> bool:
        """Queue the dataflow's declaration and wait for it; False while the store is down (it waits too)."""
        declaration = self._writer.declare(dataflow, run_id, waiting=True)
        try:
            answered = self._writer.flush()
        except CaptureError:  # the store is slow to answer: the declaration waits with the rows
            answered = False
        if not answered or not declaration.done.is_set():
            declaration.waiting = False  # the writer says it if the store refuses it later
            self._version = None
            return False
        if declaration.error is not None:
            raise declaration.error
        self._version = declaration.version
        return True

    @property
    def dataflow_version(self) -> int | None:
        """The version the store gave the dataflow; None while the store has not answered yet."""
        if self._version is None:
            self._version = self._writer.declared_version(self.dataflow)
        return self._version

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until every row captured so far is committed and visible to readers.

        False, at once, while the store is unreachable: the rows wait and are written when
        it answers again (the writer has warned).
        """
        return self._writer.flush(timeout)

    def end(self, status: str = "finished", error: str | None = None) -> None:
        """End the run and its open tasks, and write everything captured."""
        if self.status != "running":
            return
        if status not in STATUSES[1:]:
            raise ValueError(f"status must be one of {', '.join(STATUSES[1:])}, got {status!r}")
        for task in list(self._tasks):
            task.end(status, error)
        self.status = status
        now = time.time()
        if self.rank is None:
            self._writer.put((_RUN_END, (self.id, status, now, now - self.started, error)))
        else:  # the run ends with its last rank
            self._writer.put((_RANK_END, (self.id, self.rank, status, now, now - self.started, error)))
        self._writer.watch_run(self.id, False)
        _open_runs.discard(self)
        if self._handles_signals:
            _signals.release()
        self._writer.flush()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        status, error = status_for(exc)
        try:
            self.end(status, error)
        except CaptureError as failure:
            if exc is None:
                raise
            warnings.warn(str(failure), RuntimeWarning, stacklevel=2)

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.dataflow.name} v{self.dataflow_version} {self.status}>"


def start_run(
    dataflow: Dataflow,
    store: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    record_agents: bool = True,
    handle_signals: bool = True,
    run_id: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    seeds: Mapping[str, int] | None = None,
    group: str | None = None,
    parent: Run | str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Run:
    """Declare the dataflow in the store and start a run of it, or join one as a rank.

    Several processes record one run (a data-parallel training) when each is given the same
    `run_id` (or TRAINPROV_RUN_ID) with its `rank` and the `world_size` (or RANK and
    WORLD_SIZE, as torchrun sets them); the run ends when its last rank ends. `seeds` declares
    random seeds the program set that trainprov cannot see (it finds Keras', Lightning's and
    torch's itself). `group` puts the run in a run group (a study, a sweep; made on first
    use), `parent` names the run that started this one, `tags` are key/value labels.
    """
    return Run(dataflow, store, name=name, record_agents=record_agents, handle_signals=handle_signals,
               run_id=run_id, rank=rank, world_size=world_size, seeds=seeds, group=group, parent=parent, tags=tags)


# ---- process-wide state -------------------------------------------------------------------

_open_runs: set[Run] = set()


class _SignalHandling:
    """Turns SIGTERM into SignalInterrupt while runs are open, unless the program handles it.

    Once a SIGTERM has started the shutdown, the handler stays until the process ends: a
    second SIGTERM (a supervisor that insists) must not kill the process while it writes
    its last rows. It is reported and ignored; SIGKILL still ends the process at once.
    """

    def __init__(self) -> None:
        self.users = 0
        self.installed = False
        self.stopping = False

    def install(self) -> None:
        self.users += 1
        if self.installed or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, self._raise)
            self.installed = True

    def release(self) -> None:
        self.users = max(0, self.users - 1)
        if self.stopping:  # shutting down: keep the handler until the process has written its rows
            return
        if self.users == 0 and self.installed and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is self._raise:  # unless the program put its own since
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self.installed = False

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        if _signals.stopping:
            print(
                f"trainprov: {signal.Signals(signum).name} again while the process writes its last captured rows: "
                "it ends once they are written or saved (SIGKILL ends it now, without them)",
                file=sys.stderr, flush=True,
            )
            return
        _signals.stopping = True
        raise SignalInterrupt(signum)


_signals = _SignalHandling()


def _end_open_runs() -> None:
    for run in list(_open_runs):
        run.end(*run.exit_status)


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    # An uncaught exception ends the process: open runs end failed (or interrupted) with it.
    for run in list(_open_runs):
        try:
            run.end(*status_for(exc))
        except Exception as failure:  # the original exception is what the user must see
            print(f"trainprov: could not end run {run.id}: {failure!r}", file=sys.stderr)
    _previous_excepthook(exc_type, exc, tb)


_previous_excepthook = sys.excepthook
sys.excepthook = _excepthook


def _disown_after_fork() -> None:
    # A forked child inherits the parent's runs but not its writer thread: refuse captures
    # on them loudly instead of queueing rows that no thread would ever write.
    for run in list(_open_runs):
        for task in list(run._tasks):
            task.status = "forked"
        run.status = "forked"
    _open_runs.clear()
    _signals.users, _signals.installed, _signals.stopping = 0, False, False


before_close(_end_open_runs)
os.register_at_fork(after_in_child=_disown_after_fork)
