"""`trainprov report`: a run as one self-contained HTML file (opened in Chromium with no network) or a Markdown card."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from long_run import record_long_run
from test_ui import CHROMIUM, CHROMIUM_ARGS, SLOW

import trainprov as tp
from trainprov.cli import main

IMAGES = os.path.join(os.path.dirname(__file__), "..", "docs", "images")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[str, str, str]:
    """A store with a run of 200 epochs, 20 adaptations, 10 checkpoints, a data file and validation results; and a plain run."""
    folder = tmp_path_factory.mktemp("report")
    store = str(folder / "store.db")
    checked = record_long_run(store, str(folder), epochs=200, adaptations=20, checkpoints=10, layers=8, validations=True)
    (folder / "plain").mkdir()
    plain = record_long_run(str(folder / "plain.db"), str(folder / "plain"), epochs=20, adaptations=2, checkpoints=2, layers=2)
    return store, checked, plain


def report(store: str, run: str, path: str, *args: str) -> str:
    result = CliRunner().invoke(main, ["--store", store, "report", run, "-o", path, *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_html_report_shows_every_section_with_no_network(recorded, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    store, run_id, _ = recorded
    path = str(tmp_path / "run.html")
    assert "wrote the HTML report" in report(store, run_id[:12], path)
    files = tp.query("SELECT path, role, sha256 FROM files WHERE run_id = ? ORDER BY recorded_at", [run_id], store=store)
    data = next(f for f in files if f["role"] == "training data")
    checkpoints = [f for f in files if f["role"] == "checkpoints"]
    asked: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900}, offline=True)

        def only_the_file(route):
            asked.append(route.request.url)
            route.continue_() if route.request.url.startswith("file:") else route.abort()

        context.route("**/*", only_the_file)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto("file://" + path)
        expect(page.locator("h1")).to_contain_text(run_id)
        expect(page.locator("#summary")).to_contain_text("sgd")  # hyperparameters
        expect(page.locator("#summary")).to_contain_text("val_loss")  # best values
        expect(page.locator("#curves .js-plotly-plot")).to_have_count(3, timeout=SLOW)  # loss/val_loss, learning_rate, epoch_time_s
        expect(page.locator("#curves .js-plotly-plot .scatterlayer .trace").first).to_be_visible()
        expect(page.locator("#table-adaptations tbody tr")).to_have_count(20)
        expect(page.locator("#adaptations")).to_contain_text("ReduceLROnPlateau")
        expect(page.locator("#validations")).to_contain_text("rose at epoch 17")
        expect(page.locator("#data")).to_contain_text(data["sha256"])
        expect(page.locator("#table-checkpoints tbody tr")).to_have_count(10)
        for c in checkpoints:
            expect(page.locator("#checkpoints")).to_contain_text(c["sha256"])
        expect(page.locator("#environment")).to_contain_text("installed packages")
        for words in ("Seeds", "Machine and Python", "command", "working_dir"):  # the program agent's details
            expect(page.locator("#environment")).to_contain_text(words)
        expect(page.locator("#provenance #graph[data-drawn]")).to_be_visible(timeout=SLOW)
        expect(page.locator("#graph .textpoint").filter(has_text="adapt ×20")).to_have_count(1)
        prov = json.loads(page.locator("#prov-json").text_content())
        assert any(run_id in key for key in prov["activity"])
        assert page.locator("#prov-download").get_attribute("href").startswith("blob:")
        page.screenshot(path=os.path.join(IMAGES, "report.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert asked and all(url.startswith("file:") for url in asked), asked  # nothing fetched from elsewhere


def test_a_run_without_validations_has_no_validation_section(recorded, tmp_path):
    _, _, plain = recorded
    store = os.path.join(os.path.dirname(recorded[0]), "plain.db")
    path = str(tmp_path / "plain.html")
    report(store, plain, path)
    text = open(path, encoding="utf-8").read()
    assert 'id="validations"' not in text and 'id="checkpoints"' in text


def test_the_markdown_report_is_a_model_card(recorded, tmp_path):
    store, run_id, _ = recorded
    path = str(tmp_path / "card.md")
    assert "wrote the Markdown report" in report(store, run_id, path)
    text = open(path, encoding="utf-8").read()
    assert text.startswith(f"# Model card: run {run_id} (long)\n")
    for heading in ("## Training configuration", "## Results", "### Evaluation",
                    "## Adaptations", "## Validations", "## Data", "## Checkpoints", "## Environment"):
        assert heading + "\n" in text
    sha = tp.query("SELECT sha256 FROM files WHERE run_id = ? AND role = 'checkpoints'", [run_id], store=store)[0]["sha256"]
    assert sha in text and "| learning_rate | 0.1 |" in text
    assert "| val_loss |" in text  # the best val_loss and its epoch


def test_a_report_in_an_unknown_format_is_refused(recorded, tmp_path):
    from trainprov.query import Reader
    from trainprov.ui.report import ReportError, write

    with Reader(recorded[0]) as reader, pytest.raises(ReportError, match="unknown report format 'pdf'"):
        write(reader, "latest", str(tmp_path / "x.pdf"), "pdf")


def test_the_ro_crate_lists_every_file_with_its_sha256_and_reads_back(recorded, tmp_path):
    import hashlib

    import rdflib
    from rocrate.rocrate import ROCrate

    store, run_id, _ = recorded
    folder = tmp_path / "crate"
    assert "wrote the RO-Crate" in report(store, run_id, str(folder), "--format", "crate")
    metadata = json.loads((folder / "ro-crate-metadata.json").read_text())
    assert metadata["@context"] == "https://w3id.org/ro/crate/1.1/context"
    # a reader of the spec: the rocrate package finds the root, the run and every file
    crate = ROCrate(str(folder))
    files = {e.id: e for e in crate.get_entities() if "File" in e.type}
    recorded_files = tp.query("SELECT path, sha256 FROM files WHERE run_id = ?", [run_id], store=store)
    assert {"report.html", "report.md", "prov.json"} <= set(files)
    assert len(files) == 3 + len(recorded_files)  # the data file and the 10 checkpoints
    for entity_id, entity in files.items():
        assert entity["sha256"] == hashlib.sha256((folder / entity_id).read_bytes()).hexdigest(), entity_id
    assert {f["sha256"] for f in recorded_files} <= {e["sha256"] for e in files.values()}
    action = crate.get(f"#run-{run_id}")
    assert action.type == "CreateAction" and len(action["result"]) == 10 and len(action["object"]) == 1
    assert crate.root_dataset["mentions"].id == f"#run-{run_id}"
    # JSON-LD: parsed with the RO-Crate 1.1 context (the copy the rocrate package ships; no network)
    context = json.loads((Path(rocrate_data()) / "ro-crate.jsonld").read_text())["@context"]
    graph = rdflib.Graph().parse(data=json.dumps({**metadata, "@context": context}), format="json-ld")
    sha = rdflib.URIRef("http://schema.org/sha256")
    assert len(set(graph.subject_objects(sha))) == len(files)


def rocrate_data() -> str:
    import rocrate

    return os.path.join(os.path.dirname(rocrate.__file__), "data")
