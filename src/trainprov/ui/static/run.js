// A run's page: draws every per-epoch metric (a metric and its val_ twin on one chart),
// marks adaptations, and redraws while the run trains by polling the JSON endpoints.
"use strict";
(function () {
  const box = document.getElementById("charts");
  const runId = box.dataset.run;
  const rank = box.dataset.rank ? `?rank=${encodeURIComponent(box.dataset.rank)}` : "";  // a run of several processes
  let status = box.dataset.status;
  let hasSteps = Number(box.dataset.steps) > 0;
  const stepBox = document.getElementById("step-charts");

  function groups(series) {
    const out = new Map();
    for (const name of TP.order(Object.keys(series))) {
      const base = name.startsWith("val_") && (name.slice(4) in series) ? name.slice(4) : name;
      if (!out.has(base)) out.set(base, []);
      out.get(base).push(name);
    }
    // the training metric first, then its validation twin
    for (const names of out.values()) names.sort((a, b) => a.startsWith("val_") - b.startsWith("val_"));
    return out;
  }

  function describe(a) {
    if (a.kind === "stopped_by_rule") return `stopped after epoch ${a.epoch}: ${a.cause}`;
    if (a.kind === "early_stopping") {
      return `early stopping after epoch ${a.epoch}` + (a.monitor ? ` (${a.monitor} ${TP.fmt(a.monitor_value)}, best epoch ${a.best_epoch ?? "?"})` : "");
    }
    // a steering request's adaptation also says who asked and why
    const cause = a.cause ? ` (${a.cause}${a.requested_by ? " by " + a.requested_by : ""})` : "";
    const why = a.reason ? `: ${a.reason}` : "";
    if (a.kind === "checkpoint") return `checkpoint saved in epoch ${a.epoch}` + cause + why;
    if (a.kind === "stopped_by_request") return `stopped at the end of epoch ${a.epoch}` + cause + why;
    const what = a.parameter || a.kind || "adaptation";
    return `${what} ${TP.fmt(a.old_value)} → ${TP.fmt(a.new_value)} from epoch ${a.epoch}` + cause + why;
  }

  function draw(d) {
    const x = d.epochs;
    let index = 0;
    for (const [base, names] of groups(d.series)) {
      const traces = names.map((name, i) => ({
        x, y: TP.nums(d.series[name]), name, type: "scatter", mode: x.length > 60 ? "lines" : "lines+markers",
        line: { color: TP.color(i), dash: name.startsWith("val_") ? "solid" : "solid", width: 2 },
        marker: { size: 5 },
      }));
      // adaptations: a marker on the first curve at the epoch they took effect, and a dotted line
      const shown = d.adaptations.filter(a => a.epoch !== null && a.epoch !== undefined);
      if (shown.length) {
        const first = d.series[names[0]];
        traces.push({
          x: shown.map(a => a.epoch),
          y: shown.map(a => { const i = x.lastIndexOf(a.epoch); return i >= 0 ? TP.num(first[i]) : null; }),
          name: "adaptations", type: "scatter", mode: "markers", hoverinfo: "text",
          text: shown.map(describe), marker: { symbol: "triangle-down", size: 13, color: "#b54708" },
        });
      }
      // violations: a red cross on the curve of the metric the rule looked at (else the first)
      const failed = (d.violations || []).filter(v => v.epoch !== null && v.epoch !== undefined &&
        (names.includes(v.metric) || (index === 0 && !(v.metric in d.series))));
      if (failed.length) {
        traces.push({
          x: failed.map(v => v.epoch),
          y: failed.map(v => {
            // on its metric's point; a NaN or infinite value has none: on another curve's point of that epoch
            const i = x.lastIndexOf(v.epoch);
            if (i < 0) return null;
            const order = names.includes(v.metric) ? [v.metric, ...names.filter(n => n !== v.metric)] : names;
            for (const name of order) {
              const y = TP.num(d.series[name][i]);
              if (y !== null && Number.isFinite(y)) return y;
            }
            return null;
          }),
          name: "violations", type: "scatter", mode: "markers", hoverinfo: "text",
          text: failed.map(v => `${v.rule} (${v.severity}${v.stopped_training ? ", stopped the training" : ""}): ${v.message}`),
          marker: { symbol: "x", size: 12, color: "#d92d20" },
        });
      }
      const shapes = shown.map(a => ({ type: "line", xref: "x", yref: "paper", x0: a.epoch, x1: a.epoch, y0: 0, y1: 1,
                                       line: { color: "#b54708", width: 1, dash: "dot" } }));
      const log = base === "learning_rate" || base === "lr";
      const div = TP.chartDiv(box, base);
      Plotly.react(div, traces, TP.layout(names.join(" / "), { shapes, yaxis: log ? { type: "log", dtick: 1, exponentformat: "e" } : { exponentformat: "e" } }), TP.config);
      div.dataset.points = String(x.length);
      index++;
    }
    const none = document.getElementById("no-epochs");
    if (none && x.length) none.remove();
    document.getElementById("epoch-count").textContent = `${x.length} epoch${x.length === 1 ? "" : "s"}` +
      (d.status === "running" ? " · updating live" : "");
  }

  function showState(d) {
    const badge = document.getElementById("run-status");
    if (badge.textContent !== d.status) document.dispatchEvent(new CustomEvent("trainprov:status", { detail: d.status }));
    badge.textContent = d.status;
    badge.className = "status status-" + d.status;
    document.getElementById("run-duration").textContent = d.duration;
    if (d.ended_at) document.getElementById("run-ended").textContent = d.ended_at;
    if (d.error) {
      document.getElementById("run-error").textContent = d.error;
      document.getElementById("run-error-box").hidden = false;
    }
  }

  // the tables below the curves (adaptations, checkpoints, tasks, ...) grow too: fetched again
  // when the run records something new, at most every few polls, and once when it ends
  const details = document.getElementById("run-details");
  let seen = null, lastDetails = Date.now();
  // long tables show a few rows and a "Show all" button; what the user opened stays open across refreshes
  const opened = new Set();
  function showAll(id) {
    const table = document.getElementById(id);
    if (!table) return;
    table.querySelectorAll("tbody tr[hidden]").forEach(tr => { tr.hidden = false; });
    const button = details.querySelector(`button.show-all[data-table="${id}"]`);
    if (button) button.remove();
  }
  details.addEventListener("click", ev => {
    const button = ev.target.closest("button.show-all");
    if (!button) return;
    opened.add(button.dataset.table);
    showAll(button.dataset.table);
  });
  async function refreshDetails(force) {
    if (!force && Date.now() - lastDetails < 3 * TP.poll) return;
    lastDetails = Date.now();
    try {
      const response = await fetch(details.dataset.source);
      if (response.ok) {
        details.innerHTML = await response.text();  // rendered (and escaped) by the server
        opened.forEach(showAll);
      }
    } catch (e) { /* next time */ }
  }

  async function refresh() {
    let d = null;
    try {
      d = await TP.json(`/api/runs/${encodeURIComponent(runId)}/epochs${rank}`);
      draw(d);
      showState(d);
      const now = `${d.status} ${d.count} ${d.adaptations.length} ${(d.violations || []).length}`;
      if (seen !== null && now !== seen) await refreshDetails(d.status !== "running");
      seen = now;
    } catch (e) {
      document.getElementById("epoch-count").textContent = "cannot read the store: " + e.message;
    }
    const running = d ? d.status === "running" : status === "running";
    status = d ? d.status : status;
    if (running) setTimeout(refresh, TP.poll);
  }

  function drawSteps(s) {
    document.getElementById("steps-section").hidden = !s.rows;
    document.getElementById("step-info").textContent = s.rows
      ? `${s.rows} steps recorded` + (s.bucket > 1 ? `; drawn as ${s.x.length} points of ${s.bucket} steps each (mean, and min–max band)` : "")
      : "";
    let i = 0;
    for (const name of TP.order(Object.keys(s.series))) {
      const v = s.series[name];
      const color = TP.color(i++);
      const traces = [];
      if (v.min && v.max) {
        traces.push({ x: s.x, y: TP.nums(v.min), type: "scatter", mode: "lines", line: { width: 0 }, showlegend: false, hoverinfo: "skip" });
        traces.push({ x: s.x, y: TP.nums(v.max), type: "scatter", mode: "lines", line: { width: 0 }, fill: "tonexty",
                      fillcolor: "rgba(37,99,235,0.15)", name: "min–max", hoverinfo: "skip" });
      }
      traces.push({ x: s.x, y: TP.nums(v.mean), type: "scatter", mode: "lines", name, line: { color, width: 1.5 } });
      Plotly.react(TP.chartDiv(stepBox, "step-" + name), traces,
                   TP.layout(name + " per step", { xaxis: { title: { text: "global step" } } }), TP.config);
    }
  }

  async function refreshSteps() {
    let s = null;
    try {
      s = await TP.json(`/api/runs/${encodeURIComponent(runId)}/steps${rank}`);
      if (s.rows) drawSteps(s);
    } catch (e) { /* shown by the epoch poll */ }
    if (status === "running") setTimeout(refreshSteps, 5 * TP.poll);
  }

  refresh();
  if (hasSteps || status === "running") refreshSteps();
})();
