"""Who may talk to the dashboard: a Host check against DNS rebinding, an optional token, safe headers.

A plain ASGI middleware (no per-request task switching), which also reports each
response's server-side time in a `Server-Timing` header (what benchmarks/ui_bench.py reads).
"""

from __future__ import annotations

import hmac
import time
from http.cookies import SimpleCookie
from typing import Any, Iterable
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: scripts only from the dashboard itself (no inline script, no CDN); plotly needs inline styles
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def _host(headers: Headers) -> str:
    """The host name of a Host header, without port and IPv6 brackets."""
    value = headers.get("host", "").strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard:
    """Refuses requests for other hosts (when serving loopback) and requests without the token (when one is set)."""

    def __init__(self, app: ASGIApp, *, token: str | None = None, allowed_hosts: Iterable[str] | None = None) -> None:
        self.app = app
        self.token = token
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
