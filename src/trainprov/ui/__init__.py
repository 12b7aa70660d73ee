"""The live dashboard, `trainprov ui`: runs, curves that update while training, comparisons,
dataflow and provenance graphs, a read-only SQL console and PROV exports, served on localhost.

Needs the `ui` extra (starlette, uvicorn, jinja2, plotly). It reads the store only through
the read-only Reader, one short statement at a time, so it never blocks a training's writer.
It sends nothing to a training unless started with `allow_steering`: then a running run's page sends
steering requests (ui/steering.py), each a row of `steering_requests`.
`serve(store, host=..., port=..., token=..., allow_remote=..., allow_steering=...)` checks the settings, binds
the address and serves (ui/server.py); `create_app(store)` is the ASGI application alone.
"""

from .app import create_app
from .server import serve

__all__ = ["create_app", "serve"]
