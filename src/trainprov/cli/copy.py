"""`trainprov copy SRC DST`: runs from one store into another (it names both stores as arguments, so it takes no --store)."""

from __future__ import annotations

import click

from ..transfer import copy_runs


@click.command("copy")
@click.argument("src")
@click.argument("dst")
@click.option("--run", "run_refs", multiple=True, help="Copy only this run (an id, a unique prefix or 'latest'); repeatable.")
@click.option("--since", help="Only runs started at or after this date or time (UTC unless it says otherwise), e.g. 2026-11-01.")
@click.option("--dry-run", is_flag=True, help="Say what would be copied; write nothing.")
def copy_command(src: str, dst: str, run_refs: tuple[str, ...], since: str | None, dry_run: bool) -> None:
    """Copy runs from store SRC to store DST (file paths or URLs), keeping their ids.

    Everything a run recorded goes with it, and its dataflow versions are declared in DST.
    Copying again writes only what is new (a run that was still running is completed).
    """
    summary = copy_runs(src, dst, list(run_refs) or None, since=since, dry_run=dry_run,
                        progress=lambda line: click.echo(line, err=True))
    for line in summary.lines():
        click.echo(line)
