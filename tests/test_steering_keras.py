"""Steering a Keras `model.fit` running in a child process (KERAS_BACKEND=torch), from the test process."""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
import time

import numpy as np
import pytest

import trainprov as tp
from conftest import spawn_python

keras = pytest.importorskip("keras")

# The child trains a small model for up to 400 epochs of 6 steps; a callback after ours writes,
# before each step, the rate that step trains with (and slows the steps down a little), and
# prints the run id once the first epoch is recorded.
TRAINING = """
import os, sys, time
os.environ.setdefault("KERAS_BACKEND", "torch")
import keras, numpy as np
from trainprov.keras import ProvenanceCallback

store, rates_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(192, 6)).astype("float32")
y = (x @ rng.normal(size=6) > 0).astype("float32")
rate = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=50, decay_rate=0.5) if mode == "schedule" else 0.05
model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                          keras.layers.Dense(1, activation="sigmoid")])
model.compile(optimizer=keras.optimizers.SGD(rate), loss="binary_crossentropy")
prov = ProvenanceCallback(store)


class Watch(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        time.sleep(0.01)
        optimizer = self.model.optimizer
        used = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        rates.write(f"{self.epoch + 1} {batch + 1} {int(keras.ops.convert_to_numpy(optimizer.iterations))} {used!r}\\n")

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            sys.stdout.write(f"run {prov.recorder.run.id}\\n")


callbacks = [prov]
if mode == "scheduler":
    callbacks.append(keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.05))
elif mode == "plateau":
    callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, min_delta=100.0))
elif mode == "modelcheckpoint":
    callbacks.append(keras.callbacks.ModelCheckpoint(os.path.join("ckpt", "last.keras")))
callbacks.append(Watch())
with open(rates_path, "w", buffering=1) as rates:
    history = model.fit(x, y, epochs=400, batch_size=32, verbose=0, callbacks=callbacks)
prov.end()
sys.stdout.write(f"ended {len(history.epoch)}\\n")
"""


def f32(value: float) -> float:
    """A value as Keras keeps it in a float32 variable."""
    return float(np.float32(value))


def start_training(store: str, folder, mode: str = "plain"):
    """A Keras fit in a child process (working directory `folder`); returns (process, run id, rates file)."""
    rates = folder / "rates.txt"
    child = spawn_python(TRAINING, store, str(rates), mode, cwd=str(folder))
    first = child.stdout.readline()
    if not first.startswith("run "):
        child.kill()
        pytest.fail(first + child.communicate(timeout=30)[1])
    return child, first.split()[1], rates


def finish(child) -> list[str]:
    try:
        out, err = child.communicate(timeout=120)
    except Exception:
        child.kill()
        raise
    assert child.returncode == 0, err
    return out.splitlines()


def rates_of(path) -> list[tuple[int, int, int, float]]:
    """(epoch, step, iterations done, rate) of each step the child ran."""
    lines = [line.split() for line in path.read_text().splitlines()]
    return [(int(e), int(s), int(i), float(r)) for e, s, i, r in (line for line in lines if len(line) == 4)]


def wait_for_rates(path, found, timeout: float = 60.0) -> None:
    """Wait until the child's rates satisfy `found` (a training goes on while the test waits)."""
    deadline = time.monotonic() + timeout
    while not found(rates_of(path)):
        assert time.monotonic() < deadline, "the training did not get there in time"
        time.sleep(0.05)


def applied_from(answer) -> tuple[int, int]:
    """The first (epoch, step) that trains with what the answer says was applied."""
    return answer.epoch, answer.step or 1


def adaptations(store, run_id):
    return tp.query("SELECT * FROM adaptations WHERE run_id = ? ORDER BY recorded_at", [run_id], store=store)


def test_a_learning_rate_request_is_applied_before_the_next_step_and_recorded_once(store, tmp_path):
    child, run_id, rates = start_training(store, tmp_path)
    try:
        [answer] = tp.steer(run_id, {"learning_rate": 0.01}, reason="the loss plateaued", store=store, wait=30)
        tp.steer(run_id, stop=True, store=store, wait=30)
    finally:
        finish(child)
    assert answer.status == "applied", answer.message
    assert (answer.old_value, answer.new_value) == (f32(0.05), f32(0.01))
    # the optimizer trained every step from the boundary on with the new rate, none before
    first = applied_from(answer)
    steps = rates_of(rates)
    assert {r for e, s, _, r in steps if (e, s) < first} == {f32(0.05)}
    assert {r for e, s, _, r in steps if (e, s) >= first} == {f32(0.01)}
    epochs = tp.query("SELECT epoch, learning_rate FROM epoch_metrics WHERE run_id = ? ORDER BY epoch", [run_id],
                      store=store)
    assert [r["learning_rate"] for r in epochs] == [f32(0.05) if r["epoch"] < answer.epoch else f32(0.01) for r in epochs]
    # one adaptation for the change, the steering one: the watch on the rate's variable does not add a "manual" one
    found = adaptations(store, run_id)
    assert [(a["kind"], a["cause"]) for a in found] == [("learning_rate", "steering"), ("stopped_by_request", "steering")]
    change = found[0]
    assert (change["epoch"], change["step"], change["parameter"]) == (answer.epoch, answer.step, "learning_rate")
    assert (change["old_value"], change["new_value"]) == (f32(0.05), f32(0.01))
    assert change["reason"] == "the loss plateaued" and change["request_id"] == answer.request_id
    assert change["requested_by"] == f"{getpass.getuser()}@{socket.gethostname()}"


def test_a_stop_request_ends_the_fit_at_the_end_of_the_epoch_and_the_run_finished(store, tmp_path):
    child, run_id, rates = start_training(store, tmp_path)
    try:
        [answer] = tp.steer(run_id, stop=True, reason="enough", store=store, wait=30)
    finally:
        lines = finish(child)
    assert answer.status == "applied", answer.message
    assert answer.message == f"the training stopped at the end of epoch {answer.epoch}"
    assert lines[-1] == f"ended {answer.epoch}" and answer.epoch < 400
    assert max(e for e, *_ in rates_of(rates)) == answer.epoch  # not one step of another epoch
    assert [r["status"] for r in tp.query("SELECT status FROM runs WHERE run_id = ?", [run_id], store=store)] == ["finished"]
    last = tp.query("SELECT max(epoch) AS e FROM epoch_metrics WHERE run_id = ?", [run_id], store=store)[0]["e"]
    assert last == answer.epoch
    [stopped] = adaptations(store, run_id)
    assert (stopped["kind"], stopped["cause"], stopped["parameter"]) == ("stopped_by_request", "steering", "epochs")
    assert (stopped["old_value"], stopped["new_value"], stopped["reason"]) == (400, answer.epoch, "enough")


@pytest.mark.parametrize("mode", ["plain", "modelcheckpoint"])
def test_a_checkpoint_request_saves_the_model_through_keras_and_records_its_sha256(store, tmp_path, mode):
    child, run_id, rates = start_training(store, tmp_path, mode)
    try:
        [answer] = tp.steer(run_id, checkpoint=True, store=store, wait=30)
        tp.steer(run_id, stop=True, store=store, wait=30)
    finally:
        finish(child)
    assert answer.status == "applied", answer.message
    path = answer.new_value
    # next to the ModelCheckpoint's files if there is one, else under trainprov-checkpoints/<run id>
    folder = tmp_path / "ckpt" if mode == "modelcheckpoint" else tmp_path / "trainprov-checkpoints" / run_id
    assert os.path.dirname(path) == str(folder)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert answer.message == f"saved {path} (sha256 {digest})"
    [file] = tp.query("SELECT sha256 FROM files WHERE run_id = ? AND path = ?", [run_id, path], store=store)
    assert file["sha256"] == digest
    [requested] = [a for a in adaptations(store, run_id) if a["kind"] == "checkpoint"]
    assert requested["cause"] == "steering" and requested["request_id"] == answer.request_id
    # a model Keras loads back, saved between two steps: named by the optimizer steps it had done
    saved = keras.saving.load_model(path)
    done = int(keras.ops.convert_to_numpy(saved.optimizer.iterations))
    assert os.path.basename(path) == f"steering-checkpoint-{done}.keras"
    assert done in {i for *_, i, _ in rates_of(rates)} | {max(i for *_, i, _ in rates_of(rates)) + 1}


def test_refused_requests_say_why_and_change_nothing(store, tmp_path):
    child, run_id, rates = start_training(store, tmp_path, "schedule")
    try:
        answers = tp.steer(run_id, {"learning_rate": "fast", "dropout": 0.5}, store=store, wait=30)
        [negative] = tp.steer(run_id, {"learning_rate": -1}, store=store, wait=30)
        [scheduled] = tp.steer(run_id, {"learning_rate": 0.01}, store=store, wait=30)
        tp.steer(run_id, stop=True, store=store, wait=30)
    finally:
        finish(child)
    messages = {a.parameter: a.message for a in answers}
    assert all(a.status == "refused" for a in [*answers, negative, scheduled])
    assert messages["learning_rate"] == "learning_rate takes a number, got 'fast'"
    assert messages["dropout"] == "this training has no steerable parameter 'dropout'; it lets people change: learning_rate"
    assert negative.message == "-1.0 is outside the bounds [0.0, ] declared for learning_rate"
    assert scheduled.message == (
        "set failed: TypeError: SGD's learning rate is computed by its ExponentialDecay schedule at every step, so it "
        "cannot be set; compile with a float learning rate to steer it (or register a value your schedule reads with "
        "prov.steerable)")
    # every step trained with the schedule's rate
    steps = rates_of(rates)
    assert [r for *_, r in steps] == pytest.approx([0.05 * 0.5 ** (i / 50) for *_, i, _ in steps], rel=1e-5)
    assert [a["kind"] for a in adaptations(store, run_id)] == ["stopped_by_request"]


def test_learning_rate_scheduler_sets_its_rate_again_at_the_next_epoch_and_both_are_recorded(store, tmp_path):
    child, run_id, rates = start_training(store, tmp_path, "scheduler")  # LearningRateScheduler: 0.05 every epoch
    try:
        [answer] = tp.steer(run_id, {"learning_rate": 0.01}, store=store, wait=30)
        # applied at a step: the scheduler's next epoch; at an epoch's end: at once, before the epoch's first step
        reset = answer.epoch + (answer.step is not None)
        wait_for_rates(rates, lambda steps: any(e > reset for e, *_ in steps))
        tp.steer(run_id, stop=True, store=store, wait=30)
    finally:
        finish(child)
    assert answer.status == "applied", answer.message
    steps = rates_of(rates)
    first = applied_from(answer)
    assert {r for e, s, _, r in steps if first <= (e, s) < (reset, 1)} <= {f32(0.01)}
    assert {r for e, s, _, r in steps if e >= reset} == {f32(0.05)}
    found = [(a["epoch"], a["step"], a["old_value"], a["new_value"], a["cause"])
             for a in adaptations(store, run_id) if a["kind"] == "learning_rate"]
    assert found == [(answer.epoch, answer.step, f32(0.05), f32(0.01), "steering"),
                     (reset, None, f32(0.01), f32(0.05), "LearningRateScheduler")]


def test_reduce_lr_on_plateau_reduces_the_steered_rate(store, tmp_path):
    child, run_id, rates = start_training(store, tmp_path, "plateau")  # halves the rate every 2 epochs
    try:
        [answer] = tp.steer(run_id, {"learning_rate": 0.02}, store=store, wait=30)
        wait_for_rates(rates, lambda steps: any(r == f32(0.01) for *_, r in steps))
        tp.steer(run_id, stop=True, store=store, wait=30)
    finally:
        finish(child)
    assert answer.status == "applied", answer.message
    found = [(a["old_value"], a["new_value"], a["cause"]) for a in adaptations(store, run_id) if a["kind"] == "learning_rate"]
    steered = found.index((answer.old_value, f32(0.02), "steering"))
    assert all(cause == "ReduceLROnPlateau" for *_, cause in found[:steered])
    assert found[steered + 1] == (f32(0.02), f32(0.01), "ReduceLROnPlateau")
