"""Starting the dashboard safely: loopback unless told otherwise, a token beyond it, a bound socket, then serving."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket

from ..errors import DashboardError, DashboardSettingError
from . import app

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
#: a token shorter than this is refused (a generated one is 32 characters)
MIN_TOKEN = 8


def is_loopback(host: str) -> bool:
    """Whether an address (a name, IPv4 or IPv6, with or without brackets) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def checked_token(host: str, token: str | None, allow_remote: bool) -> str | None:
    """The token to require on `host`: refuses a non-loopback address without `allow_remote`, generates one there."""
    if not is_loopback(host):
        if not allow_remote:
            raise DashboardSettingError(
                f"--host {host} makes the dashboard, and the store it reads, reachable from the network; "
                "pass --allow-remote (allow_remote=True) to mean it (a token is then required: --token or a generated one)"
            )
        token = token or secrets.token_urlsafe(24)
    if token is not None and (len(token) < MIN_TOKEN or any(ch.isspace() for ch in token)):
        raise DashboardSettingError(f"--token must be at least {MIN_TOKEN} characters, without spaces")
    return token


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port and listening (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)  # connections wait in the backlog from now on, while the server starts
    except OSError as exc:
        sock.close()
        raise DashboardError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(store: str | os.PathLike | None = None, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          token: str | None = None, allow_remote: bool = False, open_browser: bool = False,
          sql_timeout: float | None = None, allow_steering: bool = False) -> None:
    """Serve the dashboard of `store` on host:port until interrupted, printing its address (with the token).

    `sql_timeout` stops a SQL console statement after that many seconds (default: app.CONSOLE_TIMEOUT).
    `allow_steering` gives running runs' pages controls that steer the training (otherwise it takes no steering requests).
    """
    token = checked_token(host, token, allow_remote)
    sock = listen(host, port)
    shown = f"[{host.strip('[]')}]" if sock.family == socket.AF_INET6 else host
    url = f"http://{shown}:{sock.getsockname()[1]}/" + (f"?token={token}" if token else "")
    limits = {} if sql_timeout is None else {"sql_timeout": sql_timeout}
    app.serve(store, sock=sock, token=token, url=url, open_browser=open_browser, allow_steering=allow_steering, **limits)
