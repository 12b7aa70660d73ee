"""Steering from the dashboard (`trainprov ui --allow-steering`), in a real headless Chromium.

As in test_ui.py, the dashboard is started with the command line and the training runs in
another process: a bare TrainingRecorder loop that lets people change its learning rate
(test_steering.py's). Requests that another site could send are plain HTTP requests.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import time
import urllib.request
from http.cookiejar import CookieJar

import pytest

import trainprov as tp
from trainprov.capture.steering import steering_requests
from test_steering import start_training
import test_ui
from test_ui import SLOW, get, post, start_dashboard, stop

# test_ui.py's fixtures: Debian's chromium, a page in it, the screenshots folder
browser, page, shots = test_ui.browser, test_ui.page, test_ui.shots

TOKEN = "dashboard-token-1"
#: who the dashboard's requests come from: the person who started it, via the dashboard
REQUESTER = f"{getpass.getuser()}@{socket.gethostname()} via dashboard"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("steer-ui") / "store.db")


@pytest.fixture(scope="module")
def steering_dashboard(store):
    """`trainprov ui --allow-steering` with a token: the address it printed (with ?token=...)."""
    proc, url = start_dashboard(store, "--allow-steering", "--token", TOKEN)
    yield url
    stop(proc)


def base_of(url: str) -> str:
    return url.split("?", 1)[0].rstrip("/")


def session(url: str) -> tuple[urllib.request.OpenerDirector, str, CookieJar]:
    """What a page of the dashboard gives a browser: the cookies (dashboard token, session) and the page's token."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    base, _, query = url.partition("?")
    status, _, body = get(base.rstrip("/") + "/sql" + (f"?{query}" if query else ""), opener=opener)
    assert status == 200, body
    return opener, re.search(r'data-token="([0-9a-f]+)"', body.decode()).group(1), jar


def steer_post(base: str, run_id: str, body: dict, headers: dict, opener=None) -> tuple[int, dict]:
    status, _, answer = post(f"{base}/api/runs/{run_id}/steer", json.dumps(body).encode(),
                             {"Content-Type": "application/json", **headers}, opener)
    return status, json.loads(answer)


def end_training(child, store: str, run_id: str) -> list[str]:
    """Stop the training (by request, else by a signal) and return its output lines."""
    [run] = tp.query("SELECT status FROM runs WHERE run_id = ?", [run_id], store=store)
    if child.poll() is None and run["status"] == "running":
        try:
            tp.steer(run_id, stop=True, store=store, wait=30)
        except tp.SteeringError:
            child.kill()
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    return out.splitlines()


def test_the_run_page_steers_a_running_training_and_shows_the_answer_and_the_marker(steering_dashboard, store, page,
                                                                                   shots, tmp_path):
    from playwright.sync_api import expect

    child, run_id = start_training(store, tmp_path, epochs=5000)
    try:
        page.goto(f"{base_of(steering_dashboard)}/runs/{run_id}?token={TOKEN}")
        expect(page.locator("#run-status")).to_have_text("running", timeout=SLOW)
        expect(page.locator("#steering")).to_be_visible()
        expect(page.locator("#steering")).to_contain_text(REQUESTER)
        page.fill("#steer-lr-value", "0.01")
        page.fill("#steer-reason", "the loss plateaued")
        page.get_by_role("button", name="Set learning rate").click()
        first = page.locator("#steer-log li").first
        expect(first).to_contain_text("set learning_rate=0.01: applied: learning_rate: 0.1 -> 0.01 at epoch",
                                      timeout=SLOW)
        expect(first).to_have_class("applied")
        [answer] = steering_requests(run_id, store=store)
        assert (answer.status, answer.requested_by, answer.reason) == ("applied", REQUESTER, "the loss plateaued")
        expect(page.locator("#steer-reason")).to_have_value("")  # a reason goes with one request
        # a checkpoint now, through the training's own saving, then a stop at the end of the epoch
        page.get_by_role("button", name="Save a checkpoint now").click()
        expect(page.locator("#steer-log li").first).to_contain_text("save a checkpoint: applied: saved ", timeout=SLOW)
        # the live curve marks the change without a reload
        page.wait_for_function("() => { const c = document.getElementById('chart-learning_rate');"
                               " return c && c.data && c.data.some(t => t.name === 'adaptations'); }", timeout=SLOW)
        page.screenshot(path=os.path.join(shots, "run-steering.png"))  # the top of the page: controls and curves
        page.get_by_role("button", name="Stop after this epoch").click()
        expect(page.locator("#steer-log li").first).to_contain_text(
            "stop after this epoch: applied: the training stopped at the end of epoch", timeout=SLOW)
        # the page follows the run to its end: no more controls
        expect(page.locator("#run-status")).to_have_text("finished", timeout=SLOW)
        expect(page.locator("#steer-controls")).to_be_hidden()
        expect(page.locator("#steer-ended")).to_be_visible()
    finally:
        lines = end_training(child, store, run_id)
    # the training went on with the rate the page set, from the epoch it was applied in
    rates = {int(line.split()[1]): float(line.split()[3]) for line in lines if line.startswith("epoch ")}
    assert rates[answer.epoch] == 0.01 and rates[max(rates)] == 0.01 and rates[1] == 0.1
    with tp.connect(store) as reader:
        rows = reader.rows("SELECT kind, cause, requested_by, reason, old_value, new_value, epoch FROM adaptations "
                           "WHERE run_id = ? ORDER BY recorded_at", [run_id])
    assert [(r["kind"], r["cause"], r["requested_by"]) for r in rows] == [
        ("learning_rate", "steering", REQUESTER), ("checkpoint", "steering", REQUESTER),
        ("stopped_by_request", "steering", REQUESTER)]
    assert (rows[0]["old_value"], rows[0]["new_value"], rows[0]["epoch"]) == (0.1, 0.01, answer.epoch)

    # opened later: a finished run has no controls, and its learning-rate curve marks the change
    page.reload()
    expect(page.locator("#run-status")).to_have_text("finished", timeout=SLOW)
    page.wait_for_function("() => { const c = document.getElementById('chart-learning_rate');"
                           " return c && c.data && c.data.some(t => t.name === 'adaptations'); }", timeout=SLOW)
    assert page.locator("#steering").count() == 0
    marks = page.evaluate("document.getElementById('chart-learning_rate').data.find(t => t.name === 'adaptations')")
    assert marks["x"][0] == answer.epoch
    assert marks["text"][0] == (f"learning_rate 0.1 → 0.01 from epoch {answer.epoch} (steering by {REQUESTER}): "
                                "the loss plateaued")
    assert marks["text"][2].startswith("stopped at the end of epoch")
    page.screenshot(path=os.path.join(shots, "run-steered.png"))  # the top: status, controls, the marked curve


def test_requests_another_site_could_send_are_refused_and_write_nothing(steering_dashboard, store, tmp_path):
    base = base_of(steering_dashboard)
    child, run_id = start_training(store, tmp_path, epochs=5000)
    try:
        opener, token, jar = session(steering_dashboard)
        other = session(steering_dashboard)  # another browser's session
        own = {"Origin": base, "Sec-Fetch-Site": "same-origin"}
        lower = {"action": "set", "parameter": "learning_rate", "value": "0.001", "reason": "forged"}
        attacks = {
            "no page token": ({**own}, opener),
            "another session's token": ({**own, "X-Trainprov-Token": other[1]}, opener),
            "a forged Origin": ({"Origin": "http://attacker.example", "X-Trainprov-Token": token}, opener),
            "a page of another site": ({"Sec-Fetch-Site": "cross-site", "X-Trainprov-Token": token}, opener),
            "an opaque origin": ({"Origin": "null", "X-Trainprov-Token": token}, opener),
        }
        for what, (headers, by) in attacks.items():
            status, answer = steer_post(base, run_id, lower, headers, by)
            assert status == 403 and "only taken from the dashboard's own pages" in answer["error"], (what, answer)
        # without the session cookie (a request from another site carries none), the page token is not enough
        dashboard_cookie = "; ".join(f"{c.name}={c.value}" for c in jar if c.name.startswith("trainprov_token_"))
        status, answer = steer_post(base, run_id, lower, {**own, "X-Trainprov-Token": token, "Cookie": dashboard_cookie})
        assert status == 403 and "token of a dashboard page" in answer["error"]
        # without the dashboard's token, nothing is answered at all
        session_cookie = "; ".join(f"{c.name}={c.value}" for c in jar if c.name.startswith("trainprov_session_"))
        status, _, body = post(f"{base}/api/runs/{run_id}/steer", json.dumps(lower).encode(),
                               {"Content-Type": "application/json", "X-Trainprov-Token": token, "Cookie": session_cookie,
                                **own})
        assert status == 401, body
        # a GET never steers
        status, _, _ = get(f"{base}/api/runs/{run_id}/steer?action=stop", opener=opener)
        assert status == 405
        assert steering_requests(run_id, store=store) == []

        # the page's own request is taken, and its answer read back
        bad = steer_post(base, run_id, {"action": "set", "parameter": "learning_rate", "value": " "},
                         {**own, "X-Trainprov-Token": token}, opener)
        assert bad == (400, {"error": "give the new value of learning_rate"})
        status, sent = steer_post(base, run_id, {**lower, "reason": "from the page"}, {**own, "X-Trainprov-Token": token},
                                  opener)
        assert status == 201 and sent["status"] == "pending" and sent["value"] == 0.001, sent
        assert sent["requested_by"] == REQUESTER
        deadline = time.monotonic() + 60
        while True:
            status, _, body = get(f"{base}/api/runs/{run_id}/steering/{sent['request_id']}", opener=opener)
            answer = json.loads(body)
            if answer["status"] != "pending" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 200 and answer["status"] == "applied", answer
        assert answer["message"].startswith("learning_rate: 0.1 -> 0.001 at epoch")
        status, _, body = get(f"{base}/api/runs/{run_id}/steering/0123456789abcdef", opener=opener)
        assert status == 404 and b"has no steering request" in body
    finally:
        end_training(child, store, run_id)
    assert [(r.reason, r.status) for r in steering_requests(run_id, store=store)][0] == ("from the page", "applied")


def test_without_the_option_the_dashboard_has_no_controls_and_writes_nothing(store, page, tmp_path):
    from playwright.sync_api import expect

    proc, url = start_dashboard(store)
    base = base_of(url)
    child, run_id = start_training(store, tmp_path, epochs=5000)
    try:
        page.goto(f"{base}/runs/{run_id}")
        expect(page.locator("#run-status")).to_have_text("running", timeout=SLOW)
        expect(page.locator("#charts .chart").first).to_be_visible(timeout=SLOW)
        assert page.locator("#steering").count() == 0
        assert page.get_by_role("button", name="Set learning rate").count() == 0
        expect(page.locator("footer")).to_contain_text("read-only view of the store")
        # even the dashboard's own page, with its session and token, cannot steer through it
        opener, token, _ = session(url)
        status, answer = steer_post(base, run_id, {"action": "stop"},
                                    {"Origin": base, "Sec-Fetch-Site": "same-origin", "X-Trainprov-Token": token}, opener)
        assert status == 403 and "start it with `trainprov ui --allow-steering`" in answer["error"], answer
        assert steering_requests(run_id, store=store) == []
    finally:
        end_training(child, store, run_id)
        stop(proc)
