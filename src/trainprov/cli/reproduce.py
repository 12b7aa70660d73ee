"""`trainprov diff` and `trainprov reproduce`: why two runs differ, and what runs one again."""

from __future__ import annotations

import dataclasses
import json

import click

from .. import reproduce as reproducing
from ..rundiff import diff, plural
from .options import format_option, store_option
from .output import json_value


@click.command("diff")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--store-b", metavar="PATH|URL", help="The store of RUN_B, when it is not the store of RUN_A.")
@click.option("--metric", help="The metric whose curves are compared (default: val_loss, else loss).")
@click.option("--short", is_flag=True, help="Only the summary, not every change.")
@format_option("text", "json", default="text")
@store_option
def diff_command(run_a: str, run_b: str, store_b: str | None, metric: str | None, short: bool, fmt: str,
                 store: str) -> None:
    """Why runs RUN_A and RUN_B differ: configuration, layers, data, code, environment, outcome."""
    result = diff(run_a, run_b, store=store, store_b=store_b, metric=metric)
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2, default=json_value))
    else:
        click.echo(result.report(details=not short))


@click.command("reproduce")
@click.argument("run")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Write the script, requirements, patch and data digests into this folder.")
@click.option("--check", is_flag=True, help="Compare this machine with the record; exit status 1 if anything differs.")
@format_option("text", "json", default="text")
@store_option
@click.pass_context
def reproduce_command(ctx: click.Context, run: str, output: str | None, check: bool, fmt: str, store: str) -> None:
    """What runs RUN again: command, commit and patch, pinned packages, data digests, seeds, environment."""
    if check:
        changes = reproducing.check(run, store=store)
        if fmt == "json":
            click.echo(json.dumps([dataclasses.asdict(c) for c in changes], indent=2, default=json_value))
        elif not changes:
            click.echo(f"no difference: this machine matches the record of run {run}")
        else:
            click.echo(f"{plural(len(changes), 'difference')} between the record of run {run} and this machine:")
            for change in changes:
                click.echo("  " + change.describe(("the record", "this machine")))
        ctx.exit(1 if changes else 0)
    plan = reproducing.plan(run, store=store)
    if fmt == "json":
        click.echo(json.dumps(plan.to_dict(), indent=2, default=json_value))
    else:
        click.echo(plan.text())
    if output:
        for path in plan.write(output):
            click.echo(f"wrote {path}", err=True)
