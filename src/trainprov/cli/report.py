"""`trainprov report`: one run as a file to hand to someone (self-contained HTML, or Markdown)."""

from __future__ import annotations

import click

from ..query import Reader
from .options import store_option


@click.command("report")
@click.argument("run")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the report to this file. Default: run-RUNID.html (or .md) in the current folder.")
@click.option("--format", "fmt", type=click.Choice(["html", "md", "crate"]), default=None,
              help="html: one self-contained page (curves, graph, PROV-JSON inside, opens with no network); "
                   "md: a model-card-like Markdown summary; crate: an RO-Crate folder (-o names the folder) with "
                   "both reports, the PROV-JSON and the run's files. Default: md for a .md file, else html.")
@store_option
def report_command(run: str, output: str | None, fmt: str | None, store: str) -> None:
    """Write a report of RUN (an id, a unique prefix or 'latest')."""
    from ..ui import crate
    from ..ui.report import write

    with Reader(store) as reader:
        if output is None:
            output = f"run-{reader.resolve_run(run)}" + ("" if fmt == "crate" else f".{fmt or 'html'}")
        if fmt == "crate":
            crate.write(reader, run, output)
            click.echo(f"wrote the RO-Crate of {run} to {output}/ (ro-crate-metadata.json)", err=True)
            return
        written = write(reader, run, output, fmt)
    click.echo(f"wrote the {'HTML' if written == 'html' else 'Markdown'} report of {run} to {output}", err=True)
