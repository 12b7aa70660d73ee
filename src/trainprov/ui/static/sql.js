// The read-only SQL console: runs one statement through the API, shows the rows as a table,
// and offers the whole result as CSV. Values are written as text, never as HTML.
"use strict";
(function () {
  const editor = document.getElementById("sql");
  const runButton = document.getElementById("run-sql");
  const table = document.getElementById("sql-result");
  const status = document.getElementById("sql-status");
  const error = document.getElementById("sql-error");
  const csv = document.getElementById("csv-link");
  const csvSql = document.getElementById("csv-sql");
  const note = document.getElementById("sql-note");
  const console_ = document.getElementById("console");
  // the page's SQL token: the server runs SQL only for requests that carry it
  const token = console_.dataset.token;

  function cell(tag, text, cls) {
    const el = document.createElement(tag);
    el.textContent = text;
    if (cls) el.className = cls;
    return el;
  }

  function show(result) {
    table.replaceChildren();
    const head = table.createTHead().insertRow();
    for (const c of result.columns) head.appendChild(cell("th", c));
    const body = table.createTBody();
    for (const row of result.rows) {
      const tr = body.insertRow();
      for (const v of row) {
        if (v === null) tr.appendChild(cell("td", "NULL", "null"));
        else tr.appendChild(cell("td", typeof v === "object" ? JSON.stringify(v) : String(v), typeof v === "number" ? "num" : ""));
      }
    }
    status.textContent = result.truncated
      ? `the first ${result.count} rows in ${result.elapsed_ms} ms; there are more (Download CSV gives them all)`
      : `${result.count} row${result.count === 1 ? "" : "s"} in ${result.elapsed_ms} ms`;
  }

  async function run() {
    const sql = editor.value;
    error.hidden = true;
    note.hidden = true;
    status.textContent = "running…";
    runButton.disabled = true;
    try {
      const result = await TP.json("/api/sql", {
        method: "POST", headers: { "Content-Type": "application/json", "X-Trainprov-Token": token },
        body: JSON.stringify({ sql }),
      });
      show(result);
      csvSql.value = sql;
      csv.disabled = false;
    } catch (e) {
      table.replaceChildren();
      status.textContent = "";
      error.textContent = e.message;
      error.hidden = false;
      csv.disabled = true;
    } finally {
      runButton.disabled = false;
    }
  }

  runButton.addEventListener("click", run);
  editor.addEventListener("keydown", event => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); run(); }
  });
  document.getElementById("schema").addEventListener("click", event => {
    const link = event.target.closest("a");
    if (!link) return;
    event.preventDefault();
    if (link.dataset.table) {
      editor.value = `SELECT * FROM ${link.dataset.table} LIMIT 100`;
      run();
    } else if (link.dataset.column) {
      const at = editor.selectionStart;
      editor.setRangeText(link.dataset.column, at, editor.selectionEnd, "end");
      editor.focus();
    }
  });
  if (editor.value.trim() && console_.dataset.autorun === "yes") run();
})();
