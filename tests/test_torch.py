"""Plain PyTorch: a hand-written loop with a Tracker, real training of small models on CPU."""

from __future__ import annotations

import hashlib
import io
import json
import math

import pytest
import torch

import trainprov as tp
from conftest import run_python
from trainprov.torch import LearningRateWatcher, Tracker, model_layers

torch.manual_seed(0)
X = torch.randn(256, 8)
Y = X.sin().sum(1, keepdim=True)


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 1))


def loader(batch_size: int = 32) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=batch_size)


def train(tracker, model, opt, epochs, scheduler=None, per_step_scheduler=False, after_epoch=None, record_steps=True):
    """A plain loop with the Tracker's lines in it; returns what the loop itself saw."""
    seen = {"epoch_loss": [], "step_loss": [], "step_lr": [], "epoch_lr": []}
    for epoch in range(1, epochs + 1):
        total = 0.0
        for xb, yb in loader():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            loss.backward()
            lr_used = opt.param_groups[0]["lr"]
            opt.step()
            if per_step_scheduler:
                scheduler.step()
            if record_steps:
                tracker.step(loss=loss)
            seen["step_loss"].append(loss.item())
            seen["step_lr"].append(lr_used)
            total += loss.item()
        seen["epoch_lr"].append(lr_used)
        seen["epoch_loss"].append(total / 8)
        if scheduler is not None and not per_step_scheduler:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(seen["epoch_loss"][-1])
            else:
                scheduler.step()
        tracker.epoch(loss=seen["epoch_loss"][-1])
        if after_epoch is not None:
            after_epoch(epoch, seen)
    return seen


def adaptations(store):
    return tp.query(
        "SELECT epoch, step, parameter, old_value, new_value, cause, monitor_value FROM adaptations "
        "WHERE kind = 'learning_rate' ORDER BY epoch, parameter",
        store=store,
    )


def test_epochs_and_steps_equal_what_the_loop_saw(store):
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with Tracker(model, opt, store, loader=loader(), epochs=3, loss="mse", steps=True) as tracker:
        seen = train(tracker, model, opt, 3)
    rows = tp.query("SELECT epoch, loss, learning_rate, epoch_time_s FROM epoch_metrics ORDER BY epoch", store=store)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["loss"] for r in rows] == seen["epoch_loss"]
    assert all(r["learning_rate"] == 0.01 and r["epoch_time_s"] > 0 for r in rows)
    steps = tp.query("SELECT epoch, step, global_step, loss FROM step_metrics ORDER BY global_step", store=store)
    assert [r["global_step"] for r in steps] == list(range(1, 25))
    assert [(r["epoch"], r["step"]) for r in steps][:9] == [(1, s) for s in range(1, 9)] + [(2, 1)]
    assert [r["loss"] for r in steps] == pytest.approx(seen["step_loss"], rel=1e-7)  # float32 item() -> float
    hp = tp.query("SELECT * FROM hyperparameters", store=store)[0]
    assert (hp["framework"], hp["optimizer"], hp["learning_rate"], hp["loss"]) == ("pytorch", "Adam", 0.01, "mse")
    assert (hp["batch_size"], hp["epochs"], hp["steps_per_epoch"]) == (32, 3, 8)
    assert hp["trainable_params"] == sum(p.numel() for p in model.parameters()) == 8 * 16 + 16 + 16 + 1
    config = json.loads(hp["optimizer_config"])
    assert config["defaults"]["betas"] == [0.9, 0.999] and config["param_groups"][0]["params"] == hp["trainable_params"]
    assert tp.query("SELECT status FROM runs", store=store) == [{"status": "finished"}]


def test_step_scheduler_and_manual_changes_are_recorded_once_each(store):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

    def by_hand(epoch, seen):
        if epoch == 5:
            for group in opt.param_groups:
                group["lr"] = 0.001

    with Tracker(model, opt, store, steps=False) as tracker:
        seen = train(tracker, model, opt, 6, scheduler=scheduler, after_epoch=by_hand, record_steps=False)
    # StepLR halves after epochs 2 and 4 (used from epochs 3 and 5); by hand after epoch 5;
    # StepLR's own step after epoch 6 sets 0.0005 for an epoch that never runs
    assert adaptations(store) == [
        {"epoch": 3, "step": 1, "parameter": "learning_rate", "old_value": 0.1, "new_value": 0.05, "cause": "StepLR", "monitor_value": None},
        {"epoch": 5, "step": 1, "parameter": "learning_rate", "old_value": 0.05, "new_value": 0.025, "cause": "StepLR", "monitor_value": None},
        {"epoch": 6, "step": 1, "parameter": "learning_rate", "old_value": 0.025, "new_value": 0.001, "cause": "manual", "monitor_value": None},
        {"epoch": 7, "step": None, "parameter": "learning_rate", "old_value": 0.001, "new_value": 0.0005, "cause": "StepLR", "monitor_value": None},
    ]
    rates = [r["learning_rate"] for r in tp.query("SELECT learning_rate FROM epoch_metrics ORDER BY epoch", store=store)]
    assert rates == seen["epoch_lr"] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.001]
    hp = tp.query("SELECT lr_schedule FROM hyperparameters", store=store)[0]
    assert json.loads(hp["lr_schedule"]) == {"class": "StepLR", "step_size": 2, "gamma": 0.5, "base_lrs": [0.1]}


def lr_schedule(store) -> object:
    value = tp.query("SELECT lr_schedule FROM hyperparameters", store=store)[0]["lr_schedule"]
    return json.loads(value) if value is not None else None


def test_schedulers_made_before_the_tracker_are_found_without_scanning_every_object(store, tmp_path, monkeypatch):
    """A scheduler in a trainer's attribute is found through the callers' variables; no scheduler costs no scan."""
    import gc

    def every_object(*objects):
        raise AssertionError("every object was scanned")
    monkeypatch.setattr(gc, "get_referrers", every_object)

    class Trainer:
        def __init__(self):
            self.model = mlp()
            self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, factor=0.5, patience=3)

        def fit(self, where):
            with Tracker(self.model, self.opt, where, steps=False) as tracker:
                train(tracker, self.model, self.opt, 1, record_steps=False)

    Trainer().fit(store)
    assert lr_schedule(store)["class"] == "ReduceLROnPlateau"
    assert lr_schedule(store)["patience"] == 3

    plain = str(tmp_path / "plain.db")
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Tracker(model, opt, plain, steps=False) as tracker:
        train(tracker, model, opt, 1, record_steps=False)
    assert lr_schedule(plain) is None


def test_looking_for_schedulers_keeps_no_batch_of_the_loop_alive(store):
    """The callers' variables are read when the tracker is made: not at a step, when they hold a batch's outputs."""
    import weakref

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Tracker(model, opt, store, steps=True) as tracker:
        for i, (xb, yb) in enumerate(loader()):
            opt.zero_grad()
            out = model(xb)
            loss = ((out - yb) ** 2).mean()
            loss.backward()
            opt.step()  # the first records the hyperparameters
            tracker.step(loss=loss.item())
            if i == 0:
                first = weakref.ref(out)
            if i == 1:
                break
        assert first() is None


def test_a_scheduler_out_of_the_callers_reach_is_found_by_a_scan(store):
    """Kept two levels down, a scheduler made before the Tracker is still found: it marked the optimizer."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kept = {"schedules": {"main": torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)}}
    with Tracker(model, opt, store, steps=False) as tracker:
        train(tracker, model, opt, 1, record_steps=False)
    assert lr_schedule(store) == {"class": "StepLR", "step_size": 3, "gamma": 0.5, "base_lrs": [0.1]}
    assert kept


def test_a_change_by_hand_then_by_a_scheduler_before_a_step_is_two_rows(store):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    def by_hand_then_scheduled(epoch, seen):
        if epoch == 2:
            for group in opt.param_groups:
                group["lr"] = 0.02
            scheduler.step()  # halves the rate just set by hand, before any step used it

    with Tracker(model, opt, store) as tracker:
        seen = train(tracker, model, opt, 3, after_epoch=by_hand_then_scheduled, record_steps=False)
    rows = tp.query(
        "SELECT a.epoch, a.step, a.old_value, a.new_value, a.cause FROM adaptations a JOIN tasks t ON t.task_id = a.task_id "
        "WHERE a.kind = 'learning_rate' ORDER BY t.iteration", store=store)
    # each change with its own cause, in the order made, both first used at epoch 3's first step
    assert rows == [
        {"epoch": 3, "step": 1, "old_value": 0.1, "new_value": 0.02, "cause": "manual"},
        {"epoch": 3, "step": 1, "old_value": 0.02, "new_value": 0.01, "cause": "StepLR"},
    ]
    assert seen["epoch_lr"] == [0.1, 0.1, 0.01]


def test_plateau_changes_carry_the_monitored_value(store):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)  # slow enough to plateau at once
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.5)
    with Tracker(model, opt, store, monitor="loss") as tracker:
        seen = train(tracker, model, opt, 3, scheduler=scheduler, record_steps=False)
    changes = adaptations(store)
    assert [c["cause"] for c in changes] == ["ReduceLROnPlateau"] * len(changes) and changes
    for change in changes:  # the loss of the epoch whose end lowered the rate
        assert change["monitor_value"] == pytest.approx(seen["epoch_loss"][change["epoch"] - 2])
        assert change["new_value"] == pytest.approx(change["old_value"] / 2)
    assert tp.query("SELECT DISTINCT monitor FROM adaptations", store=store) == [{"monitor": "loss"}]


def test_continuous_schedule_rates_are_step_values_not_adaptations(store):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=16)
    with Tracker(model, opt, store, steps=True) as tracker:
        seen = train(tracker, model, opt, 2, scheduler=scheduler, per_step_scheduler=True)
    assert adaptations(store) == []
    rates = tp.query("SELECT learning_rate FROM step_metrics ORDER BY global_step", store=store)
    assert [r["learning_rate"] for r in rates] == seen["step_lr"]
    assert len(set(seen["step_lr"])) > 8
    assert json.loads(tp.query("SELECT lr_schedule FROM hyperparameters", store=store)[0]["lr_schedule"])["class"] == "OneCycleLR"


def test_sequential_schedule_names_the_inner_scheduler(store):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=2)
    steps = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    scheduler = torch.optim.lr_scheduler.SequentialLR(opt, [warmup, steps], milestones=[2])
    with Tracker(model, opt, store) as tracker:
        train(tracker, model, opt, 5, scheduler=scheduler, record_steps=False)
    causes = [(c["epoch"], c["cause"]) for c in adaptations(store)]
    assert causes and all(cause == "StepLR" for _, cause in causes)  # the warm-up is continuous


class HalvingOnNoProgress:
    """A scheduler that is no torch LRScheduler (like Transformers' GreedyLR): known by its optimizer and step."""

    def __init__(self, optimizer):
        self.optimizer, self.best = optimizer, float("inf")

    def step(self, metrics):
        if metrics > self.best * 0.99:
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"] / 2
        self.best = min(self.best, metrics)


def test_a_scheduler_of_another_kind_is_named_with_its_metric(store):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    scheduler = HalvingOnNoProgress(opt)
    with Tracker(model, opt, store, monitor="loss") as tracker:
        seen = train(tracker, model, opt, 4, scheduler=None, record_steps=False,
                     after_epoch=lambda epoch, seen: scheduler.step(seen["epoch_loss"][-1]))
    changes = adaptations(store)
    assert changes and {c["cause"] for c in changes} == {"HalvingOnNoProgress"}
    assert [c["monitor_value"] for c in changes] == [seen["epoch_loss"][c["epoch"] - 2] for c in changes]


def test_every_parameter_group_is_recorded(store):
    model = mlp()
    opt = torch.optim.SGD([
        {"params": model[0].parameters(), "lr": 0.1},
        {"params": model[3].parameters(), "lr": 0.01, "momentum": 0.9},
    ], lr=0.5)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1], gamma=0.1)
    with Tracker(model, opt, store) as tracker:
        train(tracker, model, opt, 2, scheduler=scheduler, record_steps=False)
    config = json.loads(tp.query("SELECT optimizer_config FROM hyperparameters", store=store)[0]["optimizer_config"])
    assert [(g["lr"], g["momentum"], g["params"]) for g in config["param_groups"]] == [(0.1, 0.0, 8 * 16 + 16), (0.01, 0.9, 17)]
    assert config["defaults"]["lr"] == 0.5
    assert [(c["parameter"], c["old_value"], c["new_value"]) for c in adaptations(store)] == [
        ("learning_rate", 0.1, pytest.approx(0.01)), ("learning_rate_group1", 0.01, pytest.approx(0.001))]


def test_checkpoint_sha256_matches_the_file(store, tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Tracker(model, opt, store) as tracker:
        for epoch in range(2):
            train(tracker, model, opt, 1, record_steps=False)
            ref = tracker.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / f"ckpt-{epoch}.pt",
                               monitor="loss", monitor_value=torch.tensor(0.25))
        tracker.evaluation(test_loss=0.5, seconds=0.1)
    files = tp.query("SELECT f.path, f.size_bytes, f.sha256, c.epoch, c.monitor_value FROM files f "
                     "JOIN checkpoints c ON f.task_id = c.task_id AND f.element_seq = c.element_seq ORDER BY c.epoch", store=store)
    assert [f["epoch"] for f in files] == [1, 2]
    for f in files:
        data = open(f["path"], "rb").read()
        assert f["sha256"] == hashlib.sha256(data).hexdigest() and f["size_bytes"] == len(data)
        assert f["monitor_value"] == 0.25
    assert ref.sha256 == files[-1]["sha256"]
    assert tp.query("SELECT count(*) AS n FROM file_derivations", store=store) == [{"n": 1}]  # ckpt-1 from ckpt-0
    assert tp.query("SELECT test_loss, evaluation_time_s FROM test_results", store=store) == [{"test_loss": 0.5, "evaluation_time_s": 0.1}]
    # the optimizer saved while watched is an ordinary one when loaded
    state = torch.load(tmp_path / "ckpt-1.pt")["optimizer"]
    assert all(type(g) is dict for g in state["param_groups"])


def test_watched_optimizer_pickles_and_unwatches(store):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = Tracker(model, opt, store)
    tracker.begin()
    buffer = io.BytesIO()
    torch.save(opt, buffer)  # the whole object, groups and all
    buffer.seek(0)
    copy = torch.load(buffer, weights_only=False)
    assert all(type(g) is dict for g in copy.param_groups)
    tracker.end()
    assert all(type(g) is dict for g in opt.param_groups)
    opt.param_groups[0]["lr"] = 0.5  # no longer watched: nothing recorded, nothing raised
    assert adaptations(store) == []


def test_loaded_state_is_watched_again(store):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    saved = opt.state_dict()
    saved["param_groups"][0]["lr"] = 0.02
    with Tracker(model, opt, store) as tracker:
        train(tracker, model, opt, 1, record_steps=False)
        opt.load_state_dict(saved)  # new group dicts: the change is still seen
        train(tracker, model, opt, 1, record_steps=False)
        opt.param_groups[0]["lr"] = 0.01  # and later changes keep their cause
        train(tracker, model, opt, 1, record_steps=False)
    assert [(c["epoch"], c["cause"], c["new_value"]) for c in adaptations(store)] == [(2, "unknown", 0.02), (3, "manual", 0.01)]


def test_architecture_rows(store):
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, kernel_size=3, stride=2), torch.nn.GELU(), torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 3, 2))
    facts, rows = model_layers(model)
    assert facts == {"n_layers": 4, "trainable_params": 40 + 74, "non_trainable_params": 0}
    assert [(r["class_name"], r["params"], r["filters"], r["kernel_size"], r["strides"], r["units"], r["activation"]) for r in rows] == [
        ("Conv2d", 40, 4, "(3, 3)", "(2, 2)", None, None), ("GELU", 0, None, None, None, None, "gelu"),
        ("Flatten", 0, None, None, None, None, None), ("Linear", 74, None, None, None, 2, None)]
    model[0].weight.requires_grad_(False)
    assert model_layers(model)[0]["non_trainable_params"] == 36


def test_a_change_by_hand_between_steps_of_a_per_step_schedule_is_recorded(store):
    """LambdaLR sets both groups' rates at every step (as the Transformers Trainer's schedules do): those are
    no adaptations, and a rate set by hand between two of its steps is one, caused "manual"."""
    from trainprov.capture.training import TrainingRecorder

    recorder = TrainingRecorder("custom", store)
    model = mlp()
    params = list(model.parameters())
    opt = torch.optim.SGD([{"params": params[:2]}, {"params": params[2:]}], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    watcher = LearningRateWatcher(opt, recorder)
    recorder.begin_training({"learning_rate": 0.1})
    for step in range(1, 7):
        opt.step()
        scheduler.step()
        if step == 3:
            opt.param_groups[1]["lr"] = 0.5
    watcher.close()
    recorder.end()
    assert [(c["step"], c["parameter"], c["old_value"], c["new_value"], c["cause"]) for c in adaptations(store)] == [
        (4, "learning_rate_group1", 0.025, 0.5, "manual")]
    assert watcher.schedulers == [scheduler]
    assert watcher.learning_rate == 0.1 / 6  # the rate the sixth step used: the schedule's own


def test_watcher_alone_reports_to_a_recorder(store):
    """The piece the Lightning and Transformers integrations build on."""
    from trainprov.capture.training import TrainingRecorder

    recorder = TrainingRecorder("custom", store)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watcher = LearningRateWatcher(opt, recorder)
    recorder.begin_training({"learning_rate": 0.1})
    assert watcher.learning_rate == 0.1
    for _ in range(3):
        opt.step()
    opt.param_groups[0]["lr"] = 0.2
    watcher.epoch_ended()
    opt.step()
    assert (watcher.steps, watcher.step_in_epoch, watcher.learning_rate) == (4, 1, 0.2)
    watcher.close()
    recorder.end()
    assert [(c["epoch"], c["step"], c["cause"]) for c in adaptations(store)] == [(2, 1, "manual")]


def test_a_crashing_loop_keeps_its_epochs(store):
    code = f"""
        import torch, trainprov.torch as tpt
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        tracker = tpt.Tracker(model, opt, {store!r})
        for epoch in range(3):
            opt.step()
            tracker.epoch(loss=1.0 / (epoch + 1))
        raise RuntimeError("out of memory, say")
    """
    done = run_python(code, check=False)
    assert done.returncode == 1 and "out of memory" in done.stderr
    assert [r["epoch"] for r in tp.query("SELECT epoch FROM epoch_metrics", store=store)] == [1, 2, 3]
    status = tp.query("SELECT status, error FROM runs", store=store)[0]
    assert status["status"] == "failed" and "out of memory" in status["error"]
    assert not math.isnan(tp.query("SELECT loss FROM epoch_metrics WHERE epoch = 3", store=store)[0]["loss"])


def test_stopped_early_finds_the_best_epoch_among_the_recorded_ones(store):
    # a hand-written loop with its own patience: it knows the best value, the tracker knows where it was
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    val_losses = [0.9, 0.5, 0.7, 0.8]
    with Tracker(model, opt, store, epochs=10) as tracker:
        for val_loss in val_losses:
            opt.step()
            tracker.epoch(val_loss=val_loss)
        tracker.stopped_early(monitor="val_loss", best_value=min(val_losses), cause="patience 2")
    row = tp.query("SELECT epoch, old_value, new_value, monitor, monitor_value, best_epoch, best_value, cause "
                   "FROM adaptations WHERE kind = 'early_stopping'", store=store)[0]
    assert (row["epoch"], row["old_value"], row["new_value"]) == (4, 10, 4)
    assert (row["monitor"], row["monitor_value"], row["best_epoch"], row["best_value"]) == ("val_loss", 0.8, 2, 0.5)
    assert row["cause"] == "patience 2"


def test_a_tensor_captured_at_a_step_keeps_its_value_when_changed_in_place_later(store):
    """The value recorded is the tensor's at the call: a loop that accumulates into one tensor in place
    (a running loss, a metric buffer reused by every step) must not rewrite the steps recorded before."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    running = torch.zeros(())  # one 0-d tensor, changed in place after every capture
    seen = []
    with Tracker(model, opt, store, steps=True) as tracker:
        for xb, yb in loader():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            loss.backward()
            opt.step()
            running.add_(loss.detach())
            tracker.step(loss=running)
            seen.append(running.item())
            running.mul_(0.5)  # in place, after the step was captured
        tracker.epoch(loss=running)  # the epoch row too, then changed again
        epoch_value = running.item()
        running.fill_(-1.0)
        # the capture API itself: a 0-d tensor given to generated() is its number at the call
        with tracker.run.task("evaluate") as evaluate:
            result = torch.tensor(0.75)
            evaluate.generated("test_results", loss=result)
            result.zero_()
    steps = tp.query("SELECT loss FROM step_metrics ORDER BY global_step", store=store)
    assert [r["loss"] for r in steps] == pytest.approx(seen, rel=1e-7) and len(set(seen)) == len(seen)
    assert tp.query("SELECT loss FROM epoch_metrics", store=store) == [{"loss": pytest.approx(epoch_value, rel=1e-7)}]
    assert tp.query("SELECT loss FROM test_results", store=store) == [{"loss": 0.75}]
