// Draws a graph laid out by the server (graph_layout.py) with plotly.js: nodes as PROV shapes,
// edges as arrows grouped by relation (one legend entry each), details on hover; zoom and pan
// are plotly's, and the labels grow and shrink with the zoom like the shapes they sit in.
"use strict";
(function () {
  const begun = performance.now();
  const drawn = JSON.parse(document.getElementById("graph-data").textContent);
  const div = document.getElementById("graph");
  const RELATION_STYLES = {
    "used": { color: "#555555", dash: "solid" },
    "used by": { color: "#555555", dash: "solid" },
    "wasGeneratedBy": { color: "#2f6f2f", dash: "solid" },
    "generates": { color: "#2f6f2f", dash: "solid" },
    "wasInformedBy": { color: "#0000FF", dash: "dash" },
    "wasStartedBy": { color: "#8a8fbf", dash: "dot" },
    "wasAssociatedWith": { color: "#C08000", dash: "dash" },
    "actedOnBehalfOf": { color: "#C08000", dash: "solid" },
    "alternateOf": { color: "#808080", dash: "dot" },
  };

  function outline(n) {
    const x0 = n.x - n.w / 2, x1 = n.x + n.w / 2, y0 = n.y - n.h / 2, y1 = n.y + n.h / 2;
    if (n.shape === "ellipse") return { type: "circle", x0, x1, y0, y1 };
    if (n.shape === "house") {
      const roof = y0 + Math.min(14, n.h / 3);
      return { type: "path", path: `M${x0},${roof} L${n.x},${y0} L${x1},${roof} L${x1},${y1} L${x0},${y1} Z` };
    }
    if (n.shape === "note") {
      const fold = Math.min(10, n.h / 3);
      return { type: "path", path: `M${x0},${y0} L${x1 - fold},${y0} L${x1},${y0 + fold} L${x1},${y1} L${x0},${y1} Z` };
    }
    const r = 6;  // a rounded box
    return { type: "path", path: `M${x0 + r},${y0} L${x1 - r},${y0} Q${x1},${y0} ${x1},${y0 + r} L${x1},${y1 - r} ` +
      `Q${x1},${y1} ${x1 - r},${y1} L${x0 + r},${y1} Q${x0},${y1} ${x0},${y1 - r} L${x0},${y0 + r} Q${x0},${y0} ${x0 + r},${y0} Z` };
  }

  const esc = s => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  function hover(n) {
    const rows = Object.entries(n.details).map(([k, v]) => `${esc(k)}: ${esc(v)}`);
    return `<b>${esc(n.label.join(" "))}</b><br>${rows.join("<br>")}`;
  }

  const shapes = drawn.nodes.map(n => Object.assign(outline(n), {
    xref: "x", yref: "y", layer: "below", fillcolor: n.fill,
    line: { color: n.border, width: n.kind === "run" ? 2 : 1, dash: n.kind === "run" ? "dash" : "solid" },
  }));

  const traces = [];
  const relations = [...new Set(drawn.edges.map(e => e.relation))];
  for (const relation of relations) {
    const style = RELATION_STYLES[relation] || { color: "#555555", dash: "solid" };
    const lines = { x: [], y: [] }, heads = { x: [], y: [] };
    for (const e of drawn.edges.filter(e => e.relation === relation)) {
      for (const [x, y] of e.points) { lines.x.push(x); lines.y.push(y); }
      lines.x.push(null); lines.y.push(null);
      for (const [x, y] of e.arrow) { heads.x.push(x); heads.y.push(y); }
      heads.x.push(null); heads.y.push(null);
    }
    traces.push({ type: "scatter", mode: "lines", name: relation, legendgroup: relation, x: lines.x, y: lines.y,
      line: { color: style.color, width: 1.2, dash: style.dash }, hoverinfo: "skip" });
    traces.push({ type: "scatter", mode: "lines", name: relation, legendgroup: relation, showlegend: false,
      x: heads.x, y: heads.y, fill: "toself", fillcolor: style.color, line: { color: style.color, width: 1 },
      hoverinfo: "skip" });
  }
  traces.push({
    type: "scatter", mode: "text", name: "nodes", showlegend: false,
    x: drawn.nodes.map(n => n.x), y: drawn.nodes.map(n => n.y),
    text: drawn.nodes.map(n => n.label.map(esc).join("<br>")),
    customdata: drawn.nodes.map(n => n.id),
    hovertext: drawn.nodes.map(hover), hoverinfo: "text",
    textfont: { size: drawn.font_px, family: "Helvetica, Arial, sans-serif", color: "#111" },
  });

  const [bx0, by0, bx1, by1] = drawn.bounds;
  const pad = 20;
  const width = Math.max(1, bx1 - bx0 + 2 * pad), height = Math.max(1, by1 - by0 + 2 * pad);
  // one page pixel per layout unit when the graph fits the page's width, else smaller to fit it
  const available = div.clientWidth || 1200;
  const scale = Math.min(1, available / width);
  div.style.height = Math.max(260, Math.min(height * scale + 60, window.innerHeight * 0.8)) + "px";
  const layout = {
    shapes, showlegend: true, hovermode: "closest", dragmode: "pan",
    legend: { orientation: "h", x: 0, y: 1.0, yanchor: "bottom", font: { size: 11 } },
    margin: { l: 4, r: 4, t: 30, b: 4 }, paper_bgcolor: "#fff", plot_bgcolor: "#fff",
    xaxis: { range: [bx0 - pad, bx1 + pad], visible: false, constrain: "domain" },
    yaxis: { range: [by1 + pad, by0 - pad], visible: false, scaleanchor: "x", scaleratio: 1 },
  };

  // labels keep their size relative to the shapes: the font follows the pixels per layout unit
  function fitLabels() {
    const xaxis = div._fullLayout && div._fullLayout.xaxis;
    if (!xaxis) return;
    const perUnit = xaxis._length / Math.abs(xaxis.range[1] - xaxis.range[0]);
    const size = Math.max(1, drawn.font_px * perUnit);
    if (Math.abs(size - (div._labelSize || 0)) > 0.05) {
      div._labelSize = size;
      Plotly.restyle(div, { "textfont.size": size }, [traces.length - 1]);
    }
  }

  Plotly.newPlot(div, traces, layout, { displaylogo: false, responsive: true, scrollZoom: true,
    modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d", "sendChartToCloud"] }).then(() => {
    fitLabels();
    div.on("plotly_relayout", fitLabels);
    div.on("plotly_click", ev => {
      const point = ev.points && ev.points.find(p => p.customdata);
      if (!point) return;
      const node = drawn.nodes.find(n => n.id === point.customdata);
      const panel = document.getElementById("graph-node");
      if (node && panel) {
        panel.hidden = false;
        panel.querySelector("h2").textContent = node.label.join(" ");
        const body = panel.querySelector("tbody");
        // links to the dashboard's SQL console and expanded graph (none in a report file)
        const links = div.dataset.links !== "off";
        const sql = document.getElementById("graph-node-sql");
        if (sql) sql.hidden = !(links && node.sql);
        // the console's own rule applies: run from the dashboard's pages, only shown when linked from elsewhere
        if (sql && node.sql) sql.href = "/sql?sql=" + encodeURIComponent(node.sql);
        const more = document.getElementById("graph-node-expand");
        if (more) more.hidden = !(links && node.expand);
        if (more && node.expand) {
          const params = new URLSearchParams(window.location.search);
          const open = (params.get("expand") || "").split(",").filter(Boolean);
          params.set("expand", [...new Set([...open, node.expand])].join(","));
          more.href = "?" + params.toString();
          more.textContent = `Expand the ${node.details.tasks} ${node.expand} tasks`;
        }
        body.replaceChildren(...Object.entries(node.details).map(([k, v]) => {
          const tr = document.createElement("tr");
          const th = document.createElement("th"); th.textContent = k;
          const td = document.createElement("td"); td.textContent = v;
          tr.append(th, td);
          return tr;
        }));
      }
    });
    // milliseconds from the start of the page's navigation until the graph is drawn (read by the tests)
    div.dataset.drawnMs = String(Math.round(performance.now()));
    div.dataset.drawingMs = String(Math.round(performance.now() - begun));  // of which the drawing itself
    div.dataset.drawn = String(drawn.nodes.length);
  });
})();
