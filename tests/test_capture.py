"""Capture: runs and tasks, elements, files, agents, the writer and its guarantees (on both backends)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import trainprov as tp
from conftest import ROOT, run_python, spawn_python
from trainprov.capture.writer import Writer
from trainprov.store import open_backend


@pytest.fixture
def store(any_store):
    """Each test runs on a SQLite file and on a PostgreSQL database, unless it names sqlite_store."""
    return any_store




def status_of(store, run_id):
    return tp.query("SELECT status, error FROM runs WHERE run_id = ?", [run_id], store=store)[0]


def test_a_run_of_tasks_records_what_each_used_and_generated(store, flow, tmp_path):
    ckpt = tmp_path / "model.bin"
    with tp.start_run(flow, store, name="baseline") as run:
        with run.task("train") as train:
            hp = train.used("hyperparameters", lr=0.01, optimizer="adam", batch_size=32)
            for epoch in (1, 2):
                train.generated("epoch_metrics", epoch=epoch, loss=1.0 / epoch)
            ckpt.write_bytes(b"weights")
            saved = train.generated("checkpoints", epoch=2, path=ckpt)
        with run.task("evaluate", depends_on=[train]) as evaluate:
            evaluate.used(saved)
            evaluate.generated("test_results", loss=0.4)
        with run.task("evaluate", depends_on=[train]) as again:
            again.generated("test_results", loss=0.41)
    assert hp.dataset == "hyperparameters" and hp.task_id == train.id
    reader = tp.connect(store)
    assert reader.rows("SELECT name, status, dataflow, dataflow_version FROM runs") == [
        {"name": "baseline", "status": "finished", "dataflow": "training", "dataflow_version": 1}
    ]
    tasks = reader.rows("SELECT task_id, transformation, iteration, status FROM tasks ORDER BY started_at")
    assert [(t["transformation"], t["iteration"], t["status"]) for t in tasks] == [
        ("train", 1, "finished"), ("evaluate", 1, "finished"), ("evaluate", 2, "finished")
    ]
    deps = reader.rows("SELECT task_id, depends_on FROM task_dependencies ORDER BY task_id")
    assert deps == [{"task_id": evaluate.id, "depends_on": train.id}, {"task_id": again.id, "depends_on": train.id}]
    assert reader.rows("SELECT task_id, dataset, source_task_id, source_element_seq FROM usages") == [
        {"task_id": evaluate.id, "dataset": "checkpoints", "source_task_id": train.id, "source_element_seq": saved.seq}
    ]
    assert reader.rows("SELECT lr, optimizer, batch_size, task_id FROM hyperparameters") == [
        {"lr": 0.01, "optimizer": "adam", "batch_size": 32, "task_id": train.id}
    ]
    info = reader.show(run.id)
    assert info["datasets"]["epoch_metrics"]["rows"] == 2
    assert info["datasets"]["epoch_metrics"]["last"]["epoch"] == 2
    assert info["datasets"]["hyperparameters"]["used_by"] == ["train"]
    assert info["datasets"]["test_results"]["generated_by"] == ["evaluate"]


def test_file_entities_carry_size_and_sha256(store, flow, tmp_path):
    first, second = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    first.write_bytes(os.urandom(3000))
    second.write_bytes(os.urandom(5000))
    with tp.start_run(flow, store) as run, run.task("train") as train:
        a = train.file(first, role="checkpoint")
        b = train.file(second, role="checkpoint", derived_from=[a])
        train.generated("checkpoints", epoch=1, path=str(second))
        with pytest.raises(tp.CaptureError, match="no-such-file"):
            train.file(tmp_path / "no-such-file")
    files = tp.query("SELECT file_id, path, size_bytes, sha256, role, dataset FROM files ORDER BY recorded_at", store=store)
    assert files[0]["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest() == a.sha256
    assert files[1]["size_bytes"] == 5000 and files[1]["sha256"] == hashlib.sha256(second.read_bytes()).hexdigest()
    assert files[2]["role"] == "checkpoints" and files[2]["dataset"] == "checkpoints" and files[2]["path"] == str(second)
    assert tp.query("SELECT file_id, derived_from FROM file_derivations", store=store) == [
        {"file_id": b.file_id, "derived_from": a.file_id}
    ]


def test_an_exception_fails_the_run_and_keeps_what_came_before(store, flow):
    with pytest.raises(ZeroDivisionError):
        with tp.start_run(flow, store) as run, run.task("train") as train:
            for epoch in range(1, 4):
                train.generated("epoch_metrics", epoch=epoch, loss=0.5)
            1 / 0
    assert status_of(store, run.id) == {"status": "failed", "error": "ZeroDivisionError: division by zero"}
    assert tp.query("SELECT status FROM tasks", store=store) == [{"status": "failed"}]
    assert tp.query("SELECT count(*) AS n FROM epoch_metrics", store=store) == [{"n": 3}]


def test_keyboard_interrupt_marks_the_run_interrupted(store, flow):
    with pytest.raises(KeyboardInterrupt):
        with tp.start_run(flow, store) as run:
            raise KeyboardInterrupt
    assert status_of(store, run.id)["status"] == "interrupted"


SIGTERM_CHILD = """
import sys, time, trainprov as tp
sys.path.insert(0, sys.argv[2])
from conftest import training_flow
with tp.start_run(training_flow(), sys.argv[1]) as run, run.task("train") as train:
    for epoch in range(1, 6):
        train.generated("epoch_metrics", epoch=epoch, loss=0.1)
    run.flush()
    print(run.id, flush=True)
    time.sleep(60)
"""


def test_sigterm_ends_the_run_as_interrupted_with_its_rows(store):
    child = spawn_python(SIGTERM_CHILD, store, os.path.join(ROOT, "tests"))
    run_id = child.stdout.readline().strip()
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 128 + signal.SIGTERM
    assert status_of(store, run_id) == {"status": "interrupted", "error": "signal SIGTERM"}
    assert tp.query("SELECT count(*) AS n FROM epoch_metrics", store=store) == [{"n": 5}]
    assert tp.query("SELECT status FROM tasks", store=store) == [{"status": "interrupted"}]


def test_a_run_left_open_at_exit_is_ended_and_its_rows_written(store):
    code = """
    import sys, trainprov as tp
    sys.path.insert(0, sys.argv[2])
    from conftest import training_flow
    run = tp.start_run(training_flow(), sys.argv[1])
    train = run.task("train")
    for epoch in range(1, 1001):
        train.generated("epoch_metrics", epoch=epoch, loss=0.1)
    print(run.id)
    """
    run_id = run_python(code, store, os.path.join(ROOT, "tests")).stdout.strip()
    assert status_of(store, run_id) == {"status": "interrupted", "error": "the process exited without ending the run"}
    assert tp.query("SELECT count(*) AS n FROM epoch_metrics", store=store) == [{"n": 1000}]


def test_capture_errors_name_the_problem(store, flow):
    with tp.start_run(flow, store) as run:
        train = run.task("train")
        with pytest.raises(tp.SpecError, match="does not generate a dataset named 'epoch_metric'; it generates: epoch_metrics, checkpoints"):
            train.generated("epoch_metric", epoch=1)
        with pytest.raises(tp.SpecError, match="does not generate dataset 'hyperparameters'; it uses it"):
            train.generated("hyperparameters", lr=0.1)
        with pytest.raises(tp.SpecError, match="no attribute 'acc'"):
            train.generated("epoch_metrics", epoch=1, acc=0.5)
        with pytest.raises(tp.ValueTypeError, match="'loss' is float, got str"):
            train.generated("epoch_metrics", epoch=1, loss="high")
        with pytest.raises(tp.SpecError, match="no transformation 'fit'"):
            run.task("fit")
        train.generated("epoch_metrics", epoch=1, loss=0.5)
        train.end()
        with pytest.raises(tp.CaptureError, match="has ended"):
            train.generated("epoch_metrics", epoch=2, loss=0.4)
    with pytest.raises(tp.CaptureError, match="has ended"):
        run.task("train")
    # what was accepted before the errors is all there
    assert tp.query("SELECT epoch, loss FROM epoch_metrics", store=store) == [{"epoch": 1, "loss": 0.5}]


def test_agents_person_machine_and_software_with_git(tmp_path, store):
    repo = tmp_path / "repo"
    repo.mkdir()
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ada@example.org"], ["git", "config", "user.name", "Ada"]):
        subprocess.run(cmd, cwd=repo, check=True)
    (repo / "train.py").write_text("print('v1')\n")
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "v1"], cwd=repo, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    (repo / "train.py").write_text("print('v2')\n")  # uncommitted change: dirty
    code = """
    import sys, trainprov as tp
    sys.path.insert(0, sys.argv[2])
    from conftest import training_flow
    with tp.start_run(training_flow(), sys.argv[1]) as run:
        pass
    """
    run_python(code, store, os.path.join(ROOT, "tests"), cwd=str(repo))
    agents = {a["kind"] + ":" + a["name"]: a for a in tp.query("SELECT * FROM agents", store=store)}
    person = next(a for a in agents.values() if a["kind"] == "person")
    machine = next(a for a in agents.values() if a["kind"] == "machine")
    python = next(a for a in agents.values() if a["agent_id"].startswith("software:python-"))
    program = next(a for a in agents.values() if a["agent_id"].startswith("software:program:"))
    assert json.loads(person["details"])["git_email"] == "ada@example.org"
    hw = json.loads(machine["details"])
    assert hw["cpu_count"] == os.cpu_count() and hw["memory_bytes"] > 0 and isinstance(hw["gpus"], list)
    assert machine["acted_on_behalf_of"] == person["agent_id"]
    assert "trainprov" in json.loads(python["details"])["packages"]
    code_facts = json.loads(program["details"])
    assert code_facts["git_commit"] == commit and code_facts["git_dirty"] is True
    assert code_facts["working_dir"] == str(repo)
    # a script is attributed to its own repository's commit, wherever it is started from
    (repo / "train.py").write_text(textwrap.dedent(code))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, str(repo / "train.py"), store, os.path.join(ROOT, "tests")], cwd=elsewhere,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    last = tp.query("SELECT details FROM agents WHERE agent_id = 'software:program:train.py'", store=store)
    facts = json.loads(last[-1]["details"])
    assert facts["git_commit"] == commit and facts["script"] == str(repo / "train.py") and facts["working_dir"] == str(elsewhere)


def test_rows_are_visible_to_another_process_at_once_after_flush_and_soon_without(store, flow):
    count = "import sys, trainprov as tp; print(tp.query('SELECT count(*) AS n FROM epoch_metrics', store=sys.argv[1])[0]['n'])"
    with tp.start_run(flow, store) as run, run.task("train") as train:
        for epoch in range(1, 11):
            train.generated("epoch_metrics", epoch=epoch, loss=0.1)
        run.flush()
        assert run_python(count, store).stdout.strip() == "10"
        train.generated("epoch_metrics", epoch=11, loss=0.1)
        deadline = time.time() + 5
        while run_python(count, store).stdout.strip() != "11":
            assert time.time() < deadline, "row not visible without flush"
            time.sleep(0.1)


class SlowBackend:
    """Wraps a backend: every write waits, and the first `failures` writes fail."""

    def __init__(self, backend, delay=0.0, failures=0):
        self.inner, self.delay, self.failures, self.calls = backend, delay, failures, 0
        self.url = backend.url

    def write(self, groups, retry=False):
        self.calls += 1
        time.sleep(self.delay)
        if self.calls <= self.failures:
            raise sqlite3.OperationalError("disk I/O error (simulated)")
        self.inner.write(groups, retry=retry)

    def maintain(self):
        self.inner.maintain()

    def is_permanent(self, exc):
        return self.inner.is_permanent(exc)

    def close(self):
        self.inner.close()


class PickyBackend(SlowBackend):
    """Refuses for good every batch that holds the element of epoch 13 (as a constraint would)."""

    def write(self, groups, retry=False):
        for target, items in groups:
            if target.prefix and any(item[1 + target.columns.index("epoch")] == 13 for item in items):
                raise sqlite3.IntegrityError("CHECK constraint failed: epoch (simulated)")
        self.inner.write(groups, retry=retry)



def element_items(store, flow, n):
    """(run, task, queued items) for n epoch_metrics rows, as capture calls queue them."""
    from trainprov.store.catalog import element_item, element_target

    target = element_target(flow.datasets["epoch_metrics"])
    return [element_item(target, ("r", "r.1", i, time.time()), {"epoch": i, "loss": 0.5})
            for i in range(1, n + 1)]


def test_a_full_queue_makes_the_caller_wait_and_drops_nothing(store, flow):
    backend = open_backend(store)
    backend.declare(flow)
    writer = Writer(SlowBackend(backend, delay=0.05), batch_rows=50, max_rows=200)
    longest = 0
    for item in element_items(store, flow, 3000):
        writer.put(item)
        longest = max(longest, len(writer._queue))
    writer.flush()
    writer.close()
    assert longest <= 200 + 1
    assert tp.query("SELECT count(*) AS n, count(DISTINCT element_seq) AS d FROM epoch_metrics", store=store) == [{"n": 3000, "d": 3000}]


def test_a_failing_store_is_retried_with_a_warning_and_loses_nothing(store, flow):
    backend = open_backend(store)
    backend.declare(flow)
    writer = Writer(SlowBackend(backend, failures=3), interval=0.05)
    with pytest.warns(RuntimeWarning, match="disk I/O error"):
        for item in element_items(store, flow, 500):
            writer.put(item)
        writer.flush(timeout=30)
    writer.close()
    assert tp.query("SELECT count(*) AS n FROM epoch_metrics", store=store) == [{"n": 500}]


def test_rows_that_cannot_be_written_are_saved_and_reported(sqlite_store, flow, capsys):
    store = sqlite_store
    backend = open_backend(store)
    backend.declare(flow)
    writer = Writer(SlowBackend(backend, failures=10**9), interval=0.05)
    with pytest.warns(RuntimeWarning):
        for item in element_items(store, flow, 20):
            writer.put(item)
        started = time.monotonic()
        assert writer.flush(timeout=30) is False  # the store is down: no waiting, training goes on
        assert time.monotonic() - started < 5
        writer.close(timeout=1)
    saved = f"{backend.url}.unwritten-{os.getpid()}.jsonl"
    lines = [json.loads(line) for line in open(saved)]
    assert len(lines) == 20 and lines[0]["table"] == "epoch_metrics" and lines[0]["row"][4:] == [1, 0.5, None]
    report = capsys.readouterr().err
    assert saved in report and "20 captured rows could not be written" in report and "epoch_metrics 20; runs r" in report


def test_captures_from_several_threads_all_arrive(store, flow):
    import threading

    with tp.start_run(flow, store) as run:
        tasks = [run.task("train") for _ in range(4)]

        def emit(task):
            for epoch in range(1, 2001):
                task.generated("epoch_metrics", epoch=epoch, loss=0.5)

        threads = [threading.Thread(target=emit, args=(t,)) for t in tasks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    rows = tp.query("SELECT task_id, count(*) AS n, max(element_seq) AS last FROM epoch_metrics GROUP BY task_id", store=store)
    assert sorted((r["n"], r["last"]) for r in rows) == [(2000, 2000)] * 4


def test_a_forked_child_cannot_capture_into_its_parents_run_silently(store, flow):
    with tp.start_run(flow, store) as run, run.task("train") as train:
        train.generated("epoch_metrics", epoch=1, loss=0.5)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what a capture call does, then leave at once
            try:
                train.generated("epoch_metrics", epoch=2, loss=0.4)
                message = b"accepted"
            except tp.CaptureError as exc:
                message = str(exc).encode()
            os.write(write, message)
            os._exit(0)
        os.waitpid(pid, 0)
        message = os.read(read, 1000).decode()
        train.generated("epoch_metrics", epoch=3, loss=0.3)
    assert "forked child" in message
    assert [r["epoch"] for r in tp.query("SELECT epoch FROM epoch_metrics ORDER BY epoch", store=store)] == [1, 3]


def test_liveness_tells_a_dead_or_reused_pid_from_a_live_process():
    from trainprov.store import liveness

    me = os.getpid()
    assert liveness.is_alive(me, liveness.process_started(me))
    assert not liveness.is_alive(me, "1")  # same pid, another start time: a reused pid
    child = subprocess.Popen(["sleep", "0"])
    time.sleep(0.3)  # exited, not yet collected: a zombie
    assert not liveness.is_alive(child.pid, None)
    child.wait()
    assert not liveness.is_alive(child.pid, None)


def test_an_uncaught_exception_ends_an_open_run_failed(store):
    code = """
    import sys, trainprov as tp
    sys.path.insert(0, sys.argv[2])
    from conftest import training_flow
    run = tp.start_run(training_flow(), sys.argv[1])
    train = run.task("train")
    train.generated("epoch_metrics", epoch=1, loss=0.5)
    print(run.id, flush=True)
    raise RuntimeError("diverged at epoch 2")
    """
    done = run_python(code, store, os.path.join(ROOT, "tests"), check=False)
    assert done.returncode == 1 and "RuntimeError: diverged at epoch 2" in done.stderr
    run_id = done.stdout.strip()
    assert status_of(store, run_id) == {"status": "failed", "error": "RuntimeError: diverged at epoch 2"}
    assert tp.query("SELECT status FROM tasks", store=store) == [{"status": "failed"}]
    assert tp.query("SELECT count(*) AS n FROM epoch_metrics", store=store) == [{"n": 1}]


def test_a_running_run_can_grow_its_dataflow(store, flow):
    with tp.start_run(flow, store) as run, run.task("train") as train:
        train.generated("epoch_metrics", epoch=1, loss=0.5)
        with pytest.raises(tp.SpecError, match="no attribute 'accuracy'"):
            train.generated("epoch_metrics", epoch=2, loss=0.4, accuracy=0.8)
        version = run.evolve(flow.with_attributes("epoch_metrics", accuracy=float))
        train.generated("epoch_metrics", epoch=2, loss=0.4, accuracy=0.8)
        with pytest.raises(tp.SpecError, match="may only grow"):
            run.evolve(tp.Dataflow("training", [tp.Transformation("train", generates=[tp.Dataset("epoch_metrics", epoch=int)])]))
    assert version == 2
    assert tp.query("SELECT dataflow_version FROM runs", store=store) == [{"dataflow_version": 2}]
    assert tp.query("SELECT epoch, accuracy FROM epoch_metrics ORDER BY epoch", store=store) == [
        {"epoch": 1, "accuracy": None}, {"epoch": 2, "accuracy": 0.8}
    ]


def test_a_prepared_recorder_writes_the_same_rows_as_generated_and_checks_alike(store, flow):
    with tp.start_run(flow, store) as run, run.task("train") as train:
        record = train.prepared("epoch_metrics", ["loss", "epoch"])  # any order of the dataset's attributes
        first = record((0.5, 1))
        assert (first.dataset, first.task_id) == ("epoch_metrics", train.id)
        record((np.float32(0.25), 2))  # not a float: converted, as generated() does
        with pytest.raises(tp.ValueTypeError, match="'epoch' is int .64-bit., got 1180591620717411303424"):
            record((0.5, 2**70))
        with pytest.raises(tp.ValueTypeError, match="'loss'"):
            record(("low", 3))
        # the dataflow grows: the same recorder goes on, under the new columns
        run.evolve(flow.with_attributes("epoch_metrics", accuracy=float))
        record((0.125, 3))
        train.generated("epoch_metrics", epoch=4, loss=0.0625, accuracy=0.9)
        with pytest.raises(tp.SpecError, match="does not generate a dataset named 'nothing'"):
            train.prepared("nothing", ["x"])
    with pytest.raises(tp.CaptureError, match="has ended"):
        record((0.5, 5))
    assert tp.query("SELECT epoch, loss, val_loss, accuracy FROM epoch_metrics ORDER BY element_seq", store=store) == [
        {"epoch": 1, "loss": 0.5, "val_loss": None, "accuracy": None},
        {"epoch": 2, "loss": 0.25, "val_loss": None, "accuracy": None},
        {"epoch": 3, "loss": 0.125, "val_loss": None, "accuracy": None},
        {"epoch": 4, "loss": 0.0625, "val_loss": None, "accuracy": 0.9},
    ]


def test_file_attributes_give_file_refs_and_derivations_chain_checkpoints(store, flow, tmp_path):
    paths = [tmp_path / f"ckpt{i}.bin" for i in (1, 2)]
    with tp.start_run(flow, store) as run, run.task("train") as train:
        previous = None
        for epoch, path in enumerate(paths, 1):
            path.write_bytes(bytes([epoch]) * 100)
            element = train.generated("checkpoints", epoch=epoch, path=path)
            assert element.files[0].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
            if previous:
                train.derive(element.files[0], [previous])
            previous = element.files[0]
    rows = tp.query(
        "SELECT f.path, s.path AS source FROM file_derivations d JOIN files f ON f.file_id = d.file_id "
        "JOIN files s ON s.file_id = d.derived_from", store=store)
    assert rows == [{"path": str(paths[1]), "source": str(paths[0])}]


def test_a_row_the_store_refuses_is_set_aside_and_the_others_are_written(sqlite_store, flow):
    store = sqlite_store
    backend = open_backend(store)
    backend.declare(flow)
    writer = Writer(PickyBackend(backend), interval=0.05)
    with pytest.warns(RuntimeWarning, match=r"1 captured row\(s\) were refused .*CHECK constraint failed.*saved in"):
        for item in element_items(store, flow, 40):
            writer.put(item)
        writer.flush(timeout=30)
    # the writer goes on: later rows are written too
    for item in element_items(store, flow, 45)[40:]:
        writer.put(item)
    writer.flush(timeout=30)
    writer.close()
    epochs = [r["epoch"] for r in tp.query("SELECT epoch FROM epoch_metrics ORDER BY epoch", store=store)]
    assert epochs == [e for e in range(1, 46) if e != 13]
    saved = [json.loads(line) for line in open(f"{backend.url}.unwritten-{os.getpid()}.jsonl")]
    assert [row["row"][4] for row in saved] == [13]


def test_recording_a_link_twice_is_harmless(store, flow):
    with tp.start_run(flow, store) as run:
        with run.task("train") as train:
            element = train.generated("epoch_metrics", epoch=1, loss=0.5)
        with run.task("evaluate", depends_on=[train, train]) as evaluate:
            evaluate.used(element)
            evaluate.used(element)
            evaluate.generated("test_results", loss=0.4)
    assert tp.query("SELECT count(*) AS n FROM usages", store=store) == [{"n": 1}]
    assert tp.query("SELECT count(*) AS n FROM task_dependencies", store=store) == [{"n": 1}]
    assert tp.query("SELECT count(*) AS n FROM test_results", store=store) == [{"n": 1}]


def test_an_integer_too_large_for_sql_is_refused_at_the_call(store, flow):
    with tp.start_run(flow, store) as run, run.task("train") as train:
        with pytest.raises(tp.ValueTypeError, match="'epoch' is int .64-bit., got 1180591620717411303424"):
            train.generated("epoch_metrics", epoch=2**70, loss=0.5)
        train.generated("epoch_metrics", epoch=2**63 - 1, loss=0.5)
    assert tp.query("SELECT epoch FROM epoch_metrics", store=store) == [{"epoch": 2**63 - 1}]


def test_ending_a_run_keeps_a_sigterm_handler_the_program_installed(store, flow):
    def mine(signum, frame):
        pass

    with tp.start_run(flow, store):
        signal.signal(signal.SIGTERM, mine)
    try:
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
