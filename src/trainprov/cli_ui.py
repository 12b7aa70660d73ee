"""The `trainprov analyze ...` commands and `trainprov ui`, registered on the main group by cli.py.

This module does not import cli.py at import time (cli.py imports it at its end); the
output helpers are taken from it when a command runs.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
from typing import Any

import click
import pandas as pd

from . import analysis

_FORMAT = click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
    help="Output format.",
)
_STORE = click.option("--store", default=None, help="The store (overrides trainprov --store / $TRAINPROV_STORE).")


def _store(ctx: click.Context, store: str | None) -> str:
    """This command's --store, else the main group's."""
    return store or ctx.find_root().obj


def _plain(value: Any) -> Any:
    """A DataFrame cell as the CLI prints it: missing values as None, NumPy scalars as Python ones."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, (str, bytes)) else value


def _emit_frame(frame: pd.DataFrame, fmt: str, *, index: bool = False, empty: str = "no rows") -> None:
    """Print a DataFrame as `trainprov query` prints results (table, csv or json)."""
    from .cli import _emit

    if index:
        frame = frame.reset_index()
    if fmt == "table" and frame.empty:
        click.echo(f"({empty})")
        return
    rows = [[_plain(v) for v in row] for row in frame.astype(object).itertuples(index=False, name=None)]
    _emit([str(c) for c in frame.columns], rows, fmt)


def _json_frame(frame: pd.DataFrame, index: bool = False) -> list[dict[str, Any]]:
    from .cli import _json_value

    if index:
        frame = frame.reset_index()
    return [{str(c): _json_value(_plain(v)) for c, v in zip(frame.columns, row)}
            for row in frame.astype(object).itertuples(index=False, name=None)]


@click.group("analyze")
def analyze() -> None:
    """The analysis queries, with parameters (see docs/analysis.md)."""


@analyze.command("runs")
@click.option("--status", type=click.Choice(["running", "finished", "failed", "interrupted"]))
@click.option("--dataflow", help="Only runs of this dataflow.")
@click.option("-m", "--metric", "metrics", multiple=True, help="Show the best of this metric (repeatable; default: all).")
@click.option("--hp/--no-hp", "with_hp", default=True, show_default=True, help="Add the hyperparameters.")
@_STORE
@_FORMAT
@click.pass_context
def runs_command(ctx: click.Context, status: str | None, dataflow: str | None, metrics: tuple[str, ...], with_hp: bool,
                 store: str | None, fmt: str) -> None:
    """Every run with status, duration, epochs run, the best of each metric and hyperparameters."""
    frame = analysis.runs_overview(metrics=list(metrics) or None, status=status, dataflow=dataflow,
                                   hyperparameters=None if with_hp else False, store=_store(ctx, store))
    _emit_frame(frame, fmt, empty="no runs")


@analyze.command("best")
@click.argument("metric", default="val_loss")
@click.option("--by", "statistic", type=click.Choice(["min", "max", "last"]), default=None,
              help="Rank by the minimum, maximum or last value over each run's history "
                   "[default: max for metrics where higher is better (accuracy, ...), else min].")
@click.option("--at", "epoch", type=int, help="Rank by the value at this epoch instead.")
@click.option("--ascending/--descending", default=None, help="Override the order (best first by default).")
@click.option("--hp", "hps", multiple=True, help="Show this hyperparameter (repeatable; default: all recorded).")
@click.option("--no-hp", is_flag=True, help="No hyperparameter columns.")
@click.option("--status", type=click.Choice(["running", "finished", "failed", "interrupted"]))
@click.option("--dataflow", help="Only runs of this dataflow.")
@click.option("--dataset", default=analysis.EPOCH_DATASET, show_default=True, help="The metrics dataset.")
@click.option("--limit", type=int, help="At most this many runs.")
@_STORE
@_FORMAT
@click.pass_context
def best_command(ctx: click.Context, metric: str, statistic: str | None, epoch: int | None, ascending: bool | None,
                 hps: tuple[str, ...], no_hp: bool, status: str | None, dataflow: str | None, dataset: str,
                 limit: int | None, store: str | None, fmt: str) -> None:
    """Runs ranked by METRIC over its whole history (min, max, last, or at an epoch)."""
    if epoch is not None and statistic is not None:
        raise click.UsageError("give --by or --at, not both")
    frame = analysis.best_runs(
        metric, statistic, epoch=epoch, dataset=dataset, ascending=ascending,
        hyperparameters=False if no_hp else (list(hps) or None), status=status, dataflow=dataflow, limit=limit,
        store=_store(ctx, store),
    )
    _emit_frame(frame, fmt, empty=f"no run has a value of {metric}")


@analyze.command("progress")
@click.argument("run", required=False)
@click.option("--last", type=int, default=5, show_default=True, help="How many epochs.")
@_STORE
@_FORMAT
@click.pass_context
def progress_command(ctx: click.Context, run: str | None, last: int, store: str | None, fmt: str) -> None:
    """The last epochs of RUN (default: the run that recorded an epoch most recently)."""
    _emit_frame(analysis.progress(run, last=last, store=_store(ctx, store)), fmt, empty="no epochs recorded yet")


@analyze.command("adaptations")
@click.option("--metric", default="val_loss", show_default=True)
@click.option("--window", type=int, default=3, show_default=True, help="Epochs before and after each change.")
@click.option("--parameter", default="learning_rate", show_default=True, help="The adapted parameter.")
@click.option("--run", "runs", multiple=True, help="Only this run (repeatable).")
@_STORE
@_FORMAT
@click.pass_context
def adaptations_command(ctx: click.Context, metric: str, window: int, parameter: str, runs: tuple[str, ...],
                        store: str | None, fmt: str) -> None:
    """Effect of each adaptation: the mean metric in the epochs before it and from it."""
    frame = analysis.adaptation_effect(metric, window=window, parameter=parameter, runs=list(runs) or None,
                                       store=_store(ctx, store))
    _emit_frame(frame, fmt, empty=f"no adaptation of {parameter}")


@analyze.command("convergence")
@click.option("--metric", default="val_loss", show_default=True)
@click.option("--tolerance", type=float, default=0.01, show_default=True, help="Relative distance to the best value.")
@click.option("--by", "statistic", type=click.Choice(["min", "max"]), default=None,
              help="Best is the minimum or maximum [default: from the metric's name].")
@_STORE
@_FORMAT
@click.pass_context
def convergence_command(ctx: click.Context, metric: str, tolerance: float, statistic: str | None, store: str | None,
                        fmt: str) -> None:
    """The first epoch within TOLERANCE of each run's best, and the epochs run after it."""
    frame = analysis.convergence(metric, tolerance=tolerance, statistic=statistic, store=_store(ctx, store))  # type: ignore[arg-type]
    _emit_frame(frame, fmt, empty=f"no run has a value of {metric}")


@analyze.command("epoch-time")
@click.option("--by", "by", multiple=True, help="Group by this hyperparameter (repeatable; default: "
              + ", ".join(analysis.EPOCH_TIME_BY) + ").")
@_STORE
@_FORMAT
@click.pass_context
def epoch_time_command(ctx: click.Context, by: tuple[str, ...], store: str | None, fmt: str) -> None:
    """Mean, fastest and slowest epoch per configuration."""
    _emit_frame(analysis.epoch_time(list(by) or None, store=_store(ctx, store)), fmt)


@analyze.command("architecture")
@click.option("--metric", default="loss", show_default=True, help="The test metric to rank by.")
@_STORE
@_FORMAT
@click.pass_context
def architecture_command(ctx: click.Context, metric: str, store: str | None, fmt: str) -> None:
    """Architecture facts of each evaluated model next to its test results."""
    _emit_frame(analysis.architecture_vs_test(metric, store=_store(ctx, store)), fmt, empty="no evaluation recorded")


@analyze.command("hyperparameters")
@click.argument("runs", nargs=-1, required=True)
@click.option("--all", "show_all", is_flag=True, help="Every hyperparameter, not only those that differ.")
@_STORE
@_FORMAT
@click.pass_context
def hyperparameters_command(ctx: click.Context, runs: tuple[str, ...], show_all: bool, store: str | None, fmt: str) -> None:
    """The hyperparameters that differ between RUNS (ids, unique prefixes or 'latest')."""
    store = _store(ctx, store)
    frame = analysis.hyperparameters(list(runs), store=store).T if show_all else \
        analysis.differing_hyperparameters(list(runs), store=store)
    frame.index.name = "hyperparameter"
    _emit_frame(frame, fmt, index=True, empty="no hyperparameter differs")


@analyze.command("curves")
@click.argument("runs", nargs=-1, required=True)
@click.option("--metric", default="val_loss", show_default=True)
@_STORE
@_FORMAT
@click.pass_context
def curves_command(ctx: click.Context, runs: tuple[str, ...], metric: str, store: str | None, fmt: str) -> None:
    """One metric of RUNS side by side, epoch by epoch."""
    _emit_frame(analysis.side_by_side(list(runs), metric, store=_store(ctx, store)), fmt, index=True)


@analyze.command("divergence")
@click.argument("runs", nargs=-1, required=True)
@click.option("--metric", default="val_loss", show_default=True)
@click.option("--tolerance", type=float, default=analysis.DIVERGENCE_TOLERANCE, show_default=True, help="Relative gap that counts as apart.")
@click.option("--patience", type=int, default=analysis.DIVERGENCE_PATIENCE, show_default=True, help="Consecutive epochs apart that make a divergence.")
@_STORE
@_FORMAT
@click.pass_context
def divergence_command(ctx: click.Context, runs: tuple[str, ...], metric: str, tolerance: float, patience: int,
                       store: str | None, fmt: str) -> None:
    """The epoch from which each pair of RUNS stays apart (docs/analysis.md defines it)."""
    frame = analysis.divergence(list(runs), metric, tolerance=tolerance, patience=patience, store=_store(ctx, store))
    _emit_frame(frame, fmt)


@analyze.command("compare")
@click.argument("runs", nargs=-1, required=True)
@click.option("--metric", default="val_loss", show_default=True)
@click.option("--tolerance", type=float, default=analysis.DIVERGENCE_TOLERANCE, show_default=True)
@click.option("--patience", type=int, default=analysis.DIVERGENCE_PATIENCE, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_STORE
@click.pass_context
def compare_command(ctx: click.Context, runs: tuple[str, ...], metric: str, tolerance: float, patience: int,
                    fmt: str, store: str | None) -> None:
    """Compare RUNS: differing hyperparameters, where they diverge, and METRIC side by side."""
    from .query import Reader

    if len(runs) < 2:
        raise click.UsageError("compare needs two runs or more")
    with Reader(_store(ctx, store)) as reader:
        hp = analysis.differing_hyperparameters(list(runs), store=reader)
        hp.index.name = "hyperparameter"
        div = analysis.divergence(list(runs), metric, tolerance=tolerance, patience=patience, store=reader)
        wide = analysis.side_by_side(list(runs), metric, store=reader)
    if fmt == "json":
        click.echo(json.dumps({"hyperparameters": _json_frame(hp, index=True), "divergence": _json_frame(div),
                               "curves": _json_frame(wide, index=True)}, indent=2, default=str))
        return
    click.echo("== hyperparameters that differ")
    _emit_frame(hp, "table", index=True, empty="none: the runs share every hyperparameter")
    click.echo(f"\n== divergence of {metric} (gap > {tolerance:g} for {patience} epochs)")
    _emit_frame(div, "table")
    click.echo(f"\n== {metric} side by side")
    _emit_frame(wide, "table", index=True)


# ---- the dashboard -----------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.command("ui")
@_STORE
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8765, show_default=True, help="Port to listen on (0: any free port).")
@click.option("--token", envvar="TRAINPROV_UI_TOKEN", help="Require this token (also $TRAINPROV_UI_TOKEN).")
@click.option("--allow-remote", is_flag=True,
              help="Allow listening on an address other than loopback; a token is then required "
                   "(one is generated if --token is not given).")
@click.option("--open", "open_browser", is_flag=True, help="Open the dashboard in the default web browser.")
@click.option("--sql-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop a SQL console statement after this many seconds (default: 30).")
@click.pass_context
def ui(ctx: click.Context, store: str | None, host: str, port: int, token: str | None, allow_remote: bool,
       open_browser: bool, sql_timeout: float | None) -> None:
    """Serve the live dashboard: runs, curves, comparisons, graphs, a read-only SQL console."""
    try:
        from .ui import serve
    except ImportError as exc:
        raise click.ClickException(f"the dashboard needs the ui extra ({exc}): pip install 'trainprov[ui]'") from None
    if not _is_loopback(host):
        if not allow_remote:
            raise click.UsageError(
                f"--host {host} makes the dashboard, and the store it reads, reachable from the network; "
                "pass --allow-remote to mean it (a token is then required: --token or a generated one)"
            )
        token = token or secrets.token_urlsafe(24)
    if token is not None and (len(token) < 8 or any(ch.isspace() for ch in token)):
        raise click.UsageError("--token must be at least 8 characters, without spaces")
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)  # connections wait in the backlog from now on, while the server starts
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if family == socket.AF_INET6 else host
    url = f"http://{shown}:{bound}/" + (f"?token={token}" if token else "")
    limits = {} if sql_timeout is None else {"sql_timeout": sql_timeout}
    serve(_store(ctx, store), sock=sock, token=token, url=url, open_browser=open_browser, **limits)
