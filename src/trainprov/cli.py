"""The `trainprov` command line: runs, show, query, schema."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import sys
from typing import Any, Sequence

import click
from tabulate import tabulate

from .formatting import duration
from .errors import TrainprovError
from .query import Reader
from .store import ENV_VAR


def _cell(value: Any) -> str:
    """A value as a table shows it: exact floats, NULL for missing, ISO timestamps."""
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, _dt.datetime):
        return value.isoformat(sep=" ", timespec="microseconds")
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value).replace("inf", "Infinity").replace("nan", "NaN")  # strict JSON has no NaN
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def _when(value: Any) -> str:
    if isinstance(value, _dt.datetime):
        return value.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else str(value)


def _emit(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> None:
    if fmt == "json":
        records = [{c: _json_value(v) for c, v in zip(columns, row)} for row in rows]
        click.echo(json.dumps(records, indent=2, default=str, allow_nan=False))
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if v is None else _cell(v) for v in row])
        click.echo(out.getvalue(), nl=False)
    else:
        click.echo(
            tabulate([[_cell(v) for v in row] for row in rows], headers=list(columns), disable_numparse=True)
        )


def _param(text: str) -> Any:
    """A -p value: bound as an integer or a float when it reads as one, else as text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


FORMAT = click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
    help="Output format.",
)


class _Group(click.Group):
    """Turns trainprov's errors into one clear line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TrainprovError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group)
@click.option(
    "--store", envvar=ENV_VAR, default="trainprov.db", show_default=True,
    help=f"The store: a SQLite file path or URL, or a postgresql:// URL (also ${ENV_VAR}).",
)
@click.version_option(package_name="trainprov")
@click.pass_context
def main(ctx: click.Context, store: str) -> None:
    """Provenance of deep-learning training, queryable with SQL while it runs."""
    ctx.obj = store


def _reader(ctx: click.Context) -> Reader:
    return Reader(ctx.obj)


@main.command()
@click.option("--status", type=click.Choice(["running", "finished", "failed", "interrupted"]), help="Only runs with this status.")
@click.option("--dataflow", help="Only runs of this dataflow.")
@click.option("--limit", type=int, default=50, show_default=True, help="At most this many runs (0: all).")
@FORMAT
@click.pass_context
def runs(ctx: click.Context, status: str | None, dataflow: str | None, limit: int, fmt: str) -> None:
    """List runs, newest first, with live status and duration."""
    frame = _reader(ctx).runs(status=status, dataflow=dataflow, limit=limit or None)
    if fmt != "table":
        _emit(list(frame.columns), frame.astype(object).where(frame.notna(), None).values.tolist(), fmt)
        return
    if frame.empty:
        click.echo("no runs yet")
        return
    rows = [
        [r.run_id, f"{r.dataflow} v{r.dataflow_version}", r.name or "", r.status, _when(r.started_at), duration(r.duration_s), r.host]
        for r in frame.itertuples()
    ]
    click.echo(tabulate(rows, headers=["run", "dataflow", "name", "status", "started (UTC)", "duration", "host"], disable_numparse=True))


def _details(text: Any) -> str:
    try:
        details = json.loads(text) if isinstance(text, str) else (text or {})
    except json.JSONDecodeError:
        return str(text)
    parts = []
    for key, value in details.items():
        if key == "argv":
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = "; ".join(json.dumps(v) for v in value) or "none"
        parts.append(f"{key}: {value}")
    return "\n".join(parts)


def _values(last: dict[str, Any] | None, width: int = 48) -> str:
    if not last:
        return ""
    shorten = lambda text: text if len(text) <= width else text[: width - 3] + "..."  # noqa: E731
    return "  ".join(f"{k}={shorten(_cell(v))}" for k, v in last.items() if v is not None)


@main.command()
@click.argument("run")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def show(ctx: click.Context, run: str, fmt: str) -> None:
    """Show one run (an id, a unique prefix, or 'latest'): agents, tasks, datasets, files."""
    info = _reader(ctx).show(run)
    if fmt == "json":
        click.echo(json.dumps(info, indent=2, default=_json_value))
        return
    r = info["run"]
    click.echo(f"run {r['run_id']}   dataflow {r['dataflow']} v{r['dataflow_version']}   {r['status']}"
               + (f"   name {r['name']}" if r["name"] else ""))
    click.echo(f"  started {_when(r['started_at'])} UTC   ended {_when(r['ended_at']) or '-'}   duration {duration(r['duration_s'])}")
    click.echo(f"  host {r['host']}   pid {r['pid']}   user {r['user_name']}   working dir {r['working_dir']}")
    click.echo(f"  command: {r['command']}")
    if r["error"]:
        click.echo(f"  error: {r['error']}")
    click.echo("\nagents")
    click.echo(tabulate([[a["kind"], a["agent_id"], _details(a["details"])] for a in info["agents"]], tablefmt="plain"))
    click.echo("\ntasks")
    click.echo(tabulate(
        [[t["task_id"], f"{t['transformation']} #{t['iteration']}", t["status"], duration(t["duration_s"]), t["error"] or ""]
         for t in info["tasks"]], tablefmt="plain"))
    click.echo("\ndatasets")
    rows = []
    for name, d in info["datasets"].items():
        role = "; ".join(
            [f"used by {', '.join(d['used_by'])}"] * bool(d["used_by"]) + [f"generated by {', '.join(d['generated_by'])}"] * bool(d["generated_by"])
        )
        rows.append([name, role, f"{d['rows']} row{'s' * (d['rows'] != 1)}", _values(d["last"])])
    click.echo(tabulate(rows, headers=["dataset", "role", "rows", "last values"], disable_numparse=True))
    files = info["files"]
    if files:
        click.echo(f"\nfiles ({len(files)}{', the last 10' if len(files) > 10 else ''})")
        click.echo(tabulate(
            [[f["file_id"], f["role"] or "", f["path"], f["size_bytes"], f["sha256"][:16] + "..."] for f in files[-10:]],
            headers=["file", "role", "path", "bytes", "sha256"], disable_numparse=True))


@main.command()
@click.argument("sql", required=False)
@click.option("-f", "--file", "sql_file", type=click.File("r", encoding="utf-8"), help="Read the statement from a file.")
@click.option("-p", "--param", "params", multiple=True,
              help="A value for the next ? placeholder (repeatable); numbers are bound as numbers.")
@FORMAT
@click.pass_context
def query(ctx: click.Context, sql: str | None, sql_file: Any, params: tuple[str, ...], fmt: str) -> None:
    """Run one read-only SQL statement (SELECT or WITH ... SELECT) on the store."""
    if (sql is None) == (sql_file is None):
        raise click.UsageError("give one statement: as an argument or with --file (one of the two)")
    if sql_file is not None:
        sql = sql_file.read()
    result = _reader(ctx).result(sql, [_param(p) for p in params])
    _emit(result.columns, result.rows, fmt)
    if fmt == "table":
        click.echo(f"({len(result.rows)} row{'s' * (len(result.rows) != 1)})", err=True)


@main.command()
@click.option("--dataset", help="Only this dataset.")
@click.option("--catalog/--no-catalog", default=True, show_default=True, help="Also the store's own tables (runs, tasks, ...).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def schema(ctx: click.Context, dataset: str | None, catalog: bool, fmt: str) -> None:
    """The tables, columns and types a query can use."""
    entries = _reader(ctx).schema(catalog=catalog and not dataset)
    if dataset:
        entries = [e for e in entries if e["table"] == dataset]
        if not entries:
            raise click.ClickException(f"no dataset {dataset!r} in this store (run `trainprov schema` to list them)")
    if fmt == "json":
        click.echo(json.dumps(entries, indent=2))
        return
    tables: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        tables.setdefault(entry["table"], []).append(entry)
    for kind, title in (("dataset", "datasets (one table each)"), ("catalog", "store tables")):
        names = [t for t, cols in tables.items() if cols[0]["kind"] == kind]
        if not names:
            continue
        click.echo(f"== {title} ==")
        for name in names:
            click.echo(f"\n{name}")
            click.echo(tabulate(
                [[e["column"], e["type"], e["sql_type"], e["description"]] for e in tables[name]],
                tablefmt="plain"))
        click.echo()


@main.command("export")
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
@click.pass_context
def export_command(ctx: click.Context, runs: tuple[str, ...], dataflow: str | None, dataflow_version: int | None,
                   fmt: str | None, output: str | None, members: bool, threshold: int) -> None:
    """Export runs (ids, unique prefixes or 'latest') or a dataflow as a W3C PROV document."""
    from .export import build_document, format_for_path, get_format, serialize

    chosen = get_format(fmt or (format_for_path(output) if output else "json"))
    document = build_document(list(runs), store=_reader(ctx), dataflow=dataflow, version=dataflow_version,
                              members=members, bulky_threshold=threshold)
    data = serialize(document, chosen.name)
    if output:
        with open(output, "wb") as f:
            f.write(data)
        records = document.get_records()
        counts = {kind: sum(1 for r in records if r.is_element() and r.get_type().localpart == kind)
                  for kind in ("Entity", "Activity", "Agent")}
        relations = sum(1 for r in records if r.is_relation())
        click.echo(
            f"wrote {len(data):,} bytes of {chosen.description.split(' (')[0]} to {output}: {counts['Entity']} entities, "
            f"{counts['Activity']} activities, {counts['Agent']} agents, {relations} relations",
            err=True,
        )
    else:
        click.echo(data, nl=False)


@main.command("lineage")
@click.argument("entity")
@click.option("--run", help="With a dataset name: take its last element in this run (id, prefix or 'latest').")
@click.option("--where", help="With a dataset name: an SQL condition the element must meet, e.g. \"epoch = 7\".")
@click.option("--all", "show_all", is_flag=True, help="List every ancestor (long chains are shortened otherwise).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def lineage_command(ctx: click.Context, entity: str, run: str | None, where: str | None, show_all: bool, fmt: str) -> None:
    """What ENTITY was derived from, back to the data and hyperparameters, from the store.

    ENTITY is a file (path: found by content, else by recorded path), a file id (RUN.fN),
    a SHA-256 (or a prefix of it), an export identifier (el.DATASET.TASK.SEQ, file.ID),
    or a dataset name (its last element; see --run and --where).
    """
    from .lineage import format_lineage, lineage

    result = lineage(entity, store=_reader(ctx), run=run, where=where)
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2, default=_json_value))
    else:
        click.echo(format_lineage(result, show_all=show_all))


@main.command("copy")
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
    from .transfer import copy_runs

    summary = copy_runs(src, dst, list(run_refs) or None, since=since, dry_run=dry_run,
                        progress=lambda line: click.echo(line, err=True))
    for line in summary.lines():
        click.echo(line)


@main.command("replay")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.pass_context
def replay_command(ctx: click.Context, files: tuple[str, ...]) -> None:
    """Write rows set aside while the store was down: files of unwritten rows, spool segments of killed processes.

    Without FILES: every spool segment and file of unwritten rows left for the store by a
    process that has ended. Exactly once: rows already in the store are skipped, so
    replaying again is harmless.
    """
    from .capture.replay import replay

    for line in replay(ctx.obj, list(files) or None).lines():
        click.echo(line)


from .cli_ui import analyze, ui  # noqa: E402  (defined apart; they take the helpers above when run)

main.add_command(analyze)
main.add_command(ui)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
