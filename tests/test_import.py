"""Importers: logs written in the test by the real tools (Keras and Lightning CSVLogger, torch's
SummaryWriter, MLflow's client on a file store and on SQLite) become runs whose every value equals
the source's, with the source's ids and times, the importer as agent and the sources as files;
a second import adds nothing."""

from __future__ import annotations

import csv
import hashlib
import os

import numpy as np
import pytest
from click.testing import CliRunner

import trainprov as tp
from trainprov.cli import main
from trainprov.importers import import_csv, import_mlflow, import_tensorboard

TABLES = ("runs", "tasks", "files", "agents", "run_tags", "run_groups")


def counts(store: str) -> dict[str, int]:
    out = {t: tp.query(f"SELECT count(*) AS n FROM {t}", store=store)[0]["n"] for t in TABLES}
    for ds in ("epoch_metrics", "step_metrics", "scalars", "hyperparameters"):
        try:
            out[ds] = tp.query(f"SELECT count(*) AS n FROM {ds}", store=store)[0]["n"]
        except tp.QueryError:
            pass
    return out


def provenance_of_import(store: str, run_id: str, sources: list[str]) -> None:
    agents = tp.query("SELECT agent_id, kind FROM agents WHERE run_id = ?", [run_id], store=store)
    assert [a["kind"] for a in agents] == ["software"] and agents[0]["agent_id"].startswith("software:trainprov-import-")
    files = tp.query("SELECT f.path, f.sha256, t.transformation FROM files f JOIN tasks t ON t.task_id = f.task_id "
                     "WHERE f.run_id = ? AND f.role = 'import_source' ORDER BY f.path", [run_id], store=store)
    assert [f["path"] for f in files] == sorted(sources)
    for f in files:
        assert f["transformation"] == "import"
        assert f["sha256"] == hashlib.sha256(open(f["path"], "rb").read()).hexdigest()


def test_keras_csvlogger(store, tmp_path):
    import keras

    path = str(tmp_path / "log.csv")
    x = np.random.default_rng(0).normal(size=(40, 3)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    model.fit(x, x[:, :1], validation_split=0.25, epochs=3, verbose=0, callbacks=[keras.callbacks.CSVLogger(path)])
    source = list(csv.DictReader(open(path)))
    summary = import_csv(path, store)
    assert len(summary.imported) == 1
    run_id = summary.imported[0]
    rows = tp.query("SELECT * FROM epoch_metrics WHERE run_id = ? ORDER BY epoch", [run_id], store=store)
    assert [r["epoch"] for r in rows] == [int(s["epoch"]) + 1 for s in source]
    for row, line in zip(rows, source):
        for key in ("loss", "mae", "val_loss", "val_mae"):
            assert row[key] == float(line[key])
    assert tp.query("SELECT framework FROM hyperparameters WHERE run_id = ?", [run_id], store=store)[0]["framework"] == "keras"
    provenance_of_import(store, run_id, [path])
    before = counts(store)
    assert import_csv(path, store).imported == [] and counts(store) == before


def test_lightning_csvlogger(store, tmp_path):
    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger

    class Tiny(L.LightningModule):
        def __init__(self, lr: float = 0.05):
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, i):
            loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
            self.log("train_loss", loss, on_step=True, on_epoch=False)
            return loss

        def validation_step(self, batch, i):
            self.log("val_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 2), torch.randn(16, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    logger = CSVLogger(str(tmp_path), name="lt")
    L.Trainer(max_epochs=2, logger=logger, log_every_n_steps=1, enable_progress_bar=False, enable_checkpointing=False,
              enable_model_summary=False).fit(Tiny(), loader, loader)
    path = os.path.join(logger.log_dir, "metrics.csv")
    source = list(csv.DictReader(open(path)))
    run_id = import_csv(path, store).imported[0]
    steps = tp.query("SELECT epoch, global_step, train_loss FROM step_metrics WHERE run_id = ? ORDER BY global_step",
                     [run_id], store=store)
    assert [(s["epoch"], s["global_step"], s["train_loss"]) for s in steps] == [
        (int(r["epoch"]) + 1, int(r["step"]), float(r["train_loss"])) for r in source if r["train_loss"]]
    epochs = tp.query("SELECT epoch, val_loss FROM epoch_metrics WHERE run_id = ? ORDER BY epoch", [run_id], store=store)
    assert [(e["epoch"], e["val_loss"]) for e in epochs] == [(int(r["epoch"]) + 1, float(r["val_loss"])) for r in source if r["val_loss"]]
    assert tp.query("SELECT lr FROM hyperparameters WHERE run_id = ?", [run_id], store=store)[0]["lr"] == 0.05
    provenance_of_import(store, run_id, [path, os.path.join(logger.log_dir, "hparams.yaml")])
    before = counts(store)
    assert import_csv(path, store).skipped == [run_id] and counts(store) == before


def test_tensorboard_summarywriter(store, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    logdir = tmp_path / "tb"
    writer = SummaryWriter(str(logdir / "run1"))
    written = {}
    for step in range(4):
        for tag, value in (("loss/train", 1.0 / (step + 1)), ("acc/val", 0.1 * step)):
            writer.add_scalar(tag, value, step)
            written[(tag, step)] = value
    writer.add_hparams({"lr": 0.01, "batch": 32, "opt": "adam"}, {"hp/acc": 0.75})
    writer.close()
    summary = import_tensorboard(str(logdir), store)
    assert len(summary.imported) == 2  # the training and add_hparams' own run
    rows = tp.query("SELECT r.run_id, r.name, s.tag, s.step, s.value, s.wall_time, s.recorded_at FROM scalars s "
                    "JOIN runs r ON r.run_id = s.run_id WHERE r.name = 'run1'", store=store)
    assert {(r["tag"], r["step"]): r["value"] for r in rows} == {k: float(np.float32(v)) for k, v in written.items()}
    assert all(abs((r["wall_time"] - r["recorded_at"]).total_seconds()) < 2e-6 for r in rows), [(r["wall_time"], r["recorded_at"]) for r in rows][:2]
    main_run = rows[0]["run_id"]
    hp = tp.query("SELECT r.parent_run_id, h.lr, h.batch, h.opt FROM runs r JOIN hyperparameters h ON h.run_id = r.run_id "
                  "WHERE r.run_id <> ?", [main_run], store=store)[0]
    assert hp == {"parent_run_id": main_run, "lr": 0.01, "batch": 32, "opt": "adam"}
    started = tp.query("SELECT started_at, ended_at FROM runs WHERE run_id = ?", [main_run], store=store)[0]
    # the run spans its events (to the microsecond a timestamp keeps)
    assert abs((started["started_at"] - min(r["wall_time"] for r in rows)).total_seconds()) < 2e-6
    assert abs((started["ended_at"] - max(r["wall_time"] for r in rows)).total_seconds()) < 2e-6
    provenance_of_import(store, main_run, [str(p) for p in (logdir / "run1").glob("events.out.tfevents*")])
    before = counts(store)
    out = CliRunner().invoke(main, ["import", "tensorboard", str(logdir), "--store", store])
    assert out.exit_code == 0 and "imported 0 runs" in out.output and counts(store) == before


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_mlflow(store, tmp_path, monkeypatch, kind):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.chdir(tmp_path)
    source = str(tmp_path / "mlruns") if kind == "file" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    uri = "file://" + source if kind == "file" else source
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("sweep")
    (tmp_path / "model.txt").write_text("weights")
    with mlflow.start_run(run_name="parent") as parent:
        with mlflow.start_run(run_name="child", nested=True) as child:
            mlflow.log_params({"lr": 0.1, "optimizer": "adam"})
            for step in range(3):
                mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
                mlflow.log_metric("val_loss", 1.5 / (step + 1), step=step)
            mlflow.set_tag("team", "vision")
            mlflow.log_artifact(str(tmp_path / "model.txt"))
    mlflow.set_tracking_uri(None)
    client = MlflowClient(uri)
    summary = import_mlflow(source, store)
    assert sorted(summary.imported) == sorted(f"mlflow-{r.info.run_id}" for r in (parent, child))
    run_id = f"mlflow-{child.info.run_id}"
    info = client.get_run(child.info.run_id)
    row = tp.query("SELECT * FROM runs WHERE run_id = ?", [run_id], store=store)[0]
    assert row["name"] == "child" and row["group_name"] == "sweep" and row["parent_run_id"] == f"mlflow-{parent.info.run_id}"
    assert row["status"] == "finished"
    assert round(row["started_at"].timestamp() * 1000) == info.info.start_time
    assert round(row["ended_at"].timestamp() * 1000) == info.info.end_time
    hp = tp.query("SELECT lr, optimizer FROM hyperparameters WHERE run_id = ?", [run_id], store=store)[0]
    assert hp == {"lr": "0.1", "optimizer": "adam"}  # MLflow keeps params as text
    tags = {r["tag"]: r["value"] for r in tp.query("SELECT tag, value FROM run_tags WHERE run_id = ?", [run_id], store=store)}
    assert tags == info.data.tags
    metrics = tp.query("SELECT tag, step, value, wall_time FROM scalars WHERE run_id = ?", [run_id], store=store)
    expected = {(k, m.step): (m.value, m.timestamp) for k in ("loss", "val_loss") for m in client.get_metric_history(info.info.run_id, k)}
    assert {(m["tag"], m["step"]): (m["value"], round(m["wall_time"].timestamp() * 1000)) for m in metrics} == expected
    artifact = tp.query("SELECT path, sha256 FROM files WHERE run_id = ? AND role = 'artifact'", [run_id], store=store)
    assert len(artifact) == 1 and artifact[0]["path"].endswith("model.txt")
    assert artifact[0]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    before = counts(store)
    assert import_mlflow(source, store).imported == [] and counts(store) == before


def test_bad_sources_are_named(store, tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    cli = CliRunner()
    out = cli.invoke(main, ["import", "csv", str(tmp_path / "x.csv"), "--store", store])
    assert out.exit_code == 1 and "no 'epoch' column" in out.output
    out = cli.invoke(main, ["import", "tensorboard", str(tmp_path), "--store", store])
    assert out.exit_code == 1 and "no TensorBoard event files" in out.output
    out = cli.invoke(main, ["import", "mlflow", str(tmp_path / "nothing"), "--store", store])
    assert out.exit_code == 1 and "no MLflow file store" in out.output


def test_an_imported_run_exports_as_valid_prov_with_the_importer_and_its_sources(store, tmp_path):
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from prov_constraints import violations
    from torch.utils.tensorboard import SummaryWriter
    from trainprov import export as ex

    writer = SummaryWriter(str(tmp_path / "tb" / "r"))
    for step in range(3):
        writer.add_scalar("loss", 1.0 / (step + 1), step)
    writer.close()
    run_id = import_tensorboard(str(tmp_path / "tb"), store).imported[0]
    doc = ex.build_document(run_id, store=store)
    assert violations(doc) == []
    text = ex.serialize(doc, "provn").decode()
    assert "trainprov-import-tensorboard" in text and "events.out.tfevents" in text
