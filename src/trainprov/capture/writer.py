"""The background writer: one thread per process and store, draining the capture queue.

Capture calls append to a deque (cheap and thread-safe in CPython); the writer wakes every
`interval` seconds, or as soon as `batch_rows` rows wait, or at an explicit flush, and
writes what is queued in one transaction. The queue is bounded: when `max_rows` rows wait,
the caller blocks until the writer catches up. Nothing is dropped: a failed batch is kept
and tried again, and rows still unwritten at exit are saved to a file next to the store.
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
from ..store import Backend, Target, open_backend
from ..store.catalog import target

HEARTBEAT_SECONDS = 5.0
_HEARTBEAT = target("runs", ("run_id", "heartbeat_at"), mode="update")


class _Flush:
    """A marker in the queue: everything before it is committed when `done` is set."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


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
        self._pending: list[tuple[Any, ...]] = []
        self._active_runs: set[str] = set()
        self._last_heartbeat = 0.0
        self.last_error: BaseException | None = None
        self.rows_written = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="trainprov-writer", daemon=True)
        self._thread.start()

    # ---- the training thread's side ---------------------------------------------------

    def put(self, item: tuple) -> None:
        """Queue (target, row) or (target, row_prefix, values); blocks only when the queue is full."""
        queue = self._queue
        if len(queue) < self.batch_rows:
            queue.append(item)
            return
        self._put_slow(item)

    def _put_slow(self, item: tuple) -> None:
        if not self._wake.is_set():
            self._wake.set()
        if len(self._queue) >= self.max_rows:
            if not self._thread.is_alive():
                raise CaptureError(f"the trainprov writer for {self.backend.url} has stopped")
            with self._room:
                while len(self._queue) >= self.max_rows:
                    self._wake.set()
                    self._room.wait(0.5)
        self._queue.append(item)

    def flush(self, timeout: float | None = 60.0) -> None:
        """Return once everything queued before this call is committed to the store."""
        if not self._thread.is_alive():
            raise CaptureError(f"the trainprov writer for {self.backend.url} has stopped")
        marker = _Flush()
        self._queue.append(marker)
        self._wake.set()
        if not marker.done.wait(timeout):
            raise CaptureError(
                f"captured rows were not written to {self.backend.url} within {timeout} s "
                f"(they are kept and retried); last error: {self.last_error!r}"
            )

    def watch_run(self, run_id: str, active: bool) -> None:
        """Start or stop sending heartbeats for a run."""
        if active:
            self._active_runs.add(run_id)
        else:
            self._active_runs.discard(run_id)

    # ---- the writer thread ------------------------------------------------------------

    def _loop(self) -> None:
        backoff = 0.0
        while True:
            self._wake.wait(backoff or self.interval)
            self._wake.clear()
            try:
                self._drain()
                backoff = 0.0
            except Exception as exc:  # the store failed: keep the rows, warn, retry
                if self.last_error is None or type(exc) is not type(self.last_error):
                    warnings.warn(
                        f"trainprov could not write to {self.backend.url}: {exc}; rows are kept "
                        "and retried",
                        RuntimeWarning,
                        stacklevel=1,
                    )
                self.last_error = exc
                backoff = min(max(backoff * 2, 0.2), 5.0)
            if self._stopping and not self._queue and not self._pending:
                return

    def _drain(self) -> None:
        while True:
            if not self._pending:
                self._pending = self._take()
            markers = [m for m in self._pending if isinstance(m, _Flush)]
            rows = [r for r in self._pending if not isinstance(r, _Flush)]
            groups = _group(rows)
            now = time.time()
            beat = bool(self._active_runs) and now - self._last_heartbeat >= HEARTBEAT_SECONDS
            if beat:
                groups.append((_HEARTBEAT, [(_HEARTBEAT, (r, now)) for r in sorted(self._active_runs)]))
            if groups:
                try:
                    self.backend.write(groups)
                except Exception as exc:
                    if not self.backend.is_permanent(exc):
                        raise  # the store is unreachable or busy: keep everything, retry
                    self._write_isolating(groups)  # some rows the store will never take
            # committed: nothing below may send these rows again
            self._pending = []
            self.rows_written += len(rows)
            self.last_error = None
            if beat:
                self._last_heartbeat = now
            for marker in markers:
                marker.done.set()
            with self._room:
                self._room.notify_all()
            try:
                self.backend.maintain()
            except Exception as exc:  # upkeep only (a WAL checkpoint): the rows are safe
                warnings.warn(f"trainprov: store upkeep failed on {self.backend.url}: {exc}", RuntimeWarning, stacklevel=1)
            if not self._queue:
                return

    def _write_isolating(self, groups: list[tuple[Target, list[tuple]]]) -> None:
        """Write what the store accepts; set aside, with a warning, each row it refuses for good."""
        refused: list[tuple[tuple, BaseException]] = []

        def attempt(tgt: Target, items: list[tuple]) -> None:
            try:
                self.backend.write([(tgt, items)])
            except Exception as exc:
                if not self.backend.is_permanent(exc):
                    raise
                if len(items) == 1:
                    refused.append((items[0], exc))
                    return
                half = len(items) // 2
                attempt(tgt, items[:half])
                attempt(tgt, items[half:])

        for tgt, items in groups:
            attempt(tgt, items)
        if refused:
            path = self._save([item for item, _ in refused])
            first = refused[0][1]
            warnings.warn(
                f"trainprov: {len(refused)} captured row(s) were refused by {self.backend.url} "
                f"({type(first).__name__}: {first}, table {refused[0][0][0].table}); they are saved in {path}",
                RuntimeWarning,
                stacklevel=1,
            )

    def _take(self) -> list:
        # Only the writer pops, so the queue holds at least this many items.
        popleft = self._queue.popleft
        return [popleft() for _ in range(min(len(self._queue), max(self.batch_rows * 4, 20_000)))]

    # ---- shutdown ---------------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, stop the thread; save rows that could not be written."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive() or self._queue or self._pending:
            self._save_unwritten()
        self.backend.close()

    def _save(self, rows: list[tuple]) -> str:
        """Append rows to the file of unwritten rows next to the store; return its path."""
        path = f"{self.backend.url}.unwritten-{os.getpid()}.jsonl"
        with open(path, "a", encoding="utf-8") as out:
            for target_, row in _expand(rows):
                out.write(json.dumps({"table": target_.table, "columns": target_.columns, "row": row}, default=str))
                out.write("\n")
        return path

    def _save_unwritten(self) -> None:
        rows = [r for r in [*self._pending, *self._queue] if not isinstance(r, _Flush)]
        if not rows:
            return
        path = self._save(rows)
        print(
            f"trainprov: {len(rows)} captured rows could not be written to {self.backend.url} "
            f"(last error: {self.last_error!r}); they are saved in {path}",
            file=sys.stderr,
        )


def _expand(items: list[tuple]) -> list[tuple[Target, tuple]]:
    """Full rows (for the file of unwritten rows)."""
    out = []
    for item in items:
        tgt = item[0]
        if tgt.prefix:
            values = item[2]
            out.append((tgt, item[1] + tuple(map(values.get, tgt.columns[tgt.prefix :]))))
        else:
            out.append((tgt, item[1]))
    return out


def _group(items: list[tuple]) -> list[tuple[Target, list[tuple]]]:
    """Queued items per target; inserts before updates, so an update finds the row it changes."""
    inserts: dict[Target, list[tuple]] = {}
    updates: dict[Target, list[tuple]] = {}
    last, rows = None, []
    for item in items:
        tgt = item[0]
        if tgt is not last:
            groups = updates if tgt.mode == "update" else inserts
            rows = groups.get(tgt)
            if rows is None:
                rows = groups[tgt] = []
            last = tgt
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
            writer = _writers[backend.url] = Writer(backend)
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
