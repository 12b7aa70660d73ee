"""The local spool: captured rows kept on disk while the store is unreachable.

The writer keeps rows in memory first; when the store is down and memory holds its
limit (or a flush asks for the rows to be safe), the oldest rows go to numbered segment
files here, and come back, oldest first, when the store answers again. The spool has a
size limit: past it, it gives up.

A segment's name says which store it is for, which process owns it and its place in
that process's order: `spool-<store key>-<pid>-<process start>-<order>.pkl`. Segments
whose process has died (killed during an outage) are orphans: the next process that
writes to the same store, or `trainprov replay`, adopts them by renaming them to its own.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
from typing import Any

from ..store import liveness
from ..store.catalog import current_item, resolve

DEFAULT_LIMIT_MB = 1024
#: orders start here so that a segment put in front of the first one still has a positive number
_FIRST_ORDER = 10**12
_NAME = re.compile(r"spool-([0-9a-f]{12})-(\d+)-(\d+)-(\d{15})\.pkl")
_LEGACY_NAME = re.compile(r"spool-(\d+)-[^.]*\.pkl")  # segments of trainprov before names said their store


def spool_dir() -> str:
    """Where spools and files of unwritten rows go: $TRAINPROV_SPOOL, else the user's cache folder."""
    configured = os.environ.get("TRAINPROV_SPOOL")
    if configured:
        return configured
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "trainprov", "spool")


def store_key(url: str) -> str:
    """A short, file-name-safe key of a store URL (the URL with its password hidden)."""
    return hashlib.sha256(url.encode()).hexdigest()[:12]


class SpoolFull(Exception):
    """The spool reached its size limit."""


def load_segment(path: str) -> dict[str, Any]:
    """A segment's content: {"url", "pid", "items"}."""
    with open(path, "rb") as f:
        return pickle.load(f)


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
        self._key = store_key(url)
        self._owner = (os.getpid(), liveness.process_started(os.getpid()) or "0")
        self._first = self._next = _FIRST_ORDER

    def __bool__(self) -> bool:
        return bool(self._segments)

    @property
    def paths(self) -> list[str]:
        """The segment files, oldest first."""
        return [path for path, _, _ in self._segments]

    def _name(self, order: int) -> str:
        pid, started = self._owner
        return f"spool-{self._key}-{pid}-{started}-{order:015d}.pkl"

    def put(self, items: list[Any], *, front: bool = False) -> str:
        """Write items as the newest segment (the oldest with `front`); raise SpoolFull past the limit."""
        if self._owner[0] != os.getpid():  # a forked child: its segments are its own
            self._owner = (os.getpid(), liveness.process_started(os.getpid()) or "0")
        # a target's handle means something in this process only: another one may adopt the segment
        items = [(resolve(i[0]), *i[1:]) if i.__class__ is tuple and i[0].__class__ is int else i for i in items]
        data = pickle.dumps({"url": self.url, "pid": os.getpid(), "items": items}, protocol=pickle.HIGHEST_PROTOCOL)
        if self.bytes + len(data) > self.limit_bytes:
            raise SpoolFull(
                f"the spool in {self.directory} holds {self.bytes / 2**20:.0f} MB and its limit is "
                f"{self.limit_bytes / 2**20:.0f} MB (TRAINPROV_SPOOL_LIMIT_MB)"
            )
        os.makedirs(self.directory, exist_ok=True)
        if front:
            self._first -= 1
            order = self._first
        else:
            order = self._next
            self._next += 1
        path = os.path.join(self.directory, self._name(order))
        # written whole, then renamed: a crash never leaves half a segment under a segment's name
        fd, tmp = tempfile.mkstemp(prefix=f"spool-{os.getpid()}-", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise
        entry = (path, len(items), len(data))
        if front:
            self._segments.insert(0, entry)
        else:
            self._segments.append(entry)
        self.bytes += len(data)
        self.rows += len(items)
        return path

    def peek(self) -> list[Any]:
        """The items of the oldest segment (it stays until `drop`)."""
        return [current_item(i) for i in load_segment(self._segments[0][0])["items"]]

    def drop(self) -> None:
        """Forget the oldest segment: its items are in the store."""
        path, rows, size = self._segments.pop(0)
        self.bytes -= size
        self.rows -= rows
        try:
            os.remove(path)
        except OSError:
            pass

    def items(self) -> list[Any]:
        """Every item, oldest first; the segments stay on disk (until `clear`)."""
        out: list[Any] = []
        for path, _, _ in self._segments:
            out += map(current_item, load_segment(path)["items"])
        return out

    def clear(self) -> None:
        """Remove every segment: their items are written somewhere else now."""
        while self._segments:
            self.drop()

    def release(self) -> None:
        """Stop tracking the segments but leave them on disk, for a later process or `trainprov replay`."""
        self._segments.clear()
        self.bytes = self.rows = 0

    # ---- orphans --------------------------------------------------------------------------

    def orphans(self) -> list[str]:
        """Segments of this store whose process has died, oldest first (by process, then order)."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        owners: dict[tuple[int, str], list[tuple[int, str]]] = {}
        for name in names:
            path = os.path.join(self.directory, name)
            match = _NAME.fullmatch(name)
            if match:
                if match[1] != self._key:
                    continue
                owner, order = (int(match[2]), match[3]), int(match[4])
            elif _LEGACY_NAME.fullmatch(name):
                try:
                    content = load_segment(path)
                except Exception:  # unreadable: not ours to judge
                    continue
                if content.get("url") != self.url:
                    continue
                owner, order = (int(content.get("pid", 0)), "0"), int(os.stat(path).st_mtime_ns)
            else:
                continue
            if owner == self._owner or (owner[0] == os.getpid()):
                continue
            if liveness.is_alive(owner[0], None if owner[1] == "0" else owner[1]):
                continue
            owners.setdefault(owner, []).append((order, path))

        def age(segments: list[tuple[int, str]]) -> float:
            try:
                return min(os.stat(p).st_mtime for _, p in segments)
            except OSError:
                return 0.0

        ordered: list[str] = []
        for segments in sorted(owners.values(), key=age):
            ordered += [path for _, path in sorted(segments)]
        return ordered

    def adopt(self) -> int:
        """Take over the orphaned segments of this store, in front of this spool's own; return their rows."""
        adopted: list[tuple[str, int, int]] = []
        # newest first, each numbered before the one after it: the oldest ends first, in front
        for path in reversed(self.orphans()):
            try:
                content = load_segment(path)
            except FileNotFoundError:  # another process adopted it first
                continue
            except Exception:  # a damaged segment: left where it is for a person to look at
                continue
            mine = os.path.join(self.directory, self._name(self._first - 1))
            try:
                os.rename(path, mine)  # atomic: of two processes adopting at once, one gets it
            except FileNotFoundError:
                continue
            self._first -= 1
            entry = (mine, len(content["items"]), os.stat(mine).st_size)
            self._segments.insert(0, entry)
            self.bytes += entry[2]
            self.rows += entry[1]
            adopted.append(entry)
        return sum(rows for _, rows, _ in adopted)
