"""The dashboard's web application (Starlette): pages, JSON endpoints, downloads, and the server.

Handlers are plain functions, which Starlette runs in its thread pool: a slow query or a
graph layout never stalls the other requests. Pages are rendered on the server with
Jinja2; the scripts in static/ only fetch JSON and draw it with plotly.js, served from the
plotly package itself (no CDN).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import threading
import webbrowser
from typing import Any, AsyncIterator, Callable
from urllib.parse import parse_qs

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .. import __version__
from ..errors import ConsoleBusy, QueryTimeout, SteeringError, StoreError, TrainprovError
from ..export import FORMATS, ExportError, build_document, serialize
from ..export.formats import MIME_TYPES
from ..query import Reader
from ..store import hide_password, resolve_url
from . import data, graph_layout, graphs, listing, report, steering
from .console import CONSOLE_LIMIT, CONSOLE_TIMEOUT, Console
from .present import duration, exact, is_missing, jsonable, number, records, when
from .security import LOOPBACK_HOSTS, TOKEN_FIELD, TOKEN_HEADER, Guard, Sessions, cross_site, session_of

HERE = os.path.dirname(os.path.abspath(__file__))
#: the PROV formats offered as export buttons on a run page, in this order
EXPORT_BUTTONS = ("provn", "json", "xml", "turtle", "jsonld", "svg")
#: how often pages poll while something runs (milliseconds), given to the scripts
POLL_MS = 2000
#: requests served at once (each reads the store on its own connection)
MAX_THREADS = 8


def plotly_js() -> str:
    """The path of plotly.min.js inside the installed plotly package."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise StoreError("the dashboard needs the plotly package: pip install 'trainprov[ui]'")
    return os.path.join(list(spec.submodule_search_locations)[0], "package_data", "plotly.min.js")


class JSON(JSONResponse):
    """JSON with NaN and infinities as strings, times as ISO 8601, never cached."""

    def __init__(self, content: Any, status_code: int = 200) -> None:
        super().__init__(content, status_code, headers={"Cache-Control": "no-store"})

    def render(self, content: Any) -> bytes:
        return json.dumps(jsonable(content), allow_nan=False, separators=(",", ":")).encode()


class Dashboard:
    """The state of one dashboard: the store it reads and its templates."""

    def __init__(self, store: str | os.PathLike | None, *, sql_timeout: float | None = CONSOLE_TIMEOUT,
                 sql_limit: int = CONSOLE_LIMIT, allow_steering: bool = False) -> None:
        self.store = resolve_url(store)
        #: whether running runs' pages have steering controls (and the steering endpoint takes requests)
        self.allow_steering = allow_steering
        self._reader: Reader | None = None
        self._lock = threading.Lock()
        self.sessions = Sessions()
        self.console = Console(self.reader, timeout=sql_timeout, limit=sql_limit)
        self.templates = Jinja2Templates(directory=os.path.join(HERE, "templates"))
        env = self.templates.env
        env.filters.update(number=number, duration=duration, when=when, exact=exact)
        env.tests["missing"] = is_missing
        env.globals.update(version=__version__, cell=listing.cell, poll_ms=POLL_MS, export_buttons=EXPORT_BUTTONS,
                           formats=FORMATS, steering=allow_steering,
                           requester=steering.requested_by() if allow_steering else None)

    def reader(self) -> Reader:
        """The Reader, opened on first use (a store that does not exist yet is waited for, not an error)."""
        with self._lock:
            if self._reader is None:
                self._reader = Reader(self.store)
            return self._reader

    @property
    def url(self) -> str:
        """The store as pages and messages show it: never with its password."""
        return self._reader.url if self._reader is not None else hide_password(self.store)

    def close(self) -> None:
        self.console.close()
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def page(self, request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        session = started = session_of(request.scope) or None
        if session is None:
            session = self.sessions.new()
        response = self.templates.TemplateResponse(
            request, name, {"store": self.url, "page_token": self.sessions.token(session), **context}, status_code=status_code)
        if started is None:
            response.set_cookie(self.sessions.cookie_name(request.scope), session, httponly=True, samesite="strict", path="/")
        return response

    def page_refusal(self, request: Request, token: str | None) -> str | None:
        """Why a request is not one of this dashboard's pages' (sent by another site, or without the page's
        token); None if it is. SQL and steering requests must be."""
        why = cross_site(request.headers)
        if why is None and not self.sessions.valid(session_of(request.scope), token):
            why = "it does not carry the token of a dashboard page (reload the page)"
        return why

    def sql_refusal(self, request: Request, token: str | None) -> str | None:
        """Why a request may not run SQL: sent by another site, or without its page's token; None if it may."""
        why = self.page_refusal(request, token)
        return f"SQL is only run for the dashboard's own pages: {why}" if why else None

    def steering_refusal(self, request: Request, token: str | None) -> str | None:
        """Why a request may not steer: steering not allowed, sent by another site, or without its page's token."""
        if not self.allow_steering:
            return ("this dashboard does not take steering requests: start it with `trainprov ui --allow-steering` "
                    "to steer from it, or use `trainprov steer`")
        why = self.page_refusal(request, token)
        return f"steering requests are only taken from the dashboard's own pages: {why}" if why else None


def _board(request: Request) -> Dashboard:
    """The dashboard an application serves (create_app keeps it in the app's state)."""
    return request.app.state.dashboard


def _page(render: Callable[[Dashboard, Request, Reader], Response]) -> Callable[[Request], Response]:
    """A page handler: the store's problems become readable pages, not tracebacks."""

    def handler(request: Request) -> Response:
        board = _board(request)
        try:
            return render(board, request, board.reader())
        except StoreError as exc:
            return board.page(request, "problem.html", 503, title="Waiting for the store", message=str(exc), retry=True)
        except TrainprovError as exc:  # an unknown run, a bad parameter, ...
            missing = str(exc).startswith("no run")
            return board.page(request, "problem.html", 404 if missing else 400,
                              title="Not found" if missing else "Cannot show this", message=str(exc), retry=False)

    return handler


def _api(answer: Callable[[Dashboard, Request, Reader], Any]) -> Callable[[Request], Response]:
    """A JSON handler: errors are {"error": message} with a fitting status."""

    def handler(request: Request) -> Response:
        board = _board(request)
        try:
            result = answer(board, request, board.reader())
        except StoreError as exc:
            return JSON({"error": str(exc)}, 503)
        except TrainprovError as exc:
            return JSON({"error": str(exc)}, 404 if str(exc).startswith("no run") else 400)
        return result if isinstance(result, Response) else JSON(result)

    return handler


def _run_ref(request: Request, reader: Reader) -> str:
    return data.resolve(reader, request.path_params["run"])


# ---- pages ----------------------------------------------------------------------------------


def runs_page(board: Dashboard, request: Request, reader: Reader) -> Response:
    """The runs list: `/`."""
    runs = listing.runs_list(reader, listing.RunsQuery.from_params(request.query_params))
    return board.page(request, "runs.html", listing=runs, nav="runs")


def runs_table(board: Dashboard, request: Request, reader: Reader) -> Response:
    """The runs table alone, for the list's live refresh."""
    runs = listing.runs_list(reader, listing.RunsQuery.from_params(request.query_params))
    return board.page(request, "_runs_table.html", listing=runs)


def run_page(board: Dashboard, request: Request, reader: Reader) -> Response:
    """A run's page (a prefix or 'latest' redirects to the run's id)."""
    run_id = _run_ref(request, reader)
    if run_id != request.path_params["run"]:
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"/runs/{run_id}{query}", status_code=303)
    return board.page(request, "run.html", detail=data.run_detail(reader, run_id, data.rank_of(request.query_params)),
                      run_id=run_id, nav="runs")


def run_details(board: Dashboard, request: Request, reader: Reader) -> Response:
    """A run page's details alone, for its live refresh."""
    run_id = _run_ref(request, reader)
    return board.page(request, "_run_details.html", detail=data.run_detail(reader, run_id, data.rank_of(request.query_params)),
                      run_id=run_id)


def run_graph_page(board: Dashboard, request: Request, reader: Reader) -> Response:
    """A run's provenance graph at the level of tasks."""
    run_id = _run_ref(request, reader)
    expand = [name for value in request.query_params.getlist("expand") for name in value.split(",") if name]
    drawn = graph_layout.layout(graphs.run_graph(reader, run_id, expand=expand))
    return board.page(request, "graph.html", title=f"Provenance of run {run_id}", layout=drawn, run_id=run_id,
                      nav="runs", graphviz=shutil.which("dot") is not None, expanded=expand,
                      note="One node per task, per dataset a task used or generated (with its number of elements), "
                           "per group of files and per agent; the tasks of a transformation that ran more than "
                           f"{graphs.COLLAPSE_AFTER} times are one node with their count (click it to expand them). "
                           "The full W3C PROV graph, one node per element, is an export.")


def dataflow_page(board: Dashboard, request: Request, reader: Reader) -> Response:
    """A dataflow's graph: transformations and the datasets they use and generate."""
    name, version = request.path_params["name"], request.path_params["version"]
    drawn = graph_layout.layout(graphs.dataflow_graph(reader, name, version))
    return board.page(request, "graph.html", title=f"Dataflow {name} v{version}", layout=drawn,
                      nav="runs", note="Transformations (blue) and the datasets (yellow) they use and generate; "
                                       "hover a dataset for its attributes.")


def group_page(board: Dashboard, request: Request, reader: Reader) -> Response:
    """A run group's page: its runs and, for a search, its analysis."""
    name = request.path_params["name"]
    found = reader.group(name)  # an unknown group: a page that names the groups there are
    query = listing.RunsQuery.from_params(request.query_params)
    query.group = name
    return board.page(request, "group.html", group=found["group"], details=data.group_details(found["group"]),
                      listing=listing.runs_list(reader, query), search=data.group_search(reader, name), nav="runs")


def compare_page(board: Dashboard, request: Request, reader: Reader) -> Response:
    """The comparison of runs."""
    refs = request.query_params.getlist("runs")
    refs = [r for ref in refs for r in ref.split(",") if r]
    comparison = data.compare(reader, refs, request.query_params.get("metric"), data.rank_of(request.query_params))
    return board.page(request, "compare.html", comparison=comparison, nav="compare")


def sql_page(board: Dashboard, request: Request, reader: Reader) -> Response:
    """The SQL console."""
    # A statement in the address fills the editor; it runs by itself only when a page
    # of the dashboard linked to it, never from a link on another site.
    return board.page(request, "sql.html", tables=data.schema(reader), nav="sql",
                      initial=request.query_params.get("sql", ""),
                      autorun=request.headers.get("sec-fetch-site") == "same-origin",
                      sql_rows=data.SQL_ROWS, sql_timeout=board.console.timeout and f"{board.console.timeout:g}")


def export_run(board: Dashboard, request: Request, reader: Reader) -> Response:
    """A run as a W3C PROV document in one format (a download, or inline)."""
    run_id = _run_ref(request, reader)
    fmt = FORMATS.get(request.path_params["format"])
    if fmt is None:
        raise ExportError(f"unknown export format {request.path_params['format']!r}; formats: {', '.join(FORMATS)}")
    body = serialize(build_document([run_id], store=reader), fmt.name)
    media = MIME_TYPES[fmt.name]
    inline = request.query_params.get("inline") == "1"
    disposition = "inline" if inline else f'attachment; filename="run-{run_id}{fmt.extension}"'
    return Response(body, media_type=media, headers={"Content-Disposition": disposition})


def report_run(board: Dashboard, request: Request, reader: Reader) -> Response:
    """A run's report as a download: HTML or Markdown."""
    run_id = _run_ref(request, reader)
    fmt = request.query_params.get("format", "html")
    if fmt not in report.FORMATS:
        raise report.ReportError(f"unknown report format {fmt!r}; formats: {', '.join(report.FORMATS)}")
    body = report.html(reader, run_id) if fmt == "html" else report.markdown(reader, run_id)
    media = "text/html; charset=utf-8" if fmt == "html" else "text/markdown; charset=utf-8"
    return Response(body, media_type=media,
                    headers={"Content-Disposition": f'attachment; filename="run-{run_id}.{fmt}"'})


# ---- JSON -----------------------------------------------------------------------------------


def api_runs(board: Dashboard, request: Request, reader: Reader) -> Any:
    """The runs list as JSON."""
    runs = listing.runs_list(reader, listing.RunsQuery.from_params(request.query_params))
    return {"total": runs.total, "matched": runs.matched, "counts": runs.counts,
            "runs": records(runs.frame.head(runs.query.limit))}


def api_run(board: Dashboard, request: Request, reader: Reader) -> Any:
    """A run's details as JSON."""
    return data.run_detail(reader, _run_ref(request, reader), data.rank_of(request.query_params))


def api_epochs(board: Dashboard, request: Request, reader: Reader) -> Any:
    """A run's per-epoch curves, adaptations and state as JSON."""
    return data.epochs(reader, _run_ref(request, reader), data.rank_of(request.query_params))


def api_steps(board: Dashboard, request: Request, reader: Reader) -> Any:
    """A run's per-step curves, downsampled, as JSON."""
    try:
        points = int(request.query_params.get("points", data.STEP_POINTS))
    except ValueError:
        points = data.STEP_POINTS
    return data.steps(reader, _run_ref(request, reader), points, data.rank_of(request.query_params))


def api_compare(board: Dashboard, request: Request, reader: Reader) -> Any:
    """The per-epoch curves of several runs as JSON."""
    refs = [r for ref in request.query_params.getlist("runs") for r in ref.split(",") if r]
    return data.compare_curves(reader, refs, data.rank_of(request.query_params))


def api_schema(board: Dashboard, request: Request, reader: Reader) -> Any:
    """The tables and columns a query can use, as JSON."""
    return data.schema(reader)


async def _console_answer(board: Dashboard, request: Request, sql: Any, token: str | None, work: Callable[[], Any]) -> Response:
    """A console request's answer: refused without the page's token, errors as JSON."""
    refusal = board.sql_refusal(request, token)
    if refusal:
        return JSON({"error": refusal}, 403)
    if not isinstance(sql, str):
        return JSON({"error": "sql must be text"}, 400)
    try:
        return await work()
    except ConsoleBusy as exc:
        busy = JSON({"error": str(exc)}, 429)
        busy.headers["Retry-After"] = "1"
        return busy
    except QueryTimeout as exc:
        return JSON({"error": f"{exc} (the SQL console's limit, set with `trainprov ui --sql-timeout`)"}, 400)
    except StoreError as exc:
        return JSON({"error": str(exc)}, 503)
    except TrainprovError as exc:
        return JSON({"error": str(exc)}, 400)


async def api_sql(request: Request) -> Response:
    """One statement of the SQL console, its first rows as JSON."""
    board = _board(request)
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return JSON({"error": 'send {"sql": "SELECT ..."} as JSON'}, 400)
    sql = body.get("sql", "")

    async def work() -> Response:
        return JSON(await board.console.call(lambda reader: data.run_sql(reader, sql, timeout=board.console.timeout)))

    return await _console_answer(board, request, sql, request.headers.get(TOKEN_HEADER), work)


async def api_sql_csv(request: Request) -> Response:
    """One statement of the SQL console, every row as a CSV download."""
    # a form of the SQL page posts it (a download the browser streams to disk)
    board = _board(request)
    fields = parse_qs((await request.body()).decode("utf-8", "replace"))
    sql = fields.get("sql", [""])[-1]
    token = request.headers.get(TOKEN_HEADER) or fields.get(TOKEN_FIELD, [None])[-1]

    async def work() -> Response:
        first, rest = await board.console.stream(
            lambda reader: data.sql_csv_chunks(reader, sql, timeout=board.console.timeout))

        async def body() -> Any:
            yield first
            async for chunk in rest:
                yield chunk

        return StreamingResponse(body(), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": 'attachment; filename="query.csv"', "Cache-Control": "no-store"})

    return await _console_answer(board, request, sql, token, work)


async def api_steer(request: Request) -> Response:
    """A steering request from a running run's page: written to the store, answered by the training."""
    board = _board(request)
    refusal = board.steering_refusal(request, request.headers.get(TOKEN_HEADER))
    if refusal:
        return JSON({"error": refusal}, 403)
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return JSON({"error": 'send {"action": "set", "parameter": "learning_rate", "value": "1e-4", "reason": "..."} '
                              'as JSON'}, 400)

    def work() -> Response:
        reader = board.reader()
        return JSON(steering.send(reader, _run_ref(request, reader), body), 201)

    try:
        return await anyio.to_thread.run_sync(work)
    except SteeringError as exc:  # a bad request, or a store that refuses it: the message says which
        return JSON({"error": str(exc)}, 400)
    except StoreError as exc:
        return JSON({"error": str(exc)}, 503)
    except TrainprovError as exc:
        return JSON({"error": str(exc)}, 404 if str(exc).startswith("no run") else 400)


def api_steering_request(board: Dashboard, request: Request, reader: Reader) -> Any:
    """A steering request of a run and its answer so far, for the page that sent it."""
    run_id, request_id = _run_ref(request, reader), request.path_params["request"]
    found = steering.answer(reader, run_id, request_id)
    if found is None:
        return JSON({"error": f"run {run_id} has no steering request {request_id!r}"}, 404)
    return found


def plotly(request: Request) -> Response:
    """plotly.min.js from the installed plotly package."""
    return FileResponse(plotly_js(), media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})


async def health(request: Request) -> Response:
    """A liveness check."""
    # on the event loop, no thread: it answers while every worker is busy
    return PlainTextResponse("ok")


#: every route of the dashboard; handlers find their Dashboard in the application's state
ROUTES = [
    Route("/", _page(runs_page)),
    Route("/runs/table", _page(runs_table)),
    Route("/runs/{run}", _page(run_page)),
    Route("/runs/{run}/details", _page(run_details)),
    Route("/runs/{run}/graph", _page(run_graph_page)),
    Route("/runs/{run}/export/{format}", _page(export_run)),
    Route("/runs/{run}/report", _page(report_run)),
    Route("/dataflows/{name}/{version:int}", _page(dataflow_page)),
    Route("/groups/{name:path}", _page(group_page)),
    Route("/compare", _page(compare_page)),
    Route("/sql", _page(sql_page)),
    Route("/api/runs", _api(api_runs)),
    Route("/api/runs/{run}", _api(api_run)),
    Route("/api/runs/{run}/epochs", _api(api_epochs)),
    Route("/api/runs/{run}/steps", _api(api_steps)),
    Route("/api/runs/{run}/steer", api_steer, methods=["POST"]),
    Route("/api/runs/{run}/steering/{request}", _api(api_steering_request)),
    Route("/api/compare", _api(api_compare)),
    Route("/api/schema", _api(api_schema)),
    Route("/api/sql", api_sql, methods=["POST"]),
    Route("/api/sql.csv", api_sql_csv, methods=["POST"]),
    Route("/static/plotly.min.js", plotly),
    Route("/health", health),
    Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
]


def create_app(store: str | os.PathLike | None = None, *, token: str | None = None,
               allowed_hosts: list[str] | None = list(LOOPBACK_HOSTS), sql_timeout: float | None = CONSOLE_TIMEOUT,
               sql_limit: int = CONSOLE_LIMIT, allow_steering: bool = False) -> Starlette:
    """The dashboard as an ASGI application reading `store`.

    `allowed_hosts` are the Host names it answers to (None: any, for a server reached by
    other names, which then needs a `token`). The SQL console runs at most `sql_limit`
    statements at once and stops each after `sql_timeout` seconds (None: no limit). With
    `allow_steering`, a running run's page has controls that write steering requests to
    the store (docs/dashboard.md#steering); without it the dashboard takes no steering requests.
    """
    board = Dashboard(store, sql_timeout=sql_timeout, sql_limit=sql_limit, allow_steering=allow_steering)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # at most this many requests read the store at once: each thread has its own
        # connection, and a shared PostgreSQL server should not see dozens from one dashboard
        anyio.to_thread.current_default_thread_limiter().total_tokens = MAX_THREADS
        yield
        board.close()

    app = Starlette(routes=ROUTES, lifespan=lifespan)
    app.state.dashboard = board
    app.add_middleware(Guard, token=token, allowed_hosts=allowed_hosts, sessions=board.sessions)
    return app


def serve(store: str | os.PathLike | None, *, sock: socket.socket, token: str | None = None, url: str = "",
          open_browser: bool = False, sql_timeout: float | None = CONSOLE_TIMEOUT, allow_steering: bool = False) -> None:
    """Serve the dashboard on an already bound socket until interrupted."""
    import uvicorn

    host = sock.getsockname()[0]
    loopback = host in ("127.0.0.1", "::1") or host.startswith("127.")
    app = create_app(store, token=token, allowed_hosts=[*LOOPBACK_HOSTS, host] if loopback else None,
                     sql_timeout=sql_timeout, allow_steering=allow_steering)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    print(f"trainprov ui: reading {app.state.dashboard.url}", flush=True)
    if allow_steering:
        print(f"trainprov ui: steering allowed: running runs' pages send requests as {steering.requested_by()}",
              flush=True)
    print(f"trainprov ui: serving at {url}  (Ctrl-C to stop)", flush=True)
    if open_browser:
        threading.Timer(0.5, webbrowser.open, (url,)).start()
    server.run(sockets=[sock])
