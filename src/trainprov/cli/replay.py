"""`trainprov replay`: rows set aside while the store was down, written once each."""

from __future__ import annotations

import click

from ..capture.replay import replay
from .options import store_option


@click.command("replay")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@store_option
def replay_command(files: tuple[str, ...], store: str) -> None:
    """Write rows set aside while the store was down: files of unwritten rows, spool segments of killed processes.

    Without FILES: every spool segment and file of unwritten rows left for the store by a
    process that has ended. Exactly once: rows already in the store are skipped, so
    replaying again is harmless.
    """
    for line in replay(store, list(files) or None).lines():
        click.echo(line)
