"""The SQL console's statements: run on their own threads, a few at once, each within a time limit.

A console statement is whatever a user typed, so it may never end (a recursive CTE) or
return millions of rows. It therefore never runs on the threads that serve the pages:
the console has its own, at most `limit` statements run at once (the next is answered
"busy" at once, not queued), the database stops each after `timeout` seconds, and only
the rows shown are fetched; the CSV download streams from the same kind of thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, AsyncIterator, Callable, Iterator

from ..errors import ConsoleBusy
from ..query import Reader

#: console statements running at once, and the seconds after which the database stops one
CONSOLE_LIMIT, CONSOLE_TIMEOUT = 4, 30.0
#: CSV chunks waiting for a slow client before the statement's thread waits too
_BUFFERED = 4
_END = object()


class _Gone(Exception):
    """The client of a download went away."""


class Console:
    """Runs console statements off the pages' threads, at most `limit` at once, each within `timeout` seconds."""

    def __init__(self, reader: Callable[[], Reader], *, timeout: float | None = CONSOLE_TIMEOUT,
                 limit: int = CONSOLE_LIMIT) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"the SQL console's time limit must be a positive number of seconds, got {timeout!r}")
        if limit < 1:
            raise ValueError(f"the SQL console needs room for at least one statement, got {limit!r}")
        self.reader = reader
        self.timeout = timeout
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)
        self._threads = concurrent.futures.ThreadPoolExecutor(max_workers=limit, thread_name_prefix="trainprov-sql")

    def busy_message(self) -> str:
        """What a user is told when every slot is taken."""
        limit = f"; each stops after {self.timeout:g} s" if self.timeout is not None else ""
        return (f"the SQL console is busy: {self.limit} statement{'s' * (self.limit != 1)} already running, "
                f"the most it runs at once{limit}. Try again in a moment.")

    def submit(self, work: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `work` on a console thread, or raise ConsoleBusy if all are taken (the slot is freed when the work ends)."""
        if not self._slots.acquire(blocking=False):
            raise ConsoleBusy(self.busy_message())

        def run() -> Any:
            try:
                return work()
            finally:
                self._slots.release()  # here, not in the request: a client that leaves does not free a running statement

        try:
            return self._threads.submit(run)
        except BaseException:
            self._slots.release()
            raise

    async def call(self, work: Callable[[Reader], Any]) -> Any:
        """The result of `work(reader)`, computed on a console thread."""
        return await asyncio.wrap_future(self.submit(lambda: work(self.reader())))

    async def stream(self, chunks: Callable[[Reader], Iterator[Any]]) -> tuple[Any, AsyncIterator[Any]]:
        """The first item of `chunks(reader)`, then an iterator over the rest, produced on one console thread.

        The first item comes before any response is sent, so a refused or invalid statement
        is still an error answer; a failure later (the time limit) ends the iterator with it.
        """
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        space = threading.Semaphore(_BUFFERED)
        gone = threading.Event()

        def put(item: Any) -> None:
            while not space.acquire(timeout=0.5):
                if gone.is_set():
                    raise _Gone()
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # the server is shutting down
                raise _Gone() from None

        def work() -> None:
            try:
                for chunk in chunks(self.reader()):
                    put(chunk)
                put(_END)
            except _Gone:
                pass
            except BaseException as exc:  # handed to the request, which answers with it
                try:
                    put(exc)
                except _Gone:
                    pass

        self.submit(work)

        async def take() -> Any:
            item = await items.get()
            space.release()
            if isinstance(item, BaseException):
                raise item
            return item

        try:
            first = await take()
        except BaseException:
            gone.set()
            raise

        async def rest() -> AsyncIterator[Any]:
            try:
                if first is _END:
                    return
                while True:
                    item = await take()
                    if item is _END:
                        return
                    yield item
            finally:
                gone.set()

        return first, rest()

    def close(self) -> None:
        """Stop taking statements (running ones end at their time limit)."""
        self._threads.shutdown(wait=False, cancel_futures=True)
