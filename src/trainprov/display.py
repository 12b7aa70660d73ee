"""Rich display in notebooks: HTML for a run, a list of runs, a diff and a lineage, with curves drawn by plotly.

Jupyter calls an object's `_repr_html_`; the objects trainprov returns (`Reader`, the
`RunRecord` of `Reader.run`, the frame of `Reader.runs`, `RunDiff`, `Lineage`) call these
functions. Curves are plotly charts that need no network: plotly.js, from the installed
plotly package, is put inside the first output that draws a chart in a kernel (as plotly's
own `include_plotlyjs=True` does); set `PLOTLY_JS = "always"` to put it in every such
output (each is then readable on its own, at 4.6 MB each), or "none" when the page already
has plotly.js. Without plotly (the `ui` extra) the outputs are the same, without the charts.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
from typing import Any, Iterable, Mapping, Sequence

#: when plotly.js goes into an output: "once" per kernel, "always", or "none"
PLOTLY_JS = "once"
_sent = False

_STATUS = {"finished": "#15803d", "failed": "#b42318", "interrupted": "#b54708", "running": "#2563eb"}
_STYLE = ("<style>.tp-box{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;font-size:13px;line-height:1.4}"
          ".tp-box table{border-collapse:collapse;margin:4px 0 8px}.tp-box th,.tp-box td{border:1px solid #e3e6ec;"
          "padding:3px 8px;text-align:left;vertical-align:top}.tp-box th{background:#f4f6f9}"
          ".tp-box td.num{text-align:right;font-variant-numeric:tabular-nums}.tp-box .tp-meta{color:#667085}"
          ".tp-box .tp-status{font-weight:600}.tp-box h4{margin:10px 0 4px;font-size:14px}"
          ".tp-box .tp-charts{display:flex;flex-wrap:wrap;gap:8px}.tp-box .tp-chart{width:460px}</style>")


def text(value: Any) -> str:
    """A value as short text (6 significant digits, times in UTC, JSON for structures)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.6g}"
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.timezone.utc)
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _e(value: Any) -> str:
    return html.escape(text(value))


def status(value: Any) -> str:
    """A run or task status, coloured."""
    return f'<span class="tp-status" style="color:{_STATUS.get(str(value), "#1d2330")}">{_e(value)}</span>'


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, limit: int = 20,
          cells: Mapping[str, Any] | None = None) -> str:
    """An HTML table of rows (the first `limit`, and how many more there are); `cells` formats some columns."""
    if not rows:
        return '<p class="tp-meta">None recorded.</p>'
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k, v in row.items() if v is not None))
    cells = cells or {}
    out = ["<table><thead><tr>", *(f"<th>{html.escape(c)}</th>" for c in columns), "</tr></thead><tbody>"]
    for row in rows[:limit]:
        out.append("<tr>")
        for c in columns:
            v = row.get(c)
            if c in cells:
                out.append(f"<td>{cells[c](v)}</td>")
            else:
                numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
                out.append(f'<td{" class=num" if numeric else ""}>{_e(v)}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    if len(rows) > limit:
        out.append(f'<p class="tp-meta">… and {len(rows) - limit} more rows (of {len(rows)}).</p>')
    return "".join(out)


def box(*parts: str) -> str:
    """Parts in one styled block."""
    return _STYLE + '<div class="tp-box">' + "".join(parts) + "</div>"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def figures(series: Mapping[str, Sequence[Mapping[str, Any]]], adaptations: Iterable[Mapping[str, Any]] = ()) -> list[Any]:
    """Plotly figures of per-epoch metrics: one per metric (with its val_ twin), a line per run in `series`.

    `series` maps a label (a run) to its epochs (dicts with `epoch` and metric values);
    adaptations are dotted vertical lines at their epoch.
    """
    import plotly.graph_objects as go

    names: list[str] = []
    for epochs in series.values():
        for e in epochs:
            names += [k for k, v in e.items() if k != "epoch" and k not in names and _finite(v)]
    groups: dict[str, list[str]] = {}
    for name in names:
        base = name[4:] if name.startswith("val_") and name[4:] in names else name
        groups.setdefault(base, []).append(name)
    marks = [{"type": "line", "xref": "x", "yref": "paper", "x0": a["epoch"], "x1": a["epoch"], "y0": 0, "y1": 1,
              "line": {"color": "#b54708", "width": 1, "dash": "dot"}} for a in adaptations if a.get("epoch") is not None]
    out = []
    for base, members in groups.items():
        figure = go.Figure()
        for label, epochs in series.items():
            x = [e.get("epoch") for e in epochs]
            for name in sorted(members, key=lambda n: n.startswith("val_")):
                y = [e.get(name) if _finite(e.get(name)) else None for e in epochs]
                if any(v is not None for v in y):
                    figure.add_scatter(x=x, y=y, name=name if len(series) == 1 else f"{label} {name}",
                                       mode="lines" if len(x) > 60 else "lines+markers",
                                       line={"dash": "dot" if name.startswith("val_") and len(series) > 1 else "solid"})
        figure.update_layout(shapes=marks, title={"text": " / ".join(members), "font": {"size": 14}}, height=300,
                             margin={"l": 56, "r": 16, "t": 40, "b": 40}, xaxis_title="epoch",
                             yaxis_type="log" if base in ("learning_rate", "lr") else None,
                             legend={"orientation": "h", "y": -0.25}, template="plotly_white")
        out.append(figure)
    return out


def plotly_js_tag() -> str:
    """The script element holding plotly.js, when this output should carry it (see PLOTLY_JS)."""
    global _sent
    from plotly.offline import get_plotlyjs

    if PLOTLY_JS == "none" or (PLOTLY_JS == "once" and _sent):
        return ""
    _sent = True
    return ('<script type="text/javascript">window.PlotlyConfig = {MathJaxConfig: "local"};</script>'
            f'<script type="text/javascript">{get_plotlyjs()}</script>')


def charts(series: Mapping[str, Sequence[Mapping[str, Any]]], adaptations: Iterable[Mapping[str, Any]] = (),
           *, with_js: bool = True) -> str:
    """HTML of the curves (plotly), with plotly.js when this output should carry it; empty without plotly or epochs."""
    try:
        drawn = figures(series, adaptations)
    except ImportError:
        return '<p class="tp-meta">(curves need the plotly package: pip install \'trainprov[ui]\')</p>'
    if not drawn:
        return ""
    parts = [f.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False}) for f in drawn]
    return (plotly_js_tag() if with_js else "") + '<div class="tp-charts">' + "".join(
        f'<div class="tp-chart">{p}</div>' for p in parts) + "</div>"


# ---- the objects ----------------------------------------------------------------------------


def run_html(record: Any) -> str:
    """A run (a record.RunRecord): summary, hyperparameters, best values, curves, adaptations, evaluation, program."""
    from .formatting import higher_is_better

    run = record.run
    facts = [("dataflow", f"{run.get('dataflow')} v{run.get('dataflow_version')}"), ("started", text(run.get("started_at"))),
             ("duration", text(run.get("duration_s")) + " s" if run.get("duration_s") is not None else ""),
             ("host", run.get("host")), ("epochs", len(record.epochs)),
             ("program", record.program.get("notebook") or record.program.get("script")
              or ("unknown notebook" if "notebook" in record.program else None)),
             ("git commit", record.program.get("git_commit"))]
    head = (f"<h4>Run <code>{_e(record.run_id)}</code> {_e(run.get('name') or '')} {status(run.get('status'))}</h4>"
            + "<table><tbody>" + "".join(f"<tr><th>{k}</th><td>{_e(v)}</td></tr>" for k, v in facts if v not in (None, ""))
            + (f'<tr><th>error</th><td style="color:#b42318">{_e(run.get("error"))}</td></tr>' if run.get("error") else "")
            + "</tbody></table>")
    hp = {k: v for k, v in record.hyperparameters.items() if v is not None}
    best = []
    names = [k for k in (record.epochs[0] if record.epochs else {}) if k not in ("epoch", "learning_rate", "lr", "epoch_time_s")]
    for name in names:
        points = [(e[name], e.get("epoch")) for e in record.epochs if _finite(e.get(name))]
        if points:
            value, epoch = (max if higher_is_better(name) else min)(points, key=lambda p: p[0])
            best.append({"metric": name, "best": value, "epoch": epoch, "last": points[-1][0]})
    return box(head,
               "<h4>Hyperparameters</h4>", table([{"name": k, "value": v} for k, v in hp.items()], limit=40),
               "<h4>Best values</h4>", table(best),
               charts({record.run_id: record.epochs}, record.adaptations),
               f"<h4>Adaptations ({len(record.adaptations)})</h4>", table(record.adaptations, limit=10),
               "<h4>Evaluation</h4>", table(record.test_results))


def runs_html(frame: Any, limit: int = 50) -> str:
    """A list of runs (the frame of Reader.runs): status coloured, durations in seconds, newest first."""
    rows = frame.head(limit).astype(object).where(frame.head(limit).notna(), None).to_dict("records")
    note = f'<p class="tp-meta">{len(frame)} run{"s" * (len(frame) != 1)}' + (
        f", the first {limit} shown" if len(frame) > limit else "") + "</p>"
    return box(note, table(rows, list(frame.columns), limit=limit, cells={"status": status}))


def diff_html(diff: Any) -> str:
    """A comparison of two runs (a rundiff.RunDiff): what differs, section by section, the outcome, both runs' curves."""
    parts = [f"<h4>A: <code>{_e(diff.run_a)}</code> · B: <code>{_e(diff.run_b)}</code></h4>"]
    differing = diff.differing
    parts.append("<p>" + (("They differ in <b>" + ", ".join(map(html.escape, differing)) + "</b>.") if differing
                          else "The runs were produced the same way.") + "</p>")
    outcome = diff.outcome or {}
    div = outcome.get("divergence")
    if div:
        at = div.get("diverged_at_epoch")
        parts.append(f"<p>{_e(div['metric'])}: " + (f"the curves stay apart from epoch {_e(at)}." if at is not None
                                                     else f"the curves stay together over {_e(div['common_epochs'])} common epochs.") + "</p>")
    final = outcome.get("final") or {}
    if final:
        parts.append("<h4>Final values</h4>" + table([{"": k, "A": v["a"], "B": v["b"]} for k, v in final.items()],
                                                     ["", "A", "B"]))
    for s in diff.sections:
        if s.name == "outcome" or s.same:
            continue
        parts.append(f"<h4>{_e(s.name)}: {len(s.changes)} difference{'s' * (len(s.changes) != 1)}</h4>")
        parts.append(table([{"what": c.path, "change": c.kind, "A": c.a, "B": c.b} for c in s.changes],
                           ["what", "change", "A", "B"]))
    same = [s.name for s in diff.sections if s.same and s.recorded and s.name != "outcome"]
    if same:
        parts.append(f'<p class="tp-meta">Same: {html.escape(", ".join(same))}.</p>')
    curves = getattr(diff, "curves", None)
    if curves:
        parts.append(charts({"A": curves[0], "B": curves[1]}))
    return box(*parts)


def lineage_html(result: Any) -> str:
    """A lineage (a lineage.Lineage): the entity, then what it derives from, nearest first, with values and file digests."""
    def files(value: Any) -> str:
        return "<br>".join(f"{html.escape(str(f.get('path')))} <code>{html.escape(str(f.get('sha256') or '')[:16])}…</code>"
                           for f in value or [])

    def values(value: Any) -> str:
        shown = [f"{html.escape(str(k))}={_e(v)}" for k, v in (value or {}).items() if v is not None]
        return ", ".join(shown[:8]) + (" …" if len(shown) > 8 else "")

    nodes = [result.start, *result.ancestors]
    rows = [{"depth": n.depth, "entity": n.identifier, "relation": n.relation or ("" if n is result.start else "derived from"),
             "dataset": n.dataset, "run": n.run_id, "task": f"{n.transformation} #{n.iteration}" if n.transformation else n.task_id,
             "values": n.values, "files": n.files} for n in nodes]
    note = f'<p class="tp-meta">{_e(result.note)}</p>' if result.note else ""
    return box(f"<h4>Lineage of <code>{_e(result.start.identifier)}</code>: {len(result.ancestors)} ancestors</h4>", note,
               table(rows, ["depth", "entity", "relation", "dataset", "run", "task", "values", "files"], limit=100,
                     cells={"values": values, "files": files}))


def reader_html(reader: Any, limit: int = 10) -> str:
    """A store (a query.Reader): where it is, and its latest runs."""
    frame = reader.runs(limit=limit)
    total = reader.result("SELECT count(*) FROM runs").rows[0][0]
    return box(f"<h4>trainprov store <code>{_e(reader.url)}</code>: {total} run{'s' * (total != 1)}</h4>",
               f'<p class="tp-meta">The latest {min(limit, total)}; <code>.runs()</code> lists them all, '
               "<code>.run(ID)</code> shows one.</p>",
               table(frame.astype(object).where(frame.notna(), None).to_dict("records"), list(frame.columns),
                     limit=limit, cells={"status": status}))
