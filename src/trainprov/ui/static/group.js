// A search group's page: each hyperparameter against the objective (one point per trial, coloured
// by state) and the trials' intermediate values overlaid, from the data the server put in the page.
"use strict";
(function () {
  const source = document.getElementById("search-data");
  if (!source) return;
  const d = JSON.parse(source.textContent);
  const stateColor = { COMPLETE: "#2563eb", PRUNED: "#ea580c", FAIL: "#dc2626" };
  const scatter = document.getElementById("search-scatter");
  for (const name of d.parameters) {
    const key = "param_" + name;
    const values = d.trials.map(t => t[key]);
    const numeric = values.every(v => v === null || typeof v === "number");
    const positive = values.filter(v => typeof v === "number" && v > 0);
    const log = numeric && positive.length === values.length && positive.length > 0 && Math.max(...positive) / Math.min(...positive) > 20;
    const traces = Object.keys(stateColor).map(state => {
      const rows = d.trials.filter(t => t.state === state && t.value !== null);
      return {
        x: rows.map(t => numeric ? t[key] : String(t[key])), y: rows.map(t => TP.num(t.value)), name: state.toLowerCase(),
        text: rows.map(t => "trial " + t.trial_number), type: "scatter", mode: "markers",
        marker: { size: 10, color: stateColor[state] },
      };
    }).filter(t => t.x.length);
    Plotly.react(TP.chartDiv(scatter, "param-" + name), traces, TP.layout(`${name} → objective (${d.direction})`, {
      hovermode: "closest",
      xaxis: Object.assign({ title: { text: name }, type: numeric ? (log ? "log" : "linear") : "category" }, log ? { dtick: 1 } : {}),
      yaxis: { title: { text: "objective" }, exponentformat: "e" },
    }), TP.config);
  }
  const curves = document.getElementById("search-curves");
  const traces = d.trials.filter(t => (d.curves[String(t.trial_number)] || []).length).map(t => {
    const points = d.curves[String(t.trial_number)];
    return {
      x: points.map(p => p[0]), y: points.map(p => TP.num(p[1])), name: "trial " + t.trial_number, type: "scatter",
      mode: "lines+markers", line: { color: stateColor[t.state] || "#4b5563", width: 1.5 }, marker: { size: 4 },
    };
  });
  if (traces.length) {
    Plotly.react(TP.chartDiv(curves, "intermediate"), traces, TP.layout("intermediate values", {
      xaxis: { title: { text: "step" } }, showlegend: traces.length <= 20,
    }), TP.config);
  } else {
    curves.textContent = "No trial reported intermediate values.";
  }
})();
