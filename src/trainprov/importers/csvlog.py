"""`trainprov import csv FILE`: a Keras `CSVLogger` file or a Lightning `CSVLogger` metrics.csv.

Keras writes one row per epoch (`epoch` from 0, then every metric). Lightning writes one
row per logging call: `epoch` (from 0), `step` (the global step), and the metrics logged
then; a metric logged at most once per epoch is an epoch metric, one logged several times
an epoch is a step metric. Epochs are counted from 1 in the store, as every integration
counts them (a file's epoch 0 is the store's epoch 1); metric values are kept as they are.
Lightning's `hparams.yaml` beside metrics.csv becomes the run's hyperparameters. A CSV file
has no times: the run's start and end are the file's modification time.
"""

from __future__ import annotations

import csv
import os
from typing import Any

from ..capture.training import value_type
from .common import (ImportSourceError, ImportSummary, PastRun, content_id, exists, import_dataflow, importer_agent, mtime,
                     now, source_files, stored_types, with_columns)


def _number(text: str) -> float | None:
    if text is None or text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise ImportSourceError(f"not a number in a metrics column: {text!r}") from None


def _read(path: str) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except OSError as exc:
        raise ImportSourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    if "epoch" not in header:
        raise ImportSourceError(f"{path} is not a Keras or Lightning CSV log: it has no 'epoch' column (columns: {', '.join(header)})")
    return header, rows


def _hparams(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, "hparams.yaml")
    if not os.path.exists(path):
        return {}
    import yaml

    with open(path, encoding="utf-8") as f:
        loaded = yaml.safe_load(f) or {}
    return loaded if isinstance(loaded, dict) else {}


def import_csv(path: str | os.PathLike, store: str | os.PathLike | None = None, *, name: str | None = None,
               group: str | None = None) -> ImportSummary:
    """Import one CSV log as a run; a file imported before (same content) adds nothing."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise ImportSourceError(f"no CSV log at {path}")
    header, rows = _read(path)
    lightning = "step" in header
    metrics = [c for c in header if c not in ("epoch", "step")]
    folder = os.path.dirname(path)
    hparams = _hparams(folder) if lightning else {}
    sources = [path] + ([os.path.join(folder, "hparams.yaml")] if hparams else [])
    run_id = content_id("csv", sources)
    summary = ImportSummary(path)
    if exists(run_id, store):
        summary.skipped.append(run_id)
        return summary

    per_epoch: dict[str, dict[int, int]] = {m: {} for m in metrics}
    for row in rows:
        for m in metrics:
            if (row.get(m) or "").strip() != "":
                epoch = int(float(row["epoch"]))
                per_epoch[m][epoch] = per_epoch[m].get(epoch, 0) + 1
    step_metrics = [m for m in metrics if lightning and any(n > 1 for n in per_epoch[m].values())]
    epoch_metrics = [m for m in metrics if m not in step_metrics]

    source = "lightning_csv" if lightning else "keras_csv"
    flow = import_dataflow(source)
    from ..capture.writer import writer_for

    backend = writer_for(store).backend
    flow, epoch_cols = with_columns(flow, "epoch_metrics", {m: "float" for m in epoch_metrics}, stored_types(backend, "epoch_metrics"))
    flow, step_cols = with_columns(flow, "step_metrics", {m: "float" for m in step_metrics}, stored_types(backend, "step_metrics"))
    flow, hp_cols = with_columns(flow, "hyperparameters", {k: value_type(v) for k, v in hparams.items()},
                                 stored_types(backend, "hyperparameters"))
    when = mtime(path)
    run = PastRun(flow, store, run_id=run_id, started=when, ended=when, name=name or os.path.basename(folder) or path,
                  group=group, tags={"import.source": path, "import.format": source})
    importer_agent(run, "csv", path)
    train = run.task("train", when, when)
    train.element("hyperparameters", when, framework="lightning" if lightning else "keras",
                  **{hp_cols[k]: v for k, v in hparams.items()})
    epochs: dict[int, dict[str, float]] = {}
    in_epoch: dict[int, int] = {}
    for row in rows:
        epoch = int(float(row["epoch"])) + 1
        values = {epoch_cols[m]: _number(row.get(m)) for m in epoch_metrics if (row.get(m) or "").strip() != ""}
        if values:
            epochs.setdefault(epoch, {}).update(values)
        steps = {step_cols[m]: _number(row.get(m)) for m in step_metrics if (row.get(m) or "").strip() != ""}
        if steps:
            in_epoch[epoch] = in_epoch.get(epoch, 0) + 1
            train.element("step_metrics", when, epoch=epoch, step=in_epoch[epoch],
                          global_step=int(float(row["step"])), **steps)
    for epoch in sorted(epochs):
        train.element("epoch_metrics", when, epoch=epoch, **epochs[epoch])
    source_files(run, sources, now())
    run.write()
    summary.imported.append(run_id)
    return summary

