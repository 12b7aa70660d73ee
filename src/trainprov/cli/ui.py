"""`trainprov ui`: the live dashboard, served by trainprov.ui.serve."""

from __future__ import annotations

import click

from ..errors import DashboardSettingError
from .options import store_option


@click.command("ui")
@store_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8765, show_default=True, help="Port to listen on (0: any free port).")
@click.option("--token", envvar="TRAINPROV_UI_TOKEN", help="Require this token (also $TRAINPROV_UI_TOKEN).")
@click.option("--allow-remote", is_flag=True,
              help="Allow listening on an address other than loopback; a token is then required "
                   "(one is generated if --token is not given).")
@click.option("--open", "open_browser", is_flag=True, help="Open the dashboard in the default web browser.")
@click.option("--sql-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop a SQL console statement after this many seconds (default: 30).")
@click.option("--allow-steering", is_flag=True,
              help="Give running runs' pages controls that steer the training (set the learning rate, save a "
                   "checkpoint, stop); without it the dashboard takes no steering requests.")
def ui(store: str, host: str, port: int, token: str | None, allow_remote: bool, open_browser: bool,
       sql_timeout: float | None, allow_steering: bool) -> None:
    """Serve the live dashboard: runs, curves, comparisons, graphs, a read-only SQL console (and steering, if allowed)."""
    try:
        from ..ui import serve  # the ui extra is optional: the rest of the CLI works without it
    except ImportError as exc:
        raise click.ClickException(f"the dashboard needs the ui extra ({exc}): pip install 'trainprov[ui]'") from None
    try:
        serve(store, host=host, port=port, token=token, allow_remote=allow_remote, open_browser=open_browser,
              sql_timeout=sql_timeout, allow_steering=allow_steering)
    except DashboardSettingError as exc:
        raise click.UsageError(str(exc)) from None
