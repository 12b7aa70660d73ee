"""A store shared by many machines: one PostgreSQL database, through psycopg 3.

The tables, keys and meanings are those of the SQLite store, in native types: BIGINT,
DOUBLE PRECISION (NaN and infinities stored as such), TEXT, BOOLEAN, TIMESTAMPTZ and
JSONB. Statements use `?` placeholders, as in SQLite; they are sent as `$1, $2, ...`.
Big batches of elements go in with COPY. Declarations of several processes are
serialised by a transaction-level advisory lock, so concurrent runs that declare or grow
the same dataflow all succeed. Read queries run one statement each, in a read-only
transaction that is always rolled back, so the server itself refuses any change.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import time
from typing import Any, Iterator, Sequence

import psycopg
from psycopg import errors as pg_errors
from psycopg.adapt import Loader
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.string import TextLoader

from ..errors import QueryError, QueryTimeout, StoreError, StoreUnreachable
from ..spec import Dataflow
from .urls import hide_password
from .base import Result, Rows, SQLBackend, iso_utc
from .catalog import TABLES, Target
from .jsonvalues import from_stored, to_stored

#: the advisory lock key that serialises declarations in one database ("trprov" in ASCII)
CATALOG_LOCK = 0x747270726F76
#: batches of at least this many rows of one dataset go in with COPY
COPY_ROWS = 8
#: how often a declaration that lost a deadlock to a concurrent writer is tried again
DECLARE_ATTEMPTS = 5


# ---- placeholders -------------------------------------------------------------------------

# What may hide a ? or :name that is not a parameter: strings, quoted names, comments,
# dollar-quoted bodies. The scanner skips them whole.
_TOKENS = re.compile(
    r"""
      (?P<skip>
          (?<![\w$])[eE]'(?:[^'\\]|\\.|'')*'  # E'...' with backslash escapes
        | '(?:[^']|'')*'                    # '...'
        | "(?:[^"]|"")*"                    # "..."
        | --[^\n]*                          # -- comment
        | (?<![\w$])(?P<dollar>\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$)  # $tag$ ... $tag$ (the body follows)
        | /\*                               # /* comment */ (may nest; the body follows)
        | ::                                # a cast, not a :name
      )
    | (?P<qmark>\?)
    | (?P<name>:[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE | re.DOTALL,
)


@functools.lru_cache(maxsize=512)
def to_dollar(sql: str, named: bool = False) -> tuple[str, tuple[str, ...]]:
    """Rewrite `?` (or `:name` when `named`) placeholders as $1, $2, ...; also the names in order."""
    out: list[str] = []
    names: list[str] = []
    pos = 0
    while True:
        match = _TOKENS.search(sql, pos)
        if match is None:
            out.append(sql[pos:])
            break
        out.append(sql[pos : match.start()])
        token = match.group()
        end = match.end()
        if match.group("dollar"):
            close = sql.find(token, end)
            end = len(sql) if close < 0 else close + len(token)
            out.append(sql[match.start() : end])
        elif token == "/*":
            end = _comment_end(sql, end)
            out.append(sql[match.start() : end])
        elif match.group("skip") is not None:
            out.append(token)
        elif match.group("qmark") and not named:
            names.append("?")
            out.append(f"${len(names)}")
        elif match.group("name") and named:
            name = token[1:]
            if name not in names:
                names.append(name)
            out.append(f"${names.index(name) + 1}")
        else:
            out.append(token)
        pos = end
    return "".join(out), tuple(names)


def _comment_end(sql: str, pos: int) -> int:
    depth = 1
    while depth:
        opens, closes = sql.find("/*", pos), sql.find("*/", pos)
        if closes < 0:
            return len(sql)
        if 0 <= opens < closes:
            depth, pos = depth + 1, opens + 2
        else:
            depth, pos = depth - 1, closes + 2
    return pos

# ---- what a read query may call -----------------------------------------------------------

#: functions that a read-only transaction still lets run, and that act beyond the statement:
#: session locks (trainprov's own declarations wait on one), signals to other sessions,
#: server files, notifications, and the functions that run SQL given as text
#: (which would hide any other call from this check)
REFUSED_FUNCTIONS = frozenset({
    "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile", "pg_promote",
    "pg_log_backend_memory_contexts", "pg_notify", "pg_read_file", "pg_read_binary_file",
    "pg_ls_dir", "pg_stat_file", "lo_import", "lo_export", "query_to_xml", "query_to_xmlschema",
    "query_to_xml_and_xmlschema", "cursor_to_xml", "cursor_to_xmlschema", "ts_stat", "ts_rewrite",
    "pg_import_system_collations", "pg_create_restore_point", "pg_switch_wal", "pg_backup_start", "pg_backup_stop",
})
REFUSED_PREFIXES = ("pg_advisory_", "pg_try_advisory_", "dblink", "pg_stat_reset", "pg_replication_", "pg_drop_replication",
                    "pg_create_logical", "pg_create_physical", "pg_logical_", "pg_wal_replay_")
#: statements that run code this check cannot see into, or move data outside the transaction
REFUSED_STATEMENTS = frozenset({"do", "call", "copy", "listen", "load"})
_WORD = re.compile(r"[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*")


def refused_call(sql: str) -> str | None:
    """Why a read query may not run (a function or statement in the lists above), or None.

    Names are read as the server reads them: outside strings and comments, unquoted names
    folded to lower case, "quoted" names as written, with or without a schema before them.
    """
    first = None
    pos = 0
    while pos < len(sql):
        match = _TOKENS.search(sql, pos)
        end = len(sql) if match is None else match.start()
        for word in _WORD.findall(sql, pos, end):
            first = first or word.lower()
            why = _refused_name(word.lower())
            if why:
                return why
        if match is None:
            break
        token, pos = match.group(), match.end()
        if match.group("name"):  # not a parameter to the server: an array slice a[1:f(x)]
            first = first or token[1:].lower()
            why = _refused_name(token[1:].lower())
            if why:
                return why
        elif match.group("dollar"):
            close = sql.find(token, pos)
            pos = len(sql) if close < 0 else close + len(token)
        elif token == "/*":
            pos = _comment_end(sql, pos)
        elif token.startswith('"'):
            if sql[max(0, match.start() - 2) : match.start()].lower() == "u&":
                return 'names written as U&"..." are not accepted in queries; write the name itself'
            why = _refused_name(token[1:-1].replace('""', '"'))
            if why:
                return why
            first = first or token[1:-1]
    if first in REFUSED_STATEMENTS:
        return f"{first.upper()} statements are refused in queries (use SELECT or WITH ... SELECT)"
    return None


def _refused_name(name: str) -> str | None:
    if name in REFUSED_FUNCTIONS or name.startswith(REFUSED_PREFIXES):
        return (f"queries may not call {name}(): it acts beyond the query (locks, other sessions, settings, "
                "server files) or runs SQL given as text, which a read-only transaction does not prevent")
    return None



class _QmarkCursor(psycopg.RawCursor):
    """A cursor for the SQL the store generates: parameters marked with `?`."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        return super().execute(to_dollar(query)[0] if params else query, params, **kwargs)

    def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().executemany(to_dollar(query)[0], params_seq, **kwargs)


# ---- values -------------------------------------------------------------------------------


class _NumberLoader(Loader):
    """numeric results (sum, avg, round) as int or float, as SQLite gives them, not Decimal."""

    def load(self, data: Any) -> int | float:
        text = bytes(data)
        try:
            return int(text)
        except ValueError:
            return float(text)  # 'NaN' and 'Infinity' included


class _JsonLoader(TextLoader):
    """json and jsonb results as text, as SQLite gives them, with NaN and Infinity as written (store/jsonvalues.py)."""

    def load(self, data: Any) -> Any:
        return from_stored(super().load(data))


class PostgreSQLBackend(SQLBackend):
    """A trainprov store in one PostgreSQL database (tables in the connection's current schema)."""

    sql_types = {
        "int": "BIGINT",
        "float": "DOUBLE PRECISION",
        "str": "TEXT",
        "bool": "BOOLEAN",
        "datetime": "TIMESTAMPTZ",
        "json": "JSONB",
        "file": "TEXT",
    }
    add_column = "ADD COLUMN IF NOT EXISTS"
    # JSON as valid JSON: non-finite numbers as strings (store/jsonvalues.py), which jsonb takes
    _expr_globals = {"_iso": iso_utc, "_json": to_stored}

    def __init__(self, url: str, *, connect_timeout: int = 10) -> None:
        super().__init__(url=hide_password(url))
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise StoreError(f"invalid PostgreSQL store URL {self.url}: {exc}") from None
        self._conninfo = url
        self._options = params.get("options", "")
        self._connect_timeout = params.get("connect_timeout", connect_timeout)
        self._application = params.get("application_name")
        self._readers = threading.local()

    # ---- connections -----------------------------------------------------------------

    def _connect(self, *, read_only: bool) -> psycopg.Connection:
        # Sessions in UTC, so timestamps read back as UTC; readers default to read-only
        # transactions besides the explicit READ ONLY of each query.
        options = f"{self._options} -c TimeZone=UTC"
        if read_only:
            options += " -c default_transaction_read_only=on"
        conninfo = make_conninfo(
            self._conninfo,
            options=options.strip(),
            connect_timeout=self._connect_timeout,
            application_name=self._application or ("trainprov-reader" if read_only else "trainprov"),
        )
        try:
            conn = psycopg.connect(
                conninfo,
                autocommit=not read_only,
                cursor_factory=psycopg.RawCursor if read_only else _QmarkCursor,
            )
        except psycopg.Error as exc:
            hint = _hint(exc)
            # a server down or restarting is an outage; bad credentials or a missing database are not
            kind = StoreError if hint and "is the server running" not in hint else StoreUnreachable
            raise kind(f"cannot connect to the PostgreSQL store {self.url}: {_one_line(exc)}{hint}") from None
        return conn

    def _connect_writer(self) -> psycopg.Connection:
        return self._connect(read_only=False)

    def _writer(self) -> psycopg.Connection:
        if self._writer_lost():  # the server dropped the connection (a restart): start afresh
            self._forget(self._local.conn)
            self._local.conn = None
        return super()._writer()

    def _release_writer(self) -> None:
        # Declarations and reaping are rare, and come from threads that write nothing else
        # (the training thread, a reader): their connection need not stay open on the server.
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            self._forget(conn)

    def mark_interrupted(self, runs: Any) -> None:
        try:
            super().mark_interrupted(runs)
        finally:
            self._release_writer()

    def _writer_lost(self) -> bool:
        conn = getattr(self._local, "conn", None)
        return conn is not None and conn.closed

    def _reader(self) -> psycopg.Connection:
        conn = getattr(self._readers, "conn", None)
        if conn is not None and not conn.closed:
            return conn
        if conn is not None:
            self._forget(conn)
        if not psycopg.Pipeline.is_supported():  # how queries are kept to one statement
            raise StoreError(
                f"reading {self.url} needs libpq 14 or newer under psycopg; install 'psycopg[binary]', which bundles one"
            )
        conn = self._connect(read_only=True)
        conn.read_only = True  # every transaction starts with BEGIN READ ONLY
        conn.adapters.register_loader("jsonb", _JsonLoader)
        conn.adapters.register_loader("json", _JsonLoader)
        conn.adapters.register_loader("numeric", _NumberLoader)
        self._readers.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    def _forget(self, conn: psycopg.Connection) -> None:
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        conn.close()

    def close(self) -> None:
        super().close()
        self._readers = threading.local()

    # ---- dialect hooks ---------------------------------------------------------------

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN")

    def _lock_catalog(self, cur: Any) -> None:
        # Held until commit: the next declaration sees this one's tables, columns and rows.
        cur.execute("SELECT pg_advisory_xact_lock(?)", (CATALOG_LOCK,))

    def _catalog_columns(self, cur: Any) -> int:
        """How many of the catalog's columns the store has (all of them: the catalog is current)."""
        cur.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = ANY(?::text[])", (list(TABLES),),
        )
        return int(cur.fetchone()[0])

    def _catalog_current(self, cur: Any) -> bool:
        return self._catalog_columns(cur) >= sum(len(t.columns) for t in TABLES.values())

    def _ensure_catalog(self, cur: Any) -> None:
        # CREATE INDEX IF NOT EXISTS locks its table against writers even when the index
        # exists: run the catalog's DDL only while something is missing.
        cur.execute("SELECT count(*) FROM unnest(?::text[]) AS t(name) WHERE to_regclass(name) IS NULL", (list(TABLES),))
        if cur.fetchone()[0]:
            super()._ensure_catalog(cur)
        elif not self._catalog_current(cur):  # a store made by an earlier trainprov
            self._add_catalog_columns(cur)

    def _table_exists(self, cur: Any, name: str) -> bool:
        cur.execute("SELECT to_regclass(?) IS NOT NULL", (name,))
        return bool(cur.fetchone()[0])

    def _existing_columns(self, cur: Any, name: str) -> set[str]:
        cur.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ?",
            (name,),
        )
        return {row[0] for row in cur.fetchall()}

    def _lock_run(self, cur: Any, run_id: str) -> None:
        # the runs row, until commit: the other rank's end waits, then sees this one's
        cur.execute("SELECT 1 FROM runs WHERE run_id = ? FOR UPDATE", (run_id,))

    def _value_expr(self, kind: str, source: str) -> str:
        # Floats go as they are: PostgreSQL keeps NaN and infinities. Timestamps go as ISO
        # text, which the server parses for the TIMESTAMPTZ column.
        if kind == "datetime":
            return f"(None if (_x := {source}) is None else _iso(_x))"
        if kind == "json":
            return f"_json({source})"
        return source

    def declare(self, flow: Dataflow) -> int:
        # Adding a column waits for the writers of that table; a writer that waits for a
        # table this declaration holds makes a deadlock, which the server breaks by
        # cancelling one side. The declaration is then simply made again, as it is after
        # a connection the server dropped (a restart).
        attempt = 1
        try:
            while True:
                try:
                    return super().declare(flow)
                except psycopg.Error as exc:
                    retry = isinstance(exc, (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)) or self._writer_lost()
                    if not retry or attempt == DECLARE_ATTEMPTS:
                        lost = self._writer_lost() or isinstance(exc, psycopg.OperationalError)
                        raise (StoreUnreachable if lost else StoreError)(
                            f"could not declare dataflow {flow.name!r} in the PostgreSQL store {self.url}: {_one_line(exc)}"
                        ) from None
                    time.sleep(0.05 * attempt)
                    attempt += 1
        finally:
            self._release_writer()

    def is_permanent(self, exc: BaseException) -> bool:
        # Refused values and statements fail again with the same rows; a lost connection,
        # a restarting server or a deadlock do not.
        if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError)):
            return True
        return super().is_permanent(exc)

    # ---- writes ----------------------------------------------------------------------

    def _write_rows(self, cur: Any, target: Target, rows: list[tuple]) -> None:
        if target.mode != "insert" or len(rows) < COPY_ROWS:
            super()._write_rows(cur, target, rows)
            return
        _, build, _ = self._statement(target)
        with cur.copy(f"COPY {target.table} ({', '.join(target.columns)}) FROM STDIN") as copy:
            write_row = copy.write_row
            for item in rows:
                write_row(build(item))

    # ---- reads -----------------------------------------------------------------------

    def access_needed(self, *, write: Sequence[str] = (), read: Sequence[str] = ()) -> str:
        role = conninfo_to_dict(self._conninfo).get("user") or "ROLE"
        only_read = [t for t in read if t not in write]
        needs, grants = [], []
        if write:
            needs.append(f"INSERT and SELECT on {', '.join(write)}")
            grants.append(f"GRANT SELECT, INSERT ON {', '.join(write)} TO {role}")
        if only_read:
            needs.append(f"SELECT on {', '.join(only_read)}")
            grants.append(f"GRANT SELECT ON {', '.join(only_read)} TO {role}")
        return f"a role granted {' and '.join(needs)} ({'; '.join(grants)})"

    def exists(self) -> bool:
        try:
            result = self.query("SELECT to_regclass('runs') IS NOT NULL AND to_regclass('attributes') IS NOT NULL")
        except (StoreError, QueryError):
            return False
        return bool(result.rows[0][0])

    def _statement_values(self, sql: str, params: Sequence[Any] | dict) -> tuple[str, list | None]:
        """The statement with $n placeholders and its values; a refused call is a QueryError."""
        why = refused_call(sql)
        if why:
            raise QueryError(why)
        if not params:
            return sql, None
        named = isinstance(params, dict)
        sql, names = to_dollar(sql, named)
        if named:
            missing = [n for n in names if n not in params]
            if missing:
                raise QueryError(f"invalid SQL: no value for the parameter(s) :{', :'.join(missing)}")
            return sql, [params[n] for n in names]
        return sql, list(params)

    def query(self, sql: str, params: Sequence[Any] | dict = (), *, timeout: float | None = None) -> Result:
        sql, values = self._statement_values(sql, params)
        retried = False
        while True:
            conn = self._reader()
            try:
                return self._run(conn, sql, values, timeout)
            except psycopg.Error as exc:
                if retried or not conn.closed:
                    raise self._refusal(conn, exc, timeout) from None
            finally:
                self._end_read(conn)
            retried = True  # the server dropped the connection (a restart): once more on a new one

    @contextlib.contextmanager
    def stream(self, sql: str, params: Sequence[Any] | dict = (), *, timeout: float | None = None) -> Iterator[Rows]:
        # A query (SELECT, WITH, VALUES, TABLE) is read through a server-side cursor, a
        # batch per FETCH; anything else (EXPLAIN, SHOW) is small and read whole.
        if _first_word(sql) not in ("select", "with", "values", "table", "("):
            with super().stream(sql, params, timeout=timeout) as rows:
                yield rows
            return
        sql, values = self._statement_values(sql, params)
        conn = self._reader()
        deadline = None if timeout is None else time.monotonic() + timeout
        cur = conn.cursor(name="trainprov_stream")  # DECLARE ... CURSOR FOR sends one statement only

        def limit() -> None:
            # every FETCH gets what is left of the time limit
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise pg_errors.QueryCanceled("canceling statement due to statement timeout")
                conn.execute("SELECT set_config('statement_timeout', $1, true)", [f"{max(1, int(left * 1000))}ms"])

        def fetch(n: int) -> list[tuple]:
            try:
                limit()
                return cur.fetchall() if n < 0 else cur.fetchmany(n)
            except psycopg.Error as exc:
                raise self._refusal(conn, exc, timeout) from None

        try:
            try:
                limit()
                cur.execute(sql, values)
            except psycopg.Error as exc:
                raise self._refusal(conn, exc, timeout) from None
            yield Rows([d.name for d in cur.description or ()], fetch)
        finally:
            with contextlib.suppress(psycopg.Error):
                cur.close()
            self._end_read(conn)  # closes the cursor with the transaction

    @staticmethod
    def _run(conn: psycopg.Connection, sql: str, values: list | None, timeout: float | None = None) -> Result:
        cur = conn.cursor()
        # In a pipeline psycopg sends the statement with the extended protocol, which
        # takes one statement only: "SELECT 1; COMMIT; DELETE ..." cannot slip out of
        # the read-only transaction.
        with conn.pipeline() as pipeline:
            if timeout is not None:
                conn.cursor().execute("SELECT set_config('statement_timeout', $1, true)", [f"{max(1, int(timeout * 1000))}ms"])
            cur.execute(sql, values)
            pipeline.sync()
        if cur.description is None:
            return Result([], [])
        return Result([d.name for d in cur.description], cur.fetchall())

    @staticmethod
    def _end_read(conn: psycopg.Connection) -> None:
        # Roll back whatever the statement did to the session (a SET, say).
        try:
            conn.rollback()
        except psycopg.Error:  # the connection is gone; the next query reconnects
            pass

    def _refusal(self, conn: psycopg.Connection, exc: psycopg.Error, timeout: float | None = None) -> Exception:
        text = _one_line(exc)
        if isinstance(exc, pg_errors.QueryCanceled) and timeout is not None and "timeout" in text:
            return QueryTimeout(f"the statement ran longer than its time limit of {timeout:g} s and was stopped")
        if conn.closed or isinstance(exc, psycopg.OperationalError) and exc.sqlstate in (None, "57P01", "57P02", "57P03"):
            return StoreUnreachable(f"lost the connection to the PostgreSQL store {self.url}: {text}")
        if isinstance(exc, (pg_errors.ReadOnlySqlTransaction, pg_errors.ActiveSqlTransaction)):
            return QueryError(
                f"queries are read-only: the server refused this statement ({text}) "
                "(use SELECT or WITH ... SELECT)"
            )
        if "cannot insert multiple commands" in text:
            return QueryError("invalid SQL: give one statement at a time")
        message = f"invalid SQL: {text}"
        if isinstance(exc, pg_errors.UndefinedTable):
            self._end_read(conn)
            try:
                names = [r[0] for r in self._run(conn, "SELECT name FROM datasets ORDER BY name", None).rows]
            except psycopg.Error:
                names = []
            message += f"; datasets in this store: {', '.join(names) or '(none)'} (see `trainprov schema`)"
        return QueryError(message)


def _first_word(sql: str) -> str:
    """The statement's first keyword, lower case (after comments and blanks), or "(" for a parenthesis."""
    text = re.sub(r"^(?:\s+|--[^\n]*|/\*.*?\*/)*", "", sql, flags=re.DOTALL)
    if text.startswith("("):
        return "("
    match = _WORD.match(text)
    return match.group().lower() if match else ""


def _one_line(exc: BaseException) -> str:
    """The server's message without the LINE/caret context (which a one-line message garbles)."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if not primary:
        return " ".join(str(exc).split())
    hint = diag.message_hint
    return primary + (f"; hint: {hint}" if hint else "")


def _hint(exc: BaseException) -> str:
    text = str(exc)
    if "password authentication failed" in text or "no password supplied" in text:
        return " (check the user name and password in the URL)"
    if re.search(r'database ".*" does not exist', text):
        return " (create the database first: CREATE DATABASE ...; see docs/postgresql.md)"
    if "Connection refused" in text or "No such file or directory" in text or "timeout expired" in text:
        return " (is the server running, and are host and port right?)"
    return ""
