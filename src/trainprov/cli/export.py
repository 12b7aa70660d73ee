"""`trainprov export` and `trainprov lineage`: runs as W3C PROV documents, and where an entity came from."""

from __future__ import annotations

import json

import click

from ..export import export as export_prov
from ..export import format_for_path, get_format
from ..lineage import format_lineage, lineage
from .options import format_option, store_option
from .output import json_value


@click.command("export")
@click.argument("runs", nargs=-1)
@click.option("--dataflow", help="Export every run of this dataflow, with its plan (also with no runs).")
@click.option("--dataflow-version", type=int, help="With --dataflow: only this version of it.")
@click.option(
    "--format", "fmt", default=None,
    help="json (PROV-JSON), provn, xml (PROV-XML), turtle, trig, rdfxml (PROV-O), jsonld (PROV-JSONLD), "
         "dot, svg, png, pdf. Default: from the -o file's extension, else json.",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write to this file (default: standard output).")
@click.option("--members", is_flag=True, help="Also export every element of summarised (per-step) datasets.")
@click.option("--threshold", type=int, default=1000, show_default=True,
              help="Summarise a task's elements of a dataset when it has more than this many.")
@store_option
def export_command(runs: tuple[str, ...], dataflow: str | None, dataflow_version: int | None,
                   fmt: str | None, output: str | None, members: bool, threshold: int, store: str) -> None:
    """Export runs (ids, unique prefixes or 'latest') or a dataflow as a W3C PROV document."""
    data = export_prov(list(runs), output, format=fmt, store=store, dataflow=dataflow, version=dataflow_version,
                       members=members, bulky_threshold=threshold)
    if output:
        written = get_format(fmt or format_for_path(output))
        click.echo(f"wrote {len(data):,} bytes of {written.description.split(' (')[0]} to {output}", err=True)
    else:
        click.echo(data, nl=False)


@click.command("lineage")
@click.argument("entity")
@click.option("--run", help="With a dataset name: take its last element in this run (id, prefix or 'latest').")
@click.option("--where", help="With a dataset name: an SQL condition the element must meet, e.g. \"epoch = 7\".")
@click.option("--all", "show_all", is_flag=True, help="List every ancestor (long chains are shortened otherwise).")
@format_option("text", "json", default="text")
@store_option
def lineage_command(entity: str, run: str | None, where: str | None, show_all: bool, fmt: str, store: str) -> None:
    """What ENTITY was derived from, back to the data and hyperparameters, from the store.

    ENTITY is a file (path: found by content, else by recorded path), a file id (RUN.fN),
    a SHA-256 (or a prefix of it), an export identifier (el.DATASET.TASK.SEQ, file.ID),
    or a dataset name (its last element; see --run and --where).
    """
    result = lineage(entity, store=store, run=run, where=where)
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2, default=json_value))
    else:
        click.echo(format_lineage(result, show_all=show_all))
