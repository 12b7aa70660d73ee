// Shared helpers of the dashboard's pages: JSON fetches, numbers from the API, plot defaults.
"use strict";
const TP = {
  poll: Number(document.body.dataset.pollMs || 2000),
  colors: ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d"],

  async json(url, options) {
    const response = await fetch(url, options);
    let body = null;
    try { body = await response.json(); } catch (e) { /* not JSON: reported below */ }
    if (!response.ok) throw new Error((body && body.error) || response.status + " " + response.statusText);
    return body;
  },

  // The API sends NaN and infinities as strings; Number() reads them back and plotly draws them as gaps.
  num(v) { return v === null || v === undefined ? null : Number(v); },
  nums(values) { return (values || []).map(TP.num); },

  color(i) { return TP.colors[i % TP.colors.length]; },

  layout(title, extra) {
    return Object.assign({
      title: { text: title, font: { size: 14 }, x: 0.02 },
      margin: { l: 56, r: 16, t: 40, b: 78 },
      hovermode: "x unified",
      legend: { orientation: "h", y: -0.3, yanchor: "top" },
      xaxis: { title: { text: "epoch" }, zeroline: false },
      yaxis: { zeroline: false, exponentformat: "e" },
      paper_bgcolor: "#fff", plot_bgcolor: "#fff",
    }, extra || {});
  },
  config: { displaylogo: false, responsive: true },

  // A div for a chart, created once per key inside a container.
  chartDiv(container, key) {
    const id = "chart-" + key;
    let div = document.getElementById(id);
    if (!div) {
      div = document.createElement("div");
      div.id = id;
      div.className = "chart";
      container.appendChild(div);
    }
    return div;
  },

  // Metric names in the order charts show them: val_loss, loss, other validation metrics, the rest.
  order(names) {
    const rank = n => n === "val_loss" ? 0 : n === "loss" ? 1 : n.startsWith("val_") ? 2 : 3;
    return names.slice().sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  },

  fmt(v) {
    if (v === null || v === undefined) return "";
    const n = Number(v);
    if (typeof v === "number" || (typeof v === "string" && v !== "" && !isNaN(n))) {
      return Number.isInteger(n) ? String(n) : n.toPrecision(4).replace(/\.?0+(e|$)/, "$1");
    }
    return String(v);
  },
};
