"""Stores: where provenance is kept. SQLite by default, PostgreSQL for a shared store; every dialect detail lives here."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

from ..errors import StoreError
from .base import Backend, Result, SQLBackend
from .catalog import Target
from .urls import hide_password

DEFAULT_STORE = "trainprov.db"
ENV_VAR = "TRAINPROV_STORE"

__all__ = ["Backend", "Result", "SQLBackend", "Target", "hide_password", "open_backend", "resolve_url"]


def resolve_url(store: str | os.PathLike | None = None) -> str:
    """The store to use: the argument, else $TRAINPROV_STORE, else trainprov.db here."""
    if store is not None:
        return os.fspath(store)
    return os.environ.get(ENV_VAR) or DEFAULT_STORE


def open_backend(store: str | os.PathLike | None = None) -> Backend:
    """Open the backend a store URL or path names (nothing is created until it is written)."""
    url = resolve_url(store)
    scheme = url.split(":", 1)[0].lower() if "://" in url or url.startswith("sqlite:") else ""
    if scheme in ("postgresql", "postgres"):
        return _open_postgresql(url)
    if scheme not in ("", "sqlite", "file"):
        raise StoreError(
            f"unknown store URL scheme {scheme!r} in {hide_password(url)}; give a file path, "
            "sqlite:///path or postgresql://user@host/database"
        )
    from .sqlite import SQLiteBackend

    path, options = url, {}
    if scheme:
        parts = urlsplit(url)
        path = (parts.netloc + parts.path) if parts.netloc else parts.path
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if not path:
        raise StoreError(f"store URL {url!r} names no file")
    kwargs = {}
    if "wal_limit_mb" in options:
        try:
            kwargs["wal_limit_bytes"] = int(float(options["wal_limit_mb"]) * (1 << 20))
        except ValueError:
            raise StoreError(f"store URL option wal_limit_mb must be a number of megabytes, got {options['wal_limit_mb']!r}") from None
    if "lock_timeout_s" in options:
        try:
            kwargs["lock_timeout_s"] = float(options["lock_timeout_s"])
        except ValueError:
            raise StoreError(f"store URL option lock_timeout_s must be a number of seconds, got {options['lock_timeout_s']!r}") from None
        if not 0 <= kwargs["lock_timeout_s"] <= 3600:
            raise StoreError(f"store URL option lock_timeout_s must be between 0 and 3600 seconds, got {options['lock_timeout_s']!r}")
    unknown = set(options) - {"wal_limit_mb", "lock_timeout_s"}
    if unknown:
        raise StoreError(
            f"unknown store URL option(s) {', '.join(sorted(unknown))} in {url!r}; known: wal_limit_mb, lock_timeout_s"
        )
    return SQLiteBackend(os.path.expanduser(path), **kwargs)


def _open_postgresql(url: str) -> Backend:
    try:
        from .postgresql import PostgreSQLBackend
    except ImportError as exc:  # psycopg is an optional dependency
        raise StoreError(
            f"PostgreSQL stores need psycopg 3 ({exc}); install it with: pip install 'trainprov[postgresql]'"
        ) from None
    return PostgreSQLBackend(url)
