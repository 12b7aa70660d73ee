"""Rich display in a notebook: a run trained with the Keras callback in a headless kernel (nbclient), shown as HTML."""

from __future__ import annotations

import json
import re

import conftest
import trainprov as tp

CELLS = [
    "import os\nos.environ['KERAS_BACKEND'] = 'torch'\nimport numpy as np, keras\nimport trainprov as tp\n"
    "from trainprov.keras import ProvenanceCallback",
    "x = np.random.default_rng(0).normal(size=(48, 3)).astype('float32')\ny = x.sum(axis=1, keepdims=True)\n"
    "ids = []\n"
    "for lr in (0.05, 0.01):\n"
    "    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])\n"
    "    model.compile(optimizer=keras.optimizers.SGD(lr), loss='mse')\n"
    "    with ProvenanceCallback(store=STORE, name=f'lr {lr}') as prov:\n"
    "        model.fit(x, y, epochs=4, verbose=0, validation_split=0.25, callbacks=[prov,\n"
    "                  keras.callbacks.ReduceLROnPlateau(monitor='loss', factor=0.5, patience=0, min_delta=10)])\n"
    "    ids.append(prov.run.id)\nprint(' '.join(ids))",
    "store = tp.connect(STORE)\nstore",
    "store.runs()",
    "store.run(ids[0])",
    "tp.diff(ids[0], ids[1], store=STORE)",
    "from trainprov.lineage import lineage\nlineage('epoch_metrics', store=STORE, run=ids[0])",
]


def run_notebook(path, store: str) -> list:
    """Run the notebook in a fresh kernel as a Jupyter server would (the notebook's path known); its cells."""
    return conftest.run_notebook(path, store, CELLS, {"JPY_SESSION_NAME": str(path), "KERAS_BACKEND": "torch"})


def html_of(cell) -> str:
    shown = [o["data"]["text/html"] for o in cell.outputs if o.get("output_type") == "execute_result" and "text/html" in o["data"]]
    assert shown, f"no rich output for {cell.source!r}: {cell.outputs}"
    return shown[0]


def test_a_notebook_shows_runs_a_diff_and_a_lineage_richly_and_records_the_notebook(tmp_path):
    path = tmp_path / "explore.ipynb"
    store = str(tmp_path / "nb.db")
    cells = run_notebook(path, store)
    first, second = cells[2].outputs[0]["text"].split()
    # the program agent is the notebook, not ipykernel_launcher.py
    program = tp.query("SELECT name, details FROM agents WHERE run_id = ? AND agent_id LIKE 'software:program:%'",
                       [first], store=store)[0]
    assert program["name"] == "explore.ipynb" and json.loads(program["details"])["notebook"] == str(path)
    # the store: its latest runs
    html = html_of(cells[3])
    assert "trainprov store" in html and "2 runs" in html and first in html and second in html
    # the list of runs: a table with coloured statuses
    html = html_of(cells[4])
    assert "<table>" in html and html.count(">finished</span>") == 2 and "lr 0.05" in html
    # one run: summary, hyperparameters, best values, curves drawn by plotly with plotly.js inside, adaptations
    html = html_of(cells[5])
    for words in (first, "explore.ipynb", "Hyperparameters", "SGD", "Best values", "val_loss", "Adaptations"):
        assert words in html, words
    assert "Plotly.newPlot" in html and "plotly.js v" in html  # the library itself, not a CDN link
    assert not re.search(r"<script[^>]+src=", html)  # nothing loaded from elsewhere
    # the comparison: what differs (the learning rate), both runs' curves (plotly.js not sent twice)
    html = html_of(cells[6])
    assert "hyperparameters" in html and "learning_rate" in html and "Plotly.newPlot" in html
    assert "plotly.js v" not in html
    # a lineage: the element and what it derives from
    html = html_of(cells[7])
    assert "Lineage of" in html and "el.epoch_metrics." in html and "hyperparameters" in html
