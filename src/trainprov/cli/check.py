"""`trainprov check`: a run's violations (recorded, built-in rules replayed, SQL rules), once or while it runs."""

from __future__ import annotations

import click
import pandas as pd

from ..checking import check, sql_rule
from ..checking import watch as watch_run
from ..query import Reader
from .options import rows_format, store_option
from .output import emit_frame

COLUMNS = ["source", "rule", "epoch", "step", "verdict", "observed", "threshold", "severity", "message"]


@click.command("check")
@click.argument("run")
@click.option("--sql", "sql", multiple=True, metavar="NAME=QUERY",
              help="A SQL rule: a query returning the offending rows, with a run_id column (repeatable).")
@click.option("--severity", type=click.Choice(["info", "warning", "error"]), default="warning", show_default=True,
              help="The severity of the --sql rules.")
@click.option("--builtin/--no-builtin", default=True, show_default=True,
              help="Replay the built-in rules (loss finite, gradient norm finite) over the run's epochs.")
@click.option("--watch", is_flag=True, help="Check again every --interval seconds and print new violations "
              "until the run ends.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between two checks with --watch.")
@click.option("--fail", is_flag=True, help="Exit with status 2 if any violation was found.")
@rows_format
@store_option
def check_command(run: str, sql: tuple[str, ...], severity: str, builtin: bool, watch: bool, interval: float,
                  fail: bool, fmt: str, store: str) -> None:
    """Print a run's violations: the rules it recorded, built-ins replayed, and your SQL rules."""
    rules = [sql_rule(text, severity) for text in sql]
    replay = "default" if builtin else None
    with Reader(store) as reader:
        if watch:
            def report(frame: pd.DataFrame) -> None:
                emit_frame(frame[COLUMNS], fmt)

            found = watch_run(reader, run, report, sql=rules, rules=replay, interval=interval)
        else:
            frame = check(reader, run, sql=rules, rules=replay)
            run_id = frame.attrs["run_id"]
            if fmt == "table" and frame.empty:
                click.echo(f"run {run_id}: no violations")
            else:
                emit_frame(frame[COLUMNS], fmt)
            stopped = frame[frame["stopped_training"].astype(bool)]
            if fmt == "table" and not stopped.empty:
                first = stopped.iloc[0]
                click.echo(f"run {run_id}: training stopped by rule {first['rule']} at epoch {first['epoch']}: "
                           f"{first['message']}")
            found = len(frame)
    if fail and found:
        raise SystemExit(2)

