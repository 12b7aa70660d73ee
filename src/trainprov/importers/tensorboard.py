"""`trainprov import tensorboard LOGDIR`: TensorBoard event files, read with TensorBoard's own reader.

Each folder under LOGDIR that holds event files (`events.out.tfevents.*`) is one run (a
folder inside another run's, such as the one torch's `add_hparams` writes, has that run as
its parent): every
scalar becomes a row of the dataset `scalars` (`tag`, `step`, `value`, `wall_time`, recorded
at its wall time), so no value is averaged or dropped, and the run starts and ends with the
first and last event. Hyperparameters written with `add_hparams` (the hparams plugin's
session data) become the run's `hyperparameters`. Needs the `tensorboard` package
(`pip install trainprov[tensorboard]`).
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any

from ..spec import Dataflow, Dataset, Transformation
from .common import (IMPORT, ImportSourceError, ImportSummary, PastRun, content_id, exists, importer_agent, now, source_files,
                     stored_types, with_columns)

SCALARS = Dataset("scalars", tag=str, step=int, value=float, wall_time=_dt.datetime,
                  description="imported scalars: one row per tag and step, as the source logged them")


def _flow() -> Dataflow:
    return Dataflow("tensorboard_import", [
        Transformation("train", uses=[Dataset("hyperparameters", framework=str)], generates=[SCALARS]),
        Transformation(IMPORT, description="imported from tensorboard"),
    ], description="runs imported from TensorBoard event files")


def _event_dirs(logdir: str) -> list[str]:
    found = []
    for folder, _, files in os.walk(logdir):
        if any(f.startswith("events.out.tfevents") for f in files):
            found.append(folder)
    return sorted(found)


def _hparams(accumulator: Any) -> dict[str, Any]:
    """The hparams plugin's session values, if the run has them."""
    try:
        from tensorboard.plugins.hparams import metadata, plugin_data_pb2
    except ImportError:
        return {}
    try:
        content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)
    except KeyError:  # no hparams in this run
        return {}
    values: dict[str, Any] = {}
    for blob in content.values():
        data = plugin_data_pb2.HParamsPluginData.FromString(blob)
        if data.HasField("session_start_info"):
            for key, value in data.session_start_info.hparams.items():
                kind = value.WhichOneof("kind")
                if kind == "number_value":
                    number = value.number_value
                    values[key] = int(number) if float(number).is_integer() and abs(number) < 2**53 else number
                elif kind == "string_value":
                    values[key] = value.string_value
                elif kind == "bool_value":
                    values[key] = value.bool_value
    return values


def import_tensorboard(logdir: str | os.PathLike, store: str | os.PathLike | None = None, *,
                       group: str | None = None) -> ImportSummary:
    """Import every run (folder of event files) under a log directory; runs imported before are skipped."""
    try:
        from tensorboard.backend.event_processing import event_accumulator
    except ImportError:
        raise ImportSourceError("importing TensorBoard logs needs the tensorboard package: pip install 'trainprov[tensorboard]'") from None
    logdir = os.path.abspath(os.fspath(logdir))
    if not os.path.isdir(logdir):
        raise ImportSourceError(f"no TensorBoard log directory at {logdir}")
    folders = _event_dirs(logdir)
    if not folders:
        raise ImportSourceError(f"{logdir} holds no TensorBoard event files (events.out.tfevents.*)")
    summary = ImportSummary(logdir)
    from ..capture.writer import writer_for

    backend = writer_for(store).backend
    ids: dict[str, str] = {}
    for folder in folders:
        files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.startswith("events.out.tfevents"))
        run_id = ids[folder] = content_id("tensorboard", files)
        if exists(run_id, store):
            summary.skipped.append(run_id)
            continue
        acc = event_accumulator.EventAccumulator(folder, size_guidance={event_accumulator.SCALARS: 0,
                                                                        event_accumulator.TENSORS: 0})
        acc.Reload()
        scalars = [(tag, e) for tag in acc.Tags().get("scalars", []) for e in acc.Scalars(tag)]
        try:
            hparams = _hparams(acc)
        except Exception:  # plugin data of another version: the scalars still come
            hparams = {}
        times = [e.wall_time for _, e in scalars] or [os.stat(f).st_mtime for f in files]
        flow, columns = with_columns(_flow(), "hyperparameters",
                                     {k: ("bool" if isinstance(v, bool) else "int" if isinstance(v, int)
                                          else "float" if isinstance(v, float) else "str") for k, v in hparams.items()},
                                     stored_types(backend, "hyperparameters"))
        relative = os.path.relpath(folder, logdir)
        run = PastRun(flow, store, run_id=run_id, started=min(times), ended=max(times),
                      name=relative if relative != "." else os.path.basename(logdir), group=group,
                      # torch's add_hparams writes a run of its own in a subfolder of the training's
                      parent=ids.get(os.path.dirname(folder)),
                      tags={"import.source": folder, "import.format": "tensorboard"})
        importer_agent(run, "tensorboard", folder)
        train = run.task("train", min(times), max(times))
        train.element("hyperparameters", min(times), framework="tensorboard", **{columns[k]: v for k, v in hparams.items()})
        for tag, event in sorted(scalars, key=lambda te: (te[1].wall_time, te[0], te[1].step)):
            train.element("scalars", event.wall_time, tag=tag, step=int(event.step), value=float(event.value),
                          wall_time=_dt.datetime.fromtimestamp(event.wall_time, _dt.timezone.utc))
        source_files(run, files, now())
        run.write()
        summary.imported.append(run_id)
    return summary
