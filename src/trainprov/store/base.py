"""The backend interface, and the SQL that every DB-API backend shares.

A backend creates and evolves the schema, writes batches of rows in one transaction and
runs read-only queries. Layers above talk to it only through `Backend`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import contextlib
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..errors import SpecError, StoreUnreachable, TrainprovError
from ..spec import Dataflow, Dataset
from .catalog import TABLES, Table, Target, dataset_table

Encoder = Callable[[tuple], tuple]


@dataclass
class Result:
    """Rows of a read query with their column names."""

    columns: list[str]
    rows: list[tuple]

    def dicts(self) -> list[dict[str, Any]]:
        """The rows as dictionaries keyed by column name."""
        return [dict(zip(self.columns, row)) for row in self.rows]


class Rows:
    """A result read a batch at a time: its column names now, its rows as they are fetched."""

    def __init__(self, columns: list[str], fetch: Callable[[int], list[tuple]]) -> None:
        self.columns = columns
        self._fetch = fetch
        self.done = False

    def fetch(self, n: int) -> list[tuple]:
        """Up to `n` more rows; fewer (or none) at the end of the result."""
        if self.done:
            return []
        rows = self._fetch(n)
        if len(rows) < n:
            self.done = True
        return rows

    def batches(self, size: int = 1000) -> Iterator[list[tuple]]:
        """The remaining rows, `size` at a time."""
        while True:
            rows = self.fetch(size)
            if rows:
                yield rows
            if len(rows) < size:
                return


class Backend(ABC):
    """What the layers above need from a store."""

    url: str
    #: how this backend's SQL marks a query parameter
    placeholder: str = "?"

    def not_nan(self, column: str) -> str:
        """A SQL condition true for a number in `column`, false for NaN and NULL (for filters and aggregates).

        One spelling for both backends: SQLite keeps a NaN as the text 'NaN' in a REAL column
        (it cannot store a float NaN), PostgreSQL as the float NaN, and both compare it
        unequal to 'NaN' only when it is a number. Infinities pass (they are numbers).
        """
        return f"{column} <> 'NaN'"

    @abstractmethod
    def declare(self, flow: Dataflow) -> int:
        """Create or evolve the tables of a dataflow and record it; return its version."""

    @abstractmethod
    def write(self, groups: Sequence[tuple[Target, list[tuple]]], *, retry: bool = False) -> None:
        """Write the queued items of all groups in one transaction, in order.

        Each group is (target, items); an item is (target, row) or, for element targets,
        (target, values of the element columns, dict of attribute values). With `retry`,
        the batch may already be in the store (a commit whose answer was lost with the
        connection): rows whose key is there are skipped, so that each is written once.
        """

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] | dict = (), *, timeout: float | None = None) -> Result:
        """Run one read-only statement; refuse any statement that would modify the store.

        With `timeout` (seconds), a statement still running then is stopped (QueryTimeout).
        Ctrl-C (KeyboardInterrupt) stops the statement too, and is raised again.
        """

    @contextlib.contextmanager
    def stream(self, sql: str, params: Sequence[Any] | dict = (), *, timeout: float | None = None) -> Iterator[Rows]:
        """Run one read-only statement and read its rows a batch at a time (only what is fetched is in memory).

        The `timeout` covers the whole reading, from the start of the statement to the last
        batch. Leaving the block ends the statement, read to its end or not.
        """
        result = self.query(sql, params, timeout=timeout)
        rows = iter([result.rows])
        yield Rows(result.columns, lambda n: next(rows, []))

    @abstractmethod
    def mark_interrupted(self, runs: Iterable[tuple[str, Any, float | None, str]]) -> None:
        """End runs (run_id, ended_at, duration_s, reason) still marked running as interrupted."""

    @abstractmethod
    def exists(self) -> bool:
        """True if the store holds a trainprov catalog."""

    def is_permanent(self, exc: BaseException) -> bool:
        """True if a failed write will fail again with the same rows (a refused row, not an outage)."""
        return isinstance(exc, (OverflowError, TypeError, ValueError))

    def is_outage(self, exc: BaseException) -> bool:
        """True if a failure means the store cannot be reached for now, not that it is misconfigured.

        The writer keeps a declaration that fails so and retries it; any other failure of a
        declaration (a missing folder, bad credentials, a type conflict) is the caller's error.
        """
        return isinstance(exc, StoreUnreachable) or not isinstance(exc, TrainprovError)

    def access_needed(self, *, write: Sequence[str] = (), read: Sequence[str] = ()) -> str:
        """What a session needs to insert into the tables `write` and read `read`, for messages (an access refused)."""
        return "write access to the store"

    def maintain(self) -> None:
        """Periodic upkeep done by the writer between batches (nothing by default)."""

    def close(self) -> None:
        """Release connections."""


_SECOND_CACHE: list[Any] = [None, ""]


def iso_utc(value: Any) -> str:
    """Format an epoch float or a datetime as fixed-width ISO 8601 UTC text (both backends parse it)."""
    if value.__class__ is float:  # the capture time of every element: the hot case
        whole = int(value)
        if whole != _SECOND_CACHE[0]:
            _SECOND_CACHE[1] = time.strftime("%Y-%m-%d %H:%M:%S.", time.gmtime(whole))
            _SECOND_CACHE[0] = whole
        return _SECOND_CACHE[1] + "%06d+00:00" % ((value - whole) * 1e6)
    if isinstance(value, (int, float)):
        value = _dt.datetime.fromtimestamp(value, _dt.timezone.utc)
    return value.astimezone(_dt.timezone.utc).isoformat(sep=" ", timespec="microseconds")


def _utc(value: float | _dt.datetime) -> _dt.datetime:
    if isinstance(value, _dt.datetime):
        return value
    return _dt.datetime.fromtimestamp(value, _dt.timezone.utc)


class SQLBackend(Backend):
    """Schema evolution, catalog bookkeeping and batched writes over a DB-API connection."""

    #: attribute type -> SQL column type
    sql_types: dict[str, str] = {}
    #: rows per multi-row INSERT when a batch is large, and the most parameters a statement takes
    rows_per_statement = 500
    max_parameters = 30_000

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        self._statements: dict[Target, tuple[str, Encoder, Callable[[list, list], None]]] = {}
        self._chunks: dict[tuple[Target, int], str] = {}  # multi-row INSERTs, by target and rows

    # ---- dialect hooks ---------------------------------------------------------------

    @abstractmethod
    def _connect_writer(self) -> Any:
        """A new connection that may write, in autocommit mode."""

    @abstractmethod
    def _begin(self, cur: Any) -> None:
        """Start a write transaction that holds the write lock from the start."""

    def _value_expr(self, kind: str, source: str) -> str:
        """Python expression (over `source`) giving the value this database stores for a type."""
        return source

    #: names the expressions of _value_expr may use
    _expr_globals: dict[str, Any] = {}

    #: how ALTER TABLE adds an attribute's column
    add_column = "ADD COLUMN"

    def _lock_catalog(self, cur: Any) -> None:
        """Make concurrent declarations wait for this one (nothing when _begin already locks the store)."""

    @abstractmethod
    def _table_exists(self, cur: Any, name: str) -> bool:
        """True if the table exists."""

    @abstractmethod
    def _existing_columns(self, cur: Any, name: str) -> set[str]:
        """The columns a table has in the store."""

    def _lock_run(self, cur: Any, run_id: str) -> None:
        """Make the ends of a run's ranks wait for each other (nothing where a write locks the store)."""

    def _create_table_sql(self, table: Table) -> list[str]:
        cols = ", ".join(f"{name} {self.sql_types[kind]}" for name, kind in table.columns)
        stmts = [f"CREATE TABLE IF NOT EXISTS {table.name} ({cols}, PRIMARY KEY ({', '.join(table.key)}))"]
        for index in table.indexes:
            stmts.append(
                f"CREATE INDEX IF NOT EXISTS {table.name}_{'_'.join(index)}_idx "
                f"ON {table.name} ({', '.join(index)})"
            )
        return stmts

    # ---- connections -----------------------------------------------------------------

    def _writer(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect_writer()
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                try:
                    conn.close()
                except Exception:  # closing a connection another thread still uses
                    pass
            self._connections.clear()
        self._local = threading.local()

    def _transaction(self, work: Callable[[Any], Any]) -> Any:
        conn = self._writer()
        cur = conn.cursor()
        self._begin(cur)
        try:
            result = work(cur)
            cur.execute("COMMIT")
            return result
        except BaseException:
            try:
                cur.execute("ROLLBACK")
            except Exception:  # the failure may have ended the transaction already
                pass
            raise

    # ---- schema ----------------------------------------------------------------------

    def _ensure_catalog(self, cur: Any) -> None:
        statements = [self._create_table_sql(table) for table in TABLES.values()]
        for create, *_ in statements:
            cur.execute(create)
        # an older store's tables get their newer columns before any index on them is made
        self._add_catalog_columns(cur)
        for _, *indexes in statements:
            for stmt in indexes:
                cur.execute(stmt)

    def _add_catalog_columns(self, cur: Any) -> None:
        """Give a store made by an earlier trainprov the catalog columns added since (NULL in old rows)."""
        for table in TABLES.values():
            have = self._existing_columns(cur, table.name)
            for name, kind in table.columns:
                if name not in have:
                    cur.execute(f"ALTER TABLE {table.name} {self.add_column} {name} {self.sql_types[kind]}")

    def declare(self, flow: Dataflow) -> int:
        return self._transaction(lambda cur: self._declare(cur, flow))

    def ensure_catalog(self) -> None:
        """Create the store's own tables (or add the columns newer than the store) if a write needs them first."""
        def work(cur: Any) -> None:
            if not self._catalog_current(cur):
                self._lock_catalog(cur)
                self._ensure_catalog(cur)
        self._transaction(work)

    def _catalog_current(self, cur: Any) -> bool:
        """True if every catalog table and column exists (False: let the declaration check under its lock)."""
        return False

    def _declare(self, cur: Any, flow: Dataflow) -> int:
        p = self.placeholder
        if self._catalog_current(cur):
            # Declared before (the usual case: every run of a sweep): its tables and columns
            # were committed with its row, so no lock is needed and runs do not queue here.
            cur.execute(f"SELECT version FROM dataflows WHERE name = {p} AND fingerprint = {p}", (flow.name, flow.fingerprint()))
            known = cur.fetchone()
            if known is not None:
                return int(known[0])
        self._lock_catalog(cur)
        self._ensure_catalog(cur)
        now = self._encode_value("datetime", _dt.datetime.now(_dt.timezone.utc))
        for ds in flow.datasets.values():
            self._declare_dataset(cur, ds, now)
        fingerprint = flow.fingerprint()
        # the same specification keeps its version, even when newer ones exist
        cur.execute(
            f"SELECT version FROM dataflows WHERE name = {p} AND fingerprint = {p}", (flow.name, fingerprint)
        )
        same = cur.fetchone()
        if same is not None:
            return int(same[0])
        cur.execute(f"SELECT max(version) FROM dataflows WHERE name = {p}", (flow.name,))
        latest = cur.fetchone()[0]
        version = 1 if latest is None else int(latest) + 1
        cur.execute(
            f"INSERT INTO dataflows (name, version, fingerprint, description, spec, declared_at) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}, {p})",
            (flow.name, version, fingerprint, flow.description, json.dumps(flow.to_dict()), now),
        )
        for t in flow.transformations.values():
            cur.execute(
                f"INSERT INTO transformations (dataflow, dataflow_version, name, description) "
                f"VALUES ({p}, {p}, {p}, {p})",
                (flow.name, version, t.name, t.description),
            )
            for role, names in (("uses", t.used_names), ("generates", t.generated_names)):
                for ds_name in names:
                    cur.execute(
                        "INSERT INTO transformation_datasets (dataflow, dataflow_version, "
                        f"transformation, dataset, role) VALUES ({p}, {p}, {p}, {p}, {p})",
                        (flow.name, version, t.name, ds_name, role),
                    )
        return version

    def _declare_dataset(self, cur: Any, ds: Dataset, now: Any) -> None:
        p = self.placeholder
        cur.execute(f"SELECT name, type, position, original_name FROM attributes WHERE dataset = {p}", (ds.name,))
        known = {name: (kind, pos, original) for name, kind, pos, original in cur.fetchall()}
        cur.execute(f"SELECT 1 FROM datasets WHERE name = {p}", (ds.name,))
        created = cur.fetchone() is None
        if created:
            if self._table_exists(cur, ds.name):
                raise SpecError(
                    f"cannot declare dataset {ds.name!r}: the store already has a table of that "
                    "name that trainprov did not create"
                )
            for stmt in self._create_table_sql(dataset_table(ds)):
                cur.execute(stmt)
            cur.execute(
                f"INSERT INTO datasets (name, description, declared_at) VALUES ({p}, {p}, {p})",
                (ds.name, ds.description, now),
            )
        position = max((known_pos for _, known_pos, _ in known.values()), default=-1)
        for attr in ds.attributes:
            if attr.name in known:
                stored = known[attr.name][0]
                if stored != attr.type:
                    raise SpecError(
                        f"dataset {ds.name!r} attribute {attr.name!r} is declared as {attr.type}, "
                        f"but the store already has it as {stored}; use a new attribute name "
                        "(a type cannot change once rows may exist)"
                    )
                if attr.original_name is not None and known[attr.name][2] is None:
                    # a column made before original names were kept: the first one given is kept
                    cur.execute(
                        f"UPDATE attributes SET original_name = {p} WHERE dataset = {p} AND name = {p} "
                        "AND original_name IS NULL",
                        (attr.original_name, ds.name, attr.name),
                    )
                continue
            if not created:
                cur.execute(f"ALTER TABLE {ds.name} {self.add_column} {attr.name} {self.sql_types[attr.type]}")
            position += 1
            cur.execute(
                "INSERT INTO attributes (dataset, name, type, position, description, added_at, original_name) "
                f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})",
                (ds.name, attr.name, attr.type, position, attr.description, now, attr.original_name),
            )

    # ---- writes ----------------------------------------------------------------------

    def _max_parameters(self) -> int:
        return self.max_parameters

    def _compile(self, target: Target, order: Sequence[int]) -> tuple[Encoder, Callable[[list, list], None]]:
        """Build, once per target, functions from queued items to the values stored.

        An item is (target, row) or, for elements, (target, value of each column): Target.prefix.
        `build(item)` returns one row; `extend(items, out)` appends the values of many rows
        to one flat list, for multi-row statements. Generated code because this runs for
        every row the writer writes: one tuple expression is several times faster than a
        loop over the columns.
        """
        exprs = []
        for i in order:
            kind = target.types[i]
            exprs.append(self._value_expr(kind, f"p[{i + 1}]" if target.prefix else f"p[{i}]"))
        head = "p = item" if target.prefix else "p = item[1]"
        row = f"({', '.join(exprs)},)"
        code = (
            f"def build(item):\n    {head.replace(chr(10) + '    ', chr(10))}\n    return {row}\n"
            f"def extend(items, out):\n    for item in items:\n        {head}\n        out += {row}\n"
        )
        namespace = dict(self._expr_globals)
        exec(compile(code, f"<trainprov row builder for {target.table}>", "exec"), namespace)
        return namespace["build"], namespace["extend"]

    def _encode_value(self, kind: str, value: Any) -> Any:
        build, _ = self._compile(Target("value", ("value",), (kind,)), [0])
        return build((None, (value,)))[0]

    def _statement(self, target: Target) -> tuple[str, Encoder, Callable[[list, list], None]]:
        found = self._statements.get(target)
        if found is None:
            p = self.placeholder
            if target.mode == "end_rank":
                found = self._statements[target] = ("", *self._compile(target, list(range(len(target.columns)))))
                return found
            if target.mode == "update":
                sets = [c for c in target.columns if c not in target.key]
                where = " AND ".join(f"{k} = {p}" for k in target.key)
                sql = f"UPDATE {target.table} SET {', '.join(f'{c} = {p}' for c in sets)} WHERE {where}"
                order = [target.columns.index(c) for c in (*sets, *target.key)]
            else:
                marks = ", ".join([p] * len(target.columns))
                sql = f"INSERT INTO {target.table} ({', '.join(target.columns)}) VALUES ({marks})"
                if target.mode == "link":  # recording a link twice is not an error
                    sql += " ON CONFLICT DO NOTHING"
                order = list(range(len(target.columns)))
            found = self._statements[target] = (sql, *self._compile(target, order))
        return found

    def write(self, groups: Sequence[tuple[Target, list[tuple]]], *, retry: bool = False) -> None:
        """Write the queued items of all groups in one transaction, in order (see Backend.write)."""
        if retry:
            groups = [(self._ignoring(target), rows) for target, rows in groups]

        def work(cur: Any) -> None:
            for target, rows in groups:
                self._write_rows(cur, target, rows)

        self._transaction(work)

    def _ignoring(self, target: Target) -> Target:
        """The target as an insert that skips rows already in the store (one per target: statements are cached by it)."""
        if target.mode != "insert":
            return target
        cache = self.__dict__.setdefault("_ignoring_targets", {})
        found = cache.get(target)
        if found is None:
            found = cache[target] = dataclasses.replace(target, mode="link")
        return found

    def _write_rows(self, cur: Any, target: Target, rows: list[tuple]) -> None:
        """Write one group's items inside the open transaction."""
        sql, build, extend = self._statement(target)
        if target.mode == "end_rank":
            for item in rows:
                self._end_rank(cur, *build(item))
            return
        n = max(1, min(self.rows_per_statement, self._max_parameters() // len(target.columns)))
        if target.mode == "update" or len(rows) == 1:
            cur.executemany(sql, map(build, rows))
            return
        # Many rows per statement: the database is entered (and the GIL let go and taken
        # back) once per chunk, not per row, which matters when the training thread
        # competes for the GIL. Below n rows, chunks of 2^k rows: at most log2(n)
        # statements, each of a size whose SQL is built once.
        start = 0
        while start < len(rows):
            left = len(rows) - start
            size = n if left >= n else 1 << (left.bit_length() - 1)
            values: list = []
            extend(rows[start : start + size], values)
            cur.execute(self._chunk_sql(target, sql, size), values)
            start += size

    def _chunk_sql(self, target: Target, sql: str, rows: int) -> str:
        """The INSERT of `rows` rows at once for a target (built once per size)."""
        found = self._chunks.get((target, rows))
        if found is None:
            head, tail = sql[: sql.index(" VALUES ")], " ON CONFLICT DO NOTHING" if target.mode == "link" else ""
            marks = "(" + ", ".join([self.placeholder] * len(target.columns)) + ")"
            found = self._chunks[(target, rows)] = f"{head} VALUES {', '.join([marks] * rows)}{tail}"
        return found

    def _end_rank(self, cur: Any, run_id: str, rank: int, status: str, ended_at: Any, duration_s: Any, error: Any) -> None:
        """End one rank of a run; the last rank to end ends the run, failed if any rank failed.

        The run's error is that of the rank that failed first (the others often fail because
        it did); its duration is the longest rank's. Idempotent (a retried batch may run it twice): a run already ended stays as it is.
        """
        p = self.placeholder
        self._lock_run(cur, run_id)  # two last ranks ending at once: one waits and sees the other
        cur.execute(
            f"UPDATE run_ranks SET status = {p}, ended_at = {p}, duration_s = {p}, error = {p} WHERE run_id = {p} AND rank = {p}",
            (status, ended_at, duration_s, error, run_id, rank),
        )
        cur.execute(
            f"""UPDATE runs SET
                status = CASE
                    WHEN EXISTS (SELECT 1 FROM run_ranks r WHERE r.run_id = {p} AND r.status = 'failed') THEN 'failed'
                    WHEN EXISTS (SELECT 1 FROM run_ranks r WHERE r.run_id = {p} AND r.status = 'interrupted') THEN 'interrupted'
                    ELSE 'finished' END,
                ended_at = {p},
                duration_s = (SELECT max(r.duration_s) FROM run_ranks r WHERE r.run_id = {p}),
                error = (SELECT r.error FROM run_ranks r WHERE r.run_id = {p} AND r.error IS NOT NULL
                         ORDER BY r.ended_at, r.rank LIMIT 1)
            WHERE run_id = {p} AND status = 'running'
              AND (SELECT count(*) FROM run_ranks r WHERE r.run_id = {p} AND r.status <> 'running') >= world_size""",
            (run_id, run_id, ended_at, run_id, run_id, run_id, run_id),
        )

    def mark_interrupted(self, runs: Iterable[tuple[str, Any, float | None, str]]) -> None:
        p = self.placeholder
        rows = [(self._encode_value("datetime", _utc(end)), dur, why, rid) for rid, end, dur, why in runs]
        if not rows:
            return

        def work(cur: Any) -> None:
            cur.executemany(
                f"UPDATE runs SET status = 'interrupted', ended_at = {p}, duration_s = {p}, "
                f"error = {p} WHERE run_id = {p} AND status = 'running'",
                rows,
            )
            cur.executemany(
                f"UPDATE tasks SET status = 'interrupted', ended_at = {p} "
                f"WHERE run_id = {p} AND status = 'running'",
                [(r[0], r[3]) for r in rows],
            )
            cur.executemany(
                f"UPDATE run_ranks SET status = 'interrupted', ended_at = {p} "
                f"WHERE run_id = {p} AND status = 'running'",
                [(r[0], r[3]) for r in rows],
            )

        self._transaction(work)
