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

import anyio.to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .. import __version__
from ..errors import StoreError, TrainprovError
from ..export import FORMATS, ExportError, build_document, serialize
from ..query import Reader
from ..store import resolve_url
from . import data, graph_layout, graphs, listing
from .present import duration, exact, is_missing, jsonable, number, records, when
from .security import LOOPBACK_HOSTS, Guard

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

    def __init__(self, store: str | os.PathLike | None) -> None:
        self.store = resolve_url(store)
        self._reader: Reader | None = None
        self._lock = threading.Lock()
        self.templates = Jinja2Templates(directory=os.path.join(HERE, "templates"))
        env = self.templates.env
        env.filters.update(number=number, duration=duration, when=when, exact=exact)
        env.tests["missing"] = is_missing
        env.globals.update(version=__version__, cell=listing.cell, poll_ms=POLL_MS, export_buttons=EXPORT_BUTTONS,
                           formats=FORMATS)

    def reader(self) -> Reader:
        """The Reader, opened on first use (a store that does not exist yet is waited for, not an error)."""
        with self._lock:
            if self._reader is None:
                self._reader = Reader(self.store)
            return self._reader

    @property
    def url(self) -> str:
        return self._reader.url if self._reader is not None else self.store

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def page(self, request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        return self.templates.TemplateResponse(request, name, {"store": self.url, **context}, status_code=status_code)


def _page(board: Dashboard, render: Callable[[Request, Reader], Response]) -> Callable[[Request], Response]:
    """A page handler: the store's problems become readable pages, not tracebacks."""

    def handler(request: Request) -> Response:
        try:
            return render(request, board.reader())
        except StoreError as exc:
            return board.page(request, "problem.html", 503, title="Waiting for the store", message=str(exc), retry=True)
        except TrainprovError as exc:  # an unknown run, a bad parameter, ...
            missing = str(exc).startswith("no run")
            return board.page(request, "problem.html", 404 if missing else 400,
                              title="Not found" if missing else "Cannot show this", message=str(exc), retry=False)

    return handler


def _api(board: Dashboard, answer: Callable[[Request, Reader], Any]) -> Callable[[Request], Response]:
    """A JSON handler: errors are {"error": message} with a fitting status."""

    def handler(request: Request) -> Response:
        try:
            result = answer(request, board.reader())
        except StoreError as exc:
            return JSON({"error": str(exc)}, 503)
        except TrainprovError as exc:
            return JSON({"error": str(exc)}, 404 if str(exc).startswith("no run") else 400)
        return result if isinstance(result, Response) else JSON(result)

    return handler


def _run_ref(request: Request, reader: Reader) -> str:
    return data.resolve(reader, request.path_params["run"])


# ---- pages ----------------------------------------------------------------------------------


def routes(board: Dashboard) -> list[Any]:
    """Every route of the dashboard."""

    def runs_page(request: Request, reader: Reader) -> Response:
        runs = listing.runs_list(reader, listing.RunsQuery.from_params(request.query_params))
        return board.page(request, "runs.html", listing=runs, nav="runs")

    def runs_table(request: Request, reader: Reader) -> Response:
        runs = listing.runs_list(reader, listing.RunsQuery.from_params(request.query_params))
        return board.page(request, "_runs_table.html", listing=runs)

    def run_page(request: Request, reader: Reader) -> Response:
        run_id = _run_ref(request, reader)
        if run_id != request.path_params["run"]:
            return RedirectResponse(f"/runs/{run_id}", status_code=303)
        return board.page(request, "run.html", detail=data.run_detail(reader, run_id), run_id=run_id, nav="runs")

    def run_details(request: Request, reader: Reader) -> Response:
        run_id = _run_ref(request, reader)
        return board.page(request, "_run_details.html", detail=data.run_detail(reader, run_id), run_id=run_id)

    def run_graph_page(request: Request, reader: Reader) -> Response:
        run_id = _run_ref(request, reader)
        drawn = graph_layout.layout(graphs.run_graph(reader, run_id))
        return board.page(request, "graph.html", title=f"Provenance of run {run_id}", layout=drawn, run_id=run_id,
                          nav="runs", graphviz=shutil.which("dot") is not None,
                          note="One node per task, per dataset a task used or generated (with its number of elements), "
                               "per group of files and per agent. The full W3C PROV graph, one node per element, "
                               "is an export.")

    def dataflow_page(request: Request, reader: Reader) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        drawn = graph_layout.layout(graphs.dataflow_graph(reader, name, version))
        return board.page(request, "graph.html", title=f"Dataflow {name} v{version}", layout=drawn,
                          nav="runs", note="Transformations (blue) and the datasets (yellow) they use and generate; "
                                           "hover a dataset for its attributes.")

    def compare_page(request: Request, reader: Reader) -> Response:
        refs = request.query_params.getlist("runs")
        refs = [r for ref in refs for r in ref.split(",") if r]
        comparison = data.compare(reader, refs, request.query_params.get("metric"))
        return board.page(request, "compare.html", comparison=comparison, nav="compare")

    def sql_page(request: Request, reader: Reader) -> Response:
        return board.page(request, "sql.html", tables=data.schema(reader), nav="sql",
                          initial=request.query_params.get("sql", ""))

    def export_run(request: Request, reader: Reader) -> Response:
        run_id = _run_ref(request, reader)
        fmt = FORMATS.get(request.path_params["format"])
        if fmt is None:
            raise ExportError(f"unknown export format {request.path_params['format']!r}; formats: {', '.join(FORMATS)}")
        body = serialize(build_document([run_id], store=reader), fmt.name)
        media = {"svg": "image/svg+xml", "png": "image/png", "pdf": "application/pdf", "json": "application/json",
                 "jsonld": "application/ld+json", "xml": "application/xml", "rdfxml": "application/rdf+xml",
                 "turtle": "text/turtle"}.get(fmt.name, "text/plain; charset=utf-8")
        inline = request.query_params.get("inline") == "1"
        disposition = "inline" if inline else f'attachment; filename="run-{run_id}{fmt.extension}"'
        return Response(body, media_type=media, headers={"Content-Disposition": disposition})

    # ---- JSON

    def api_runs(request: Request, reader: Reader) -> Any:
        runs = listing.runs_list(reader, listing.RunsQuery.from_params(request.query_params))
        return {"total": runs.total, "matched": runs.matched, "counts": runs.counts,
                "runs": records(runs.frame.head(runs.query.limit))}

    def api_run(request: Request, reader: Reader) -> Any:
        return data.run_detail(reader, _run_ref(request, reader))

    def api_epochs(request: Request, reader: Reader) -> Any:
        return data.epochs(reader, _run_ref(request, reader))

    def api_steps(request: Request, reader: Reader) -> Any:
        try:
            points = int(request.query_params.get("points", data.STEP_POINTS))
        except ValueError:
            points = data.STEP_POINTS
        return data.steps(reader, _run_ref(request, reader), points)

    def api_compare(request: Request, reader: Reader) -> Any:
        refs = [r for ref in request.query_params.getlist("runs") for r in ref.split(",") if r]
        return data.compare_curves(reader, refs)

    def api_schema(request: Request, reader: Reader) -> Any:
        return data.schema(reader)

    def api_sql_csv(request: Request, reader: Reader) -> Any:
        text = data.sql_csv(reader, request.query_params.get("sql", ""))
        return Response(text, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="query.csv"', "Cache-Control": "no-store"})

    async def api_sql(request: Request) -> Response:
        try:
            body = await request.json()
            sql = body.get("sql", "") if isinstance(body, dict) else ""
        except ValueError:
            return JSON({"error": 'send {"sql": "SELECT ..."} as JSON'}, 400)
        if not isinstance(sql, str):
            return JSON({"error": "sql must be text"}, 400)
        try:
            return JSON(await run_in_threadpool(lambda: data.run_sql(board.reader(), sql)))
        except StoreError as exc:
            return JSON({"error": str(exc)}, 503)
        except TrainprovError as exc:
            return JSON({"error": str(exc)}, 400)

    def plotly(request: Request) -> Response:
        return FileResponse(plotly_js(), media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})

    def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return [
        Route("/", _page(board, runs_page)),
        Route("/runs/table", _page(board, runs_table)),
        Route("/runs/{run}", _page(board, run_page)),
        Route("/runs/{run}/details", _page(board, run_details)),
        Route("/runs/{run}/graph", _page(board, run_graph_page)),
        Route("/runs/{run}/export/{format}", _page(board, export_run)),
        Route("/dataflows/{name}/{version:int}", _page(board, dataflow_page)),
        Route("/compare", _page(board, compare_page)),
        Route("/sql", _page(board, sql_page)),
        Route("/api/runs", _api(board, api_runs)),
        Route("/api/runs/{run}", _api(board, api_run)),
        Route("/api/runs/{run}/epochs", _api(board, api_epochs)),
        Route("/api/runs/{run}/steps", _api(board, api_steps)),
        Route("/api/compare", _api(board, api_compare)),
        Route("/api/schema", _api(board, api_schema)),
        Route("/api/sql", api_sql, methods=["POST"]),
        Route("/api/sql.csv", _api(board, api_sql_csv)),
        Route("/static/plotly.min.js", plotly),
        Route("/health", health),
        Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
    ]


def create_app(store: str | os.PathLike | None = None, *, token: str | None = None,
               allowed_hosts: list[str] | None = list(LOOPBACK_HOSTS)) -> Starlette:
    """The dashboard as an ASGI application reading `store`.

    `allowed_hosts` are the Host names it answers to (None: any, for a server reached by
    other names, which then needs a `token`).
    """
    board = Dashboard(store)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # at most this many requests read the store at once: each thread has its own
        # connection, and a shared PostgreSQL server should not see dozens from one dashboard
        anyio.to_thread.current_default_thread_limiter().total_tokens = MAX_THREADS
        yield
        board.close()

    app = Starlette(routes=routes(board), lifespan=lifespan)
    app.state.dashboard = board
    app.add_middleware(Guard, token=token, allowed_hosts=allowed_hosts)
    return app


def serve(store: str | os.PathLike | None, *, sock: socket.socket, token: str | None = None, url: str = "",
          open_browser: bool = False) -> None:
    """Serve the dashboard on an already bound socket until interrupted."""
    import uvicorn

    host = sock.getsockname()[0]
    loopback = host in ("127.0.0.1", "::1") or host.startswith("127.")
    app = create_app(store, token=token, allowed_hosts=[*LOOPBACK_HOSTS, host] if loopback else None)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    print(f"trainprov ui: reading {app.state.dashboard.url}", flush=True)
    print(f"trainprov ui: serving at {url}  (Ctrl-C to stop)", flush=True)
    if open_browser:
        threading.Timer(0.5, webbrowser.open, (url,)).start()
    server.run(sockets=[sock])
