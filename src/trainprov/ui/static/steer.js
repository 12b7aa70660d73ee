// A running run's steering controls (a dashboard started with --allow-steering): each sends one
// request with the page's session token, then follows its answer until the training applied or
// refused it. Answers are written as text, never as HTML.
"use strict";
(function () {
  const box = document.getElementById("steering");
  if (!box) return;
  const runId = box.dataset.run;
  const token = box.dataset.token;
  const log = document.getElementById("steer-log");
  const reason = document.getElementById("steer-reason");
  const base = `/api/runs/${encodeURIComponent(runId)}`;
  const FAST_MS = 400;       // a training answers within about a second
  const PATIENCE_MS = 60000; // then the page says why there may be no answer, and asks less often

  function entry(what) {
    const item = document.createElement("li");
    item.className = "pending";
    const label = document.createElement("span");
    label.textContent = what + ": ";
    const state = document.createElement("span");
    state.className = "steer-state";
    state.textContent = "sending…";
    item.append(label, state);
    log.prepend(item);
    return { item, state };
  }

  function show(line, r, late) {
    line.item.className = r.status;
    line.item.dataset.request = r.request_id;
    if (r.status !== "pending") {
      line.state.textContent = `${r.status}: ${r.message}`;
    } else {
      line.state.textContent = late
        ? `pending: no answer within ${PATIENCE_MS / 1000} s (only a run recorded by a trainprov integration, with steering on, listens; the request stays pending)`
        : "pending: the training applies it at its next step or epoch boundary";
    }
  }

  const wait = ms => new Promise(done => setTimeout(done, ms));

  async function follow(line, r) {
    const started = Date.now();
    show(line, r, false);
    while (r.status === "pending") {
      const late = Date.now() - started > PATIENCE_MS;
      await wait(late ? TP.poll : FAST_MS);
      try {
        r = await TP.json(`${base}/steering/${encodeURIComponent(r.request_id)}`);
        show(line, r, late);
      } catch (e) {
        line.state.textContent = "cannot read the answer: " + e.message;
      }
    }
  }

  async function send(body, what) {
    const line = entry(what);
    try {
      const r = await TP.json(`${base}/steer`, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Trainprov-Token": token },
        body: JSON.stringify(Object.assign(body, { reason: reason.value })),
      });
      reason.value = "";  // a reason belongs to the request it was sent with
      await follow(line, r);
    } catch (e) {
      line.item.className = "error";
      line.state.textContent = "not sent: " + e.message;
    }
  }

  document.getElementById("steer-lr").addEventListener("submit", event => {
    event.preventDefault();
    const value = document.getElementById("steer-lr-value").value.trim();
    send({ action: "set", parameter: "learning_rate", value }, `set learning_rate=${value}`);
  });
  document.getElementById("steer-set").addEventListener("submit", event => {
    event.preventDefault();
    const parameter = document.getElementById("steer-parameter").value.trim();
    const value = document.getElementById("steer-value").value.trim();
    send({ action: "set", parameter, value }, `set ${parameter}=${value}`);
  });
  document.getElementById("steer-checkpoint").addEventListener("click", () => send({ action: "checkpoint" }, "save a checkpoint"));
  document.getElementById("steer-stop").addEventListener("click", () => send({ action: "stop" }, "stop after this epoch"));

  // run.js tells when the run's status changes: an ended run takes no more requests
  document.addEventListener("trainprov:status", event => {
    const ended = event.detail !== "running";
    document.getElementById("steer-controls").hidden = ended;
    document.getElementById("steer-ended").hidden = !ended;
  });
})();
