"""Where people look, for long runs: a provenance graph of a 1,000-epoch run with 100 adaptations, and its run page.

Driven in headless Chromium like tests/test_ui.py. The graph's drawing time is printed (and
kept in docs/benchmarks.md), not asserted: the machine is shared.
"""

from __future__ import annotations

import os
import re
import urllib.parse

import pytest

from long_run import record_long_run, record_ranked_run
from test_ui import SLOW, browser, page, start_dashboard, stop  # noqa: F401  (fixtures)

IMAGES = os.path.join(os.path.dirname(__file__), "..", "docs", "images")


@pytest.fixture(scope="module")
def long_store(tmp_path_factory) -> tuple[str, str, str]:
    folder = tmp_path_factory.mktemp("long")
    store = str(folder / "store.db")
    return store, record_long_run(store, str(folder)), record_ranked_run(store)


@pytest.fixture(scope="module")
def long_dashboard(long_store):
    proc, url = start_dashboard(long_store[0])
    yield url.rstrip("/")
    stop(proc)


def test_a_long_run_graph_collapses_repeated_tasks_and_expands_them_on_click(long_dashboard, long_store, browser):  # noqa: F811
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        store, run_id, _ = long_store
        page.goto(f"{long_dashboard}/runs/{run_id}/graph")
        graph = page.locator("#graph")
        expect(page.locator("#graph[data-drawn]")).to_be_visible(timeout=SLOW)
        print(f"\nprovenance graph of 1,000 epochs and 100 adaptations drawn {graph.get_attribute('data-drawn-ms')} ms "
              f"after the navigation started (laying out and drawing: {graph.get_attribute('data-drawing-ms')} ms)")
        page.goto(f"{long_dashboard}/runs/{run_id}/graph")  # again, plotly.js in the browser's cache as for a user
        expect(page.locator("#graph[data-drawn]")).to_be_visible(timeout=SLOW)
        print(f"again: {graph.get_attribute('data-drawn-ms')} ms (laying out and drawing: {graph.get_attribute('data-drawing-ms')} ms)")
        labels = graph.locator(".textpoint")
        # the 100 adapt tasks are one node with their count, their 100 one-element datasets one node too
        expect(labels.filter(has_text="adapt ×100")).to_have_count(1)
        expect(labels.filter(has_text="100 elements in 100 tasks")).to_have_count(1)
        expect(labels.filter(has_text="adapt #")).to_have_count(0)
        for words in ["train #1", "evaluate #1", "1000 elements", "64 elements", "20 files"]:
            expect(labels.filter(has_text=words).first).to_be_visible()
        assert int(graph.get_attribute("data-drawn")) < 20
        page.screenshot(path=os.path.join(IMAGES, "dashboard-provenance-long.png"))
        # zoom
        width = "(r => Math.abs(r[1] - r[0]))(document.getElementById('graph')._fullLayout.xaxis.range)"
        before = page.evaluate(width)
        graph.locator(".modebar-btn[data-title='Zoom in']").click()
        page.wait_for_function(f"{width} < {before}", timeout=SLOW)
        graph.locator(".modebar-btn[data-title='Reset axes']").click()
        # a click on an element group: its rows in the SQL console (the editor is filled, the user runs it)
        box = labels.filter(has_text="100 elements in 100 tasks").bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        link = page.locator("#graph-node-sql")
        expect(link).to_be_visible()
        sql = urllib.parse.parse_qs(urllib.parse.urlparse(link.get_attribute("href")).query)["sql"][0]
        assert sql.startswith(f"SELECT * FROM adaptations WHERE run_id = '{run_id}' AND task_id IN")
        link.click()
        expect(page.locator("textarea")).to_have_value(sql, timeout=SLOW)
        # a click on the collapsed tasks: expands them
        page.go_back()
        expect(page.locator("#graph[data-drawn]")).to_be_visible(timeout=SLOW)
        box = page.locator("#graph .textpoint").filter(has_text="adapt ×100").bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        expect(page.locator("#graph-node-expand")).to_have_text("Expand the 100 adapt tasks")
        page.click("#graph-node-expand")
        expect(page.locator("#graph[data-drawn]")).to_be_visible(timeout=SLOW)
        expect(page.locator("#graph .textpoint").filter(has_text="adapt #")).to_have_count(100)
        expect(page.locator("#graph-counts")).to_contain_text("expanded: adapt")
    finally:
        context.close()
    assert not errors, errors


def test_a_four_rank_run_graph_shows_one_train_node_with_its_count(long_dashboard, long_store, page):  # noqa: F811
    from playwright.sync_api import expect

    page.goto(f"{long_dashboard}/runs/{long_store[2]}/graph")
    expect(page.locator("#graph[data-drawn]")).to_be_visible(timeout=SLOW)
    labels = page.locator("#graph .textpoint")
    expect(labels.filter(has_text="train ×4")).to_have_count(1)
    expect(labels.filter(has_text="200 elements in 4 tasks")).to_have_count(1)


def test_the_long_run_page_lists_a_few_rows_of_long_tables_and_shows_all_on_request(long_dashboard, long_store, page):  # noqa: F811
    from playwright.sync_api import expect

    page.goto(f"{long_dashboard}/runs/{long_store[1]}")
    collapsed = page.evaluate("document.body.scrollHeight")
    layers = page.locator("#table-layers tbody tr")
    expect(layers).to_have_count(64)
    expect(page.locator("#table-layers tbody tr:visible")).to_have_count(5)
    expect(page.locator("#table-checkpoints tbody tr:visible")).to_have_count(5)
    expect(page.locator("#table-tasks tbody tr:visible")).to_have_count(5)
    button = page.locator('button.show-all[data-table="table-layers"]')
    expect(button).to_have_text("Show all 64 rows")
    expect(page.locator('button.show-all[data-table="table-tasks"]')).to_have_text("Show all 102 rows")
    button.click()
    expect(page.locator("#table-layers tbody tr:visible")).to_have_count(64)
    expect(button).to_have_count(0)
    height = page.evaluate("document.body.scrollHeight")
    print(f"\nrun page of 1,000 epochs, 64 layers, 20 checkpoints, 102 tasks: {collapsed} px tall, "
          f"{height} px with the layers shown")


def test_the_run_page_report_button_downloads_the_self_contained_report(long_dashboard, long_store, page):  # noqa: F811
    run_id = long_store[1]
    page.goto(f"{long_dashboard}/runs/{run_id}")
    with page.expect_download(timeout=60_000) as download:
        page.click("#report-button")
    assert download.value.suggested_filename == f"run-{run_id}.html"
    text = open(download.value.path(), encoding="utf-8").read()
    assert text.startswith("<!doctype html>") and run_id in text and 'id="prov-json"' in text
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(?!data:)', text)  # nothing loaded from the dashboard
