// The comparison page: every per-epoch metric of the chosen runs overlaid (one colour per run),
// and each differing hyperparameter against the runs' best value of the chosen metric.
"use strict";
(function () {
  const box = document.getElementById("compare-charts");
  if (!box) return;
  for (const select of document.querySelectorAll("select.autosubmit")) {
    select.addEventListener("change", () => select.form.submit());
  }
  for (const swatch of document.querySelectorAll(".swatch")) swatch.style.background = TP.color(Number(swatch.dataset.index));
  const runs = box.dataset.runs.split(",").filter(Boolean);
  const metric = box.dataset.metric;
  const scatter = document.getElementById("hp-scatter");

  function label(run) { return run.name ? `${run.name} (${run.run_id.slice(-6)})` : run.run_id; }

  function best(values, higher) {
    const numbers = TP.nums(values).filter(v => v !== null && Number.isFinite(v));
    if (!numbers.length) return null;
    return higher ? Math.max(...numbers) : Math.min(...numbers);
  }

  function draw(d) {
    const names = new Set();
    for (const r of d.runs) for (const n of Object.keys(d.series[r.run_id])) if (n !== "epochs") names.add(n);
    for (const name of TP.order(Array.from(names))) {
      const traces = d.runs.map((r, i) => ({
        x: d.series[r.run_id].epochs, y: TP.nums(d.series[r.run_id][name]), name: label(r), type: "scatter",
        mode: d.series[r.run_id].epochs.length > 60 ? "lines" : "lines+markers", line: { color: TP.color(i), width: 2 },
        marker: { size: 5 },
      }));
      const log = name === "learning_rate" || name === "lr";
      const div = TP.chartDiv(box, name);
      Plotly.react(div, traces, TP.layout(name, { yaxis: log ? { type: "log", dtick: 1, exponentformat: "e" } : { exponentformat: "e" } }), TP.config);
      div.dataset.traces = String(traces.filter(t => t.y.some(v => v !== null)).length);
    }
    if (!scatter || !metric) return;
    const higher = d.higher_is_better[metric];
    const bests = d.runs.map(r => best(d.series[r.run_id][metric], higher));
    const hps = Object.entries(d.hyperparameters);
    if (!hps.length) {
      scatter.textContent = "These runs share every recorded hyperparameter: nothing to set against " + metric + ".";
      return;
    }
    for (const [name, values] of hps) {
      const numeric = values.every(v => v === null || typeof v === "number");
      const positive = values.filter(v => typeof v === "number" && v > 0);
      const log = numeric && positive.length === values.length && Math.max(...positive) / Math.min(...positive) > 20;
      const traces = d.runs.map((r, i) => ({
        x: [values[i] === null ? "(none)" : numeric ? values[i] : String(values[i])], y: [bests[i]], name: label(r),
        type: "scatter", mode: "markers+text", text: [TP.fmt(bests[i])], textposition: "top center", cliponaxis: false,
        marker: { size: 13, color: TP.color(i) },
      }));
      Plotly.react(TP.chartDiv(scatter, "hp-" + name), traces, TP.layout(`${name} → best ${metric}`, {
        hovermode: "closest",
        xaxis: Object.assign({ title: { text: name }, type: numeric ? (log ? "log" : "linear") : "category" }, log ? { dtick: 1 } : {}),
        yaxis: { title: { text: `best ${metric}` }, exponentformat: "e" },
      }), TP.config);
    }
  }

  async function refresh() {
    let d = null;
    try {
      const rank = new URLSearchParams(location.search).get("rank");  // runs of several processes: this rank
      d = await TP.json("/api/compare?runs=" + runs.map(encodeURIComponent).join(",") + (rank ? "&rank=" + encodeURIComponent(rank) : ""));
      draw(d);
    } catch (e) {
      box.textContent = "cannot read the runs: " + e.message;
    }
    if (d && d.running) setTimeout(refresh, TP.poll);
  }
  if (runs.length) refresh();
})();
