"""A run as one file to hand to someone: a self-contained HTML report, or a model-card-like Markdown summary.

The HTML file carries everything it shows (plotly.js, the provenance graph's drawing code,
the PROV-JSON document as an attachment): it opens with no network and no server. Its
parts are read with the same calls as the dashboard (record.read, graphs.run_graph) and
drawn with the same code (plotly figures, static/graph.js).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from typing import Any

from .. import __version__, record, runview
from ..display import figures
from ..errors import TrainprovError
from ..export import build_document, serialize
from ..formatting import duration
from ..query import Reader
from . import graph_layout, graphs
from .present import exact, jsonable, number, when

HERE = os.path.dirname(os.path.abspath(__file__))
#: the dataset the validation rules write, shown when the store has it
VALIDATIONS = "validation_results"
#: file roles that are training outputs (listed as checkpoints, not as data)
CHECKPOINT_DATASETS = ("checkpoints",)
#: per-epoch values that are settings or costs, not scores with a best value
NOT_SCORES = ("learning_rate", "lr", "epoch_time_s")
#: report formats, by the name `--format` takes
FORMATS = ("html", "md")


class ReportError(TrainprovError):
    """A report cannot be written (an unknown format, plotly missing)."""


def _text(value: Any) -> str:
    if isinstance(value, float):
        return number(value, 6)
    if isinstance(value, (_dt.datetime,)):
        return when(value)
    if isinstance(value, (dict, list)):
        return json.dumps(jsonable(value), sort_keys=True)
    return "" if value is None else str(value)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _best(epochs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per metric: the best value over the run's epochs and the epoch it came at (lowest for losses, highest otherwise)."""
    from ..analysis import higher_is_better

    names = [k for k in (epochs[0] if epochs else {}) if k != "epoch"]
    out = []
    for name in names:
        points = [(e[name], e.get("epoch")) for e in epochs if _finite(e.get(name))]
        if not points or name in NOT_SCORES:
            continue
        pick = max if higher_is_better(name) else min
        value, epoch = pick(points, key=lambda p: p[0])
        out.append({"metric": name, "best": value, "epoch": epoch, "last": points[-1][0]})
    return out


def _table(rows: list[dict[str, Any]], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Rows as a table with the columns that have a value."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k, v in row.items() if k not in columns and k not in skip and v is not None]
    return {"columns": columns, "rows": [[_text(row.get(c)) for c in columns] for row in rows]}


def _validations(reader: Reader, run_id: str) -> dict[str, Any] | None:
    """The run's validation results, when the store has the dataset (None otherwise)."""
    if VALIDATIONS not in runview.datasets(reader):
        return None
    result = runview.run_rows(reader, VALIDATIONS, run_id, rank=None)
    rows = [dict(zip(result.columns, row)) for row in result.rows]
    return _table([{k: v for k, v in r.items() if k not in ("run_id", "task_id", "element_seq", "recorded_at")} for r in rows])


def collect(reader: Reader, ref: str) -> dict[str, Any]:
    """Everything a report shows about one run (an id, a unique prefix or 'latest'), as plain values."""
    rec = record.read(reader, ref)
    run_id = rec.run_id
    files = runview.run_files(reader, run_id)
    checkpoints = [f for f in files if f["dataset"] in CHECKPOINT_DATASETS or (f["role"] or "").startswith("checkpoint")]
    data = [f for f in files if f not in checkpoints]
    program = {k: v for k, v in rec.program.items() if k not in ("environment", "git_patch")}
    return {
        "run_id": run_id, "run": rec.run, "store": reader.url,
        "hyperparameters": {k: v for k, v in rec.hyperparameters.items() if v is not None}, "layers": rec.layers, "epochs": rec.epochs,
        "best": _best(rec.epochs), "test_results": rec.test_results, "adaptations": rec.adaptations,
        "validations": _validations(reader, run_id), "data": data, "checkpoints": checkpoints,
        "program": program, "seeds": rec.program.get("seeds") or {}, "packages": rec.packages,
        "software": {k: v for k, v in rec.software.items() if k != "packages"}, "machine": rec.machine,
        "patch": rec.patch,
    }


def _curves(run_id: str, epochs: list[dict[str, Any]], adaptations: list[dict[str, Any]]) -> list[str]:
    """One plotly chart (HTML without the library) per metric and its val_ twin, adaptations marked."""
    return [f.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})
            for f in figures({run_id: epochs}, adaptations)]


def _read(name: str) -> str:
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


def html(reader: Reader, ref: str) -> str:
    """One run's report as a self-contained HTML page (plotly.js, the graph and the PROV-JSON inside it)."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise ReportError("an HTML report needs the plotly package: pip install 'trainprov[ui]'") from None
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    facts = collect(reader, ref)
    run_id = facts["run_id"]
    prov = serialize(build_document([run_id], store=reader), "json")
    drawn = graph_layout.layout(graphs.run_graph(reader, run_id))
    env = Environment(loader=FileSystemLoader(os.path.join(HERE, "templates")), autoescape=select_autoescape(["html"]))
    env.filters.update(number=number, duration=duration, when=when, exact=exact, text=_text)
    return env.get_template("report.html").render(
        **facts, version=__version__, created=when(_dt.datetime.now(_dt.timezone.utc)),
        curves=_curves(run_id, facts["epochs"], facts["adaptations"]), layout=drawn,
        layers_table=_table(facts["layers"]), adaptations_table=_table(facts["adaptations"]),
        tests_table=_table(facts["test_results"]),
        prov_json=prov.decode("utf-8"), prov_bytes=len(prov),
        plotly_js=get_plotlyjs(), graph_js=_read("static/graph.js"), css=_read("static/app.css"),
    )


def _md_cell(value: Any) -> str:
    return _text(value).replace("|", "\\|").replace("\n", " ")


def _md_table(table: dict[str, Any]) -> list[str]:
    if not table["rows"]:
        return ["None recorded.", ""]
    lines = ["| " + " | ".join(table["columns"]) + " |", "|" + "---|" * len(table["columns"])]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in table["rows"]]
    return lines + [""]


def markdown(reader: Reader, ref: str) -> str:
    """One run as a model-card-like Markdown summary: what was trained, on what, how well, with what."""
    f = collect(reader, ref)
    run = f["run"]
    lines = [f"# Model card: run {f['run_id']}" + (f" ({run['name']})" if run.get("name") else ""), "",
             f"Recorded by trainprov {__version__} in `{f['store']}`; the full provenance: "
             f"`trainprov export {f['run_id']} -o run.json`.", "", "## Summary", "",
             f"- dataflow: {run['dataflow']} v{run['dataflow_version']}",
             f"- status: {run['status']}" + (f" ({run['error']})" if run.get("error") else ""),
             f"- started: {when(run['started_at'])} UTC, duration {duration(run.get('duration_s'))}",
             f"- host: {run.get('host') or ''}, user: {run.get('user_name') or ''}",
             f"- command: `{run.get('command') or ''}`", ""]
    lines += ["## Training configuration", ""]
    lines += _md_table(_table([{"hyperparameter": k, "value": v} for k, v in f["hyperparameters"].items() if v is not None]))
    if f["layers"]:
        lines += [f"Architecture: {len(f['layers'])} layers (`trainprov show {f['run_id']}` lists them).", ""]
    lines += ["## Results", "", f"{len(f['epochs'])} epochs recorded.", ""]
    lines += _md_table(_table(f["best"]))
    lines += ["### Evaluation", ""] + _md_table(_table(f["test_results"]))
    lines += ["## Adaptations", ""] + _md_table(_table(f["adaptations"]))
    if f["validations"] is not None:
        lines += ["## Validations", ""] + _md_table(f["validations"])
    lines += ["## Data", ""] + _md_table(_table(f["data"], skip=("file_id", "task_id")))
    lines += ["## Checkpoints", ""] + _md_table(_table(f["checkpoints"], skip=("file_id", "task_id")))
    program = f["program"]
    lines += ["## Environment", "",
              f"- program: {program.get('notebook') or program.get('script') or 'unknown'}",
              f"- git: {program.get('git_remote') or 'no remote'} {program.get('git_commit') or 'no commit'}"
              + (" (uncommitted changes)" if program.get("git_dirty") else ""),
              f"- seeds: {_text(f['seeds']) or 'none recorded'}",
              f"- Python: {f['software'].get('python') or f['software'].get('version') or ''}",
              f"- machine: {_text(f['machine'])}", ""]
    if f["packages"]:
        lines += [f"{len(f['packages'])} packages installed: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(f["packages"].items())), ""]
    return "\n".join(lines)


def write(reader: Reader, ref: str, path: str | os.PathLike, fmt: str | None = None) -> str:
    """Write a run's report to `path` (html or md, by `fmt` else the extension); returns the format written."""
    fmt = fmt or ("md" if os.fspath(path).lower().endswith((".md", ".markdown")) else "html")
    if fmt not in FORMATS:
        raise ReportError(f"unknown report format {fmt!r}; formats: {', '.join(FORMATS)}")
    text = html(reader, ref) if fmt == "html" else markdown(reader, ref)
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)
    return fmt
