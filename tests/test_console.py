"""The SQL console and read-only queries under attack and abuse: requests from other sites,
PostgreSQL functions that act beyond a query, statements that never end, huge results, Ctrl-C.

The dashboard is started as a user starts it (`trainprov ui`), the attacks are plain HTTP
requests such as another site's page makes a browser send, and the queries run on real
SQLite files and a real PostgreSQL server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest

import trainprov as tp
from test_analysis import record
from test_ui import browser, get, page, post, post_sql, sql_session, start_dashboard, stop  # noqa: F401 (fixtures)

#: a statement that never ends, and one whose result has a million rows (~120 bytes each)
RUNAWAY = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
MILLION = ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 1000000) "
           "SELECT n, n * 0.5 AS half, printf('%0100d', n) AS pad FROM r")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[str, dict[str, str]]:
    path = str(tmp_path_factory.mktemp("console") / "store.db")
    return path, record(path)


@pytest.fixture(scope="module")
def dashboard(recorded):
    proc, url = start_dashboard(recorded[0])
    yield url.rstrip("/")
    stop(proc)


# ---- requests from other sites (issue 20, item 1) --------------------------------------------


def test_sql_requests_that_another_site_could_send_are_refused(dashboard):
    session = sql_session(dashboard)
    opener, token = session
    other = sql_session(dashboard)  # another browser's session and token
    attacks = {
        "no token": {"X-Trainprov-Token": ""},
        "another session's token": {"X-Trainprov-Token": other[1]},
        "a forged Origin": {"Origin": "http://attacker.example"},
        "a page of another site": {"Sec-Fetch-Site": "cross-site"},
        "a sibling site": {"Sec-Fetch-Site": "same-site"},
        "an opaque origin": {"Origin": "null"},
    }
    for what, headers in attacks.items():
        status, body = post_sql(dashboard, "SELECT count(*) AS n FROM runs", session, headers)
        assert status == 403 and "only run for the dashboard's own pages" in body["error"], (what, status, body)
    # without the session cookie, the token alone is not enough (a cross-site request carries no cookie)
    status, _, body = post(dashboard + "/api/sql", json.dumps({"sql": "SELECT 1"}).encode(),
                           {"Content-Type": "application/json", "X-Trainprov-Token": token})
    assert status == 403, body
    # the CSV download: a form another site could post, and the old GET with SQL in the address
    form = urllib.parse.urlencode({"sql": "SELECT run_id FROM runs", "token": token}).encode()
    status, _, body = post(dashboard + "/api/sql.csv", form, {"Content-Type": "application/x-www-form-urlencoded",
                                                             "Origin": "http://attacker.example"}, opener)
    assert status == 403 and b"another origin" in body
    status, _, body = post(dashboard + "/api/sql.csv", urllib.parse.urlencode({"sql": "SELECT 1"}).encode(),
                           {"Content-Type": "application/x-www-form-urlencoded"}, opener)
    assert status == 403
    status, _, body = get(dashboard + "/api/sql.csv?sql=" + urllib.parse.quote("SELECT run_id FROM runs"), opener=opener)
    assert status == 405 and b"run_id" not in body
    # the dashboard's own page, as a browser sends it, is answered
    status, body = post_sql(dashboard, "SELECT count(*) AS n FROM runs", session,
                            {"Origin": dashboard, "Sec-Fetch-Site": "same-origin"})
    assert status == 200 and body["columns"] == ["n"]
    status, headers, body = post(dashboard + "/api/sql.csv", form, {"Content-Type": "application/x-www-form-urlencoded",
                                                                    "Origin": "null", "Sec-Fetch-Site": "same-origin"}, opener)
    assert status == 200 and body.decode().splitlines()[0] == "run_id" and "attachment" in headers["Content-Disposition"]


def test_the_console_works_in_the_browser_and_runs_a_linked_statement_only_from_its_own_pages(dashboard, recorded, page):
    from playwright.sync_api import expect

    _, ids = recorded
    # a link from elsewhere fills the editor, but nothing runs until the user presses Run
    page.goto(dashboard + "/sql?sql=" + urllib.parse.quote("SELECT name FROM runs WHERE name = 'adam'"))
    expect(page.locator("#sql-note")).to_be_visible()
    page.wait_for_timeout(500)
    assert page.locator("#sql-result tr").count() == 0 and page.locator("#sql-status").inner_text() == ""
    page.click("#run-sql")
    expect(page.locator("#sql-status")).to_contain_text("1 row")
    assert page.locator("#sql-result tbody td").all_inner_texts() == ["adam"]
    with page.expect_download() as download:
        page.click("#csv-link")
    assert open(download.value.path(), encoding="utf-8").read() == "name\nadam\n"
    # the run page's own link runs its query at once
    page.goto(f"{dashboard}/runs/{ids['sgd']}")
    page.click("text=Query in SQL")
    expect(page.locator("#sql-status")).to_contain_text("6 rows")
    expect(page.locator("#sql-note")).to_be_hidden()


# ---- PostgreSQL: functions that act beyond the query (issue 20, item 2) ----------------------


def test_postgresql_queries_cannot_take_trainprov_s_lock_or_end_other_sessions(pg_store, postgres):
    from trainprov.store.postgresql import CATALOG_LOCK
    from trainprov.ui import data

    record(pg_store)
    with tp.connect(pg_store) as reader, postgres.admin() as admin:
        backend_pid = admin.execute("SELECT pg_backend_pid()").fetchone()[0]
        for sql in (f"SELECT pg_advisory_lock({CATALOG_LOCK})",
                    f"SELECT pg_catalog.PG_ADVISORY_LOCK /* hidden? */ ({CATALOG_LOCK})",
                    f'SELECT "pg_try_advisory_lock"({CATALOG_LOCK})',
                    f"SELECT pg_terminate_backend({backend_pid})",
                    f"SELECT pg_cancel_backend({backend_pid})",
                    f"SELECT query_to_xml('SELECT pg_terminate_backend({backend_pid})', true, true, '')",
                    f"DO $$ BEGIN PERFORM pg_advisory_lock({CATALOG_LOCK}); END $$"):
            with pytest.raises(tp.QueryError, match=r"may not call|refused") as info:
                data.run_sql(reader, sql)
            assert "pg_" in str(info.value) or "DO statements" in str(info.value) or "query_to_xml" in str(info.value)
            with pytest.raises(tp.QueryError):
                reader.result(sql)
        # the other session lives, no one holds trainprov's lock, and a new run declares at once
        assert admin.execute("SELECT 1").fetchone() == (1,)
        holders = admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0]
        assert holders == 0
        done = threading.Event()

        def declare() -> None:
            with tp.start_run(tp.Dataflow("after_console", [tp.Transformation("t", generates=[
                    tp.Dataset("after_console_metrics", x=int)])]), pg_store, record_agents=False):
                done.set()

        worker = threading.Thread(target=declare, daemon=True)
        worker.start()
        worker.join(60)
        assert done.is_set()
        # ordinary reads still work, with a time limit on a slow one
        assert data.run_sql(reader, "SELECT count(*) AS n FROM runs")["rows"] == [[4]]
        assert reader.rows("SELECT 'pg_advisory_lock(1)' AS text")[0]["text"] == "pg_advisory_lock(1)"
        with pytest.raises(tp.QueryError, match="time limit of 1 s"):
            data.run_sql(reader, "SELECT pg_sleep(30)", timeout=1)
        assert reader.rows("SELECT 1 AS one") == [{"one": 1}]


def test_postgresql_console_reads_the_first_rows_of_a_big_result_and_streams_the_rest(pg_store):
    from trainprov.ui import data

    record(pg_store)
    with tp.connect(pg_store) as reader:
        shown = data.run_sql(reader, "SELECT n, n * 0.5 AS half FROM generate_series(1, 200000) AS n")
        assert shown["count"] == 1000 and shown["truncated"] and shown["rows"][-1] == [1000, 500.0]
        lines = "".join(data.sql_csv_chunks(reader, "SELECT n FROM generate_series(1, 200000) AS n", batch=7000)).splitlines()
        assert len(lines) == 200_001 and lines[-1] == "200000"
        with pytest.raises(tp.QueryError, match="time limit"):
            data.run_sql(reader, "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
                         timeout=1)
        assert data.run_sql(reader, "EXPLAIN SELECT * FROM runs")["count"] >= 1  # not a cursor's statement: read whole


# ---- statements that never end (issue 18, item 12) -------------------------------------------


def test_runaway_console_statements_leave_the_dashboard_answering_and_end_at_their_time_limit(recorded):
    proc, url = start_dashboard(recorded[0], "--sql-timeout", "6")
    base = url.rstrip("/")
    try:
        session = sql_session(base)
        answers: list[tuple[int, dict]] = []
        posts = [threading.Thread(target=lambda: answers.append(post_sql(base, RUNAWAY, session, timeout=120)))
                 for _ in range(8)]
        for thread in posts:
            thread.start()
        deadline = time.monotonic() + 30
        while sum(status == 429 for status, _ in answers) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        busy = [body for status, body in answers if status == 429]
        assert len(busy) == 4 and all("busy" in b["error"] for b in busy), answers  # past the cap: told at once
        # four never-ending statements run now: the pages still answer, /health within a second
        for path in ("/health", "/api/runs", "/"):
            start = time.perf_counter()
            status, _, _ = get(base + path)
            took = time.perf_counter() - start
            assert status == 200, path
            if path == "/health":
                assert took < 1.0, f"/health took {took:.2f} s while runaway statements ran"
        for thread in posts:
            thread.join(120)
        stopped = [body for status, body in answers if status == 400]
        assert len(stopped) == 4 and all("time limit of 6 s" in b["error"] for b in stopped), answers
        # and the console is free again
        assert post_sql(base, "SELECT count(*) AS n FROM runs", session)[0] == 200
    finally:
        stop(proc)


# ---- a million rows (issue 18, item 13) ------------------------------------------------------


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_million_row_result_is_shown_in_part_and_downloaded_whole_without_loading_it(recorded):
    proc, url = start_dashboard(recorded[0])
    base = url.rstrip("/")
    try:
        session = sql_session(base)
        post_sql(base, "SELECT * FROM runs", session)  # the reader is open: what follows is the result's cost
        before = _peak_rss_mb(proc.pid)
        status, shown = post_sql(base, MILLION, session)
        assert status == 200 and shown["count"] == 1000 and shown["truncated"] is True
        assert shown["rows"][0][:2] == [1, 0.5] and shown["rows"][-1][0] == 1000
        opener, token = session
        form = urllib.parse.urlencode({"sql": MILLION, "token": token}).encode()
        request = urllib.request.Request(base + "/api/sql.csv", data=form, method="POST",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        lines = 0
        last = b""
        with opener.open(request, timeout=120) as response:
            assert response.headers.get("Content-Length") is None  # streamed, not built first
            for line in response:
                lines += 1
                last = line
        assert lines == 1_000_001 and last == b"1000000,500000.0," + b"%0100d" % 1000000 + b"\n"
        grown = _peak_rss_mb(proc.pid) - before
        # the whole result is ~120 MB as CSV and several times that as Python rows
        assert grown < 60, f"the dashboard's peak memory grew by {grown:.0f} MB"
    finally:
        stop(proc)


def test_head_and_stream_read_only_what_is_asked(tmp_path):
    store = str(tmp_path / "store.db")
    record(store)
    with tp.connect(store) as reader:
        first, more = reader.head(MILLION, 10)
        assert [r[0] for r in first.rows] == list(range(1, 11)) and more
        first, more = reader.head("SELECT run_id FROM runs", 10)
        assert len(first.rows) == 3 and not more
        with reader.stream("SELECT n FROM (" + MILLION + ") WHERE n <= 2500") as rows:
            assert rows.columns == ["n"] and [len(b) for b in rows.batches(1000)] == [1000, 1000, 500]
        with pytest.raises(tp.QueryError, match="time limit of 0.5 s"):
            reader.result(RUNAWAY, timeout=0.5)
        assert reader.rows("SELECT count(*) AS n FROM runs") == [{"n": 3}]
    with pytest.raises(tp.QueryTimeout):
        tp.query(RUNAWAY, store=store, timeout=0.5)


# ---- Ctrl-C (issue 18, item 14) --------------------------------------------------------------


def _cli_query(store: str, sql: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainprov.cli", "--store", store, "query", sql],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _interrupt_and_wait(proc: subprocess.Popen) -> tuple[int, str, float]:
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("`trainprov query` still ran 30 s after Ctrl-C")
    return proc.returncode, err, time.monotonic() - start


def test_ctrl_c_stops_a_never_ending_query_on_sqlite(tmp_path):
    store = str(tmp_path / "store.db")
    record(store)
    proc = _cli_query(store, RUNAWAY)
    deadline = time.monotonic() + 60
    # the statement runs once the command has the store open (its imports come first)
    while not any(os.path.realpath(os.path.join(f"/proc/{proc.pid}/fd", fd)) == store
                  for fd in os.listdir(f"/proc/{proc.pid}/fd")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(1)
    status, err, took = _interrupt_and_wait(proc)
    assert status == 130 and "interrupted (Ctrl-C); the statement was stopped" in err and "Traceback" not in err
    assert took < 10


def test_ctrl_c_stops_a_never_ending_query_on_postgresql(pg_store, postgres):
    record(pg_store)
    proc = _cli_query(pg_store, RUNAWAY)
    database = pg_store.split("@/")[1].split("?")[0]

    def running() -> int:
        with postgres.admin() as admin:
            return admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'active' "
                                 "AND query LIKE 'WITH RECURSIVE%%'", [database]).fetchone()[0]

    deadline = time.monotonic() + 60
    while not running():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    status, err, took = _interrupt_and_wait(proc)
    assert status == 130 and "interrupted (Ctrl-C); the statement was stopped" in err and "Traceback" not in err
    assert took < 10
    time.sleep(0.5)
    assert running() == 0  # cancelled in the server too, not left running
