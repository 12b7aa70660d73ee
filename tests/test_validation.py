"""Rules checked while training runs: the engine, and real diverging trainings stopped in each integration."""

from __future__ import annotations

import math
import os
import warnings

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

import trainprov as tp
from trainprov import rules
from trainprov.errors import SpecError

pytestmark = [pytest.mark.filterwarnings("ignore:trainprov. rule"),
              pytest.mark.filterwarnings("ignore:.*does not have many workers"),
              pytest.mark.filterwarnings("ignore:.*LeafSpec")]

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 4)).astype("float32")
Y = (X @ np.array([1.0, -2.0, 0.5, 3.0], dtype="float32"))[:, None] * 10


def q(sql, *, store):
    """Rows of a query as tuples."""
    return [tuple(row.values()) for row in tp.query(sql, store=store)]


# ---- the engine ---------------------------------------------------------------------------------

def verdicts(rule_list, epochs):
    validator = rules.Validator(rule_list)
    return [v for i, values in enumerate(epochs, 1) for v in validator.epoch(i, values)]


def test_loss_finite_fails_on_nan_and_inf_of_any_loss_and_passes_otherwise():
    found = verdicts([rules.loss_finite()], [{"loss": 1.0, "val_loss": 2.0}, {"loss": 0.5, "val_loss": math.inf},
                                             {"loss": math.nan}, {"accuracy": 0.3}])
    assert [(v.epoch, v.verdict, v.metric) for v in found] == [(1, "pass", "loss"), (2, "fail", "val_loss"),
                                                              (3, "fail", "loss")]
    assert math.isinf(found[1].observed) and found[1].action == "stop" and found[1].severity == "error"


def test_no_improvement_gap_learning_rate_gradient_and_epoch_time():
    epochs = [{"loss": 1.0, "val_loss": 1.0, "learning_rate": 0.1, "grad_norm": 1.0, "epoch_time_s": 1.0},
              {"loss": 0.8, "val_loss": 1.1, "learning_rate": 0.1, "grad_norm": 2.0, "epoch_time_s": 1.0},
              {"loss": 0.5, "val_loss": 1.2, "learning_rate": 2.0, "grad_norm": math.nan, "epoch_time_s": 1.1},
              {"loss": 0.2, "val_loss": 1.3, "learning_rate": 0.1, "grad_norm": 50.0, "epoch_time_s": 5.0}]
    found = verdicts([rules.no_improvement("val_loss", patience=2), rules.gap_below(0.9),
                      rules.learning_rate_within(1e-5, 1.0), rules.gradient_norm(10.0), rules.epoch_time(2.0)], epochs)
    failed = {(v.rule, v.epoch) for v in found if v.failed}
    assert failed == {("no_improvement", 3), ("no_improvement", 4), ("train_validation_gap", 4),
                      ("learning_rate_within", 3), ("gradient_norm", 3), ("gradient_norm", 4), ("epoch_time", 4)}
    gap = next(v for v in found if v.rule == "train_validation_gap" and v.epoch == 4)
    assert gap.observed == pytest.approx(1.1) and gap.threshold == 0.9


def test_a_user_rule_is_a_callable_and_a_broken_rule_is_an_error_verdict_not_a_crash():
    @rules.rule(action="record", severity="info")
    def accuracy_rises(history):
        acc = history.series("accuracy")
        return len(acc) < 2 or acc[-1] >= acc[-2] or f"accuracy fell to {acc[-1]}"

    def broken(history):
        raise KeyError("nope")

    found = verdicts([accuracy_rises, broken], [{"accuracy": 0.5}, {"accuracy": 0.4}])
    assert [(v.rule, v.epoch, v.verdict) for v in found] == [
        ("accuracy_rises", 1, "pass"), ("broken", 1, "error"), ("accuracy_rises", 2, "fail"), ("broken", 2, "error")]
    assert found[2].message == "accuracy fell to 0.4" and "KeyError" in found[1].message


def test_bad_rule_settings_are_clear_errors():
    with pytest.raises(SpecError, match="action must be one of record, warn, stop"):
        rules.loss_finite(action="halt")
    with pytest.raises(SpecError, match="severity"):
        rules.gap_below(1.0, severity="fatal")
    with pytest.raises(SpecError, match="two rules are named loss_finite"):
        rules.Validator([rules.loss_finite(), rules.loss_finite()])
    with pytest.raises(SpecError, match="a trainprov Rule or a callable"):
        rules.Validator([42])


# ---- real trainings that diverge ---------------------------------------------------------------

def first_bad_epoch(store):
    losses = q("SELECT epoch, loss FROM epoch_metrics ORDER BY epoch", store=store)
    bad = [epoch for epoch, loss in losses if not math.isfinite(loss)]
    assert bad, f"the training did not diverge: {losses}"
    return bad[0], losses


def assert_stopped_at_first_bad_epoch(store, *, last_allowed_extra=0):
    """The run: stopped by loss_finite at the first non-finite epoch, recorded with its value, finished."""
    bad, losses = first_bad_epoch(store)
    assert max(e for e, _ in losses) <= bad + last_allowed_extra  # within one epoch of the first NaN
    stop = q("SELECT rule, epoch, verdict, metric, observed, action FROM validation_results "
                    "WHERE stopped_training", store=store)
    assert len(stop) == 1
    rule, epoch, verdict, metric, observed, action = stop[0]
    assert (rule, epoch, verdict, action) == ("loss_finite", bad, "fail", "stop")
    assert not math.isfinite(observed)
    assert observed == dict(losses)[bad] or (math.isnan(observed) and math.isnan(dict(losses)[bad])) \
        or metric != "loss"
    # the stop is an adaptation linked to the verdict, like early stopping, and the run finished
    linked = q(
        "SELECT a.kind, a.epoch, v.rule FROM adaptations a JOIN usages u ON u.task_id = a.task_id "
        "JOIN validation_results v ON v.task_id = u.source_task_id AND v.element_seq = u.source_element_seq", store=store)
    assert linked == [("stopped_by_rule", bad, "loss_finite")]
    assert q("SELECT status FROM runs", store=store) == [("finished",)]
    assert q("SELECT status FROM tasks WHERE transformation = 'train'", store=store) == [("finished",)]
    return bad


def test_a_tracker_loop_with_a_too_high_learning_rate_is_stopped_by_the_flag(store):
    from trainprov.torch import Tracker

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=3.0)
    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    epochs_run = 0
    with Tracker(model, opt, store, epochs=40, rules=[rules.loss_finite()]) as tracker:
        for _ in range(40):
            for i in range(0, 64, 16):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x[i:i + 16]), y[i:i + 16])
                loss.backward()
                opt.step()
            tracker.epoch(loss=loss.item())
            epochs_run += 1
            if tracker.should_stop:
                break
    bad = assert_stopped_at_first_bad_epoch(store)
    assert epochs_run == bad < 40


def test_a_tracker_with_stop_raise_ends_its_with_block_and_the_run_finishes(store):
    from trainprov.torch import Tracker

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=3.0)
    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    with Tracker(model, opt, store, epochs=40, rules="default", stop="raise") as tracker:
        for _ in range(40):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            tracker.epoch(loss=loss.item())
        pytest.fail("the rule did not stop the loop")
    assert_stopped_at_first_bad_epoch(store)


def test_keras_fit_with_a_too_high_learning_rate_is_stopped_at_the_first_nan_epoch(store):
    import keras

    from trainprov.keras import ProvenanceCallback

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(5.0), loss="mse")
    with ProvenanceCallback(store, rules=[rules.loss_finite()]) as cb:
        history = model.fit(X, Y, epochs=40, batch_size=16, verbose=0, callbacks=[cb])
    bad = assert_stopped_at_first_bad_epoch(store)
    assert len(history.history["loss"]) == bad < 40


def test_lightning_fit_with_a_too_high_learning_rate_is_stopped_within_one_epoch(store, tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from trainprov.lightning import Provenance

    class Linear(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
            self.log("loss", loss, on_step=False, on_epoch=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=3.0)

    torch.manual_seed(0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(Y)),
                                       batch_size=16)
    prov = Provenance(store, rules=[rules.loss_finite()])
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=40, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, logger=[prov.logger],
                         callbacks=[prov], default_root_dir=tmp_path)
    trainer.fit(Linear(), data)
    prov.end()
    bad = assert_stopped_at_first_bad_epoch(store)
    assert trainer.current_epoch <= bad + 1 < 40  # Lightning ran no batch after the epoch that diverged


def test_transformers_training_with_a_too_high_learning_rate_is_stopped_within_one_epoch(store, tmp_path):
    transformers = pytest.importorskip("transformers")
    from trainprov.transformers import ProvenanceCallback

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return {"x": torch.from_numpy(X[i]), "labels": torch.from_numpy(Y[i])}

    class Regression(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def forward(self, x, labels=None):
            out = self.net(x)
            return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}

    torch.manual_seed(0)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, disable_tqdm=True, num_train_epochs=40,
        per_device_train_batch_size=16, learning_rate=3.0, lr_scheduler_type="constant", optim="sgd",
        logging_strategy="epoch", save_strategy="no", max_grad_norm=0.0, dataloader_num_workers=0,
        logging_nan_inf_filter=False)  # the Trainer would otherwise hide a NaN loss behind the average of earlier ones
    prov = ProvenanceCallback(store, rules=[rules.loss_finite()], profile=True)
    trainer = transformers.Trainer(model=Regression(), args=args, train_dataset=Data(), callbacks=[prov])
    trainer.train()
    prov.end()
    bad = assert_stopped_at_first_bad_epoch(store)
    # profile=True: the Trainer's training data, profiled before the training used it
    assert q("SELECT feature, n_examples FROM data_profiles WHERE split = 'train' ORDER BY feature", store=store) == [
        ("label", 64), ("x[0]", 64), ("x[1]", 64), ("x[2]", 64), ("x[3]", 64)]
    assert trainer.state.global_step <= (bad + 1) * 4 < 40 * 4  # at most one step of the next epoch


def test_warn_and_record_actions_do_not_stop_and_every_verdict_is_a_validate_task_row(store):
    from trainprov.torch import Tracker

    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Tracker(model, opt, store, rules=[rules.learning_rate_within(0.1, 1.0, action="warn"),
                                               rules.gap_below(0.0, action="record")]) as tracker:
            for epoch in range(3):
                tracker.epoch(loss=1.0, val_loss=1.5)
    assert [str(w.message) for w in caught if "trainprov: rule" in str(w.message)] == [
        f"trainprov: rule learning_rate_within (warning) at epoch {e}: learning_rate 0.01 outside [0.1, 1]"
        for e in (1, 2, 3)]
    assert q("SELECT count(*) FROM epoch_metrics", store=store) == [(3,)]
    rows = q("SELECT t.transformation, v.rule, v.epoch, v.verdict FROM validation_results v "
                    "JOIN tasks t ON t.task_id = v.task_id ORDER BY v.epoch, v.rule", store=store)
    assert rows == [("validate", r, e, "fail") for e in (1, 2, 3) for r in ("learning_rate_within", "train_validation_gap")]
    # each validate task used the epoch row it checked
    used = q("SELECT e.epoch FROM tasks t JOIN usages u ON u.task_id = t.task_id JOIN epoch_metrics e "
                    "ON e.task_id = u.source_task_id AND e.element_seq = u.source_element_seq WHERE t.transformation = 'validate' "
                    "ORDER BY e.epoch", store=store)
    assert used == [(1,), (2,), (3,)]


# ---- checking from another process -------------------------------------------------------------

DOC_RULE = ("SELECT e.run_id, e.epoch, e.val_loss AS observed FROM epoch_metrics e JOIN epoch_metrics p "
            "ON p.run_id = e.run_id AND p.task_id = e.task_id AND p.epoch = e.epoch - 1 WHERE e.val_loss > p.val_loss")


def test_the_docs_sql_rule_is_the_one_tested():
    from conftest import ROOT

    assert DOC_RULE in open(os.path.join(ROOT, "docs", "validation.md"), encoding="utf-8").read()


def test_a_users_sql_rule_watched_from_a_second_process_while_the_run_trains(store, tmp_path):
    import subprocess
    import sys
    import time

    go = tmp_path / "go"
    trainer = subprocess.Popen([sys.executable, "-c", f"""
import os, time, torch
from trainprov.torch import Tracker
model = torch.nn.Linear(2, 1)
with Tracker(model, torch.optim.SGD(model.parameters(), lr=0.1), {store!r}, epochs=4) as tracker:
    for val_loss in (1.0, 0.8, 0.9):   # rises at epoch 3
        tracker.epoch(loss=0.5, val_loss=val_loss)
    while not os.path.exists({str(go)!r}):
        time.sleep(0.05)
    tracker.epoch(loss=0.4, val_loss=0.7)
"""])
    try:
        deadline = time.monotonic() + 120
        while True:  # wait until the child has written its third epoch
            try:
                if q("SELECT count(*) FROM epoch_metrics", store=store) == [(3,)]:
                    break
            except Exception:  # the store is not created yet
                pass
            assert trainer.poll() is None and time.monotonic() < deadline, "the training child did not get going"
            time.sleep(0.1)
        watcher = subprocess.Popen([sys.executable, "-m", "trainprov.cli", "--store", store, "check", "--watch", "latest",
                                    "--interval", "0.2", "--format", "csv", "--sql", f"val_loss_rising={DOC_RULE}"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        header = watcher.stdout.readline()
        first = watcher.stdout.readline()
        # seen while the run trains: it waits for us, so it is still running
        assert q("SELECT status FROM runs", store=store) == [("running",)]
        assert header.startswith("source,rule,epoch")
        assert first.startswith("sql,val_loss_rising,3,,fail,0.9,")
        go.touch()
        assert trainer.wait(120) == 0
        rest, errors = watcher.communicate(timeout=120)
        assert watcher.returncode == 0, errors
        assert "val_loss_rising" not in rest  # reported once, and the last epoch broke no rule
    finally:
        go.touch()
        trainer.kill()
    once = subprocess.run([sys.executable, "-m", "trainprov.cli", "--store", store, "check", "latest", "--fail",
                           "--sql", f"val_loss_rising={DOC_RULE}"], capture_output=True, text=True)
    assert once.returncode == 2 and "val_loss_rising  3" in once.stdout.replace("sql       ", "")


def test_check_replays_the_built_ins_over_a_run_recorded_without_rules(store):
    from click.testing import CliRunner

    from trainprov.cli import main
    from trainprov.torch import Tracker

    model = torch.nn.Linear(2, 1)
    with Tracker(model, torch.optim.SGD(model.parameters(), lr=0.1), store) as tracker:
        for loss in (1.0, math.nan, 2.0):
            tracker.epoch(loss=loss)
    result = CliRunner().invoke(main, ["--store", store, "check", "latest", "--format", "json"])
    assert result.exit_code == 0, result.output
    import json

    found = json.loads(result.output)
    assert [(f["source"], f["rule"], f["epoch"], f["observed"]) for f in found] == [("replayed", "loss_finite", 2, "NaN")]
    bad = CliRunner().invoke(main, ["--store", store, "check", "latest", "--sql", "broken=SELECT epoch FROM epoch_metrics"])
    assert bad.exit_code == 1 and "must return a run_id column" in bad.output


def test_the_prov_export_and_lineage_show_the_validation_and_the_verdict_that_stopped_the_run(store):
    import trainprov.export as ex
    from trainprov.lineage import lineage
    from trainprov.torch import Tracker

    model = torch.nn.Linear(2, 1)
    with Tracker(model, torch.optim.SGD(model.parameters(), lr=0.1), store, rules="default") as tracker:
        for loss in (1.0, math.nan):
            tracker.epoch(loss=loss)
            if tracker.should_stop:
                break
    run_id = q("SELECT run_id FROM runs", store=store)[0][0]
    provn = ex.build_document(run_id, store=store).get_provn()
    # the validate task of epoch 2 used that epoch's row and generated the failing verdict
    validate = q("SELECT task_id FROM validation_results WHERE stopped_training", store=store)[0][0]
    epoch_row = q("SELECT task_id, element_seq FROM epoch_metrics WHERE epoch = 2", store=store)[0]
    assert f"used(tpid:task.{validate}, tpid:el.epoch_metrics.{epoch_row[0]}.{epoch_row[1]}," in provn
    assert f"wasGeneratedBy(tpid:el.validation_results.{validate}.1, tpid:task.{validate}," in provn
    # the adaptation that stopped the training used that verdict
    adapt = q("SELECT task_id FROM adaptations WHERE kind = 'stopped_by_rule'", store=store)[0][0]
    assert f"used(tpid:task.{adapt}, tpid:el.validation_results.{validate}.1," in provn
    ancestors = lineage("adaptations", store=store, where="kind = 'stopped_by_rule'").ancestors
    assert [(n.dataset, n.values.get("rule"), n.values.get("epoch")) for n in ancestors[:2]] == [
        ("validation_results", "loss_finite", 2), ("epoch_metrics", None, 2)]


# ---- data profiles and skew --------------------------------------------------------------------

from trainprov.capture.profile import jensen_shannon, l_infinity, profile_rows  # noqa: E402


def test_a_profile_counts_missing_nan_inf_zeros_and_describes_each_feature():
    x = np.array([[0.0, 1.0], [np.nan, 2.0], [np.inf, 0.0], [4.0, 3.0]], dtype="float32")
    rows = {r["feature"]: r for r in profile_rows("d", (x, np.array([1, 0, 1, 1])), "train")}
    assert set(rows) == {"x[0]", "x[1]", "label"}
    first = rows["x[0]"]
    assert (first["count"], first["nan"], first["inf"], first["min"], first["max"]) == (4, 1, 1, 0.0, 4.0)
    assert first["zero_fraction"] == 0.5 and first["mean"] == 2.0 and first["sampled"] is False
    assert sum(first["histogram"]["counts"]) == 2 and first["quantiles"]["p50"] == 2.0
    assert rows["label"]["kind"] == "categorical" and rows["label"]["categories"] == {"0": 1, "1": 3}
    assert len({r["sha256"] for r in rows.values()}) == 1


def test_frames_datasets_loaders_and_images_profile_and_the_digest_proves_sameness():
    import pandas as pd

    frame = pd.DataFrame({"size": [1.5, 2.5, None], "colour": ["red", "blue", "red"]})
    rows = {r["feature"]: r for r in profile_rows("f", frame, "train")}
    assert rows["colour"]["categories"] == {"blue": 1, "red": 2} and rows["size"]["nan"] == 1
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    data = torch.utils.data.TensorDataset(images, torch.tensor([0, 1]))
    from_dataset = profile_rows("i", data, "train")
    from_loader = profile_rows("i", torch.utils.data.DataLoader(data, batch_size=1), "train")
    assert [r["feature"] for r in from_dataset] == ["x[channel 0]", "x[channel 1]", "x[channel 2]", "label"]
    assert from_dataset == from_loader
    assert from_dataset[0]["max"] == 15 + 48 and from_dataset[1]["min"] == 16  # channel 0 of both images; channel 1
    changed = images.clone()
    changed[1, 2, 3, 3] += 1
    assert profile_rows("i", torch.utils.data.TensorDataset(changed, torch.tensor([0, 1])), "train")[0]["sha256"] \
        != from_dataset[0]["sha256"]


def test_large_data_is_sampled_and_says_so_unless_exact():
    x = np.arange(30, dtype="float64")
    sampled = profile_rows("big", x, "train", max_rows=10)[0]
    assert (sampled["sampled"], sampled["n_examples"], sampled["n_profiled"], sampled["count"]) == (True, 30, 10, 10)
    exact = profile_rows("big", x, "train", max_rows=10, exact=True)[0]
    assert (exact["sampled"], exact["n_profiled"], exact["max"]) == (False, 30, 29.0)
    assert sampled["sha256"] == exact["sha256"]  # the digest is of all the data


def test_skew_measures_are_jensen_shannon_and_l_infinity():
    same = {"edges": [0.0, 1.0, 2.0], "counts": [5, 5]}
    assert jensen_shannon(same, same) == 0.0
    assert jensen_shannon({"edges": [0.0, 1.0], "counts": [4]}, {"edges": [2.0, 3.0], "counts": [4]}) == 1.0
    assert jensen_shannon(same, {"edges": [0.0, 2.0], "counts": [10]}) == pytest.approx(0.0)  # same density, other bins
    assert l_infinity({"a": 3, "b": 1}, {"a": 1, "b": 1}) == pytest.approx(0.25)


def shifted_split(seed=0):
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(400, 3)).astype("float32")
    test = rng.normal(size=(200, 3)).astype("float32")
    test[:, 2] += 1.5  # the planted skew: feature 2 of the test data shifted
    return train, rng.integers(0, 2, 400), test, rng.integers(0, 2, 200)


def skew_flags(store):
    return q("SELECT rule, metric, verdict FROM validation_results WHERE rule = 'skew' AND verdict = 'fail'",
             store=store)


def test_a_planted_train_test_skew_is_flagged_in_a_tracker_run(store):
    from trainprov.torch import Tracker

    train, ytrain, test, ytest = shifted_split()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(train), torch.from_numpy(ytrain)),
                                         batch_size=50)
    model = torch.nn.Linear(3, 2)
    with Tracker(model, torch.optim.SGD(model.parameters(), lr=0.1), store, loader=loader, profile=True,
                 rules=[rules.skew_below(max_jensen_shannon=0.1), rules.inputs_finite()]) as tracker:
        tracker.profile("train_data", (test, ytest), "test")
        for _ in range(2):
            for x, y in loader:
                tracker.step()
            tracker.epoch(loss=1.0)
    assert skew_flags(store) == [("skew", "x[2]", "fail")]
    skew = q("SELECT feature, measure, value FROM data_skew WHERE split = 'test' AND reference_split = 'train' "
             "ORDER BY feature", store=store)
    assert [f for f, m, v in skew if v > 0.1] == ["x[2]"] and {m for _, m, _ in skew} == {"jensen_shannon", "l_infinity"}
    # the training used the profiles
    used = q("SELECT count(*) FROM usages u JOIN tasks t ON t.task_id = u.task_id "
             "WHERE t.transformation = 'train' AND u.dataset = 'data_profiles'", store=store)
    assert used == [(8,)]
    assert q("SELECT count(*) FROM validation_results WHERE rule = 'inputs_finite' AND verdict = 'pass'",
             store=store) == [(8,)]
    # the skew's lineage: the test split was profiled first, so the skew was measured when the
    # loader (train) was profiled, by that task, which used the test profile
    from trainprov.lineage import lineage

    nearest = [n for n in lineage("data_skew", store=store, where="feature = 'x[2]'").ancestors if n.depth == 1]
    assert {(n.dataset, n.values["split"]) for n in nearest} == {("data_profiles", "test")} and len(nearest) == 4


def test_a_planted_skew_between_lightnings_train_and_validation_loaders_is_flagged(store, tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from trainprov.lightning import Provenance

    class Linear(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            loss = self.net(batch[0]).pow(2).mean()
            self.log("loss", loss, on_epoch=True, on_step=False)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.net(batch[0]).pow(2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    train, ytrain, test, ytest = shifted_split()
    loader = lambda x, y: torch.utils.data.DataLoader(  # noqa: E731
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=100)
    prov = Provenance(store, profile=True, rules=[rules.skew_below()])
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, logger=[prov.logger],
                         callbacks=[prov], default_root_dir=tmp_path, num_sanity_val_steps=0)
    trainer.fit(Linear(), loader(train, ytrain), loader(test, ytest))
    prov.end()
    assert skew_flags(store) == [("skew", "x[2]", "fail")]
    assert q("SELECT split, count(*) FROM data_profiles GROUP BY split ORDER BY split", store=store) == [
        ("train", 4), ("validation", 4)]


def test_drift_against_a_reference_run_is_recorded_with_that_run(store):
    from trainprov.torch import Tracker

    train, ytrain, test, _ = shifted_split()
    model = torch.nn.Linear(3, 2)
    with Tracker(model, torch.optim.SGD(model.parameters(), lr=0.1), store) as first:
        first.profile("features", train, "train")
        first.epoch(loss=1.0)
    reference = first.run.id
    with Tracker(model, torch.optim.SGD(model.parameters(), lr=0.1), store, rules=[rules.skew_below()]) as second:
        second.recorder.profile("features", test, "train", reference_run=reference)
        second.epoch(loss=1.0)
    # the drift's profile task used the reference run's profile: lineage crosses runs
    used = q("SELECT DISTINCT t.run_id AS run, p.run_id AS reference FROM usages u JOIN tasks t ON t.task_id = u.task_id "
             "JOIN data_profiles p ON p.task_id = u.source_task_id AND p.element_seq = u.source_element_seq "
             "WHERE t.transformation = 'profile'", store=store)
    assert used == [(second.run.id, reference)]
    drift = q("SELECT feature, reference_run, value > 0.1 FROM data_skew ORDER BY feature", store=store)
    assert drift == [("x[0]", reference, 0), ("x[1]", reference, 0), ("x[2]", reference, 1)]
    assert skew_flags(store) == [("skew", "x[2]", "fail")]


# ---- the dashboard -----------------------------------------------------------------------------

def test_the_dashboard_lists_violations_counts_them_and_sends_them_to_the_curves(store):
    from starlette.testclient import TestClient

    from trainprov.torch import Tracker
    from trainprov.ui.app import create_app

    model = torch.nn.Linear(2, 1)
    with Tracker(model, torch.optim.SGD(model.parameters(), lr=0.1), store, name="diverged", rules="default") as tracker:
        for loss in (1.0, math.inf):
            tracker.epoch(loss=loss)
    with Tracker(model, torch.optim.SGD(model.parameters(), lr=0.1), store, name="fine") as tracker:
        tracker.epoch(loss=1.0)
    diverged = q("SELECT run_id FROM runs WHERE name = 'diverged'", store=store)[0][0]
    with TestClient(create_app(store), base_url="http://127.0.0.1") as client:
        listing = client.get("/api/runs").json()
        assert {r["name"]: r["violations"] for r in listing["runs"]} == {"diverged": 1, "fine": 0}
        assert "violations" in client.get("/").text
        epochs = client.get(f"/api/runs/{diverged}/epochs").json()
        assert [(v["rule"], v["epoch"], v["observed"], v["stopped_training"]) for v in epochs["violations"]] == [
            ("loss_finite", 2, "Infinity", True)]
        page = client.get(f"/runs/{diverged}").text + client.get(f"/runs/{diverged}/details").text
        assert "Violations" in page and "stopped the training" in page and "loss is inf (not finite)" in page


def test_tp_profile_records_a_profile_in_a_run_of_your_own_dataflow(store):
    flow = tp.Dataflow("prep", [tp.Transformation("load", generates=[tp.Dataset("raw", n=int)])])
    with tp.start_run(flow, store) as run:
        with run.task("load") as task:
            task.generated("raw", n=3)
        train, _, test, _ = shifted_split()
        tp.profile("table", train, split="train", run=run)
        tp.profile("table", test, split="test", run=run)
    assert q("SELECT split, count(*) FROM data_profiles GROUP BY split ORDER BY split", store=store) == [
        ("test", 3), ("train", 3)]
    assert q("SELECT feature FROM data_skew WHERE value > 0.1", store=store) == [("x[2]",)]
    with pytest.raises(tp.CaptureError, match="takes a Run or a trainprov integration"):
        tp.profile("table", train, run="nope")


def test_rules_profiles_and_checks_work_alike_on_sqlite_and_postgresql(any_store):
    from click.testing import CliRunner

    from trainprov.cli import main
    from trainprov.torch import Tracker

    store = any_store
    train, ytrain, test, ytest = shifted_split()
    model = torch.nn.Linear(2, 1)
    with Tracker(model, torch.optim.SGD(model.parameters(), lr=0.1), store,
                 rules=[rules.loss_finite(), rules.skew_below()]) as tracker:
        tracker.profile("d", (train, ytrain), "train")
        tracker.profile("d", (test, ytest), "test")
        for loss in (1.0, math.nan, 0.5):
            tracker.epoch(loss=loss, val_loss=loss)
            if tracker.should_stop:
                break
    assert q("SELECT epoch, metric, stopped_training FROM validation_results WHERE stopped_training", store=store) \
        == [(2, "loss", True)]
    assert q("SELECT feature FROM data_skew WHERE value > 0.1", store=store) == [("x[2]",)]
    result = CliRunner().invoke(main, ["--store", store, "check", "latest", "--format", "csv", "--sql",
                                       f"val_loss_rising={DOC_RULE}"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("recorded,loss_finite,2,,fail,nan,") for line in lines), lines
    assert any(line.startswith("recorded,skew,,,fail,") and "x[2]" in line for line in lines), lines


def test_a_step_rule_is_checked_every_n_recorded_steps_and_stops_within_the_epoch(store):
    from trainprov.torch import Tracker

    model = torch.nn.Linear(2, 1)
    losses = [1.0, 0.9, 0.8, math.nan, 0.7, 0.6]
    done = 0
    with Tracker(model, torch.optim.SGD(model.parameters(), lr=0.1), store, steps=1,
                 rules=[rules.loss_finite(every_steps=2)]) as tracker:
        for loss in losses:
            tracker.step(loss=loss)
            done += 1
            if tracker.should_stop:
                break
        tracker.epoch(loss=math.nan)
    assert done == 4  # checked at steps 2 and 4: the NaN of step 4 stops the loop there
    assert q("SELECT epoch, step, verdict, stopped_training FROM validation_results ORDER BY recorded_at, element_seq",
             store=store) == [(1, 2, "pass", False), (1, 4, "fail", True), (1, None, "fail", False)]


def test_a_sql_rule_in_the_training_is_checked_off_the_training_thread_and_can_stop_it(store):
    from trainprov.torch import Tracker

    model = torch.nn.Linear(2, 1)
    threads = []
    rising = rules.sql("val_loss_rising", DOC_RULE, action="stop")
    original = rising.check_rows
    rising.check_rows = lambda rows: (threads.append(__import__("threading").current_thread().name), original(rows))[1]
    epochs_run = 0
    with Tracker(model, torch.optim.SGD(model.parameters(), lr=0.1), store, rules=[rising]) as tracker:
        for val_loss in [1.0, 0.8, 0.9, *np.linspace(0.7, 0.1, 600).tolist()]:  # rises at epoch 3 only
            tracker.epoch(loss=0.5, val_loss=val_loss)
            epochs_run += 1
            if tracker.should_stop:
                break
            import time
            time.sleep(0.05)  # the next epoch: time for the check (its verdict is recorded at an epoch's end)
    assert set(threads) == {"trainprov-sql-rules"}
    stop = q("SELECT rule, epoch, verdict, observed FROM validation_results WHERE stopped_training", store=store)
    assert stop == [("val_loss_rising", 3, "fail", 1.0)]
    assert tracker.should_stop and epochs_run > 3  # stopped at a later epoch's end, when the verdict came back
    assert q("SELECT kind, cause FROM adaptations", store=store)[0][0] == "stopped_by_rule"


def test_files_keras_pydatasets_are_profiled_and_a_generator_is_refused(tmp_path):
    import keras

    x = np.arange(40, dtype="float32").reshape(20, 2)
    y = np.arange(20) % 2
    np.savez(tmp_path / "data.npz", x=x, y=y)
    from_file = {r["feature"]: r for r in profile_rows("f", tmp_path / "data.npz", "train")}
    assert set(from_file) == {"x[0]", "x[1]", "label"} and from_file["x[1]"]["max"] == 39.0

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return x[i * 5:(i + 1) * 5], y[i * 5:(i + 1) * 5]

    batches = {r["feature"]: r for r in profile_rows("b", Batches(), "train")}
    assert batches["x[0]"]["count"] == 20 and batches["label"]["categories"] == {"0": 10, "1": 10}
    partial = profile_rows("b", Batches(), "train", max_rows=10)[0]
    assert (partial["sampled"], partial["n_profiled"], partial["n_examples"]) == (True, 10, 20)
    with pytest.raises(SpecError, match="generator"):
        profile_rows("g", (row for row in x), "train")
    with pytest.raises(SpecError, match=r"\.npy, \.npz, \.csv and \.parquet"):
        profile_rows("t", tmp_path / "data.txt", "train")
