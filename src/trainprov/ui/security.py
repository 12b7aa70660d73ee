"""Who may talk to the dashboard: a Host check against DNS rebinding, an optional token, safe headers,
and the checks that keep other websites from running SQL or steering through the user's browser.

A plain ASGI middleware (no per-request task switching), which also reports each
response's server-side time in a `Server-Timing` header (what benchmarks/ui_bench.py reads),
and gives every browser a session cookie; a request that runs SQL or steers a training must
come from the dashboard's own pages (Origin, Sec-Fetch-Site) and carry the token those pages
hold for that session, which another site can neither read nor compute.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from http.cookies import SimpleCookie
from typing import Any, Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: scripts only from the dashboard itself (no inline script, no CDN); plotly needs inline styles
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
#: the header (fetch) or form field (download) that carries a page's token
TOKEN_HEADER, TOKEN_FIELD = "x-trainprov-token", "token"
_SESSION = re.compile(r"^[A-Za-z0-9_-]{32}$")


class Sessions:
    """Per-browser sessions and their page tokens: HMAC(server key, session id), valid until the server stops."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    @staticmethod
    def cookie_name(scope: Scope) -> str:
        """The session cookie's name, one per port (two dashboards on one host keep theirs)."""
        server = scope.get("server") or ("", 0)
        return f"trainprov_session_{server[1]}"

    @staticmethod
    def new() -> str:
        """A new random session id."""
        return secrets.token_urlsafe(24)

    def token(self, session: str) -> str:
        """The token of a session, which its pages hold (and send with SQL and steering requests)."""
        return hmac.new(self._key, session.encode(), hashlib.sha256).hexdigest()

    def valid(self, session: str | None, token: str | None) -> bool:
        """True if `token` is the token of `session`."""
        return bool(session and token) and hmac.compare_digest(self.token(session).encode(), token.encode())


def _cookie(headers: Headers, name: str) -> str | None:
    cookies = SimpleCookie()
    try:
        cookies.load(headers.get("cookie", ""))
    except Exception:  # a malformed cookie header: as if there were none
        return None
    morsel = cookies.get(name)
    return morsel.value if morsel is not None else None


def session_of(scope: Scope) -> str:
    """The session id the Guard gave this request ("" without the Guard)."""
    return (scope.get("state") or {}).get("trainprov_session", "")


def cross_site(headers: Headers) -> str | None:
    """Why a request was not made by the dashboard's own pages (another site, another origin), or None."""
    site = headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return f"it was sent from another site (Sec-Fetch-Site: {site})"
    origin = headers.get("origin")
    if origin == "null":
        # what a browser sends for a form on a page whose Referrer-Policy is no-referrer
        # (ours): the same browser's Sec-Fetch-Site tells the origin then
        return None if site == "same-origin" else "it was sent by a page of unknown origin (Origin: null)"
    if origin is not None:
        try:
            netloc = urlsplit(origin).netloc.lower()
        except ValueError:
            netloc = ""
        if netloc != headers.get("host", "").lower():
            return f"it was sent by a page of another origin ({origin})"
    return None


def _host(headers: Headers) -> str:
    """The host name of a Host header, without port and IPv6 brackets."""
    value = headers.get("host", "").strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    """Refuses requests for other hosts (when serving loopback) and requests without the token (when one is set)."""

    def __init__(self, app: ASGIApp, *, token: str | None = None, allowed_hosts: Iterable[str] | None = None,
                 sessions: Sessions | None = None) -> None:
        self.app = app
        self.token = token
        self.sessions = sessions
        self.allowed = {h.strip("[]").lower() for h in allowed_hosts} if allowed_hosts is not None else None

    def _cookie_name(self, scope: Scope) -> str:
        server = scope.get("server") or ("", 0)
        return f"trainprov_token_{server[1]}"  # one per port: two dashboards on one host keep their tokens

    def _supplied(self, scope: Scope, headers: Headers) -> tuple[str | None, bool]:
        """The token a request carries, and whether it came in the URL."""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip(), False
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header: as if there were none
            pass
        morsel = cookies.get(self._cookie_name(scope))
        if morsel is not None:
            return morsel.value, False
        for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1")):
            if key == "token":
                return value, True
        return None, False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = Headers(scope=scope)
        if self.allowed is not None and _host(headers) not in self.allowed:
            response: Any = PlainTextResponse(
                "this dashboard answers only to the addresses it serves (127.0.0.1, localhost)", status_code=400)
            await response(scope, receive, send)
            return
        if self.token is not None:
            supplied, in_url = self._supplied(scope, headers)
            if supplied is None or not hmac.compare_digest(supplied.encode(), self.token.encode()):
                response = PlainTextResponse(
                    "this dashboard needs its token: open the address that `trainprov ui` printed "
                    "(it ends with ?token=...), or send the header Authorization: Bearer TOKEN",
                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
            if in_url and scope["method"] in ("GET", "HEAD"):
                # keep the token out of the address bar, history and logs: a cookie from now on
                rest = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1")) if k != "token"]
                response = RedirectResponse(scope["path"] + ("?" + urlencode(rest) if rest else ""), status_code=303)
                response.set_cookie(self._cookie_name(scope), self.token, httponly=True, samesite="strict", path="/")
                await response(scope, receive, send)
                return

        if self.sessions is not None:
            # a page without a session starts one (Dashboard.page); other requests only read it,
            # so that the page's scripts and styles, loaded at once, cannot replace it
            session = _cookie(headers, self.sessions.cookie_name(scope))
            if session is not None and _SESSION.match(session):
                scope.setdefault("state", {})["trainprov_session"] = session

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"server-timing", f"app;dur={(time.perf_counter() - start) * 1000:.2f}".encode()),
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)
