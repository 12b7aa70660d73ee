"""Replay what a process set aside: files of unwritten rows and the spool segments of killed processes.

A process that could not reach its store saves its rows at exit to a file of unwritten
rows (`<store>.unwritten-<pid>.jsonl`, or `unwritten-<store>-<pid>.jsonl` in the spool
folder); a process killed during an outage leaves spool segments. `replay` writes both
to the store, exactly once: a row whose key is already there is skipped, so replaying
twice, or replaying what partly arrived, writes nothing twice. What the store refuses
for good stays in a file, and the report says where.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..errors import StoreError
from ..spec import ELEMENT_COLUMN_TYPES, ELEMENT_COLUMNS, Dataflow
from ..store import Backend, Target, open_backend
from ..store.catalog import TABLES
from ..store import liveness
from .spool import Spool, spool_dir
from .writer import RUN_VERSION, Declaration, append_whole, group_items, serialize, unwritten_paths, write_isolating

#: items per transaction: a replay stopped half-way keeps what it wrote, and goes on from there next time
CHUNK = 5000
_RANK_END_COLUMNS = ("run_id", "rank", "status", "ended_at", "duration_s", "error")


@dataclass
class ReplayReport:
    """What a replay did: sources written and removed, rows sent, rows the store refused."""

    replayed: list[str] = field(default_factory=list)
    rows: int = 0
    declarations: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # file holding refused rows -> how many
    skipped: list[str] = field(default_factory=list)  # files of processes still running

    def lines(self) -> list[str]:
        """A short account for a person."""
        if not self.replayed and not self.refused:
            out = ["nothing to replay"]
        else:
            out = [f"replayed {self.rows} rows and {self.declarations} declarations from {len(self.replayed)} "
                   "source(s); rows already in the store were skipped"]
            out += [f"  {path}" for path in self.replayed]
        out += [f"{n} rows refused by the store stay in {path}" for path, n in self.refused.items()]
        out += [f"skipped {path}: its process still runs" for path in self.skipped]
        return out


def unwritten_files(url: str, directory: str | None = None) -> list[str]:
    """Files of unwritten rows saved for a store by processes that have ended, oldest first."""
    found = []
    for template in unwritten_paths(url, 0, directory):
        folder, name = os.path.split(template)
        prefix = name[: name.rindex("-0.jsonl") + 1]
        try:
            names = os.listdir(folder or ".")
        except OSError:
            continue
        for entry in names:
            match = re.fullmatch(re.escape(prefix) + r"(\d+)\.jsonl", entry)
            if match:
                found.append((int(match[1]), os.path.join(folder, entry)))
    return [path for _, path in sorted(found, key=lambda f: os.stat(f[1]).st_mtime)]


def replay(store: str | os.PathLike | None = None, paths: Iterable[str] | None = None) -> ReplayReport:
    """Write rows set aside for a store; with `paths`, only those files of unwritten rows.

    Without `paths`: the spool segments of this store whose process died, then the files
    of unwritten rows of ended processes. Raises StoreError, leaving every source in place,
    when the store cannot be reached.
    """
    backend = open_backend(store)
    report = ReplayReport()
    try:
        # a store that is not there (a mistyped path) is named before anything is taken from the spool
        backend.query("SELECT run_id FROM runs LIMIT 1")
        if paths is None:
            _replay_spool(backend, report)
            files = []
            for path in unwritten_files(backend.url):
                pid = int(path.rsplit("-", 1)[1].split(".")[0])
                (report.skipped if pid != os.getpid() and liveness.is_alive(pid, None) else files).append(path)
        else:
            files = [os.fspath(p) for p in paths]
        for path in files:
            _replay_file(backend, path, report)
        liveness.reap(backend)  # the runs of killed processes that arrived now end as interrupted
    finally:
        backend.close()
    return report


def _replay_spool(backend: Backend, report: ReplayReport) -> None:
    spool = Spool(backend.url, spool_dir())
    spool.adopt()  # renamed to this process's: two replays at once never take the same segment
    try:
        while spool:
            path = spool.paths[0]
            items = [i for i in spool.peek() if isinstance(i, (tuple, Declaration))]
            refused = _write(backend, items, report)
            if refused:
                kept = _keep(backend, refused)
                report.refused[kept] = report.refused.get(kept, 0) + len(refused)
            spool.drop()
            report.replayed.append(path)
    finally:
        spool.release()  # what is left (the store went away) stays for the next replay


def _replay_file(backend: Backend, path: str, report: ReplayReport) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
    except OSError as exc:
        raise StoreError(f"cannot read the file of unwritten rows {path}: {exc.strerror or exc}") from None
    reader = _LineReader(backend, path)
    items = [reader.item(number, line) for number, line in enumerate(lines, 1)]
    refused = _write(backend, items, report)
    if refused:
        data = "".join(line + "\n" for line in serialize(refused)).encode("utf-8")
        tmp = f"{path}.replay-{os.getpid()}"
        with open(tmp, "wb") as out:
            out.write(data)
        os.replace(tmp, path)  # only the refused rows stay
        report.refused[path] = len(refused)
    else:
        os.remove(path)
    report.replayed.append(path)


def _write(backend: Backend, items: list, report: ReplayReport) -> list:
    """Declare, then write the rows in chunks, skipping rows already in the store; return the refused."""
    rows: list = []
    declared: dict[str, int] = {}

    for item in items:
        if isinstance(item, Declaration):
            key = json.dumps(item.spec, sort_keys=True)
            if key not in declared:
                try:
                    declared[key] = backend.declare(Dataflow.from_dict(item.spec))
                except Exception as exc:
                    if backend.is_outage(exc) and not backend.is_permanent(exc):
                        raise StoreError(f"cannot replay to {backend.url}: {exc}") from None
                    raise StoreError(
                        f"{backend.url} refuses dataflow {item.name!r} of the rows to replay: {exc}"
                    ) from None
                report.declarations += 1
            if item.run_id is not None:
                rows.append((RUN_VERSION, (item.run_id, declared[key])))
        else:
            rows.append(item)
    refused: list = []
    for lo in range(0, len(rows), CHUNK):
        chunk = rows[lo : lo + CHUNK]
        try:
            refused += [item for item, _ in write_isolating(backend, group_items(chunk), retry=True)]
        except Exception as exc:
            raise StoreError(f"cannot replay to {backend.url} (what was written stays written; "
                             f"replay again when it answers): {exc}") from None
        report.rows += len(chunk)
    return refused


def _keep(backend: Backend, refused: list) -> str:
    """Save rows the store refused from a spool segment to this process's file of unwritten rows."""
    data = "".join(line + "\n" for line in serialize(refused)).encode("utf-8")
    failures = []
    for path in unwritten_paths(backend.url, os.getpid()):
        try:
            append_whole(path, data)
            return path
        except OSError as exc:
            failures.append(f"{path}: {exc.strerror or exc}")
    raise StoreError(f"cannot save {len(refused)} refused rows: {'; '.join(failures)}")


class _LineReader:
    """Turns lines of a file of unwritten rows back into queued items."""

    def __init__(self, backend: Backend, path: str) -> None:
        self.backend = backend
        self.path = path
        self._targets: dict[tuple, Target] = {}  # one object per kind: the writer groups rows by identity
        self._dataset_types: dict[str, dict[str, str]] = {}

    def item(self, number: int, line: str) -> Any:
        try:
            record = json.loads(line)
            if "declare" in record:
                return Declaration(record["declare"], record.get("run_id"))
            tgt = self._target(record)
            row = tuple(_decode(kind, value) for kind, value in zip(tgt.types, record["row"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{self.path} line {number} is not a row trainprov saved: {exc}") from None
        return (tgt, row)

    def _target(self, record: dict) -> Target:
        table, columns = record["table"], tuple(record["columns"])
        if "types" in record:
            spec = (table, columns, tuple(record["types"]), tuple(record["key"]), record["mode"])
        else:  # a file saved by trainprov before it wrote the kind of each row
            spec = self._infer(table, columns)
        found = self._targets.get(spec)
        if found is None:
            found = self._targets[spec] = Target(*spec)
        return found

    def _infer(self, table: str, columns: tuple[str, ...]) -> tuple:
        if table in TABLES:
            spec = TABLES[table]
            types = dict(spec.columns)
            if columns == tuple(types):
                mode = "insert"
            elif table == "run_ranks" and columns == _RANK_END_COLUMNS:
                mode = "end_rank"
            else:
                mode = "update"
            return (table, columns, tuple(types[c] for c in columns), spec.key, mode)
        types = self._dataset_types.get(table)
        if types is None:
            p = self.backend.placeholder
            rows = self.backend.query(f"SELECT name, type FROM attributes WHERE dataset = {p}", (table,)).rows
            types = self._dataset_types[table] = {**dict(zip(ELEMENT_COLUMNS, ELEMENT_COLUMN_TYPES)), **dict(rows)}
        missing = [c for c in columns if c not in types]
        if missing:
            raise ValueError(f"the store has no column(s) {', '.join(missing)} in dataset {table!r}")
        return (table, columns, tuple(types[c] for c in columns), ("run_id", "task_id", "element_seq"), "insert")


def _decode(kind: str, value: Any) -> Any:
    """A value as the writer had it: timestamps were saved as text."""
    if kind == "datetime" and isinstance(value, str):
        return _dt.datetime.fromisoformat(value)
    return value

