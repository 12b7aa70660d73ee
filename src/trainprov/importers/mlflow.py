"""`trainprov import mlflow PATH_OR_URI`: an MLflow tracking store (a file store folder, or a database
URI such as `sqlite:///mlflow.db`), read with MLflow's own client (`pip install trainprov[mlflow]`,
which installs the light `mlflow-skinny`).

Each MLflow run becomes a run with id `mlflow-RUN_UUID`, its name, user, start and end
times; its experiment is its run group (`kind = 'mlflow_experiment'`) and its parent run
(tag `mlflow.parentRunId`) its parent. Params become `hyperparameters` columns, as the
text MLflow keeps them; every tag becomes a run tag; every logged metric value (each step
and timestamp) a row of `scalars` (`tag` = the metric key), recorded at its timestamp;
artifacts stored on this machine are file entities the run generated. The store's own
files (the run's folder, or the database file) are the import's sources.
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any
from urllib.parse import unquote, urlparse

from ..capture import groups
from ..spec import Dataflow, Dataset, Transformation
from .common import (IMPORT, ImportSourceError, ImportSummary, PastRun, exists, importer_agent, now, source_files, stored_types,
                     with_columns)
from .tensorboard import SCALARS

_STATUS = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "interrupted", "RUNNING": "interrupted",
           "SCHEDULED": "interrupted"}


def _flow() -> Dataflow:
    return Dataflow("mlflow_import", [
        Transformation("train", uses=[Dataset("hyperparameters", framework=str)], generates=[SCALARS]),
        Transformation(IMPORT, description="imported from mlflow"),
    ], description="runs imported from an MLflow tracking store")


def _uri(source: str) -> tuple[str, list[str]]:
    """The tracking URI of a path or URI, and the local files that hold the store (for a database URI: its file)."""
    if "://" not in source and ":" not in source.split(os.sep)[0]:
        path = os.path.abspath(source)
        if not os.path.isdir(path):
            raise ImportSourceError(f"no MLflow file store at {path} (a folder such as ./mlruns, or a URI such as sqlite:///mlflow.db)")
        return "file://" + path, []
    parsed = urlparse(source)
    if parsed.scheme == "sqlite":
        path = unquote(source[len("sqlite:///"):]) if source.startswith("sqlite:///") else ""
        path = path if path.startswith("/") else os.path.abspath(path)
        if not os.path.isfile(path):
            raise ImportSourceError(f"no SQLite file at {path} for {source}")
        return source, [path]
    return source, []


def _local(uri: str) -> str | None:
    if uri.startswith("file://"):
        return unquote(urlparse(uri).path)
    return uri if uri.startswith("/") else None


def _ms(value: int | None) -> float | None:
    return None if value is None else value / 1000.0


def import_mlflow(source: str | os.PathLike, store: str | os.PathLike | None = None) -> ImportSummary:
    """Import every run of an MLflow tracking store; runs imported before are skipped."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ImportSourceError("importing from MLflow needs MLflow's client: pip install 'trainprov[mlflow]'") from None
    uri, db_files = _uri(os.fspath(source))
    # MLflow 3 refuses to open file stores unless told to; reading one is what an import is for
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri)
    try:
        experiments = client.search_experiments()
    except Exception as exc:
        raise ImportSourceError(f"cannot read the MLflow store {uri}: {exc}") from None
    summary = ImportSummary(uri)
    from ..capture.writer import writer_for

    backend = writer_for(store).backend
    import mlflow

    for experiment in experiments:
        runs = client.search_runs([experiment.experiment_id], max_results=50000, order_by=["attributes.start_time ASC"])
        if runs:
            groups.record_group(experiment.name, kind="mlflow_experiment",
                                description=f"MLflow experiment {experiment.name} ({experiment.experiment_id})",
                                details={"experiment_id": experiment.experiment_id, "tracking_uri": uri,
                                         "tags": dict(experiment.tags or {})}, store=store)
        for mlrun in runs:
            run_id = f"mlflow-{mlrun.info.run_id}"
            if exists(run_id, store):
                summary.skipped.append(run_id)
                continue
            _import_run(client, mlrun, run_id, experiment.name, uri, db_files, backend, store, mlflow.__version__)
            summary.imported.append(run_id)
    return summary


def _import_run(client: Any, mlrun: Any, run_id: str, group: str, uri: str, db_files: list[str], backend: Any,
                store: Any, version: str) -> None:
    info, data = mlrun.info, mlrun.data
    params = dict(data.params)
    flow, columns = with_columns(_flow(), "hyperparameters", {k: "str" for k in params}, stored_types(backend, "hyperparameters"))
    start, end = _ms(info.start_time), _ms(info.end_time)
    status = _STATUS.get(info.status, "interrupted")
    parent = data.tags.get("mlflow.parentRunId")
    run = PastRun(flow, store, run_id=run_id, started=start, ended=end or start, status=status,
                  name=info.run_name or data.tags.get("mlflow.runName"), group=group,
                  parent=f"mlflow-{parent}" if parent else None, tags=dict(data.tags),
                  user=data.tags.get("mlflow.user") or getattr(info, "user_id", None),
                  command=data.tags.get("mlflow.source.name"),
                  error=None if status == "finished" else f"MLflow status {info.status}")
    importer_agent(run, "mlflow", uri, version)
    train = run.task("train", start, end or start, status=status)
    train.element("hyperparameters", start, framework="mlflow", **{columns[k]: v for k, v in params.items()})
    history = []
    for key in sorted(data.metrics):
        for m in client.get_metric_history(info.run_id, key):
            history.append((m.timestamp, key, m.step, m.value))
    for timestamp, key, step, value in sorted(history):
        train.element("scalars", timestamp / 1000.0, tag=key, step=int(step), value=float(value),
                      wall_time=_dt.datetime.fromtimestamp(timestamp / 1000.0, _dt.timezone.utc))
    folder = _local(info.artifact_uri or "")
    if folder and os.path.isdir(folder):
        for root, _, files in os.walk(folder):
            for name in sorted(files):
                train.file(os.path.join(root, name), role="artifact", at=end or start)
    sources = list(db_files)
    run_dir = os.path.dirname(folder) if folder and not db_files else None
    if run_dir and os.path.isdir(run_dir):
        for root, _, files in os.walk(run_dir):
            if os.path.commonpath([root, folder]) == folder:
                continue  # artifacts are the run's outputs, recorded above
            sources += [os.path.join(root, f) for f in sorted(files)]
    source_files(run, sources, now())
    run.write()
