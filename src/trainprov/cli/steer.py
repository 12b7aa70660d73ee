"""`trainprov steer`: ask a running training to change a value, save a checkpoint or stop."""

from __future__ import annotations

from typing import Any

import click

from ..capture.steering import WAIT_S, parse_value, steer
from ..query import Reader
from .options import store_option


def parse_assignment(text: str) -> tuple[str, Any]:
    """NAME=VALUE from --set."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise click.BadParameter(f"expected NAME=VALUE (learning_rate=1e-4, say), got {text!r}", param_hint="--set")
    return name.strip(), parse_value(value.strip())


@click.command("steer")
@click.argument("run")
@click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE",
              help="Change a steerable value of the training (learning_rate=1e-4; repeatable).")
@click.option("--checkpoint", is_flag=True, help="Save a checkpoint now, through the framework's own saving.")
@click.option("--stop", is_flag=True, help="Stop the training at the end of the current epoch.")
@click.option("--reason", metavar="TEXT", help="Why: recorded with the adaptation.")
@click.option("--wait", is_flag=True, help="Wait until the training applied or refused each request, and print how.")
@click.option("--timeout", type=click.FloatRange(min=0), default=WAIT_S, show_default=True,
              help="Seconds --wait waits for the answers.")
@store_option
def steer_command(run: str, assignments: tuple[str, ...], checkpoint: bool, stop: bool, reason: str | None,
                  wait: bool, timeout: float, store: str) -> None:
    """Steer a running training: change a value, save a checkpoint, stop; recorded as adaptations."""
    values = dict(parse_assignment(text) for text in assignments)
    with Reader(store) as reader:
        run_id = reader.resolve_run(run)
        requests = steer(run_id, values, stop=stop, checkpoint=checkpoint, reason=reason, store=reader.backend,
                         wait=timeout if wait else None)
    for request in requests:
        click.echo(request.describe())
    if any(r.status == "refused" for r in requests):
        raise SystemExit(1)
