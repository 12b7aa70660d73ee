// The runs list: refreshes its table by itself (statuses, durations, new runs), keeps the
// runs ticked for comparison across refreshes, and sends filters as soon as they change.
"use strict";
(function () {
  const holder = document.getElementById("runs-table");
  const compare = document.getElementById("compare-button");
  const picked = new Set();

  function syncPicks() {
    for (const box of holder.querySelectorAll("input.pick")) box.checked = picked.has(box.value);
    const ids = Array.from(picked);
    compare.textContent = ids.length ? `Compare selected (${ids.length})` : "Compare selected";
    compare.href = "/compare?runs=" + ids.map(encodeURIComponent).join(",");
    compare.setAttribute("aria-disabled", ids.length >= 2 ? "false" : "true");
  }

  holder.addEventListener("change", event => {
    const box = event.target;
    if (!box.classList.contains("pick")) return;
    if (box.checked) picked.add(box.value); else picked.delete(box.value);
    syncPicks();
  });

  for (const select of document.querySelectorAll("select.autosubmit")) {
    select.addEventListener("change", () => select.form.submit());
  }

  async function refresh() {
    if (!document.hidden) {
      try {
        const response = await fetch(holder.dataset.source, { headers: { Accept: "text/html" } });
        if (response.ok) {
          holder.innerHTML = await response.text();  // rendered (and escaped) by the server's template
          syncPicks();
        }
      } catch (e) { /* the server restarts: try again at the next tick */ }
    }
    setTimeout(refresh, TP.poll);
  }
  syncPicks();
  setTimeout(refresh, TP.poll);
})();
