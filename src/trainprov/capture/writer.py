"""The background writer: one thread per process and store, draining the capture queue.

Capture calls append to a deque (cheap and thread-safe in CPython); the writer wakes every
`interval` seconds, or as soon as `batch_rows` rows wait, or at an explicit flush, and
writes what is queued in one transaction. The queue is bounded: when `max_rows` rows wait,
the caller blocks until the writer catches up. Nothing is dropped: a failed batch is kept
and tried again (skipping rows its lost commit may have written, so each is written once).
While the store is unreachable, training goes on: the oldest rows go to a local spool on
disk (capture/spool.py) and come back in order when the store answers; a flush during an
outage returns once every row before it is on disk, so a killed process loses none of
them. Declarations (new datasets and columns) travel in the same queue: the writer makes
the tables before the rows that need them, so no DDL runs on the training thread. Rows
still unwritten at exit are saved to a file (next to a SQLite store, else, or when that
disk is full, in the spool folder), and the message says which; `trainprov replay`
(capture/replay.py) writes them, and the spool segments of a killed process, later.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import sys
import threading
import time
import warnings
from typing import Any, Callable

from ..errors import CaptureError
from ..spec import Dataflow
from ..store import Backend, Target, open_backend
from ..store.catalog import item_row, resolve, target
from .spool import Spool, SpoolFull, spool_dir

HEARTBEAT_SECONDS = 5.0
YIELD_ROWS = 128  # rows a caller queues, while the writer is behind, between two GIL hand-overs
_HEARTBEAT = target("runs", ("run_id", "heartbeat_at"), mode="update")
RUN_VERSION = target("runs", ("run_id", "dataflow_version"), mode="update")


class _Flush:
    """A marker in the queue: everything before it is committed when `done` is set.

    `kept` is set when the store is down and everything before it is on disk in the spool.
    """

    __slots__ = ("done", "kept")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.kept = threading.Event()

    def __reduce__(self) -> tuple:
        return _Flush, ()  # a marker spooled to disk: its waiter has long given up on it


class Declaration:
    """A queued dataflow declaration: the writer creates or grows its tables before the rows after it.

    With `run_id`, the run's row then records the version the store gave the dataflow.
    `done` is set once the store has it (`version`) or refused it for good (`error`).
    """

    __slots__ = ("spec", "run_id", "done", "version", "error", "waiting")

    def __init__(self, spec: dict, run_id: str | None = None, waiting: bool = False) -> None:
        self.spec = spec
        self.run_id = run_id
        self.waiting = waiting  # a caller waits for it and raises its error itself
        self.done = threading.Event()
        self.version: int | None = None
        self.error: BaseException | None = None

    def __reduce__(self) -> tuple:
        return Declaration, (self.spec, self.run_id)

    @property
    def name(self) -> str:
        """The dataflow's name."""
        return self.spec["name"]


class Writer:
    """Owns one store's queue and the thread that writes it."""

    def __init__(
        self,
        backend: Backend,
        *,
        interval: float = 0.2,
        batch_rows: int = 5000,
        max_rows: int = 200_000,
    ) -> None:
        self.backend = backend
        self.interval = interval
        self.batch_rows = batch_rows
        self.max_rows = max_rows
        self._queue: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._room = threading.Condition()
        self._behind = 0  # rows queued since the caller last let the writer take the GIL
        self._pending: list[tuple[Any, ...]] = []
        self._active_runs: set[str] = set()
        self._last_heartbeat = 0.0
        self.last_error: BaseException | None = None
        self.rows_written = 0
        self.failures = 0  # failed write attempts so far
        self._stopping = False
        self._given_up = False
        self._write_lock = threading.Lock()  # held by the writer thread while it writes
        self.spool = Spool(backend.url)
        self._from_spool = False  # the pending batch is the spool's oldest segment
        self._retrying = False  # the pending batch failed once: its commit may have happened
        self.outage_since: float | None = None  # when the store stopped answering
        self._spool_error: str | None = None  # set when the spool gave up
        self._flush_requested = False  # a caller waits: during an outage, spool everything queued
        self._segment_markers: dict[str, list[_Flush]] = {}  # flush markers of spooled rows, by segment
        self._declared: dict[str, int] = {}  # versions of the declarations this writer made, by spec text
        self._thread = threading.Thread(target=self._loop, name="trainprov-writer", daemon=True)
        self._thread.start()

    # ---- the training thread's side ---------------------------------------------------

    def put(self, item: tuple) -> None:
        """Queue an item (see Target.prefix); blocks only when the queue is full."""
        queue = self._queue
        if len(queue) < self.batch_rows:
            queue.append(item)
            return
        self._put_slow(item)

    def _put_slow(self, item: tuple) -> None:
        # The writer is behind (batch_rows wait): a caller that captures in a tight loop holds
        # the GIL for a whole switch interval (5 ms) at a time, so the writer, back from each
        # statement SQLite ran without the GIL, would wait that long for it. Letting it in
        # every YIELD_ROWS rows keeps its SQLite work beside the caller's (measured in
        # docs/benchmarks.md, "The write path"); when nobody waits, sleep(0) costs ~1 us.
        if not self._wake.is_set():
            self._wake.set()
        self._behind += 1
        if self._behind >= YIELD_ROWS:
            self._behind = 0
            time.sleep(0)
        if len(self._queue) >= self.max_rows:
            if not self._thread.is_alive():
                raise CaptureError(f"the trainprov writer for {self.backend.url} has stopped")
            with self._room:
                while len(self._queue) >= self.max_rows:
                    if self._spool_error is not None:
                        raise CaptureError(
                            f"trainprov gives up recording to {self.backend.url}: it has not answered since "
                            f"{time.strftime('%H:%M:%S', time.localtime(self.outage_since or time.time()))} and "
                            f"{self._spool_error}. This row (table {resolve(item[0]).table}) and later ones are not recorded; "
                            f"the {self.unwritten_rows()} rows accepted before it "
                            "are kept and written if the store answers before the process ends (else saved to a file)"
                        )
                    self._wake.set()
                    self._room.wait(0.5)
        self._queue.append(item)

    def declare(self, flow: Dataflow, run_id: str | None = None, *, waiting: bool = False) -> Declaration:
        """Queue a declaration of a dataflow (its tables and columns), in order with the rows."""
        item = Declaration(flow.to_dict(), run_id, waiting)
        self.put(item)
        return item

    def declared_version(self, flow: Dataflow) -> int | None:
        """The version the store gave a dataflow this writer declared, or None (not yet)."""
        return self._declared.get(json.dumps(flow.to_dict(), sort_keys=True))

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until everything queued before this call is committed; False when the store is down.

        False as soon as a write tried after this call has failed: the rows wait (on disk in
        the spool, unless the spool is full or cannot be written) and the writer has warned;
        training goes on instead of waiting.
        """
        if not self._thread.is_alive():
            raise CaptureError(f"the trainprov writer for {self.backend.url} has stopped")
        marker = _Flush()
        self._queue.append(marker)
        self._flush_requested = True
        self._wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = self.failures
        while not marker.done.wait(0.05):
            if marker.kept.is_set():
                return False  # the store is down; the rows are safe on disk and wait for it
            if self._spool_error is not None and self.outage_since is not None and self.failures > failures:
                return False  # tried again since this call, and the spool cannot take the rows
            if deadline is not None and time.monotonic() > deadline:
                raise CaptureError(
                    f"captured rows were not written to {self.backend.url} within {timeout} s "
                    f"(they are kept and retried); last error: {self.last_error!r}"
                )
        return True

    def unwritten_rows(self) -> int:
        """Rows accepted and not yet written: queued, in the batch being tried, in the spool."""
        pending = 0 if self._from_spool else len(self._pending)
        return len(self._queue) + pending + self.spool.rows

    def watch_run(self, run_id: str, active: bool) -> None:
        """Start or stop sending heartbeats for a run."""
        if active:
            self._active_runs.add(run_id)
        else:
            self._active_runs.discard(run_id)

    # ---- the writer thread ------------------------------------------------------------

    def _loop(self) -> None:
        self._adopt()
        backoff = 0.0
        while not self._given_up:
            self._wake.wait(backoff or self.interval)
            self._wake.clear()
            if self.outage_since is not None:
                self._spill()
            try:
                with self._write_lock:
                    if self._given_up:
                        return
                    self._drain()
                backoff = 0.0
            except Exception as exc:  # the store failed: keep the rows, warn, retry
                self._retrying = True
                if self.outage_since is None:
                    self.outage_since = time.time()
                if self.last_error is None or type(exc) is not type(self.last_error):
                    warnings.warn(
                        f"trainprov could not write to {self.backend.url}: {exc}; training goes on, "
                        f"rows are kept (on disk in {self.spool.directory} when memory is full) and retried",
                        RuntimeWarning,
                        stacklevel=1,
                    )
                self.last_error = exc
                backoff = min(max(backoff * 2, 0.2), 5.0)
                self._spill_pending()
                self._spill(everything=self._flush_requested)
                self.failures += 1  # after the spill: a flush that sees it finds its rows on disk
            if self._stopping and not self._queue and not self._pending and not self.spool:
                return

    def _adopt(self) -> None:
        """Take over the spool segments a killed process left for this store: they are written first."""
        try:
            rows = self.spool.adopt()
        except OSError as exc:
            warnings.warn(f"trainprov: cannot look for spool segments left in {self.spool.directory}: {exc}",
                          RuntimeWarning, stacklevel=1)
            return
        if rows:
            warnings.warn(
                f"trainprov: {rows} rows spooled for {self.backend.url} by a process that ended during an "
                "outage are written now", RuntimeWarning, stacklevel=1,
            )

    def _spill_pending(self) -> None:
        """The failed batch goes to the front of the spool: on disk, still the oldest, written first."""
        if not self._pending or self._from_spool or self._spool_error is not None:
            return
        try:
            self.spool.put(self._pending, front=True)
        except (SpoolFull, OSError) as exc:
            self._spool_error = str(exc) if isinstance(exc, SpoolFull) else f"the spool cannot be written ({exc})"
            return
        self._from_spool = True
        for marker in self._pending:
            if isinstance(marker, _Flush):
                marker.kept.set()

    def _spill(self, everything: bool = False) -> None:
        """While the store is down, keep memory bounded: the oldest queued rows go to the spool.

        When a caller waits in `flush`, everything queued goes: a flush that returns False
        leaves its rows on disk, where a process killed now does not lose them.
        """
        if self._spool_error is not None:
            return
        excess = len(self._queue) - self.max_rows // 2
        if everything:
            self._flush_requested = False
            excess = len(self._queue)
            if not excess:
                return
        elif excess < min(self.batch_rows, self.max_rows // 4):
            return
        popleft = self._queue.popleft  # only this thread pops: the oldest rows, in order
        items = [popleft() for _ in range(excess)]
        markers = [m for m in items if isinstance(m, _Flush)]
        try:
            path = self.spool.put([r for r in items if not isinstance(r, _Flush)] if markers else items)
            if markers:  # their waiters are told when this segment is written
                self._segment_markers[path] = markers
                for marker in markers:
                    marker.kept.set()
        except (SpoolFull, OSError) as exc:
            self._queue.extendleft(reversed(items))  # still the oldest: back in front, in order
            self._spool_error = str(exc) if isinstance(exc, SpoolFull) else f"the spool cannot be written ({exc})"
            warnings.warn(f"trainprov: {self._spool_error}; captures will fail once memory is full too",
                          RuntimeWarning, stacklevel=1)
        with self._room:
            self._room.notify_all()

    def _drain(self) -> None:
        while True:
            if not self._pending:
                self._pending = self._take()
            rows = self._pending
            markers: list[_Flush] = []
            declarations: list[Declaration] = []
            if any(r.__class__ is not tuple for r in rows):  # rows are tuples; the rest are rare
                markers = [m for m in rows if isinstance(m, _Flush)]
                declarations = [d for d in rows if isinstance(d, Declaration)]
                rows = [r for r in rows if not isinstance(r, (_Flush, Declaration))]
            versions = self._declare(declarations) if declarations else []
            groups = group_items(rows + versions)
            now = time.time()
            beat = bool(self._active_runs) and now - self._last_heartbeat >= HEARTBEAT_SECONDS
            if beat:
                groups.append((_HEARTBEAT, [(_HEARTBEAT, (r, now)) for r in sorted(self._active_runs)]))
            if groups:
                try:
                    self.backend.write(groups, retry=self._retrying)
                except Exception as exc:
                    if not self.backend.is_permanent(exc):
                        raise  # the store is unreachable or busy: keep everything, retry
                    self._write_isolating(groups)  # some rows the store will never take
            # committed: nothing below may send these rows again
            self._pending = []
            if self._from_spool:
                for marker in self._segment_markers.pop(self.spool.paths[0], ()):
                    marker.done.set()
                self.spool.drop()
                self._from_spool = False
            self.rows_written += len(rows)
            self._retrying = False
            if self.outage_since is not None:
                warnings.warn(
                    f"trainprov: {self.backend.url} answers again after {time.time() - self.outage_since:.0f} s; "
                    "the rows kept meanwhile are being written",
                    RuntimeWarning,
                    stacklevel=1,
                )
                self.outage_since = None
                self._spool_error = None
            self.last_error = None
            if beat:
                self._last_heartbeat = now
            for marker in [*declarations, *markers]:
                marker.done.set()
            with self._room:
                self._room.notify_all()
            try:
                self.backend.maintain()
            except Exception as exc:  # upkeep only (a WAL checkpoint): the rows are safe
                warnings.warn(f"trainprov: store upkeep failed on {self.backend.url}: {exc}", RuntimeWarning, stacklevel=1)
            if not self._queue and not self.spool:
                return

    def _declare(self, declarations: list[Declaration]) -> list[tuple]:
        """Make the declarations of a batch, before its rows; return the runs' version updates.

        Declaring is idempotent (the same specification keeps its version) and only adds
        tables and columns, so rows queued before a declaration are not affected by it.
        """
        versions = []
        for item in declarations:
            # declared every time, not taken from memory: the store may have changed since
            try:
                version = self.backend.declare(Dataflow.from_dict(item.spec))
            except Exception as exc:
                if not self.backend.is_permanent(exc) and self.backend.is_outage(exc):
                    raise  # the store is unreachable: keep the batch, retry
                item.error = exc  # a conflict with the store: said once, the rows go on
                if not item.waiting:
                    warnings.warn(
                        f"trainprov: {self.backend.url} refused the declaration of dataflow {item.name!r}: {exc}; "
                        "rows that need it are set aside in the file of unwritten rows",
                        RuntimeWarning, stacklevel=1,
                    )
                continue
            self._declared[json.dumps(item.spec, sort_keys=True)] = version
            item.version = version
            if item.run_id is not None:
                versions.append((RUN_VERSION, (item.run_id, version)))
        return versions

    def _write_isolating(self, groups: list[tuple[Target, list[tuple]]]) -> None:
        """Write what the store accepts; set aside, with a warning, each row it refuses for good."""
        refused = write_isolating(self.backend, groups, retry=self._retrying)
        if refused:
            path = self._save([item for item, _ in refused])
            first = refused[0][1]
            warnings.warn(
                f"trainprov: {len(refused)} captured row(s) were refused by {self.backend.url} "
                f"({type(first).__name__}: {first}, table {resolve(refused[0][0][0]).table}); they are saved in {path}",
                RuntimeWarning,
                stacklevel=1,
            )

    def _take(self) -> list:
        if self.spool:  # older than anything in memory
            self._from_spool = True
            return self.spool.peek()
        # Only the writer pops, so the queue holds at least this many items.
        popleft = self._queue.popleft
        return [popleft() for _ in range(min(len(self._queue), max(self.batch_rows * 4, 20_000)))]

    # ---- shutdown ---------------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, stop the thread; save rows that could not be written."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive() or self._queue or self._pending or self.spool:
            self._given_up = True
            # not while a write is under way: a row must not end up both in the store and the file
            locked = self._write_lock.acquire(timeout=10)
            try:
                self._save_unwritten()
            finally:
                if locked:
                    self._write_lock.release()
        self.backend.close()

    def unwritten_paths(self) -> list[str]:
        """Where unwritten rows may be saved, in order: next to a store file, then the spool folder."""
        return unwritten_paths(self.backend.url, os.getpid(), self.spool.directory)

    def _save(self, rows: list) -> str:
        """Append rows to the first file of unwritten rows that takes them whole; return its path.

        A disk that is full (or read-only) gets nothing, not half of them: the next place is tried.
        """
        data = "".join(line + "\n" for line in serialize(rows)).encode("utf-8")
        failures = []
        for path in self.unwritten_paths():
            try:
                append_whole(path, data)
                return path
            except OSError as exc:
                failures.append(f"{path}: {exc.strerror or exc}")
        raise OSError("; ".join(failures))

    def _save_unwritten(self) -> None:
        pending = [] if self._from_spool else self._pending  # a spooled batch is still in the spool
        queue = list(self._queue)
        self._pending, self._from_spool = [], False
        self._queue.clear()
        pending = [r for r in pending if not isinstance(r, _Flush)]
        queue = [r for r in queue if not isinstance(r, _Flush)]
        memory = pending + queue
        try:
            spooled = self.spool.items()
        except Exception as exc:  # an unreadable segment: all stay, for `trainprov replay` to report
            self._keep_in_spool(memory, OSError(f"the spool could not be read: {exc}"))
            return
        # the failed batch is the oldest, then the spool, then what was still queued
        rows = [*pending, *(r for r in spooled if not isinstance(r, _Flush)), *queue]
        if not rows:
            self.spool.clear()
            return
        try:
            path = self._save(rows)
        except OSError as exc:
            self._keep_in_spool(memory, exc)
            return
        self.spool.clear()  # only now: its rows are in the file
        elements = [r for r in rows if not isinstance(r, Declaration)]
        targets = [resolve(r[0]) for r in elements]
        tables = collections.Counter(t.table for t in targets)
        runs = sorted({item_row(r)[1][0] for r, t in zip(elements, targets) if t.prefix or t.table == "runs"})
        print(
            f"trainprov: {len(elements)} captured rows could not be written to {self.backend.url} "
            f"(last error: {self.last_error!r}): "
            + ", ".join(f"{table} {n}" for table, n in tables.most_common())
            + (f"; runs {', '.join(map(str, runs))}" if runs else "")
            + f". `trainprov replay` writes them to the store when it answers; they are saved in {path}",
            file=sys.stderr,
        )

    def _keep_in_spool(self, memory: list, failure: OSError) -> None:
        """No file took the rows: leave the spool on disk and add the rows still in memory to it."""
        lost = 0
        if memory:
            try:
                self.spool.put(memory)
            except (SpoolFull, OSError):
                lost = len(memory)
        kept = self.spool.rows
        paths = self.spool.paths
        self.spool.release()  # left on disk: adopted by the next process on this store, or replayed
        print(
            f"trainprov: captured rows could not be written to {self.backend.url} "
            f"(last error: {self.last_error!r}), nor saved to a file ({failure}). "
            + (f"{kept} rows stay in the spool ({', '.join(paths)}): the next process that writes to this store, "
               "or `trainprov replay`, writes them. " if kept else "")
            + (f"{lost} rows held in memory are LOST: the spool could not take them either." if lost else ""),
            file=sys.stderr,
        )


def unwritten_paths(url: str, pid: int, spool_directory: str | None = None) -> list[str]:
    """The files of unwritten rows of a process: next to a store file, then in the spool folder."""
    name = "".join(c if c.isalnum() else "_" for c in url.split("://", 1)[-1])[:80]
    in_spool = os.path.join(spool_directory or spool_dir(), f"unwritten-{name}-{pid}.jsonl")
    if "://" not in url:
        return [f"{url}.unwritten-{pid}.jsonl", in_spool]
    return [in_spool]


def append_whole(path: str, data: bytes) -> None:
    """Append data to a file, all of it or nothing (a failed write is cut off again)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    start = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError:
        try:
            os.ftruncate(fd, start)
        finally:
            os.close(fd)
            if start == 0:
                try:
                    os.remove(path)
                except OSError:
                    pass
        raise
    os.close(fd)


def serialize(items: list) -> list[str]:
    """Queued items as lines of the file of unwritten rows (JSON; `trainprov replay` reads them)."""
    lines = []
    for item in items:
        if isinstance(item, Declaration):
            lines.append(json.dumps({"declare": item.spec, "run_id": item.run_id}))
            continue
        tgt, row = _expand([item])[0]
        lines.append(json.dumps(
            {"table": tgt.table, "columns": tgt.columns, "row": row, "types": tgt.types, "key": tgt.key,
             "mode": tgt.mode},
            default=str,
        ))
    return lines


def write_isolating(backend: Backend, groups: list[tuple[Target, list[tuple]]], *, retry: bool) -> list[tuple[tuple, BaseException]]:
    """Write what the store accepts, halving batches around rows it refuses for good; return those."""
    refused: list[tuple[tuple, BaseException]] = []

    def attempt(tgt: Target, items: list[tuple]) -> None:
        try:
            backend.write([(tgt, items)], retry=retry)
        except Exception as exc:
            if not backend.is_permanent(exc):
                raise
            if len(items) == 1:
                refused.append((items[0], exc))
                return
            half = len(items) // 2
            attempt(tgt, items[:half])
            attempt(tgt, items[half:])

    for tgt, items in groups:
        attempt(tgt, items)
    return refused


def _expand(items: list[tuple]) -> list[tuple[Target, tuple]]:
    """Full rows (for the file of unwritten rows)."""
    return [item_row(item) for item in items]


def group_items(items: list[tuple]) -> list[tuple[Target, list[tuple]]]:
    """Queued items per target; inserts before updates, so an update finds the row it changes."""
    inserts: dict[Target, list[tuple]] = {}
    updates: dict[Target, list[tuple]] = {}
    last, rows = None, []
    for item in items:
        head = item[0]
        if head is not last:
            tgt = resolve(head)
            groups = updates if tgt.mode in ("update", "end_rank") else inserts
            rows = groups.get(tgt)
            if rows is None:
                rows = groups[tgt] = []
            last = head
        rows.append(item)
    return [*inserts.items(), *updates.items()]


# ---- one writer per process and store -----------------------------------------------------

_writers: dict[str, Writer] = {}
_writers_lock = threading.Lock()
_before_close: list[Callable[[], None]] = []


def writer_for(store: str | os.PathLike | None = None, backend: Backend | None = None) -> Writer:
    """The process's writer for a store, started on first use."""
    backend = backend or open_backend(store)
    with _writers_lock:
        writer = _writers.get(backend.url)
        if writer is None or not writer._thread.is_alive():
            # rows kept in memory before the spool takes the oldest (while the store is down)
            max_rows = int(os.environ.get("TRAINPROV_QUEUE_ROWS", 200_000))
            writer = _writers[backend.url] = Writer(backend, max_rows=max_rows, batch_rows=min(5000, max(1, max_rows // 4)))
        return writer


def before_close(hook: Callable[[], None]) -> None:
    """Run hook at interpreter exit before the writers write their last rows."""
    _before_close.append(hook)


def close_all() -> None:
    """Run the exit hooks, then flush and stop every writer of this process."""
    for hook in _before_close:
        try:
            hook()
        except Exception as exc:  # an exit hook must not keep the rows from being written
            print(f"trainprov: at exit: {exc!r}", file=sys.stderr)
    with _writers_lock:
        writers = list(_writers.values())
        _writers.clear()
    for writer in writers:
        writer.close()


def _forget_after_fork() -> None:
    # The child has the parent's queue but not its thread: start afresh if it captures.
    global _writers_lock
    _writers.clear()
    _writers_lock = threading.Lock()


atexit.register(close_all)
os.register_at_fork(after_in_child=_forget_after_fork)
