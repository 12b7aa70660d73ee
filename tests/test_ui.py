"""The dashboard, `trainprov ui`: started as a user starts it, driven in a real headless Chromium.

The tests start the server with the command line (`python -m trainprov.cli ui --port 0`),
trainings in background processes, and Debian's chromium through Playwright; if any of
them cannot start, the tests fail. Each page is photographed into the `screenshots` folder
of pytest's temporary directory (or $TRAINPROV_SCREENSHOTS) for inspection.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

import pytest

import trainprov as tp
from conftest import spawn_python
from test_analysis import RUNS, record

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
# the machine may be busy: waits are generous, and end as soon as the page shows what is awaited
SLOW = 60_000

# A training loop with plain trainprov calls: per-step and per-epoch metrics, a learning-rate
# drop halfway, an evaluation; it prints its run id, then pauses after every epoch.
LIVE_TRAINING = """
import math, random, sys, time
import trainprov as tp
from trainprov.capture.training import training_dataflow

store, name, epochs, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
flow = training_dataflow("live_training").with_attributes(
    "epoch_metrics", {"val_loss": "float", "accuracy": "float", "val_accuracy": "float"})
rng = random.Random(name)
with tp.start_run(flow, store, name=name) as run:
    print(run.id, flush=True)
    lr = 0.01
    with run.task("train") as train:
        train.used("hyperparameters", framework="plain", optimizer="adam", learning_rate=lr, batch_size=32, epochs=epochs)
        for i, (kind, units) in enumerate([("Dense", 64), ("Dropout", None), ("Dense", 1)]):
            train.used("layers", layer_index=i, name=f"layer{i}", class_name=kind, units=units,
                       dropout_rate=0.3 if kind == "Dropout" else None)
        step = 0
        for epoch in range(1, epochs + 1):
            if epoch == epochs // 2 + 1:
                with run.task("adapt", depends_on=[train]) as adapt:
                    adapt.generated("adaptations", epoch=epoch, kind="learning_rate", parameter="learning_rate",
                                    old_value=lr, new_value=lr / 10, cause="ReduceLROnPlateau")
                lr /= 10
            loss = 0.2 + math.exp(-0.3 * epoch)
            for s in range(1, 26):
                step += 1
                train.generated("step_metrics", epoch=epoch, step=s, global_step=step, loss=loss + rng.gauss(0, 0.05))
            train.generated("epoch_metrics", epoch=epoch, loss=loss, val_loss=loss * 1.15 + rng.gauss(0, 0.01),
                            accuracy=1 - loss / 2, val_accuracy=1 - loss / 1.7, learning_rate=lr, epoch_time_s=pause)
            run.flush()
            time.sleep(pause)
    with run.task("evaluate", depends_on=[train]) as evaluate:
        evaluate.generated("test_results", loss=loss * 1.1, evaluation_time_s=0.1)
print("done", flush=True)
"""


# ---- processes ------------------------------------------------------------------------------


class Lines:
    """The stdout lines of a process, read by a thread so that waits can time out."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match:
        """The first line matching a regular expression; the test fails if none comes in time."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        err = self.proc.stderr.read() if self.proc.poll() is not None else "(still running)"
        pytest.fail(f"no line matching {pattern!r} within {timeout} s; output: {seen!r}; stderr: {err}", pytrace=False)


def path_without_graphviz() -> str:
    """$PATH less every folder that holds a `dot` program: the dashboard must draw its graphs without Graphviz."""
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and not os.access(os.path.join(d, "dot"), os.X_OK))
    assert shutil.which("dot", path=path) is None
    return path


def start_dashboard(store: str, *args: str) -> tuple[subprocess.Popen, str]:
    """Start `trainprov ui` on a free port, with no Graphviz on its PATH; returns the process and the URL it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainprov.cli", "--store", store, "ui", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PATH": path_without_graphviz()},
    )
    url = Lines(proc).wait_for(r"serving at (http://\S+)", timeout=60).group(1)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def train_in_background(store: str, name: str, epochs: int, pause: float) -> tuple[subprocess.Popen, Lines, str]:
    """Start LIVE_TRAINING in another process; returns it once its run has started, with the run id."""
    proc = spawn_python(LIVE_TRAINING, store, name, str(epochs), str(pause))
    lines = Lines(proc)
    run_id = lines.wait_for(r"^(\d{8}-\d{6}-[0-9a-f]+)$", timeout=60).group(1)
    return proc, lines, run_id


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, dict[str, str]]:
    """A store with three finished or failed runs of known values."""
    path = str(tmp_path_factory.mktemp("ui") / "store.db")
    return path, record(path)


@pytest.fixture(scope="module")
def dashboard(store):
    """The URL of `trainprov ui` serving the module's store."""
    proc, url = start_dashboard(store[0])
    yield url.rstrip("/")
    stop(proc)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> str:
    folder = os.environ.get("TRAINPROV_SCREENSHOTS") or str(tmp_path_factory.getbasetemp() / "screenshots")
    os.makedirs(folder, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless, driven by Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"the browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)", pytrace=False)
    with sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as exc:
            pytest.fail(f"could not start {CHROMIUM}: {exc}", pytrace=False)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1500, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # a refused SQL statement is a 400 answer, which the browser also logs: not a page error
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "status of 400" not in msg.text else None)
    yield page
    context.close()
    assert not errors, f"the page reported errors: {errors}"


def get(url: str, *, headers: dict | None = None, opener=None, timeout: float = 60) -> tuple[int, object, bytes]:
    """Status, headers (case-insensitive) and body of a GET."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with (opener or urllib.request.build_opener()).open(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def sql_session(base: str) -> tuple[urllib.request.OpenerDirector, str]:
    """What the SQL page gives a browser: a session cookie (kept by the opener) and the page's SQL token."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    status, _, body = get(base + "/sql", opener=opener)
    assert status == 200
    return opener, re.search(r'data-token="([0-9a-f]+)"', body.decode()).group(1)


def post(url: str, body: bytes, headers: dict, opener=None, timeout: float = 60) -> tuple[int, object, bytes]:
    """Status, headers and body of a POST."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with (opener or urllib.request.build_opener()).open(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def post_sql(base: str, sql: str, session: tuple | None = None, headers: dict | None = None,
             timeout: float = 60) -> tuple[int, dict]:
    """POST /api/sql as the SQL page does (its session and token), unless `session` is given; JSON answer."""
    opener, token = session or sql_session(base)
    status, _, body = post(base + "/api/sql", json.dumps({"sql": sql}).encode(),
                           {"Content-Type": "application/json", "X-Trainprov-Token": token, **(headers or {})},
                           opener, timeout)
    return status, json.loads(body)


def points(page, chart: str) -> int:
    """How many markers the first curve of a chart shows."""
    return page.locator(f"#{chart} .scatterlayer .trace").first.locator("path.point").count()


# ---- in the browser -------------------------------------------------------------------------


def test_the_runs_list_shows_a_training_run_live_until_it_finishes(dashboard, store, page, shots):
    from playwright.sync_api import expect

    proc, lines, run_id = train_in_background(store[0], "live-list", epochs=10, pause=0.6)
    try:
        page.goto(dashboard + "/")
        page.evaluate("window.loadedOnce = true")  # gone if the page reloads
        row = page.locator(f'tr[data-run="{run_id}"]')
        expect(row.locator(".status")).to_have_text("running", timeout=SLOW)
        expect(row.locator("td.run")).to_contain_text("live-list")
        page.screenshot(path=os.path.join(shots, "runs-running.png"), full_page=True)
        expect(row.locator(".status")).to_have_text("finished", timeout=SLOW)  # the page updated itself
        lines.wait_for("^done$")
        assert page.evaluate("window.loadedOnce") is True
        cells = row.locator("td")
        headings = [h.strip() for h in page.locator("table.runs thead th").all_inner_texts()]
        assert cells.nth(headings.index("epochs")).inner_text() == "10"
        best = min(r["val_loss"] for r in tp.query("SELECT val_loss FROM epoch_metrics WHERE run_id = ?", [run_id], store=store[0]))
        assert cells.nth(next(i for i, h in enumerate(headings) if h.startswith("val_loss"))).get_attribute("title") == repr(best)
        # the other runs are listed with theirs, and a filter keeps only the failed one
        for name in RUNS:
            expect(page.locator("table.runs")).to_contain_text(name)
        page.select_option("select[name=status]", "failed")
        expect(page.locator("table.runs tbody tr")).to_have_count(1, timeout=SLOW)
        expect(page.locator("table.runs tbody")).to_contain_text("diverged")
        page.goto(dashboard + "/")
        page.screenshot(path=os.path.join(shots, "runs.png"), full_page=True)
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_a_training_killed_midway_shows_as_interrupted(dashboard, store, page):
    from playwright.sync_api import expect

    proc, _, run_id = train_in_background(store[0], "killed", epochs=200, pause=0.5)
    try:
        page.goto(dashboard + "/?status=running")
        expect(page.locator(f'tr[data-run="{run_id}"] .status')).to_have_text("running", timeout=SLOW)
        proc.kill()  # no chance to end the run
        proc.wait()
        page.goto(dashboard + "/")
        expect(page.locator(f'tr[data-run="{run_id}"] .status')).to_have_text("interrupted", timeout=SLOW)
    finally:
        stop(proc)


def test_the_run_page_curve_gains_points_while_the_run_trains(dashboard, store, page, shots):
    from playwright.sync_api import expect

    proc, lines, run_id = train_in_background(store[0], "live-run", epochs=14, pause=0.7)
    try:
        page.goto(f"{dashboard}/runs/{run_id}")
        page.evaluate("window.loadedOnce = true")
        expect(page.locator("#run-status")).to_have_text("running", timeout=SLOW)
        page.wait_for_function("() => document.querySelectorAll('#chart-loss .scatterlayer .trace:first-child path.point').length >= 1",
                               timeout=SLOW)
        first = points(page, "chart-loss")
        page.wait_for_function(
            f"() => document.querySelectorAll('#chart-loss .scatterlayer .trace:first-child path.point').length > {first}",
            timeout=SLOW)
        assert points(page, "chart-loss") > first  # more epochs drawn, same page
        page.screenshot(path=os.path.join(shots, "run-running.png"), full_page=True)
        expect(page.locator("#run-status")).to_have_text("finished", timeout=SLOW)
        lines.wait_for("^done$")
        page.wait_for_function(
            "() => document.querySelectorAll('#chart-loss .scatterlayer .trace:first-child path.point').length === 14",
            timeout=SLOW)
        assert page.evaluate("window.loadedOnce") is True
        expect(page.locator("#epoch-count")).to_have_text("14 epochs")
        # the learning-rate drop is a marker on the curves, described on hover
        assert page.evaluate("document.getElementById('chart-loss').data.find(t => t.name === 'adaptations').text[0]") == \
            "learning_rate 0.01 → 0.001 from epoch 8 (ReduceLROnPlateau)"
        expect(page.locator("#chart-loss")).to_contain_text("val_loss")  # its validation twin on the same chart
        expect(page.locator("#steps-section")).to_be_visible()
        expect(page.locator("#step-info")).to_contain_text("350 steps recorded")
        expect(page.locator("#inputs")).to_contain_text("Dropout")
        expect(page.locator("#outputs")).to_contain_text("ReduceLROnPlateau")
        expect(page.locator("section", has_text="Agents")).to_contain_text("person")
        page.reload()  # a finished run's page, as it is opened later
        page.wait_for_function("() => document.querySelectorAll('#chart-loss .scatterlayer .trace:first-child path.point').length === 14",
                               timeout=SLOW)
        page.screenshot(path=os.path.join(shots, "run.png"), full_page=True)
        # the graph pages, drawn with no Graphviz on the server's PATH (start_dashboard)
        page.click("text=Provenance graph")
        graph = page.locator("#graph")
        expect(page.locator("#graph[data-drawn]")).to_be_visible(timeout=SLOW)  # set once plotly has drawn
        labels = graph.locator(".textpoint")
        for words in ["train #1", "adapt #1", "evaluate #1", "epoch_metrics", "14 elements", "step_metrics",
                      "350 elements", "adaptations", "test_results", "hyperparameters", "layers", "person"]:
            expect(labels.filter(has_text=words).first).to_be_visible()
        nodes = int(graph.get_attribute("data-drawn"))
        assert nodes >= 12 and graph.locator(".shapelayer path").count() == nodes  # one PROV shape per node
        assert page.locator("#graph .scatterlayer .trace").count() > nodes // 10  # the edges, drawn
        expect(graph.locator(".legend")).to_contain_text("wasGeneratedBy")
        expect(graph.locator(".legend")).to_contain_text("wasInformedBy")
        expect(page.locator("#graph-counts")).to_contain_text("4 agents")
        box = labels.filter(has_text="adapt #1").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # hover: the details
        expect(page.locator(".hoverlayer")).to_contain_text(f"task: {run_id}.")
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # click: kept beside the graph
        expect(page.locator("#graph-node")).to_contain_text(f"{run_id}.")
        expect(page.locator("#graph-node")).to_contain_text("finished")
        width = "(r => Math.abs(r[1] - r[0]))(document.getElementById('graph')._fullLayout.xaxis.range)"
        before = page.evaluate(width)
        graph.locator(".modebar-btn[data-title='Zoom in']").click()
        page.wait_for_function(f"{width} < {before}", timeout=SLOW)  # zooms
        graph.locator(".modebar-btn[data-title='Reset axes']").click()
        page.mouse.move(5, 5)
        page.screenshot(path=os.path.join(shots, "provenance.png"), full_page=True)
        page.goto(f"{dashboard}/runs/{run_id}")
        page.click("text=Dataflow graph")
        expect(page.locator("#graph[data-drawn]")).to_be_visible(timeout=SLOW)
        for words in ["train", "adapt", "evaluate", "adaptations", "epoch_metrics", "hyperparameters", "attributes"]:
            expect(page.locator("#graph .textpoint").filter(has_text=words).first).to_be_visible()
        expect(page.locator("#graph .legend")).to_contain_text("generates")
        page.screenshot(path=os.path.join(shots, "dataflow.png"), full_page=True)
    finally:
        stop(proc)


def test_a_comparison_of_two_runs_shows_both(dashboard, store, page, shots):
    from playwright.sync_api import expect

    _, ids = store
    page.goto(dashboard + "/")
    page.check(f'input.pick[value="{ids["adam"]}"]')
    page.check(f'input.pick[value="{ids["sgd"]}"]')
    expect(page.locator("#compare-button")).to_have_text("Compare selected (2)")
    page.click("#compare-button")
    page.wait_for_url(re.compile(r"/compare\?runs="))
    expect(page.locator("#compare-runs tbody tr")).to_have_count(2)
    page.wait_for_function("() => document.querySelectorAll('#chart-val_loss .scatterlayer .trace').length === 2", timeout=SLOW)
    for trace in range(2):  # both runs' whole curves are drawn
        expect(page.locator("#chart-val_loss .scatterlayer .trace").nth(trace).locator("path.point")).to_have_count(6)
    legend = page.locator("#chart-val_loss .legend").text_content()  # SVG text
    assert "adam" in legend and "sgd" in legend
    expect(page.locator("#hp-table")).to_contain_text("optimizer")
    assert "batch_size" not in page.locator("#hp-table").inner_text()  # the same in both runs
    expect(page.locator("#divergence tbody tr")).to_have_count(1)
    expect(page.locator("#divergence tbody td").nth(3)).to_have_text("4")
    expect(page.locator("#chart-hp-learning_rate")).to_be_visible()
    # the provenance diff: the two runs differ in their hyperparameters, and the rows say which
    why = page.locator("section.provenance-diff")
    expect(why).to_contain_text("They differ in hyperparameters")
    expect(why.locator("tr", has_text="optimizer")).to_contain_text("sgd")
    page.screenshot(path=os.path.join(shots, "compare.png"), full_page=True)


def test_the_sql_console_answers_and_refuses_to_change_the_store(dashboard, store, page, shots):
    from playwright.sync_api import expect

    path, ids = store
    page.goto(dashboard + "/sql")
    expect(page.locator("#schema")).to_contain_text("epoch_metrics")
    page.fill("#sql", "SELECT name, min(val_loss) AS best FROM epoch_metrics JOIN runs USING (run_id) "
                      "WHERE name IN ('adam', 'sgd', 'diverged') GROUP BY name ORDER BY best")
    page.click("#run-sql")
    expect(page.locator("#sql-status")).to_contain_text("3 rows")
    assert page.locator("#sql-result tbody tr td:first-child").all_inner_texts() == ["sgd", "adam", "diverged"]
    with page.expect_download() as download:
        page.click("#csv-link")
    csv = open(download.value.path(), encoding="utf-8").read().splitlines()
    assert csv[0] == "name,best" and csv[1] == f"sgd,{min(RUNS['sgd']['val_loss'])!r}"
    page.screenshot(path=os.path.join(shots, "sql.png"), full_page=True)

    before = _fingerprint(path)
    for statement, refusal in [
        ("DELETE FROM runs", "read-only"),
        ("DROP TABLE epoch_metrics", "read-only"),
        (f"ATTACH DATABASE '{path}.other' AS other", "read-only"),
        ("PRAGMA user_version = 7", "read-only"),
        ("PRAGMA journal_mode = DELETE", "read-only"),
        ("SELECT 1; DELETE FROM runs", "one statement at a time"),
    ]:
        page.fill("#sql", statement)
        page.keyboard.press("Control+Enter")
        expect(page.locator("#sql-error")).to_be_visible()
        expect(page.locator("#sql-error")).to_contain_text(refusal)
        assert page.locator("#sql-result tr").count() == 0
    page.screenshot(path=os.path.join(shots, "sql-refused.png"), full_page=True)
    assert _fingerprint(path) == before
    assert not os.path.exists(f"{path}.other")


# ---- over HTTP ------------------------------------------------------------------------------


def _fingerprint(path: str) -> tuple:
    """What a change to the store would alter: its tables, rows, settings."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables]
        settings = [conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("user_version", "journal_mode", "schema_version")]
        statuses = conn.execute("SELECT group_concat(run_id || status) FROM runs").fetchone()[0]
        return tables, counts, settings, statuses
    finally:
        conn.close()


def test_the_sql_api_cannot_modify_the_store_whatever_it_is_sent(dashboard, store):
    path, _ = store
    before = _fingerprint(path)
    statements = [
        "DELETE FROM runs", "UPDATE runs SET status = 'finished'", "INSERT INTO runs (run_id) VALUES ('x')",
        "DROP TABLE epoch_metrics", "DROP INDEX IF EXISTS runs_status_idx", "ALTER TABLE runs ADD COLUMN x TEXT",
        "CREATE TABLE t (x)", "CREATE TEMP TABLE t (x)", "CREATE VIEW v AS SELECT 1",
        f"ATTACH DATABASE '{path}.other' AS other", "DETACH DATABASE main", "VACUUM", "REINDEX", "ANALYZE",
        "PRAGMA user_version = 7", "PRAGMA journal_mode = DELETE", "PRAGMA writable_schema = ON", "PRAGMA query_only = OFF",
        "BEGIN", "COMMIT", "SAVEPOINT s", "SELECT 1; DELETE FROM runs", "SELECT 1; DROP TABLE runs",
        "WITH d AS (DELETE FROM runs RETURNING *) SELECT * FROM d", "SELECT load_extension('x')",
    ]
    for sql in statements:
        status, body = post_sql(dashboard, sql)
        assert status == 400 and "error" in body, (sql, status, body)
    assert _fingerprint(path) == before
    assert not os.path.exists(f"{path}.other")
    # a read still works, and reading pragmas the store allows too
    status, body = post_sql(dashboard, "SELECT count(*) AS n FROM runs")
    assert status == 200 and body["columns"] == ["n"] and body["rows"] == [[before[1][before[0].index("runs")]]]
    status, body = post_sql(dashboard, "SELECT name FROM pragma_table_info('runs') ORDER BY cid LIMIT 2")
    assert body["rows"] == [["run_id"], ["dataflow"]]
    opener, token = sql_session(dashboard)
    status, _, text = post(dashboard + "/api/sql.csv", urllib.parse.urlencode({"sql": "DELETE FROM runs", "token": token}).encode(),
                           {"Content-Type": "application/x-www-form-urlencoded"}, opener)
    assert status == 400 and b"read-only" in text


def test_json_endpoints_give_what_the_pages_draw(dashboard, store):
    _, ids = store
    status, headers, body = get(f"{dashboard}/api/runs/{ids['diverged']}/epochs")
    data = json.loads(body)
    assert status == 200 and headers["Cache-Control"] == "no-store" and float(headers["Server-Timing"].split("dur=")[1]) > 0
    assert data["status"] == "failed" and data["epochs"] == [1, 2, 3]
    assert data["series"]["loss"] == [1.0, 5.0, "NaN"]  # NaN travels as a string JSON allows
    status, _, body = get(f"{dashboard}/api/runs?status=finished&sort=best_val_loss&order=asc")
    listing = json.loads(body)
    names = [r["name"] for r in listing["runs"] if r["name"] in RUNS]
    assert names == ["sgd", "adam"] and listing["counts"]["failed"] >= 1
    status, _, body = get(f"{dashboard}/api/compare?runs={ids['adam']},{ids['sgd']}")
    compare = json.loads(body)
    assert [r["name"] for r in compare["runs"]] == ["adam", "sgd"]
    assert compare["series"][ids["sgd"]]["val_loss"] == RUNS["sgd"]["val_loss"]
    assert compare["hyperparameters"] == {"optimizer": ["adam", "sgd"], "learning_rate": [0.01, 0.1]}
    status, _, body = get(f"{dashboard}/api/runs/nope/epochs")
    assert status == 404 and "no run" in json.loads(body)["error"]


def test_step_curves_are_downsampled_for_drawing_only(tmp_path):
    from trainprov.ui import data

    store = str(tmp_path / "steps.db")
    flow = tp.Dataflow("steps", [tp.Transformation("train", generates=[
        tp.Dataset("step_metrics", epoch=int, step=int, global_step=int, loss=float)])])
    with tp.start_run(flow, store) as run:
        with run.task("train") as train:
            for i in range(1, 5001):
                train.generated("step_metrics", epoch=1 + (i - 1) // 1000, step=1 + (i - 1) % 1000, global_step=i,
                                loss=9.0 if i == 2345 else 1.0 / i)
    with tp.connect(store) as reader:
        drawn = data.steps(reader, run.id, points=100)
        whole = data.steps(reader, run.id, points=10_000)
        stored = reader.rows("SELECT count(*) AS n FROM step_metrics")[0]["n"]
    assert stored == 5000 and drawn["rows"] == 5000  # the store keeps every step
    assert len(drawn["x"]) <= 100 and drawn["bucket"] == 50 and drawn["x"][:2] == [1, 51]
    assert max(drawn["series"]["loss"]["max"]) == 9.0  # a spike survives the downsampling
    assert drawn["series"]["loss"]["min"][0] == 1.0 / 50 and drawn["series"]["loss"]["max"][0] == 1.0
    assert len(whole["x"]) == 5000 and whole["bucket"] == 1


def test_pages_load_nothing_from_elsewhere_and_exports_download(dashboard, store):
    _, ids = store
    run_id = ids["adam"]
    for path in ("/", f"/runs/{run_id}", f"/compare?runs={run_id},{ids['sgd']}", "/sql", f"/runs/{run_id}/graph"):
        status, headers, body = get(dashboard + path)
        html = body.decode()
        assert status == 200, path
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        for url in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert url.startswith(("/", "?", "#", "data:")), (path, url)  # no CDN, no other site
    status, headers, body = get(dashboard + "/static/plotly.min.js")
    assert status == 200 and b"plotly" in body[:2000].lower()
    status, headers, body = get(f"{dashboard}/runs/{run_id}/export/provn")
    assert status == 200 and body.startswith(b"document") and f"run-{run_id}.provn" in headers["Content-Disposition"]
    status, headers, body = get(f"{dashboard}/runs/{run_id}/export/json")
    assert "wasGeneratedBy" in json.loads(body)
    # no Graphviz on the dashboard's PATH: the picture export says, on one line, what to install
    status, headers, body = get(f"{dashboard}/runs/{run_id}/export/svg?inline=1")
    message = re.search(r'<p class="problem"[^>]*>(.*?)</p>', body.decode(), re.S).group(1)
    assert status == 400 and "apt-get install graphviz" in message and "\n" not in message.strip()
    status, headers, body = get(f"{dashboard}/runs/{run_id}/export/dot")
    assert status == 200 and body.startswith(b"digraph")
    status, _, _ = get(f"{dashboard}/runs/{run_id}/export/docx")
    assert status == 400


def test_requests_for_another_host_name_are_refused(dashboard):
    status, _, body = get(dashboard + "/api/runs", headers={"Host": "attacker.example"})
    assert status == 400 and b"answers only" in body
    assert get(dashboard + "/api/runs", headers={"Host": "localhost"})[0] == 200


def test_a_token_protects_the_dashboard(store):
    proc, url = start_dashboard(store[0], "--token", "s3cret-token")
    try:
        base, token = url.split("?token=")[0].rstrip("/"), url.split("?token=")[1]
        assert token == "s3cret-token"
        assert get(base + "/")[0] == 401
        assert get(base + "/api/runs")[0] == 401
        assert get(base + "/static/plotly.min.js")[0] == 401
        assert get(base + "/?token=wrong")[0] == 401
        assert get(base + "/api/runs", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert get(base + "/api/runs", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        # the printed address sets a cookie and takes the token out of the address bar
        jar = CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        status, _, body = get(url, opener=opener)
        assert status == 200 and b"Runs" in body
        assert get(base + "/api/runs", opener=opener)[0] == 200
        cookie = next(iter(jar))
        assert cookie.value == "s3cret-token" and cookie.has_nonstandard_attr("HttpOnly")
    finally:
        stop(proc)


def test_listing_beyond_loopback_needs_an_explicit_flag_and_a_token(store):
    refused = subprocess.run([sys.executable, "-m", "trainprov.cli", "--store", store[0], "ui", "--host", "0.0.0.0", "--port", "0"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--allow-remote" in refused.stderr
    short = subprocess.run([sys.executable, "-m", "trainprov.cli", "--store", store[0], "ui", "--token", "abc", "--port", "0"],
                           capture_output=True, text=True, timeout=60)
    assert short.returncode == 2 and "at least 8" in short.stderr
    proc, url = start_dashboard(store[0], "--host", "0.0.0.0", "--allow-remote")
    try:
        token = url.split("?token=")[1]
        assert len(token) >= 24  # generated, printed once
        base = url.split("?")[0].replace("0.0.0.0", "127.0.0.1").rstrip("/")
        assert get(base + "/api/runs")[0] == 401
        assert get(base + "/api/runs", headers={"Authorization": f"Bearer {token}", "Host": "my-machine.example"})[0] == 200
    finally:
        stop(proc)


def test_the_dashboard_waits_for_a_store_that_does_not_exist_yet(tmp_path):
    store = str(tmp_path / "later.db")
    proc, url = start_dashboard(store)
    try:
        status, _, body = get(url)
        assert status == 503 and b"no trainprov store" in body
        record(store)
        status, _, body = get(url)
        assert status == 200 and b"diverged" in body
    finally:
        stop(proc)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_pages_read_sqlite_and_postgresql_alike(backend, tmp_path, request):
    """What the pages show, computed by the same functions on both backends."""
    from trainprov.ui import data, graph_layout, graphs, listing

    store = str(tmp_path / "store.db") if backend == "sqlite" else request.getfixturevalue("pg_store")
    ids = record(store)
    flow = tp.Dataflow("steps", [tp.Transformation("train", generates=[
        tp.Dataset("step_metrics", epoch=int, step=int, global_step=int, loss=float)])])
    with tp.start_run(flow, store, record_agents=False) as run:
        with run.task("train") as train:
            for i in range(1, 301):
                train.generated("step_metrics", epoch=1, step=i, global_step=i, loss=float("nan") if i == 7 else 1.0 / i)
    with tp.connect(store) as reader:
        runs = listing.runs_list(reader, listing.RunsQuery(sort="best_val_loss", order="asc"))
        assert [r["name"] for r in runs.rows[:3]] == ["sgd", "adam", "diverged"]
        assert [c.key for c in runs.columns if c.key.startswith("best_")] == ["best_val_loss", "best_loss", "best_accuracy"]
        newest = listing.runs_list(reader, listing.RunsQuery(q="adam"))
        assert [r["run_id"] for r in newest.rows] == [ids["adam"]] and newest.rows[0]["best_val_loss"] == 0.65
        curves = data.epochs(reader, ids["diverged"])
        assert curves["series"]["val_loss"] == [1.2, 6.0, "NaN"] and curves["status"] == "failed"
        assert [a["cause"] for a in data.epochs(reader, ids["adam"])["adaptations"]] == ["ReduceLROnPlateau", "EarlyStopping"]
        drawn = data.steps(reader, run.id, points=30)
        assert drawn["rows"] == 300 and drawn["bucket"] == 10 and len(drawn["x"]) == 30
        assert drawn["series"]["loss"]["max"][0] == 1.0 and drawn["series"]["loss"]["mean"][0] == \
            pytest.approx(sum(1.0 / i for i in range(1, 11) if i != 7) / 9)  # NaN left out of the mean
        detail = data.run_detail(reader, ids["sgd"])
        assert [t["name"] for t in detail["inputs"]] == ["hyperparameters", "layers"]
        assert {t["name"] for t in detail["outputs"]} == {"adaptations", "test_results"}
        comparison = data.compare(reader, [ids["adam"], ids["sgd"]], "val_loss")
        assert [h["name"] for h in comparison["hyperparameters"]] == ["optimizer", "learning_rate"]
        assert comparison["divergence"][0]["diverged_at_epoch"] == 4
        assert data.run_sql(reader, "SELECT count(*) AS n FROM epoch_metrics")["rows"] == [[15]]
        with pytest.raises(tp.QueryError, match="read-only"):
            data.run_sql(reader, "DELETE FROM runs")
        drawn = graph_layout.layout(graphs.run_graph(reader, ids["adam"]))
        assert ["epoch_metrics", "6 elements"] in [n["label"] for n in drawn["nodes"]]
        assert "wasInformedBy" in {e["relation"] for e in drawn["edges"]}
        version = reader.rows("SELECT dataflow_version AS v FROM runs WHERE run_id = ?", [ids["adam"]])[0]["v"]
        flow = graph_layout.layout(graphs.dataflow_graph(reader, "test_training", version))
        assert {"epoch_metrics", "evaluate"} <= {n["label"][0] for n in flow["nodes"]}



def test_the_graph_layout_needs_no_graphviz_and_keeps_nodes_apart(monkeypatch):
    """igraph's layered layout: no node overlaps another, arrows touch their nodes, a cycle and a long edge are drawn."""
    from trainprov.ui import graph_layout
    from trainprov.ui.graphs import Edge, Graph, Node

    monkeypatch.setenv("PATH", path_without_graphviz())
    nodes = [Node("run", "run", ["run r1", "flow v1, finished"]), Node("hp", "entity", ["hyperparameters", "1 element"]),
             Node("train", "activity", ["train #1", "finished 3.0 s"]), Node("person", "agent", ["person", "ada"])]
    nodes += [Node(f"adapt{i}", "activity", [f"adapt #{i}", "finished"]) for i in range(1, 6)]
    nodes += [Node(f"lr{i}", "entity", ["adaptations", "1 element"]) for i in range(1, 6)]
    edges = [Edge("train", "run", "wasStartedBy"), Edge("train", "hp", "used"), Edge("run", "person", "wasAssociatedWith")]
    edges += [Edge(f"adapt{i}", "train", "wasInformedBy") for i in range(1, 6)]
    edges += [Edge(f"lr{i}", f"adapt{i}", "wasGeneratedBy") for i in range(1, 6)]
    edges += [Edge("lr5", "run", "wasStartedBy"), Edge("hp", "lr1", "used"), Edge("train", "train", "used")]  # long, cycle, loop
    drawn = graph_layout.layout(Graph("test", nodes, edges))
    boxes = {n["id"]: (n["x"] - n["w"] / 2, n["y"] - n["h"] / 2, n["x"] + n["w"] / 2, n["y"] + n["h"] / 2) for n in drawn["nodes"]}
    assert set(boxes) == {n.id for n in nodes} and len(drawn["edges"]) == len(edges)
    for a, (ax0, ay0, ax1, ay1) in boxes.items():
        for b, (bx0, by0, bx1, by1) in boxes.items():
            assert a == b or ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, (a, b)
    for edge in drawn["edges"]:
        if edge["source"] == edge["target"]:
            continue
        for end, node in ((edge["points"][0], edge["source"]), (edge["points"][-1], edge["target"])):
            x0, y0, x1, y1 = boxes[node]
            assert x0 - 1 <= end[0] <= x1 + 1 and y0 - 1 <= end[1] <= y1 + 1, (edge, node)
    long = next(e for e in drawn["edges"] if e["source"] == "lr5" and e["target"] == "run")
    assert len(long["points"]) > 2  # bends around the layers it crosses
    tree = graph_layout.layout(Graph("tree", nodes[1:3] + nodes[4:], edges[1:2] + edges[3:13]))
    assert graph_layout.crossings(tree) == 0
