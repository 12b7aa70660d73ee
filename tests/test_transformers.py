"""The Hugging Face Transformers callback, with real training of tiny models from a config (CPU, no downloads)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers: nothing here may reach the Hub

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import trainprov as tp  # noqa: E402
from conftest import ROOT  # noqa: E402
from trainprov.spec import sanitize_name  # noqa: E402
from trainprov.transformers import ProvenanceCallback  # noqa: E402

VOCAB, LENGTH = 40, 10


class Tokens(torch.utils.data.Dataset):
    """Token sequences labelled 1 when the first half sums to more than the second."""

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, LENGTH), generator=generator)
        half = LENGTH // 2
        self.labels = (self.ids[:, :half].sum(1) > self.ids[:, half:].sum(1)).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


TRAIN, VALID, TEST = Tokens(64, 0), Tokens(32, 1), Tokens(32, 2)  # 64 / 16 = 4 optimizer steps per epoch


def tiny_model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=LENGTH, num_labels=2)
    return BertForSequenceClassification(config)


def accuracy(prediction) -> dict:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def trainer_for(tmp_path, prov, callbacks=(), model=None, **arguments) -> Trainer:
    settings = dict(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, disable_tqdm=True,
                    num_train_epochs=3, per_device_train_batch_size=16, per_device_eval_batch_size=16,
                    learning_rate=1e-3, logging_steps=1, save_strategy="no", dataloader_num_workers=0)
    settings.update(arguments)
    return Trainer(model=model or tiny_model(), args=TrainingArguments(**settings), train_dataset=TRAIN,
                   eval_dataset=VALID, compute_metrics=accuracy, callbacks=[prov, *callbacks])


def train(store, tmp_path, callbacks=(), prov=None, **arguments) -> tuple[ProvenanceCallback, Trainer]:
    prov = prov or ProvenanceCallback(store)
    trainer = trainer_for(tmp_path, prov, callbacks, **arguments)
    trainer.train()
    return prov, trainer


def rows(store, sql, *params):
    return tp.query(sql, list(params), store=store)


def lr_changes(store, parameter="learning_rate"):
    """Learning-rate changes of the first parameter group (the Trainer's weight-decay group)."""
    return rows(store, "SELECT epoch, step, old_value, new_value, cause, monitor, monitor_value FROM adaptations "
                       "WHERE kind = 'learning_rate' AND parameter = ? ORDER BY epoch, step", parameter)


def test_every_logged_value_equals_the_trainers_log_history(store, tmp_path):
    # training logs every 3 steps, evaluations every 5: neither lines up with the 4-step epochs
    prov, trainer = train(store, tmp_path, logging_steps=3, eval_strategy="steps", eval_steps=5)
    prov.end()
    history = trainer.state.log_history
    recorded = rows(store, "SELECT * FROM step_metrics ORDER BY element_seq")
    assert len(recorded) == len(history) == 4 + 2 + 1 + 1  # train logs, evaluations (one at the end), summary
    for row, entry in zip(recorded, history):
        assert row["global_step"] == entry["step"] and row["epoch_progress"] == entry["epoch"]
        for key, value in entry.items():
            if key not in ("step", "epoch"):
                assert row[sanitize_name(key)] == value, key  # exactly: no rounding on the way
        # a step belongs to the epoch it ran in, counted from 1, and steps count from 1 in it
        assert row["epoch"] == math.ceil(entry["epoch"]) and row["step"] == entry["step"] - 4 * (row["epoch"] - 1)
    summary = recorded[-1]
    assert summary["train_loss"] == trainer.state.log_history[-1]["train_loss"] and summary["loss"] is None
    assert rows(store, "SELECT status FROM runs") == [{"status": "finished"}]
    assert rows(store, "SELECT status FROM tasks WHERE transformation = 'train'") == [{"status": "finished"}]


def test_epoch_rows_hold_what_was_logged_at_each_epochs_end(store, tmp_path):
    prov, trainer = train(store, tmp_path, logging_strategy="epoch", eval_strategy="epoch")
    prov.end()
    epochs = rows(store, "SELECT * FROM epoch_metrics ORDER BY epoch")
    train_logs = [e for e in trainer.state.log_history if "loss" in e]
    eval_logs = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert [r["loss"] for r in epochs] == [e["loss"] for e in train_logs]  # each the mean over its epoch
    assert [r["grad_norm"] for r in epochs] == [e["grad_norm"] for e in train_logs]
    assert [r["learning_rate"] for r in epochs] == [e["learning_rate"] for e in train_logs]
    assert [r["eval_loss"] for r in epochs] == [e["eval_loss"] for e in eval_logs]
    assert [r["eval_accuracy"] for r in epochs] == [e["eval_accuracy"] for e in eval_logs]
    assert all(r["epoch_time_s"] > 0 for r in epochs)
    # the closing summary (train_runtime, train_loss) is no epoch's value
    assert "train_loss" not in epochs[-1] or epochs[-1]["train_loss"] is None


def test_training_arguments_model_config_and_architecture(store, tmp_path):
    prov = ProvenanceCallback(store, hyperparameters={"dataset": "tokens", "seed_data": 0})
    _, trainer = train(store, tmp_path, prov=prov, per_device_train_batch_size=8, gradient_accumulation_steps=2,
                       warmup_steps=2, weight_decay=0.01, num_train_epochs=2, hub_token="hf_not_a_real_token")
    prov.end()
    hp = rows(store, "SELECT * FROM hyperparameters")[0]
    model = trainer.model
    assert hp["framework"] == "transformers" and hp["optimizer"] == "AdamW" and hp["learning_rate"] == 1e-3
    assert hp["batch_size"] == 16 and hp["per_device_train_batch_size"] == 8 and hp["gradient_accumulation_steps"] == 2
    assert hp["epochs"] == 2 and hp["steps_per_epoch"] == 4 and hp["max_steps"] == 8 and hp["warmup_steps"] == 2
    assert hp["weight_decay"] == 0.01 and hp["lr_scheduler_type"] == "linear" and hp["seed"] == 42
    assert (hp["dataset"], hp["seed_data"]) == ("tokens", 0)
    assert hp["model_class"] == "BertForSequenceClassification" and hp["model_type"] == "bert"
    assert json.loads(hp["model_config"])["hidden_size"] == 16
    arguments = json.loads(hp["training_arguments"])
    assert arguments["gradient_accumulation_steps"] == 2 and arguments["optim"] == trainer.args.optim
    assert "hf_not_a_real_token" not in hp["training_arguments"]  # tokens are masked, never stored
    groups = json.loads(hp["optimizer_config"])["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]  # the Trainer's decay and no-decay groups
    assert sum(g["params"] for g in groups) == hp["trainable_params"] == sum(p.numel() for p in model.parameters())
    schedule = json.loads(hp["lr_schedule"])
    assert schedule["class"] == "LambdaLR" and schedule["lr_lambdas"][0]["num_warmup_steps"] == 2
    layers = rows(store, "SELECT name, class_name, params, units, dropout_rate FROM layers ORDER BY layer_index")
    assert len(layers) == hp["n_layers"] and sum(r["params"] for r in layers) == hp["trainable_params"]
    assert {"name": "classifier", "class_name": "Linear", "params": 16 * 2 + 2, "units": 2, "dropout_rate": None} in layers


def test_a_continuous_schedule_is_in_the_step_values_not_in_adaptations(store, tmp_path):
    prov, trainer = train(store, tmp_path, warmup_steps=3, lr_scheduler_type="cosine")
    prov.end()
    logged = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
    recorded = [r["learning_rate"] for r in rows(store, "SELECT learning_rate FROM step_metrics WHERE loss IS NOT NULL ORDER BY global_step")]
    assert recorded == logged and len(set(logged)) == 12  # a new rate every step
    assert lr_changes(store) == []
    assert rows(store, "SELECT learning_rate FROM epoch_metrics ORDER BY epoch") == [
        {"learning_rate": logged[3]}, {"learning_rate": logged[7]}, {"learning_rate": logged[11]}]  # each epoch's last step


def test_reduce_lr_on_plateau_changes_are_recorded_once_each(store, tmp_path):
    # an absolute threshold of 10 makes every evaluation after the first a plateau: halve each time
    prov, trainer = train(store, tmp_path, num_train_epochs=4, eval_strategy="epoch", metric_for_best_model="loss",
                          lr_scheduler_type="reduce_lr_on_plateau",
                          lr_scheduler_kwargs={"patience": 0, "factor": 0.5, "threshold": 10.0, "threshold_mode": "abs"})
    prov.end()
    history = trainer.state.log_history
    steps = [e for e in history if "learning_rate" in e]
    evals = [e["eval_loss"] for e in history if "eval_loss" in e]
    # the changes the logged rates show: (epoch, step in epoch, old, new), and the value that caused each
    seen = [(math.ceil(b["epoch"]), b["step"] - 4 * (math.ceil(b["epoch"]) - 1), a["learning_rate"], b["learning_rate"])
            for a, b in zip(steps, steps[1:]) if a["learning_rate"] != b["learning_rate"]]
    assert [(e, s) for e, s, _, _ in seen] == [(3, 1), (4, 1)]
    final = trainer.optimizer.param_groups[0]["lr"]  # the last evaluation lowered it once more, for no step
    expected = [(e, s, old, new, "ReduceLROnPlateau", "eval_loss", evals[e - 2]) for e, s, old, new in seen]
    expected.append((5, None, steps[-1]["learning_rate"], final, "ReduceLROnPlateau", "eval_loss", evals[3]))
    assert [tuple(c.values()) for c in lr_changes(store)] == expected
    # the Trainer's second group (no weight decay) changed with the first: its own rows, the same changes
    assert lr_changes(store, "learning_rate_group1") == lr_changes(store)
    assert [r["learning_rate"] for r in rows(store, "SELECT learning_rate FROM epoch_metrics ORDER BY epoch")] == [
        1e-3, 1e-3, 5e-4, 2.5e-4]


def test_a_rate_set_by_another_callback_is_a_manual_adaptation(store, tmp_path):
    class Lower(TrainerCallback):
        def on_epoch_end(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
            if round(state.epoch) == 2:  # by hand, and for good: the constant schedule's base rates too
                for group in optimizer.param_groups:
                    group["lr"] = 1e-4
                lr_scheduler.base_lrs = [1e-4] * len(lr_scheduler.base_lrs)

    prov, trainer = train(store, tmp_path, callbacks=[Lower()], lr_scheduler_type="constant")
    prov.end()
    assert lr_changes(store) == [{"epoch": 3, "step": 1, "old_value": 1e-3, "new_value": 1e-4, "cause": "manual",
                                  "monitor": None, "monitor_value": None}]
    assert lr_changes(store, "learning_rate_group1") == lr_changes(store)
    rates = [r["learning_rate"] for r in rows(store, "SELECT learning_rate FROM epoch_metrics ORDER BY epoch")]
    assert rates == [1e-3, 1e-3, 1e-4]  # the rate each epoch's last step used


def test_checkpoints_are_the_weight_files_with_their_sha256(store, tmp_path):
    prov, trainer = train(store, tmp_path, eval_strategy="epoch", save_strategy="epoch", metric_for_best_model="accuracy")
    prov.end()
    files = rows(store, "SELECT c.epoch, c.monitor, c.monitor_value, f.file_id, f.path, f.size_bytes, f.sha256 FROM checkpoints c "
                        "JOIN files f ON f.task_id = c.task_id AND f.element_seq = c.element_seq ORDER BY c.epoch")
    assert [f["epoch"] for f in files] == [1, 2, 3]
    accuracies = [e["eval_accuracy"] for e in trainer.state.log_history if "eval_accuracy" in e]
    for f, step, value in zip(files, (4, 8, 12), accuracies):
        assert f["path"] == str(tmp_path / "out" / f"checkpoint-{step}" / "model.safetensors")
        data = open(f["path"], "rb").read()
        assert f["sha256"] == hashlib.sha256(data).hexdigest() and f["size_bytes"] == len(data)
        assert f["monitor"] == "eval_accuracy" and f["monitor_value"] == value
    chain = rows(store, "SELECT file_id, derived_from FROM file_derivations ORDER BY file_id")
    assert [(c["file_id"], c["derived_from"]) for c in chain] == [(files[1]["file_id"], files[0]["file_id"]),
                                                                  (files[2]["file_id"], files[1]["file_id"])]


def test_early_stopping_is_an_adaptation_and_the_training_task_ends(store, tmp_path):
    stop = EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=10.0)  # the 2nd evaluation stops it
    prov, trainer = train(store, tmp_path, callbacks=[stop], num_train_epochs=10, eval_strategy="epoch",
                          save_strategy="epoch", metric_for_best_model="loss", load_best_model_at_end=True)
    evals = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    assert len(evals) == 2 and trainer.state.epoch == 2.0
    row = rows(store, "SELECT * FROM adaptations WHERE kind = 'early_stopping'")[0]
    assert (row["epoch"], row["step"], row["parameter"], row["old_value"], row["new_value"]) == (2, 4, "epochs", 10, 2.0)
    assert row["monitor"] == "eval_loss" and row["monitor_value"] == evals[1]
    assert row["best_epoch"] == 1 and row["best_value"] == evals[0] == trainer.state.best_metric
    assert row["cause"].startswith("EarlyStoppingCallback(monitor=eval_loss, patience=1")
    assert [r["epoch"] for r in rows(store, "SELECT epoch FROM epoch_metrics ORDER BY epoch")] == [1, 2]
    assert rows(store, "SELECT status FROM tasks WHERE transformation = 'train'") == [{"status": "finished"}]
    # load_best_model_at_end put epoch 1's weights back: an evaluation now used that checkpoint
    trainer.evaluate(TEST, metric_key_prefix="test")
    prov.end()
    used = rows(store, "SELECT c.epoch FROM usages u JOIN checkpoints c ON c.task_id = u.source_task_id "
                       "AND c.element_seq = u.source_element_seq WHERE u.dataset = 'checkpoints'")
    assert used == [{"epoch": 1}] and trainer.state.best_model_checkpoint.endswith("checkpoint-4")


def test_evaluate_and_predict_after_training_are_test_results(store, tmp_path):
    prov, trainer = train(store, tmp_path, num_train_epochs=1, eval_strategy="epoch", save_strategy="epoch")
    evaluated = trainer.evaluate(TEST, metric_key_prefix="test")
    predicted = trainer.predict(TEST).metrics
    validated = trainer.evaluate()
    prov.end()
    results = rows(store, "SELECT split, loss, accuracy, evaluation_time_s, samples_per_second, epoch_progress "
                          "FROM test_results ORDER BY recorded_at")
    assert results == [
        {"split": "test", "loss": evaluated["test_loss"], "accuracy": evaluated["test_accuracy"],
         "evaluation_time_s": evaluated["test_runtime"], "samples_per_second": evaluated["test_samples_per_second"],
         "epoch_progress": 1.0},
        {"split": "test", "loss": predicted["test_loss"], "accuracy": predicted["test_accuracy"],
         "evaluation_time_s": predicted["test_runtime"], "samples_per_second": predicted["test_samples_per_second"],
         "epoch_progress": None},
        {"split": "eval", "loss": validated["eval_loss"], "accuracy": validated["eval_accuracy"],
         "evaluation_time_s": validated["eval_runtime"], "samples_per_second": validated["eval_samples_per_second"],
         "epoch_progress": 1.0},
    ]
    # no evaluation after training went into the training's metrics
    assert rows(store, "SELECT count(*) AS n FROM step_metrics WHERE eval_loss IS NOT NULL") == [{"n": 1}]
    train_task = rows(store, "SELECT task_id FROM tasks WHERE transformation = 'train'")[0]["task_id"]
    depends = rows(store, "SELECT d.depends_on FROM tasks t JOIN task_dependencies d ON d.task_id = t.task_id "
                          "WHERE t.transformation = 'evaluate'")
    assert [d["depends_on"] for d in depends] == [train_task] * 3
    # each evaluation used the last checkpoint
    assert rows(store, "SELECT count(*) AS n FROM usages u JOIN tasks t ON t.task_id = u.task_id "
                       "WHERE t.transformation = 'evaluate' AND u.dataset = 'checkpoints'") == [{"n": 3}]


def test_a_resumed_training_continues_its_epochs(store, tmp_path):
    prov = ProvenanceCallback(store)
    first = trainer_for(tmp_path, prov, num_train_epochs=4, save_strategy="epoch", max_steps=8)  # stops after epoch 2
    first.train()
    second = trainer_for(tmp_path, prov, num_train_epochs=4, save_strategy="epoch")
    second.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-8"))
    prov.end()
    epochs = rows(store, "SELECT t.iteration, e.epoch FROM epoch_metrics e JOIN tasks t ON t.task_id = e.task_id ORDER BY e.recorded_at")
    assert [(r["iteration"], r["epoch"]) for r in epochs] == [(1, 1), (1, 2), (2, 3), (2, 4)]
    steps = rows(store, "SELECT epoch, step, global_step FROM step_metrics WHERE loss IS NOT NULL ORDER BY recorded_at")
    assert [(s["epoch"], s["step"]) for s in steps] == [(e, s) for e in (1, 2, 3, 4) for s in (1, 2, 3, 4)]
    assert [s["global_step"] for s in steps] == list(range(1, 17))
    assert rows(store, "SELECT count(*) AS n FROM runs") == [{"n": 1}]


def test_one_run_per_train_on_request(tmp_path):
    store = str(tmp_path / "many.db")
    prov = ProvenanceCallback(store, new_run_per_train=True)
    trainer = trainer_for(tmp_path, prov, num_train_epochs=1)
    trainer.train()
    trainer.train()
    assert rows(store, "SELECT status, count(*) AS n FROM runs GROUP BY status") == [{"status": "finished", "n": 2}]


def test_an_exception_in_training_fails_the_run_and_keeps_its_epochs(store, tmp_path):
    class Boom(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            if round(state.epoch) == 2:
                raise RuntimeError("loss exploded")

    with pytest.raises(RuntimeError):
        with ProvenanceCallback(store) as prov:
            train(store, tmp_path, callbacks=[Boom()], prov=prov)
    assert rows(store, "SELECT status, error FROM runs") == [{"status": "failed", "error": "RuntimeError: loss exploded"}]
    assert rows(store, "SELECT status FROM tasks WHERE transformation = 'train'") == [{"status": "failed"}]
    assert [r["epoch"] for r in rows(store, "SELECT epoch FROM epoch_metrics")] == [1]
    assert rows(store, "SELECT max(global_step) AS last FROM step_metrics") == [{"last": 8}]


def test_an_evaluation_after_a_failed_training_is_recorded_and_the_training_failed(store, tmp_path):
    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("stop")

    prov = ProvenanceCallback(store)
    trainer = trainer_for(tmp_path, prov, callbacks=[Boom()])
    with pytest.raises(RuntimeError):
        trainer.train()
    returned = trainer.evaluate()
    prov.end()
    assert rows(store, "SELECT loss FROM test_results") == [{"loss": returned["eval_loss"]}]
    assert rows(store, "SELECT status FROM tasks WHERE transformation = 'train'") == [{"status": "failed"}]
    assert rows(store, "SELECT count(*) AS n FROM step_metrics") == [{"n": 2}]


def test_training_with_the_callback_opens_no_network_connection(store, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    prov, trainer = train(store, tmp_path, num_train_epochs=1, eval_strategy="epoch", save_strategy="epoch")
    trainer.evaluate(TEST, metric_key_prefix="test")
    prov.end()
    assert rows(store, "SELECT count(*) AS n FROM checkpoints") == [{"n": 1}]


def test_the_example_trains_with_capture_and_prints_from_the_store(tmp_path):
    store = str(tmp_path / "example.db")
    env = {k: v for k, v in os.environ.items() if k != "TRAINPROV_STORE"}
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "classify_transformers.py"), "--store", store,
         "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 0, done.stderr
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", done.stdout).group(1))
    assert accuracy > 0.9 and "ReduceLROnPlateau" in done.stdout and "EarlyStoppingCallback" in done.stdout
    reader = tp.connect(store)
    assert reader.rows("SELECT name, status FROM runs") == [{"name": "classify_transformers", "status": "finished"}]
    assert reader.rows("SELECT split, round(accuracy, 3) AS a FROM test_results") == [{"split": "test", "a": round(accuracy, 3)}]
    kinds = {r["kind"] for r in reader.rows("SELECT kind FROM adaptations")}
    assert kinds == {"learning_rate", "early_stopping"}
    epochs = reader.rows("SELECT count(*) AS n FROM epoch_metrics WHERE loss IS NOT NULL AND eval_accuracy IS NOT NULL")[0]["n"]
    assert reader.rows("SELECT count(*) AS n FROM checkpoints") == [{"n": epochs}] and epochs > 2
