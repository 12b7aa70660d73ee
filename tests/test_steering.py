"""Online steering, framework-neutral: requests written by another process, applied by a training at its boundaries.

The training here is a bare `TrainingRecorder` loop in a child process (each integration's
own tests steer real Keras, PyTorch, Lightning and Transformers trainings).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import socket

import pytest
from click.testing import CliRunner

import trainprov as tp
from trainprov.capture.steering import request_steering, steering_requests, wait_for_answer
from trainprov.capture.training import TrainingRecorder
from trainprov.cli import main
from trainprov.errors import SteeringError

from conftest import spawn_python

TRAINING = """
import os, pickle, sys, time
from trainprov.capture.training import TrainingRecorder
store, epochs, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rec = TrainingRecorder("toy", store)
state = {"lr": 0.1, "weight": 1}
rec.steerable("learning_rate", lambda: state["lr"], lambda v: state.__setitem__("lr", v), low=0)
rec.steerable("weight", lambda: state["weight"], lambda v: state.__setitem__("weight", v), type=int, low=0, high=10)

def save(epoch, step):
    path = os.path.join(folder, f"model-e{epoch}-s{step}.pkl")
    with open(path, "wb") as f:
        pickle.dump({"state": dict(state), "epoch": epoch, "step": step}, f)
    rec.checkpoint(path, epoch=epoch)

rec.steering.checkpointer = save
rec.start()
rec.begin_training({"epochs": epochs, "learning_rate": 0.1})
sys.stdout.write(f"run {rec.run.id}\\n")
for epoch in range(1, epochs + 1):
    for step in range(1, 11):
        time.sleep(0.01)
        rec.step(epoch, step, {"loss": 1.0 / epoch})
        rec.apply_steering(epoch, step)
    rec.epoch(epoch, {"loss": 1.0 / epoch}, learning_rate=state["lr"])
    rec.apply_steering(epoch)
    sys.stdout.write(f"epoch {epoch} lr {state['lr']} weight {state['weight']}\\n")
    if rec.stop_requested:
        break
rec.end_training()
rec.end()
sys.stdout.write(f"ended {epoch}\\n")
"""


def start_training(store: str, folder, epochs: int = 400):
    """A training in a child process that listens to steering; returns (process, run id)."""
    child = spawn_python(TRAINING, store, str(epochs), str(folder))
    first = child.stdout.readline()
    assert first.startswith("run "), first + child.stderr.read()
    return child, first.split()[1]


def finish(child) -> list[str]:
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    return out.splitlines()


def test_a_learning_rate_request_is_applied_at_the_next_boundary_and_recorded_as_provenance(any_store, tmp_path):
    child, run_id = start_training(any_store, tmp_path)
    try:
        [answer] = tp.steer(run_id, {"learning_rate": 0.01}, reason="the loss plateaued", store=any_store, wait=30)
        [stop] = tp.steer(run_id, stop=True, store=any_store, wait=30)
    finally:
        lines = finish(child)
    assert answer.status == "applied", answer.message
    assert (answer.old_value, answer.new_value) == (0.1, 0.01)
    assert answer.epoch >= 1 and answer.step is not None
    # the training went on with the new rate from the boundary where it was applied
    rates = {int(line.split()[1]): float(line.split()[3]) for line in lines if line.startswith("epoch ")}
    assert rates[answer.epoch] == 0.01 and rates[stop.epoch] == 0.01
    assert all(rate == 0.1 for epoch, rate in rates.items() if epoch < answer.epoch)
    with tp.connect(any_store) as reader:
        stored = {r["epoch"]: r["learning_rate"]
                  for r in reader.rows("SELECT epoch, learning_rate FROM epoch_metrics WHERE run_id = ?", [run_id])}
        assert stored[answer.epoch] == 0.01 and stored[1] == 0.1
        [adaptation] = reader.rows("SELECT * FROM adaptations WHERE run_id = ? AND kind = 'learning_rate'", [run_id])
    assert adaptation["cause"] == "steering"
    assert adaptation["parameter"] == "learning_rate"
    assert (adaptation["old_value"], adaptation["new_value"]) == (0.1, 0.01)
    assert (adaptation["epoch"], adaptation["step"]) == (answer.epoch, answer.step)
    assert adaptation["reason"] == "the loss plateaued"
    assert adaptation["requested_by"] == f"{getpass.getuser()}@{socket.gethostname()}"
    assert adaptation["request_id"] == answer.request_id
    assert adaptation["requested_at"] <= adaptation["recorded_at"]


def test_a_stop_request_ends_the_run_finished_at_the_end_of_the_epoch(any_store, tmp_path):
    child, run_id = start_training(any_store, tmp_path)
    try:
        [answer] = tp.steer(run_id, stop=True, reason="enough", store=any_store, wait=30)
    finally:
        lines = finish(child)
    assert answer.status == "applied", answer.message
    assert lines[-1] == f"ended {answer.epoch}"
    with tp.connect(any_store) as reader:
        assert reader.runs().set_index("run_id").loc[run_id, "status"] == "finished"
        last = reader.rows("SELECT max(epoch) AS e FROM epoch_metrics WHERE run_id = ?", [run_id])[0]["e"]
        [adaptation] = reader.rows("SELECT * FROM adaptations WHERE run_id = ?", [run_id])
    assert last == answer.epoch < 400
    assert (adaptation["kind"], adaptation["cause"], adaptation["parameter"]) == ("stopped_by_request", "steering", "epochs")
    assert (adaptation["old_value"], adaptation["new_value"]) == (400, answer.epoch)
    assert adaptation["reason"] == "enough"


def test_a_checkpoint_request_saves_a_file_whose_sha256_is_recorded(any_store, tmp_path):
    child, run_id = start_training(any_store, tmp_path)
    try:
        [answer] = tp.steer(run_id, checkpoint=True, store=any_store, wait=30)
        tp.steer(run_id, stop=True, store=any_store, wait=30)
    finally:
        finish(child)
    assert answer.status == "applied", answer.message
    path = answer.new_value
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert digest in answer.message
    with tp.connect(any_store) as reader:
        [file] = reader.rows("SELECT path, sha256, size_bytes FROM files WHERE run_id = ? AND path = ?", [run_id, path])
        [adaptation] = reader.rows("SELECT * FROM adaptations WHERE run_id = ? AND kind = 'checkpoint'", [run_id])
    assert file["sha256"] == digest
    assert adaptation["cause"] == "steering" and adaptation["request_id"] == answer.request_id


def test_requests_that_cannot_be_applied_are_refused_with_the_reason_and_change_nothing(any_store, tmp_path):
    child, run_id = start_training(any_store, tmp_path)
    try:
        answers = tp.steer(run_id, {"learning_rate": "fast", "dropout": 0.5, "weight": 11}, store=any_store, wait=30)
        [negative] = tp.steer(run_id, {"learning_rate": -1}, store=any_store, wait=30)
        [fraction] = tp.steer(run_id, {"weight": 2.5}, store=any_store, wait=30)
        tp.steer(run_id, stop=True, store=any_store, wait=30)
    finally:
        lines = finish(child)
    messages = {a.parameter: a.message for a in answers}
    assert all(a.status == "refused" for a in [*answers, negative, fraction])
    assert messages["learning_rate"] == "learning_rate takes a number, got 'fast'"
    assert "no steerable parameter 'dropout'" in messages["dropout"] and "learning_rate, weight" in messages["dropout"]
    assert messages["weight"] == "11 is outside the bounds [0, 10] declared for weight"
    assert "outside the bounds [0, ]" in negative.message
    assert fraction.message == "weight takes a whole number, got 2.5"
    assert all(line.endswith("lr 0.1 weight 1") for line in lines if line.startswith("epoch "))
    with tp.connect(any_store) as reader:
        kinds = [r["kind"] for r in reader.rows("SELECT kind FROM adaptations WHERE run_id = ?", [run_id])]
    assert kinds == ["stopped_by_request"]


def test_a_finished_run_is_refused_at_once_and_the_refusal_is_kept(store):
    recorder = TrainingRecorder("toy", store, record_agents=False)
    recorder.start()
    run_id = recorder.run.id
    recorder.end()
    [answer] = tp.steer(run_id, {"learning_rate": 0.01}, store=store, wait=5)
    assert answer.status == "refused"
    assert answer.message == f"run {run_id} is finished: only a running run can be steered"
    [kept] = steering_requests(run_id, store=store)
    assert (kept.status, kept.message, kept.value) == ("refused", answer.message, 0.01)


def test_requests_a_run_never_applied_are_refused_when_it_ends(store):
    recorder = TrainingRecorder("toy", store, record_agents=False)
    recorder.start()
    request = request_steering(recorder.run.id, "set", "learning_rate", 0.5, store=store)
    recorder.steering.poll()  # the listener read it; the training reached no boundary before it ended
    recorder.end()
    answer = wait_for_answer(request, store=store, timeout=5)
    assert answer.status == "refused"
    assert answer.message == "the run ended before the request reached a step or epoch boundary"


def test_a_run_that_does_not_listen_leaves_the_request_pending_and_the_wait_says_why(store, flow):
    with tp.start_run(flow, store, record_agents=False) as run:
        with pytest.raises(SteeringError, match="no answer to request .* within 0.5 s: a training applies requests at"):
            tp.steer(run.id, {"learning_rate": 0.01}, store=store, wait=0.5)
        [pending] = steering_requests(run.id, store=store)
        assert pending.status == "pending"


def test_bad_requests_are_refused_before_anything_is_written(store):
    recorder = TrainingRecorder("toy", store, record_agents=False)
    recorder.start()
    run_id = recorder.run.id
    try:
        with pytest.raises(SteeringError, match="nothing to steer"):
            tp.steer(run_id, store=store)
        with pytest.raises(SteeringError, match="no run 'no-such-run' in"):
            tp.steer("no-such-run", stop=True, store=store)
        with pytest.raises(SteeringError, match="unknown steering action 'pause'"):
            request_steering(run_id, "pause", store=store)
        with pytest.raises(SteeringError, match="must be a number, a string or a bool, got object"):
            tp.steer(run_id, {"learning_rate": object()}, store=store)
        assert steering_requests(run_id, store=store) == []
    finally:
        recorder.end()


def test_the_command_line_waits_prints_the_outcome_and_fails_on_a_refusal(store, tmp_path):
    child, run_id = start_training(store, tmp_path)
    runner = CliRunner()
    try:
        applied = runner.invoke(main, ["--store", store, "steer", run_id[:12], "--set", "learning_rate=2e-3",
                                       "--reason", "slower", "--wait"])
        refused = runner.invoke(main, ["--store", store, "steer", run_id, "--set", "learning_rate=fast", "--wait"])
        malformed = runner.invoke(main, ["--store", store, "steer", run_id, "--set", "learning_rate"])
        stopped = runner.invoke(main, ["--store", store, "steer", "latest", "--stop", "--wait"])
    finally:
        finish(child)
    assert applied.exit_code == 0, applied.output
    assert f"on run {run_id}: applied: learning_rate: 0.1 -> 0.002 at epoch" in applied.output
    assert refused.exit_code == 1
    assert "refused: learning_rate takes a number, got 'fast'" in refused.output
    assert malformed.exit_code == 2 and "expected NAME=VALUE" in malformed.output
    assert stopped.exit_code == 0 and "applied: the training stopped at the end of epoch" in stopped.output
    shown = runner.invoke(main, ["--store", store, "query", "--format", "json",
                                 "SELECT action, status FROM steering_requests ORDER BY requested_at"])
    assert json.loads(shown.output) == [{"action": "set", "status": "applied"}, {"action": "set", "status": "refused"},
                                        {"action": "stop", "status": "applied"}]


def test_a_run_of_several_processes_is_refused(store, flow):
    with tp.start_run(flow, store, record_agents=False, run_id="ddp-run", rank=0, world_size=2):
        [answer] = tp.steer("ddp-run", stop=True, store=store)
    assert answer.status == "refused"
    assert "recorded by 2 processes: steering such runs is not supported" in answer.message


def test_steering_can_be_turned_off(store):
    recorder = TrainingRecorder("toy", store, record_agents=False, steering=False)
    recorder.start()
    try:
        request_steering(recorder.run.id, "stop", store=store)
        assert recorder.steering.poll() == 0 and not recorder.stop_requested
    finally:
        recorder.end()
    assert steering_requests(recorder.run.id, store=store)[0].status == "pending"
