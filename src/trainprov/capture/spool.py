"""The local spool: captured rows kept on disk while the store is unreachable.

The writer keeps rows in memory first; when the store is down and memory holds its
limit, the oldest rows go to numbered segment files here, and come back, oldest first,
when the store answers again. The spool has a size limit: past it, it gives up.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any

DEFAULT_LIMIT_MB = 1024


def spool_dir() -> str:
    """Where spools and files of unwritten rows go: $TRAINPROV_SPOOL, else the user's cache folder."""
    configured = os.environ.get("TRAINPROV_SPOOL")
    if configured:
        return configured
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "trainprov", "spool")


class SpoolFull(Exception):
    """The spool reached its size limit."""


class Spool:
    """Segments of queued items on disk, taken back oldest first; one spool per writer."""

    def __init__(self, url: str, directory: str | None = None, limit_mb: float | None = None) -> None:
        self.url = url
        self.directory = directory or spool_dir()
        if limit_mb is None:
            limit_mb = float(os.environ.get("TRAINPROV_SPOOL_LIMIT_MB", DEFAULT_LIMIT_MB))
        self.limit_bytes = int(limit_mb * 1024 * 1024)
        self._segments: list[tuple[str, int, int]] = []  # (path, rows, bytes), oldest first
        self.bytes = 0
        self.rows = 0

    def __bool__(self) -> bool:
        return bool(self._segments)

    def put(self, items: list[Any]) -> str:
        """Write items as the newest segment; raise SpoolFull if they would pass the limit."""
        data = pickle.dumps({"url": self.url, "pid": os.getpid(), "items": items}, protocol=pickle.HIGHEST_PROTOCOL)
        if self.bytes + len(data) > self.limit_bytes:
            raise SpoolFull(
                f"the spool in {self.directory} holds {self.bytes / 2**20:.0f} MB and its limit is "
                f"{self.limit_bytes / 2**20:.0f} MB (TRAINPROV_SPOOL_LIMIT_MB)"
            )
        os.makedirs(self.directory, exist_ok=True)
        # written whole, then renamed: a crash never leaves half a segment under a segment's name
        fd, tmp = tempfile.mkstemp(prefix=f"spool-{os.getpid()}-", suffix=".tmp", dir=self.directory)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        path = tmp[: -len(".tmp")] + ".pkl"
        os.replace(tmp, path)
        self._segments.append((path, len(items), len(data)))
        self.bytes += len(data)
        self.rows += len(items)
        return path

    def peek(self) -> list[Any]:
        """The items of the oldest segment (it stays until `drop`)."""
        with open(self._segments[0][0], "rb") as f:
            return pickle.load(f)["items"]

    def drop(self) -> None:
        """Forget the oldest segment: its items are in the store."""
        path, rows, size = self._segments.pop(0)
        self.bytes -= size
        self.rows -= rows
        try:
            os.remove(path)
        except OSError:
            pass

    def take_all(self) -> list[Any]:
        """Every item, oldest first, and an empty spool (for the file of unwritten rows at exit)."""
        items: list[Any] = []
        while self._segments:
            items += self.peek()
            self.drop()
        return items
