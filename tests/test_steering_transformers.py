"""Steering a Hugging Face `Trainer.train` running in a child process (a tiny BERT from a config, CPU, no downloads)."""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import socket

import pytest

import trainprov as tp
from conftest import spawn_python

pytest.importorskip("transformers")

EPOCHS, STEPS_PER_EPOCH, WARMUP, BASE_LR = 200, 4, 2, 1e-3

# The child trains for up to 200 epochs of 4 optimizer steps under the Trainer's linear
# schedule with warm-up; a callback after ours writes, after each optimizer step, the rates
# that step used (both parameter groups), sleeps a little, and prints the run id once the
# first epoch is recorded.
TRAINING = f"""
import os, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from trainprov.transformers import ProvenanceCallback

store, rates_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
VOCAB, LENGTH = 40, 10


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, LENGTH), generator=generator)
        self.labels = (self.ids[:, :5].sum(1) > self.ids[:, 5:].sum(1)).long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {{"input_ids": self.ids[i], "labels": self.labels[i]}}


torch.manual_seed(0)
model = BertForSequenceClassification(BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=32,
                                                 max_position_embeddings=LENGTH, num_labels=2))
prov = ProvenanceCallback(store, checkpoints=mode != "no-checkpoints")


class Watch(TrainerCallback):
    def on_optimizer_step(self, args, state, control, **kwargs):
        groups = trainer.optimizer.param_groups  # after the optimizer step, before the schedule's
        rates.write(f"{{state.global_step + 1}} {{groups[0]['lr']!r}} {{groups[1]['lr']!r}}\\n")

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(0.02)

    def on_epoch_begin(self, args, state, control, **kwargs):
        if state.global_step == {STEPS_PER_EPOCH}:  # epoch 1 is recorded (by ours, before us)
            sys.stdout.write(f"run {{prov.recorder.run.id}}\\n")


arguments = TrainingArguments(output_dir="out", report_to="none", use_cpu=True, disable_tqdm=True,
                              num_train_epochs={EPOCHS}, per_device_train_batch_size=16, learning_rate={BASE_LR},
                              lr_scheduler_type="linear", warmup_steps={WARMUP}, logging_strategy="no",
                              save_strategy="no", eval_strategy="no", dataloader_num_workers=0)
trainer = Trainer(model=model, args=arguments, train_dataset=Tokens(64, 0), callbacks=[prov, Watch()])
trainer.remove_callback(PrinterCallback)
with open(rates_path, "w", buffering=1) as rates:
    trainer.train()
prov.end()
sys.stdout.write(f"ended {{trainer.state.global_step}}\\n")
"""


def start_training(store: str, folder, mode: str = "plain"):
    """A Trainer.train in a child process (working directory `folder`); returns (process, run id, rates file)."""
    rates = folder / "rates.txt"
    child = spawn_python(TRAINING, store, str(rates), mode, cwd=str(folder))
    line = child.stdout.readline()
    while line and not line.startswith("run "):
        line = child.stdout.readline()
    if not line:
        child.kill()
        pytest.fail(child.communicate(timeout=30)[1])
    return child, line.split()[1], rates


def finish(child) -> list[str]:
    try:
        out, err = child.communicate(timeout=180)
    except Exception:
        child.kill()
        raise
    assert child.returncode == 0, err
    return out.splitlines()


def rates_of(path) -> dict[int, tuple[float, float]]:
    """Global step (from 1) -> the rates of the two parameter groups that step used."""
    lines = [line.split() for line in path.read_text().splitlines()]
    return {int(step): (float(first), float(second)) for step, first, second in (x for x in lines if len(x) == 3)}


def schedule(t: int) -> float:
    """The Trainer's linear schedule with warm-up: the factor of the base rate after t optimizer steps."""
    total = EPOCHS * STEPS_PER_EPOCH
    return t / WARMUP if t < WARMUP else max(0.0, (total - t) / (total - WARMUP))


def global_step(answer) -> int:
    """The first optimizer step (global, from 1) that ran with what the answer says was applied."""
    return (answer.epoch - 1) * STEPS_PER_EPOCH + (answer.step or 1)


def adaptations(store, run_id):
    return tp.query("SELECT * FROM adaptations WHERE run_id = ? ORDER BY recorded_at", [run_id], store=store)


def test_a_learning_rate_request_applies_before_the_next_step_and_the_schedule_goes_on_from_it(store, tmp_path):
    child, run_id, rates = start_training(store, tmp_path)
    try:
        [answer] = tp.steer(run_id, {"learning_rate": 5e-4}, reason="too noisy", store=store, wait=30)
        [stop] = tp.steer(run_id, stop=True, store=store, wait=30)
    finally:
        lines = finish(child)
    assert answer.status == "applied", answer.message
    steered = global_step(answer)
    used = rates_of(rates)
    assert answer.old_value == pytest.approx(BASE_LR * schedule(steered - 1), rel=1e-12) and answer.new_value == 5e-4
    # before: the schedule from the base rate; from the boundary on: every group at the steered
    # rate, then the schedule's next factors relative to that step's (the LambdaLR's base rates scaled)
    for step, (first, second) in used.items():
        if step < steered:
            expected = BASE_LR * schedule(step - 1)
        else:
            expected = 5e-4 * schedule(step - 1) / schedule(steered - 1)
        assert first == pytest.approx(expected, rel=1e-9) and second == first, step
    assert used[steered] == (5e-4, 5e-4) and max(used) > steered
    epochs = tp.query("SELECT epoch, learning_rate FROM epoch_metrics WHERE run_id = ? ORDER BY epoch", [run_id],
                      store=store)
    assert [r["learning_rate"] for r in epochs] == [used[r["epoch"] * STEPS_PER_EPOCH][0] for r in epochs]
    # recorded once, as steering: neither the watcher ("manual") nor the schedule adds a row
    found = adaptations(store, run_id)
    assert [(a["kind"], a["cause"]) for a in found] == [("learning_rate", "steering"), ("stopped_by_request", "steering")]
    change = found[0]
    assert (change["epoch"], change["step"], change["parameter"]) == (answer.epoch, answer.step, "learning_rate")
    assert (change["old_value"], change["new_value"]) == (answer.old_value, 5e-4)
    assert change["reason"] == "too noisy" and change["request_id"] == answer.request_id
    assert change["requested_by"] == f"{getpass.getuser()}@{socket.gethostname()}"
    # the stop: at the end of the epoch, with no step of another one
    assert stop.status == "applied" and lines[-1] == f"ended {stop.epoch * STEPS_PER_EPOCH}" == f"ended {max(used)}"


def test_a_checkpoint_request_is_a_trainer_checkpoint_whose_sha256_is_recorded_and_a_stop_ends_the_run(store, tmp_path):
    child, run_id, rates = start_training(store, tmp_path)
    try:
        [answer] = tp.steer(run_id, checkpoint=True, store=store, wait=30)
        [stop] = tp.steer(run_id, stop=True, reason="enough", store=store, wait=30)
    finally:
        finish(child)
    assert answer.status == "applied", answer.message
    path = answer.new_value
    # the Trainer's own checkpoint-N in output_dir, saved at the end of the step (or epoch) the request reached
    folder = os.path.basename(os.path.dirname(path))
    assert os.path.dirname(os.path.dirname(path)) == str(tmp_path / "out") and os.path.basename(path) == "model.safetensors"
    assert re.fullmatch(r"checkpoint-\d+", folder) and int(folder.split("-")[1]) >= global_step(answer)
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json"} <= set(os.listdir(os.path.dirname(path)))
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert answer.message == f"saved {path} (sha256 {digest})"
    [file] = tp.query("SELECT sha256 FROM files WHERE run_id = ? AND path = ?", [run_id, path], store=store)
    assert file["sha256"] == digest
    # one checkpoint only: the request's
    assert len(tp.query("SELECT * FROM checkpoints WHERE run_id = ?", [run_id], store=store)) == 1
    assert stop.status == "applied", stop.message
    assert [r["status"] for r in tp.query("SELECT status FROM runs WHERE run_id = ?", [run_id], store=store)] == ["finished"]
    last = tp.query("SELECT max(epoch) AS e FROM epoch_metrics WHERE run_id = ?", [run_id], store=store)[0]["e"]
    assert last == stop.epoch < EPOCHS and max(rates_of(rates)) == stop.epoch * STEPS_PER_EPOCH
    found = adaptations(store, run_id)
    assert [(a["kind"], a["cause"]) for a in found] == [("checkpoint", "steering"), ("stopped_by_request", "steering")]
    assert found[0]["request_id"] == answer.request_id
    assert (found[1]["old_value"], found[1]["new_value"], found[1]["reason"]) == (EPOCHS, stop.epoch, "enough")


def test_refused_requests_say_why_and_change_nothing(store, tmp_path):
    child, run_id, rates = start_training(store, tmp_path, "no-checkpoints")
    try:
        answers = tp.steer(run_id, {"learning_rate": "fast", "dropout": 0.5}, store=store, wait=30)
        [negative] = tp.steer(run_id, {"learning_rate_group1": -1}, store=store, wait=30)
        [checkpoint] = tp.steer(run_id, checkpoint=True, store=store, wait=30)
        tp.steer(run_id, stop=True, store=store, wait=30)
    finally:
        finish(child)
    messages = {a.parameter: a.message for a in answers}
    assert all(a.status == "refused" for a in [*answers, negative, checkpoint])
    assert messages["learning_rate"] == "learning_rate takes a number, got 'fast'"
    assert messages["dropout"] == ("this training has no steerable parameter 'dropout'; it lets people change: "
                                   "learning_rate, learning_rate_group1")
    assert negative.message == "-1.0 is outside the bounds [0.0, ] declared for learning_rate_group1"
    assert checkpoint.message == ("this Trainer's checkpoints are not recorded (ProvenanceCallback(checkpoints=False)), "
                                  "so a checkpoint saved on request would not be either")
    for step, (first, second) in rates_of(rates).items():
        assert first == pytest.approx(BASE_LR * schedule(step - 1), rel=1e-12) and second == first, step
    assert not os.path.exists(tmp_path / "out") or not os.listdir(tmp_path / "out")
    assert [a["kind"] for a in adaptations(store, run_id)] == ["stopped_by_request"]
