"""The embedded default store: one SQLite file in WAL mode.

SQLite cannot store a float NaN (it binds it as NULL), so a NaN is kept as the text 'NaN'
in the REAL column and read back as a float NaN. Timestamps are ISO 8601 UTC text in
columns declared TIMESTAMPTZ, which SQLite's date functions understand and which read
back as timezone-aware datetimes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import sqlite3
import threading
import time
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import quote

from ..errors import QueryError, QueryTimeout, StoreError
from .base import Result, Rows, SQLBackend, iso_utc
from .catalog import TABLES, Table
from .jsonvalues import from_stored, to_stored

# Read-side conversions by declared column type (only in connections that ask for them).
sqlite3.register_converter("TIMESTAMPTZ", lambda b: _parse_timestamp(b))
sqlite3.register_converter("BOOLEAN", lambda b: b not in (b"0", b"0.0"))



def _parse_timestamp(raw: bytes) -> Any:
    text = raw.decode()
    try:
        return _dt.datetime.fromisoformat(text)
    except ValueError:  # a value not written by trainprov: show it as it is
        return text


def _fix_nan(result: Result, read: set[tuple[str, str]], attribute_types: Callable[[], dict[tuple[str, str], str]]) -> None:
    """Decode the text 'NaN' that stands for a float NaN (SQLite cannot store one) in result columns of floats.

    The types the catalog knows decide: a result column holds floats if the statement read
    a float column of that name (a catalog table's or a dataset's attribute), if it read
    float columns and no text ones (an expression such as max(loss) AS worst), or if it
    holds numbers beside the 'NaN' (a REAL column; a TEXT column holds no numbers). A text
    'NaN' in a text column stays text.
    """
    cols = [
        j
        for j in range(len(result.columns))
        if any(isinstance(r[j], str) and r[j] == "NaN" for r in result.rows)
    ]
    if not cols:
        return
    attributes = attribute_types()
    kinds = {**_CATALOG_TYPES, **attributes}
    float_names = {name for (table, name) in read if kinds.get((table, name)) == "float"}
    # an expression over floats beside ids and names (run_id, runs.name) is still a float: only
    # the text a user recorded (str, json, file attributes) makes an expression's 'NaN' text
    read_types = {attributes.get(pair) or ("float" if _CATALOG_TYPES.get(pair) == "float" else None) for pair in read}
    only_floats_read = "float" in read_types and not read_types & {"str", "json", "file"}
    for j in cols:
        numeric = only_floats_read or result.columns[j] in float_names or any(
            isinstance(r[j], (int, float)) and not isinstance(r[j], bool) for r in result.rows
        )
        if numeric:
            result.rows = [
                r[:j] + (math.nan,) + r[j + 1 :] if r[j] == "NaN" else r for r in result.rows
            ]


_CATALOG_TYPES = {(t.name, c): kind for t in TABLES.values() for c, kind in t.columns}


def _fix_json(result: Result, read: set[tuple[str, str]], attribute_types: Callable[[], dict[tuple[str, str], str]]) -> None:
    """Give back JSON read from json columns as written: non-finite numbers as NaN and Infinity.

    The store keeps them as strings (store/jsonvalues.py). A result column is JSON if it is
    named like a json column the statement read, or if the statement read json columns and
    no text ones (an expression over JSON).
    """
    kinds = _CATALOG_TYPES
    if not read <= kinds.keys():  # a dataset table was read: its attributes' types say what is JSON
        kinds = {**_CATALOG_TYPES, **attribute_types()}
    read_kinds = {kinds.get(pair) for pair in read}
    if "json" not in read_kinds:
        return
    json_names = {name for (table, name) in read if kinds.get((table, name)) == "json"}
    only_json_read = not read_kinds & {"str", "file"}
    rows = result.rows
    for j, column in enumerate(result.columns):
        if column not in json_names and not only_json_read:
            continue
        if any(isinstance(v := r[j], str) and ("NaN" in v or "Infinity" in v) for r in rows):
            rows = [r[:j] + (from_stored(r[j]),) + r[j + 1 :] for r in rows]
    result.rows = rows


# What a refused statement tried to do, by authorizer action code.
_WRITE_ACTIONS = {
    getattr(sqlite3, name): words
    for name, words in {
        "SQLITE_INSERT": "insert into {0}",
        "SQLITE_UPDATE": "update {0}",
        "SQLITE_DELETE": "delete from {0}",
        "SQLITE_DROP_TABLE": "drop table {0}",
        "SQLITE_DROP_INDEX": "drop index {0}",
        "SQLITE_DROP_VIEW": "drop view {0}",
        "SQLITE_DROP_TRIGGER": "drop trigger {0}",
        "SQLITE_CREATE_TABLE": "create table {0}",
        "SQLITE_CREATE_INDEX": "create index {0}",
        "SQLITE_CREATE_VIEW": "create view {0}",
        "SQLITE_CREATE_TRIGGER": "create trigger {0}",
        "SQLITE_CREATE_TEMP_TABLE": "create table {0}",
        "SQLITE_CREATE_TEMP_VIEW": "create view {0}",
        "SQLITE_DROP_TEMP_VIEW": "drop view {0}",
        "SQLITE_DROP_TEMP_TRIGGER": "drop trigger {0}",
        "SQLITE_DROP_TEMP_INDEX": "drop index {0}",
        "SQLITE_DROP_TEMP_TABLE": "drop table {0}",
        "SQLITE_CREATE_TEMP_INDEX": "create index {0}",
        "SQLITE_CREATE_TEMP_TRIGGER": "create trigger {0}",
        "SQLITE_ALTER_TABLE": "alter table {1}",
        "SQLITE_ATTACH": "attach database {0}",
        "SQLITE_DETACH": "detach database {0}",
        "SQLITE_TRANSACTION": "{0} a transaction",
        "SQLITE_SAVEPOINT": "{0} a savepoint",
        "SQLITE_REINDEX": "reindex {0}",
        "SQLITE_ANALYZE": "analyze {0}",
        "SQLITE_CREATE_VTABLE": "create virtual table {0}",
        "SQLITE_DROP_VTABLE": "drop virtual table {0}",
    }.items()
    if hasattr(sqlite3, name)
}
_READ_PRAGMAS = {
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "function_list",
    "pragma_list",
    "collation_list",
    "compile_options",
}


#: SQLite virtual-machine steps between two looks at a statement's time limit (about 0.1 ms)
PROGRESS_STEPS = 10_000


class _Watch:
    """SQLite's progress handler of one reader connection: stops a statement past its deadline.

    Ctrl-C cannot stop SQLite by itself (the signal waits for the C call to return), but the
    handler runs Python code, where the KeyboardInterrupt is raised; SQLite then aborts the
    statement, and `interrupted` tells the query that it must raise KeyboardInterrupt again.
    """

    __slots__ = ("deadline", "timed_out", "closed")

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.timed_out = False
        self.closed = False  # the backend was closed: its connections were interrupted

    def __call__(self) -> int:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.timed_out = True
            return 1
        return 0

    def start(self, timeout: float | None) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timed_out = False

    def interrupted(self, exc: BaseException) -> bool:
        """True if SQLite aborted the statement because Ctrl-C came during it (not because of the deadline)."""
        return (isinstance(exc, sqlite3.OperationalError) and str(exc) == "interrupted" and not self.timed_out
                and not self.closed)

#: how long a write waits for another connection's write lock before it fails (and is retried)
DEFAULT_LOCK_TIMEOUT_S = 5.0


def _is_busy(exc: BaseException) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def lock_holder(path: str) -> str:
    """Name the process that holds the write lock of a SQLite file, as far as the OS tells (Linux)."""
    # WAL mode: the write lock is byte 120 of the -shm file; rollback mode: the RESERVED byte of the file
    wanted = []
    for name, start in ((path + "-shm", 120), (path, 0x40000001)):
        try:
            st = os.stat(name)
        except OSError:
            continue
        wanted.append((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino, start))
    try:
        with open("/proc/locks", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split()
        if "->" in parts or len(parts) < 8 or parts[3] != "WRITE":
            continue
        try:
            pid = int(parts[4])
            major, minor, inode = parts[5].split(":")
            start, end = int(parts[6]), parts[7]
            key = (int(major, 16), int(minor, 16), int(inode))
        except ValueError:
            continue
        for *wanted_key, byte in wanted:
            if tuple(wanted_key) == key and start <= byte and (end == "EOF" or byte <= int(end)) and pid != os.getpid():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                except OSError:
                    command = ""
                return f"process {pid}" + (f" ({command[:120]})" if command else "")
    return "another connection"


class SQLiteBackend(SQLBackend):
    """A trainprov store in one SQLite file."""

    sql_types = {
        "int": "INTEGER",
        "float": "REAL",
        "str": "TEXT",
        "bool": "BOOLEAN",
        "datetime": "TIMESTAMPTZ",
        "json": "TEXT",
        "file": "TEXT",
    }

    #: the longest a checkpoint may keep the writer waiting for readers to leave the WAL
    checkpoint_wait_s = 0.5
    #: the share of the writer's time such waits may take while they succeed (readers let go
    #: within the wait): this much per WAL limit the log holds, up to `checkpoint_max_share`
    checkpoint_wait_share = 0.1
    checkpoint_max_share = 0.5
    #: the share while they fail (readers' statements outlast the wait)
    checkpoint_failed_share = 0.1
    #: while they fail, the writer still tries again each time the log grows by this many
    #: WAL limits, so a long back-off cannot let it grow without bound
    checkpoint_retry_growth = 2

    def __init__(self, path: str, *, wal_limit_bytes: int = 64 << 20, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.path = os.path.abspath(path)
        super().__init__(url=self.path)
        self.wal_limit_bytes = wal_limit_bytes
        self.lock_timeout_s = lock_timeout_s
        self._readers = threading.local()
        self._reader_connections: list[tuple[sqlite3.Connection, _Watch]] = []
        self._waited = 0.0  # how long the last checkpoint that waited for readers took
        self._waited_at = 0.0  # when it ended (monotonic)
        self._wait_backoff = 0.0  # seconds between such checkpoints while they fail (0: the last one succeeded)
        self._waited_size = 0  # the WAL's size when the last such checkpoint began

    # ---- connections -----------------------------------------------------------------

    def _connect_writer(self) -> sqlite3.Connection:
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise StoreError(f"cannot create store {self.path}: folder {folder} does not exist")
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            conn = None
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.lock_timeout_s, check_same_thread=False)
                self._refuse_foreign(conn)  # before the switch to WAL, which would change another program's file
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if conn is not None:
                    conn.close()
                # two processes creating one new file: the switch to WAL does not wait for
                # the busy timeout, so wait here (the other process's switch takes milliseconds)
                if not _is_busy(exc):
                    raise StoreError(f"cannot open store {self.path}: {exc}") from None
                if time.monotonic() > deadline:
                    raise StoreError(self._locked_message("open it")) from None
                time.sleep(0.05)
            except sqlite3.DatabaseError as exc:
                if conn is not None:
                    conn.close()
                raise StoreError(f"cannot open store {self.path}: {exc}") from None
            except StoreError:
                conn.close()
                raise
        if mode != "wal":
            raise StoreError(f"store {self.path} could not switch to WAL mode (got {mode!r})")
        # In WAL mode NORMAL loses no committed transaction when the process dies.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA journal_size_limit={self.wal_limit_bytes}")
        return conn

    def _refuse_foreign(self, conn: sqlite3.Connection) -> None:
        """Raise StoreError if the file is another program's database (tables, but no trainprov catalog)."""
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
        own = {n for n in names if not n.startswith("sqlite_")}
        if own and not {"dataflows", "attributes", "runs"} <= own:
            shown = ", ".join(sorted(own)[:8]) + (", ..." if len(own) > 8 else "")
            raise StoreError(
                f"{self.path} is another program's SQLite database (tables: {shown}), not a trainprov "
                "store; trainprov leaves it unchanged. Name another file with store=, --store or TRAINPROV_STORE"
            )

    def _locked_message(self, doing: str) -> str:
        """Why a write waited in vain: the store, the process holding its write lock, the timeout."""
        return (
            f"cannot {doing}: store {self.path} is locked by {lock_holder(self.path)}, which holds a write "
            f"transaction on it; trainprov waited {self.lock_timeout_s:g} s (the store's lock_timeout_s)"
        )

    def declare(self, flow: Any) -> int:
        """Create or evolve the tables of a dataflow and record it; return its version."""
        # Declared before (every run of a sweep): read its version without taking the write
        # lock, so that a run starts (its rows queue) while another program holds the lock.
        conn = self._writer()
        try:
            if all(
                {c for c, _ in table.columns} <= self._existing_columns(conn, table.name) for table in TABLES.values()
            ):
                row = conn.execute(
                    "SELECT version FROM dataflows WHERE name = ? AND fingerprint = ?", (flow.name, flow.fingerprint())
                ).fetchone()
                if row is not None:
                    return int(row[0])
        except sqlite3.OperationalError:  # locked exclusively (a rollback-journal writer): declare under the lock
            pass
        return super().declare(flow)

    def _transaction(self, work: Callable[[Any], Any]) -> Any:
        try:
            return super()._transaction(work)
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise StoreError(self._locked_message("write")) from None
            raise

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._readers, "conn", None)
        if conn is not None:
            return conn
        if not os.path.exists(self.path):
            raise StoreError(
                f"no trainprov store at {self.path}: a run creates it, or name another store "
                "with --store or TRAINPROV_STORE"
            )
        if not os.access(self.path, os.R_OK):
            raise StoreError(f"store {self.path} is not readable (permission denied)")
        try:
            conn = sqlite3.connect(
                f"file:{quote(self.path)}?mode=ro",
                uri=True,
                isolation_level=None,
                timeout=60,
                detect_types=sqlite3.PARSE_DECLTYPES,
                check_same_thread=False,
            )
            conn.execute("PRAGMA query_only=ON")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a trainprov store: {exc}") from None
        conn.set_authorizer(self._authorize)
        self._readers.watch = _Watch()
        conn.set_progress_handler(self._readers.watch, PROGRESS_STEPS)
        self._readers.conn = conn
        with self._lock:
            self._connections.append(conn)
            self._reader_connections.append((conn, self._readers.watch))
        return conn

    def close(self) -> None:
        # a statement still running on another thread (a console's) ends now, not at its time limit
        with self._lock:
            readers = list(self._reader_connections)
            self._reader_connections.clear()
        for conn, watch in readers:
            watch.closed = True
            conn.interrupt()
        super().close()
        self._readers = threading.local()

    # ---- dialect hooks ---------------------------------------------------------------

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN IMMEDIATE")

    def is_permanent(self, exc: BaseException) -> bool:
        if isinstance(exc, (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError, sqlite3.ProgrammingError)):
            return True
        return super().is_permanent(exc)

    def _max_parameters(self) -> int:
        # SQLite before 3.32 takes 999 parameters per statement, later ones 32,766
        return min(self.max_parameters, self._writer().getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))

    def _table_exists(self, cur: Any, name: str) -> bool:
        cur.execute("SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?", (name,))
        return cur.fetchone() is not None

    def _existing_columns(self, cur: Any, name: str) -> set[str]:
        return {row[1] for row in cur.execute(f"PRAGMA table_info({name})").fetchall()}

    def _create_table_sql(self, table: Table) -> list[str]:
        # Rows of one run sit together on disk, ordered as they were written.
        stmts = super()._create_table_sql(table)
        stmts[0] += " WITHOUT ROWID"
        return stmts

    # NaN cannot be bound (SQLite would store NULL): keep it as the text 'NaN'.
    # JSON as valid JSON: non-finite numbers as strings (store/jsonvalues.py)
    _expr_globals = {"_iso": iso_utc, "_json": to_stored}

    def _value_expr(self, kind: str, source: str) -> str:
        if kind == "float":
            return f"(_x if (_x := {source}) == _x else 'NaN')"
        if kind == "datetime":
            return f"(None if (_x := {source}) is None else _iso(_x))"
        if kind == "json":
            return f"(None if (_x := {source}) is None else _json(_x))"
        return source

    # ---- upkeep ----------------------------------------------------------------------

    def wal_size(self) -> int:
        """Size of the write-ahead log file in bytes (0 when there is none)."""
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0

    def maintain(self) -> None:
        """Keep the WAL near its limit without stalling the writer on readers.

        Past the limit, a checkpoint that does not wait copies what the readers allow and
        truncates the log if no reader is in it. Readers whose statements overlap without
        a gap keep it pinned: then a checkpoint may hold writes back until the statements
        begun before it end (at most `checkpoint_wait_s`). Such waits take a bounded share
        of the writer's time: while they succeed, 10% per WAL limit the log holds (so the
        log settles a little past its limit), at most half; while they fail, 10%, backing
        off up to 16 s apart, but tried again whenever the log has grown by two more limits.
        The writer keeps most of its pace.
        """
        size = self.wal_size()
        if size <= self.wal_limit_bytes:
            return
        conn = self._writer()
        if self._checkpoint(conn, 0):
            return
        now = time.monotonic()
        if self._wait_backoff:  # the last wait failed
            gap = max(self._waited / self.checkpoint_failed_share, self._wait_backoff)
        else:  # the further past its limit the log is, the more of its time the writer gives
            share = min(self.checkpoint_max_share, self.checkpoint_wait_share * size / self.wal_limit_bytes)
            gap = self._waited / share
        grown = size - self._waited_size >= self.checkpoint_retry_growth * self.wal_limit_bytes
        if now - self._waited_at < gap and not (self._wait_backoff and grown):
            return
        self._waited_size = size
        done = self._checkpoint(conn, self.checkpoint_wait_s)
        self._waited_at = time.monotonic()
        self._waited = self._waited_at - now
        self._wait_backoff = 0.0 if done else min(max(self._wait_backoff * 2, 1.0), 16.0)

    def _checkpoint(self, conn: sqlite3.Connection, wait_s: float) -> bool:
        """Checkpoint and truncate the WAL, waiting at most wait_s for readers; True if it was emptied."""
        conn.execute(f"PRAGMA busy_timeout={int(wait_s * 1000)}")
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.OperationalError:  # another connection is checkpointing
            busy = 1
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(self.lock_timeout_s * 1000)}")
        return not busy

    # ---- reads -----------------------------------------------------------------------

    def access_needed(self, *, write: Sequence[str] = (), read: Sequence[str] = ()) -> str:
        if not write:
            return f"read access to the file {self.path}"
        return f"write access to the file {self.path} and its folder (where SQLite keeps its -wal file)"

    def exists(self) -> bool:
        try:
            conn = self._reader()
        except StoreError:
            return False
        row = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('runs', 'attributes')"
        ).fetchone()
        return row[0] == 2

    def _authorize(self, action: int, arg1: Any, arg2: Any, db: Any, trigger: Any) -> int:
        if action == sqlite3.SQLITE_PRAGMA:
            if arg1 in _READ_PRAGMAS:
                return sqlite3.SQLITE_OK
            self._readers.refused = self._readers.refused or f"run PRAGMA {arg1}"
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_READ:
            self._readers.read.add((arg1, arg2))
            return sqlite3.SQLITE_OK
        if arg1 in ("sqlite_master", "sqlite_temp_master") and action in _WRITE_ACTIONS:
            # SQLite asks about its own schema table first (for pragma_table_info(), and
            # before the DROP or CREATE it belongs to); the statement's own action is
            # refused next, and the connection is read-only and query_only besides
            return sqlite3.SQLITE_OK
        words = _WRITE_ACTIONS.get(action)
        if words is None:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_ATTACH and not arg1:
            words = "vacuum or attach a database"  # VACUUM attaches a nameless temporary database
        self._readers.refused = self._readers.refused or words.format(
            str(arg1 or "").lower() if action in (sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT) else arg1,
            arg2,
        )
        return sqlite3.SQLITE_DENY

    def query(self, sql: str, params: Sequence[Any] | dict = (), *, timeout: float | None = None) -> Result:
        with self.stream(sql, params, timeout=timeout) as rows:
            return Result(rows.columns, rows.fetch(-1))

    @contextlib.contextmanager
    def stream(self, sql: str, params: Sequence[Any] | dict = (), *, timeout: float | None = None) -> Iterator[Rows]:
        conn = self._reader()
        watch: _Watch = self._readers.watch
        self._readers.refused = None
        self._readers.read = set()
        watch.start(timeout)
        cur = None
        try:
            try:
                cur = conn.execute(sql, params)
            except (sqlite3.DatabaseError, sqlite3.ProgrammingError, sqlite3.Warning) as exc:
                raise self._failure(exc, watch, timeout) from None
            read = set(self._readers.read)

            def fetch(n: int) -> list[tuple]:
                if watch():  # the deadline passed while nothing was fetched (a slow consumer)
                    raise self._failure(sqlite3.OperationalError("interrupted"), watch, timeout)
                try:
                    rows = cur.fetchall() if n < 0 else cur.fetchmany(n)
                except (sqlite3.DatabaseError, sqlite3.ProgrammingError, sqlite3.Warning) as exc:
                    raise self._failure(exc, watch, timeout) from None
                if rows:
                    result = Result(columns, rows)
                    _fix_json(result, read, lambda: self._attribute_types(conn))
                    _fix_nan(result, read, lambda: self._attribute_types(conn))
                    rows = result.rows
                return rows

            columns = [d[0] for d in cur.description or ()]
            yield Rows(columns, fetch)
        finally:
            watch.start(None)
            if cur is not None:
                cur.close()  # ends the read transaction: an unfinished one would pin the WAL

    def _failure(self, exc: BaseException, watch: _Watch, timeout: float | None) -> BaseException:
        """The error to raise for a statement SQLite refused or stopped."""
        if watch.closed:
            return StoreError(f"the store {self.path} was closed while the statement ran")
        if watch.interrupted(exc):
            return KeyboardInterrupt()
        if watch.timed_out:
            return QueryTimeout(f"the statement ran longer than its time limit of {timeout:g} s and was stopped")
        refused = getattr(self._readers, "refused", None)
        if refused:
            return QueryError(
                f"queries are read-only: this statement would {refused}; it was refused "
                "(use SELECT or WITH ... SELECT)"
            )
        return QueryError(self._explain(exc))

    @staticmethod
    def _attribute_types(conn: sqlite3.Connection) -> dict[tuple[str, str], str]:
        try:
            rows = conn.execute("SELECT dataset, name, type FROM attributes").fetchall()
        except sqlite3.DatabaseError:
            rows = []
        return {(d, n): t for d, n, t in rows}

    def _explain(self, exc: Exception) -> str:
        text = str(exc)
        if "one statement at a time" in text:
            return "invalid SQL: give one statement at a time"
        message = f"invalid SQL: {text}"
        if text.startswith("no such table"):
            try:
                names = [r[0] for r in self._reader().execute("SELECT name FROM datasets ORDER BY name")]
            except sqlite3.DatabaseError:
                names = []
            message += f"; datasets in this store: {', '.join(names) or '(none)'} (see `trainprov schema`)"
        return message
