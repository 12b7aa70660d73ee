"""Online steering of real PyTorch trainings: a hand-written loop with `Tracker`, and Lightning's `Trainer.fit`.

Each training runs in a child process and is steered from the test process with
`tp.steer(...)`, as a person would from a second terminal; the child prints the rate its
optimizer used in each epoch, so that what the training did is checked apart from what it
recorded.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest
import torch

import trainprov as tp
from conftest import spawn_python
from trainprov.capture.steering import requester

pytest.importorskip("lightning.pytorch")

TRACKER_TRAINING = """
import sys, time, torch
from trainprov.torch import Tracker
store, epochs, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
x = torch.randn(64, 4)
y = x.sum(1, keepdim=True)
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5) if mode == "steplr" else None
tracker = Tracker(model, optimizer, store, epochs=epochs, loss="mse")
tracker.start()
sys.stdout.write(f"run {tracker.run.id}\\n")
with tracker:
    for epoch in range(1, epochs + 1):
        for i in range(8):
            time.sleep(0.005)
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[i * 8:(i + 1) * 8]), y[i * 8:(i + 1) * 8])
            loss.backward()
            optimizer.step()
            used = optimizer.param_groups[0]["lr"]  # the rate this step used
        if scheduler is not None:
            scheduler.step()
        tracker.epoch(loss=loss.item())
        sys.stdout.write(f"epoch {epoch} lr {used}\\n")
        if mode != "ignores-stop" and tracker.should_stop:
            break
sys.stdout.write(f"ended {epoch}\\n")
"""

LIGHTNING_TRAINING = """
import sys, time, warnings
import torch
import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from trainprov.lightning import Provenance
warnings.simplefilter("ignore")
store, epochs, mode, root = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

class Model(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.other = torch.nn.Linear(4, 1)
        self.used = None
        self.automatic_optimization = mode != "two-optimizers"

    def training_step(self, batch, batch_idx):
        x, y = batch
        # in automatic optimization this runs inside optimizer.step, after its pre-hooks: the rate this step uses
        self.used = [o.param_groups[0]["lr"] for o in self.trainer.optimizers]
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("loss", loss, on_epoch=True)
        if self.automatic_optimization:
            return loss
        for optimizer, module in zip(self.optimizers(), (self.layer, self.other)):
            optimizer.zero_grad()
            self.manual_backward(torch.nn.functional.mse_loss(module(x), y))
            optimizer.step()
        self.used = [o.param_groups[0]["lr"] for o in self.trainer.optimizers]

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.layer.parameters(), lr=0.1)
        if mode == "two-optimizers":
            return [optimizer, torch.optim.SGD(self.other.parameters(), lr=0.1)]
        if mode == "schedule":  # 0.9 times the rate at each epoch (8 steps), stepped at every step
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.9 ** (step // 8))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
        return optimizer

class Report(pl.Callback):
    def on_train_start(self, trainer, module):
        sys.stdout.write(f"run {prov.run.id}\\n")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        time.sleep(0.005)

    def on_train_epoch_end(self, trainer, module):
        sys.stdout.write(f"epoch {trainer.current_epoch + 1} lr {' '.join(map(str, module.used))}\\n")

torch.manual_seed(0)
x = torch.randn(64, 4)
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
prov = Provenance(store)
trainer = pl.Trainer(max_epochs=epochs, callbacks=[prov, Report(), ModelCheckpoint(dirpath=root + "/ckpts")],
                     default_root_dir=root, enable_progress_bar=False, enable_model_summary=False,
                     log_every_n_steps=1)
with prov:
    trainer.fit(Model(), data)
sys.stdout.write(f"ended {trainer.current_epoch}\\n")
"""


class Training:
    """A training in a child process, started and read until it has recorded its first epoch."""

    def __init__(self, code: str, *args: str, cwd: str | None = None) -> None:
        self.child = spawn_python(code, *args, cwd=cwd)
        first = self.child.stdout.readline()
        assert first.startswith("run "), first + self.child.stderr.read()
        self.run_id = first.split()[1]
        self.lines = [self.child.stdout.readline()]  # the first epoch has ended: steering now lands mid-training
        assert self.lines[0].startswith("epoch 1 "), self.lines[0] + self.child.stderr.read()

    def finish(self) -> list[str]:
        """Wait for the training's end; its output lines."""
        try:
            out, err = self.child.communicate(timeout=120)
        finally:
            if self.child.poll() is None:
                self.child.kill()
        assert self.child.returncode == 0, err
        self.lines += out.splitlines()
        return self.lines

    def rates(self) -> dict[int, list[float]]:
        """epoch -> the rates the optimizers used in its last step, as the child printed them."""
        return {int(line.split()[1]): [float(v) for v in line.split()[3:]]
                for line in self.lines if line.startswith("epoch ")}


def epoch_rates(store: str, run_id: str) -> dict[int, float]:
    with tp.connect(store) as reader:
        return {r["epoch"]: r["learning_rate"] for r in
                reader.rows("SELECT epoch, learning_rate FROM epoch_metrics WHERE run_id = ?", [run_id])}


def adaptations(store: str, run_id: str) -> list[dict]:
    with tp.connect(store) as reader:
        return reader.rows("SELECT a.* FROM adaptations a JOIN tasks t ON t.task_id = a.task_id WHERE a.run_id = ? "
                           "ORDER BY t.iteration", [run_id])


def wait_for_epoch(store: str, run_id: str, epoch: int) -> None:
    """Wait until the training has recorded `epoch` (so a later request lands after it)."""
    deadline = time.monotonic() + 60
    while max(epoch_rates(store, run_id), default=0) < epoch:
        assert time.monotonic() < deadline, f"the training did not reach epoch {epoch}"
        time.sleep(0.05)


def check_steered(adaptation: dict, answer, reason: str) -> None:
    """The adaptation is the request's: cause, requester, reason, where it was applied."""
    assert adaptation["cause"] == "steering"
    assert adaptation["request_id"] == answer.request_id
    assert adaptation["reason"] == reason
    assert adaptation["requested_by"] == requester()
    assert (adaptation["epoch"], adaptation["step"]) == (answer.epoch, answer.step)
    assert (adaptation["old_value"], adaptation["new_value"]) == (answer.old_value, answer.new_value)


# ---- PyTorch Tracker ---------------------------------------------------------------------------


def test_tracker_applies_a_learning_rate_request_before_the_next_optimizer_step(store):
    training = Training(TRACKER_TRAINING, store, "400", "plain")
    try:
        [answer] = tp.steer(training.run_id, {"learning_rate": 0.01}, reason="loss plateaued", store=store, wait=30)
        tp.steer(training.run_id, stop=True, store=store, wait=30)
    finally:
        training.finish()
    assert answer.status == "applied", answer.message
    assert (answer.old_value, answer.new_value) == (0.1, 0.01)
    # the optimizer used the new rate from the boundary where it was applied on
    used = training.rates()
    assert all(rates == [0.1] for epoch, rates in used.items() if epoch < answer.epoch)
    assert all(rates == [0.01] for epoch, rates in used.items() if epoch >= answer.epoch)
    recorded = epoch_rates(store, training.run_id)
    assert all(rate == (0.1 if epoch < answer.epoch else 0.01) for epoch, rate in recorded.items())
    assert answer.epoch in recorded and answer.epoch > 1
    rows = [a for a in adaptations(store, training.run_id) if a["kind"] == "learning_rate"]
    [adaptation] = rows  # recorded once, as steering: never also as a "manual" change
    check_steered(adaptation, answer, "loss plateaued")
    assert adaptation["parameter"] == "learning_rate"


def test_tracker_stop_request_ends_the_loop_at_the_end_of_the_epoch_and_the_run_finished(store):
    training = Training(TRACKER_TRAINING, store, "400", "plain")
    try:
        [answer] = tp.steer(training.run_id, stop=True, reason="will not converge", store=store, wait=30)
    finally:
        lines = training.finish()
    assert answer.status == "applied", answer.message
    assert answer.message == f"the training stopped at the end of epoch {answer.epoch}"
    assert lines[-1] == f"ended {answer.epoch}" and answer.epoch < 400
    assert max(epoch_rates(store, training.run_id)) == answer.epoch
    with tp.connect(store) as reader:
        assert reader.runs().set_index("run_id").loc[training.run_id, "status"] == "finished"
    [adaptation] = adaptations(store, training.run_id)
    assert (adaptation["kind"], adaptation["cause"], adaptation["parameter"]) == ("stopped_by_request", "steering", "epochs")
    assert (adaptation["old_value"], adaptation["new_value"]) == (400, answer.epoch)
    assert adaptation["reason"] == "will not converge"


def checkpoint_then_stop(training: "Training", store: str):
    """Ask the training for a checkpoint, then to stop; the checkpoint's answer, once the training ended."""
    try:
        [answer] = tp.steer(training.run_id, checkpoint=True, store=store, wait=30)
        tp.steer(training.run_id, stop=True, store=store, wait=30)
    finally:
        training.finish()
    assert answer.status == "applied", answer.message
    return answer


def test_tracker_checkpoint_request_saves_model_and_optimizer_next_to_the_store(store, tmp_path):
    training = Training(TRACKER_TRAINING, store, "400", "plain")
    answer = checkpoint_then_stop(training, store)
    path = answer.new_value
    assert os.path.dirname(path) == str(tmp_path / "trainprov-checkpoints" / training.run_id)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert answer.message == f"saved {path} (sha256 {digest})"
    saved = torch.load(path)
    assert set(saved) == {"model", "optimizer", "epoch", "step"}
    assert set(saved["model"]) == {"weight", "bias"} and saved["optimizer"]["param_groups"][0]["lr"] == 0.1
    with tp.connect(store) as reader:
        [file] = reader.rows("SELECT sha256 FROM files WHERE run_id = ? AND path = ?", [training.run_id, path])
        [row] = reader.rows("SELECT epoch FROM checkpoints WHERE run_id = ?", [training.run_id])
    assert file["sha256"] == digest
    assert row["epoch"] == saved["epoch"]
    adaptation = next(a for a in adaptations(store, training.run_id) if a["kind"] == "checkpoint")
    assert adaptation["cause"] == "steering" and adaptation["request_id"] == answer.request_id


def test_tracker_refused_requests_change_nothing(store):
    training = Training(TRACKER_TRAINING, store, "400", "plain")
    try:
        answers = tp.steer(training.run_id, {"learning_rate": "fast", "dropout": 0.5, "learning_rate_group1": 0.01},
                           store=store, wait=30)
        [negative] = tp.steer(training.run_id, {"learning_rate": -1}, store=store, wait=30)
        tp.steer(training.run_id, stop=True, store=store, wait=30)
    finally:
        training.finish()
    messages = {a.parameter: a.message for a in answers}
    assert all(a.status == "refused" for a in [*answers, negative])
    assert messages["learning_rate"] == "learning_rate takes a number, got 'fast'"
    assert messages["dropout"] == ("this training has no steerable parameter 'dropout'; it lets people change: "
                                   "learning_rate")
    assert "no steerable parameter 'learning_rate_group1'" in messages["learning_rate_group1"]
    assert negative.message == "-1.0 is outside the bounds [0.0, ] declared for learning_rate"
    assert all(rates == [0.1] for rates in training.rates().values())
    assert set(epoch_rates(store, training.run_id).values()) == {0.1}
    assert [a["kind"] for a in adaptations(store, training.run_id)] == ["stopped_by_request"]


def test_tracker_a_step_schedule_goes_on_from_the_steered_rate_and_both_changes_are_recorded(store):
    training = Training(TRACKER_TRAINING, store, "400", "steplr")
    try:
        [answer] = tp.steer(training.run_id, {"learning_rate": 0.3}, reason="warmer", store=store, wait=30)
        wait_for_epoch(store, training.run_id, answer.epoch + 2)  # StepLR halves the rate every 2 epochs
        tp.steer(training.run_id, stop=True, store=store, wait=30)
    finally:
        training.finish()
    assert answer.status == "applied", answer.message
    rows = [a for a in adaptations(store, training.run_id) if a["kind"] == "learning_rate"]
    assert {a["cause"] for a in rows} == {"StepLR", "steering"}  # nothing "manual"
    [steered] = [a for a in rows if a["cause"] == "steering"]
    check_steered(steered, answer, "warmer")
    # the schedule's next change halves the steered rate, recorded as StepLR's
    after = next(a for a in rows if a["cause"] == "StepLR" and a["epoch"] > answer.epoch)
    assert (after["old_value"], after["new_value"]) == (0.3, 0.15)
    used = training.rates()
    assert all(used[e] == [0.3] for e in range(answer.epoch, after["epoch"]))
    assert used[after["epoch"]] == [0.15] == [epoch_rates(store, training.run_id)[after["epoch"]]]


def test_tracker_a_loop_that_ignores_should_stop_gets_the_stop_refused(store):
    training = Training(TRACKER_TRAINING, store, "60", "ignores-stop")
    try:
        [answer] = tp.steer(training.run_id, stop=True, store=store, wait=30)
    finally:
        lines = training.finish()
    assert lines[-1] == "ended 60"
    assert answer.status == "refused"
    assert answer.message.startswith(f"the training went on after epoch {answer.epoch}: its loop does not end when "
                                     "tracker.should_stop is True")
    assert [a["kind"] for a in adaptations(store, training.run_id)] == []


# ---- Lightning -----------------------------------------------------------------------------------


def test_lightning_learning_rate_request_and_a_step_schedule_that_goes_on_from_it(store, tmp_path):
    training = Training(LIGHTNING_TRAINING, store, "300", "schedule", str(tmp_path))
    try:
        [answer] = tp.steer(training.run_id, {"learning_rate": 0.5}, reason="faster", store=store, wait=30)
        wait_for_epoch(store, training.run_id, answer.epoch + 2)
        tp.steer(training.run_id, stop=True, store=store, wait=30)
    finally:
        training.finish()
    assert answer.status == "applied", answer.message
    assert answer.old_value == pytest.approx(0.1 * 0.9 ** (answer.epoch - 1))
    # LambdaLR's base rate was scaled: from the steered epoch on, 0.9 times the steered rate per epoch
    used, recorded = training.rates(), epoch_rates(store, training.run_id)
    for epoch, rate in recorded.items():
        expected = 0.1 * 0.9 ** (epoch - 1) if epoch < answer.epoch else 0.5 * 0.9 ** (epoch - answer.epoch)
        assert rate == pytest.approx(expected) and used[epoch] == [pytest.approx(expected)]
    assert max(recorded) >= answer.epoch + 2
    [adaptation] = [a for a in adaptations(store, training.run_id) if a["kind"] == "learning_rate"]
    check_steered(adaptation, answer, "faster")


def test_lightning_stop_request_ends_the_fit_at_the_end_of_the_epoch(store, tmp_path):
    training = Training(LIGHTNING_TRAINING, store, "300", "plain", str(tmp_path))
    try:
        [answer] = tp.steer(training.run_id, stop=True, reason="enough", store=store, wait=30)
    finally:
        lines = training.finish()
    assert answer.status == "applied", answer.message
    assert max(epoch_rates(store, training.run_id)) == answer.epoch < 300
    assert int(lines[-1].split()[1]) <= answer.epoch + 1  # trainer.current_epoch: no further epoch trained
    with tp.connect(store) as reader:
        assert reader.runs().set_index("run_id").loc[training.run_id, "status"] == "finished"
    [adaptation] = adaptations(store, training.run_id)
    assert (adaptation["kind"], adaptation["cause"]) == ("stopped_by_request", "steering")
    assert (adaptation["old_value"], adaptation["new_value"], adaptation["reason"]) == (300, answer.epoch, "enough")


def test_lightning_checkpoint_request_is_saved_by_the_trainer_into_the_checkpoint_folder(store, tmp_path):
    training = Training(LIGHTNING_TRAINING, store, "300", "plain", str(tmp_path))
    answer = checkpoint_then_stop(training, store)
    path = answer.new_value
    assert os.path.dirname(path) == str(tmp_path / "ckpts") and os.path.basename(path).startswith("steered-epoch")
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    saved = torch.load(path, weights_only=False)
    assert {"state_dict", "optimizer_states", "global_step", "epoch"} <= set(saved)  # Lightning's own, resumable
    with tp.connect(store) as reader:
        [file] = reader.rows("SELECT sha256 FROM files WHERE run_id = ? AND path = ?", [training.run_id, path])
    assert file["sha256"] == digest
    adaptation = next(a for a in adaptations(store, training.run_id) if a["kind"] == "checkpoint")
    assert adaptation["cause"] == "steering" and adaptation["request_id"] == answer.request_id


def test_lightning_several_optimizers_refused_requests_change_nothing(store, tmp_path):
    training = Training(LIGHTNING_TRAINING, store, "300", "two-optimizers", str(tmp_path))
    try:
        refused = tp.steer(training.run_id, {"learning_rate": "fast", "learning_rate_group1": 0.2}, store=store,
                           wait=30)
        wait_for_epoch(store, training.run_id, max(r.epoch for r in refused) + 1)
        [second] = tp.steer(training.run_id, {"learning_rate_optimizer1": 0.02}, store=store, wait=30)
        tp.steer(training.run_id, stop=True, store=store, wait=30)
    finally:
        training.finish()
    messages = {a.parameter: a.message for a in refused}
    assert all(a.status == "refused" for a in refused)
    assert messages["learning_rate"] == "learning_rate takes a number, got 'fast'"
    assert messages["learning_rate_group1"] == ("this training has no steerable parameter 'learning_rate_group1'; "
                                                "it lets people change: learning_rate, learning_rate_optimizer1")
    assert second.status == "applied", second.message
    used = training.rates()
    assert all(rates == [0.1, 0.1] for epoch, rates in used.items() if epoch < second.epoch)
    assert all(rates == [0.1, 0.02] for epoch, rates in used.items() if epoch >= second.epoch)
    assert set(epoch_rates(store, training.run_id).values()) == {0.1}  # the first optimizer's
    rows = [a for a in adaptations(store, training.run_id) if a["kind"] == "learning_rate"]
    assert [(a["parameter"], a["cause"], a["old_value"], a["new_value"]) for a in rows] == [
        ("learning_rate_optimizer1", "steering", 0.1, 0.02)]
