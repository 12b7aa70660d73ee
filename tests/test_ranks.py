"""One run recorded by several processes (data-parallel ranks), on both stores."""

from __future__ import annotations

import os
import sys
import time

import pytest

import trainprov as tp
from conftest import run_python, spawn_python, store_execute

RANK = """
import os, sys, time, trainprov as tp
from conftest import training_flow
store, hold = sys.argv[1], sys.argv[2]
with tp.start_run(training_flow(), store, name="ddp") as run:
    rank = run.rank
    with run.task("train") as train:
        for epoch in range(1, 6):
            train.generated("epoch_metrics", epoch=epoch, loss=rank + epoch / 10, val_loss=None)
    print("trained", flush=True)
    while os.path.exists(hold):  # the test decides when this rank ends
        time.sleep(0.05)
    if rank == int(os.environ.get("FAIL_RANK", "-1")):
        raise RuntimeError(f"rank {rank} ran out of memory")
"""


def start_ranks(store, run_id, world, hold, tmp_path, **extra):
    env = dict(os.environ, TRAINPROV_RUN_ID=run_id, WORLD_SIZE=str(world), PYTHONPATH=os.path.dirname(__file__), **extra)
    procs = []
    for rank in range(world):
        procs.append(spawn_python(RANK, store, str(hold) if rank == world - 1 else str(tmp_path / "no-hold"),
                                  env={**env, "RANK": str(rank)}))
    return procs


def wait_for(check, timeout=60):
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_one_run_recorded_by_several_processes_ends_with_its_last_rank(any_store, tmp_path):
    run_id = tp.new_run_id()
    hold = tmp_path / "hold"
    hold.write_text("the last rank waits while this file exists")
    procs = start_ranks(any_store, run_id, 3, hold, tmp_path)
    for proc in procs[:2]:
        assert proc.wait(120) == 0, proc.stderr.read()
    assert procs[2].stdout.readline().strip() == "trained"

    def ranks():
        return {r["rank"]: r["status"] for r in tp.query("SELECT rank, status FROM run_ranks", store=any_store)}

    wait_for(lambda: ranks() == {0: "finished", 1: "finished", 2: "running"})
    assert tp.query("SELECT run_id, name, status, world_size FROM runs", store=any_store) == [
        {"run_id": run_id, "name": "ddp", "status": "running", "world_size": 3}]  # one rank still trains
    hold.unlink()
    assert procs[2].wait(120) == 0, procs[2].stderr.read()
    run = tp.query("SELECT status, ended_at, error FROM runs", store=any_store)[0]
    assert run["status"] == "finished" and run["ended_at"] is not None and run["error"] is None
    tasks = tp.query("SELECT task_id, rank, status FROM tasks ORDER BY rank", store=any_store)
    assert tasks == [{"task_id": f"{run_id}.r{r}.1", "rank": r, "status": "finished"} for r in range(3)]
    rows = tp.query(
        "SELECT t.rank, count(*) AS n, min(e.loss) AS first FROM epoch_metrics e JOIN tasks t ON t.task_id = e.task_id "
        "GROUP BY t.rank ORDER BY t.rank", store=any_store)
    assert rows == [{"rank": r, "n": 5, "first": pytest.approx(r + 0.1)} for r in range(3)]
    assert tp.query("SELECT count(DISTINCT run_id) AS n FROM epoch_metrics", store=any_store) == [{"n": 1}]
    assert tp.query("SELECT count(*) AS n FROM agents WHERE kind = 'machine'", store=any_store) == [{"n": 1}]  # once, by rank 0


def test_a_failed_rank_fails_the_run_with_its_error(any_store, tmp_path):
    run_id = tp.new_run_id()
    procs = start_ranks(any_store, run_id, 2, tmp_path / "no-hold", tmp_path, FAIL_RANK="1")
    assert procs[0].wait(120) == 0
    assert procs[1].wait(120) == 1
    assert "ran out of memory" in procs[1].stderr.read()
    run = tp.query("SELECT status, error FROM runs", store=any_store)[0]
    assert run["status"] == "failed" and "rank 1 ran out of memory" in run["error"]
    assert {r["rank"]: r["status"] for r in tp.query("SELECT rank, status FROM run_ranks", store=any_store)} == {
        0: "finished", 1: "failed"}


def test_joining_a_run_without_a_rank_is_a_clear_error(any_store):
    done = run_python(
        "import sys, trainprov as tp\nfrom conftest import training_flow\ntp.start_run(training_flow(), sys.argv[1])",
        any_store, env={"TRAINPROV_RUN_ID": "20261128-000000-abcdef", "PYTHONPATH": os.path.dirname(__file__),
                        "RANK": "", "TRAINPROV_RANK": "", "WORLD_SIZE": "2"}, check=False)
    assert done.returncode == 1
    assert "joins run 20261128-000000-abcdef (TRAINPROV_RUN_ID) but does not know its rank" in done.stderr
    with pytest.raises(tp.CaptureError, match="rank 2 is outside a world of 2"):
        tp.start_run(tp.Dataflow("f", [tp.Transformation("t", generates=[tp.Dataset("d", x=int)])]), any_store,
                     run_id="r", rank=2, world_size=2)


def test_a_store_from_before_ranks_gets_their_columns(store):
    flow = tp.Dataflow("f", [tp.Transformation("t", generates=[tp.Dataset("d", x=int)])])
    with tp.start_run(flow, store) as run, run.task("t") as task:
        task.generated("d", x=1)
    # the catalog as an earlier trainprov made it
    for sql in ("DROP TABLE run_ranks", "ALTER TABLE tasks DROP COLUMN rank", "ALTER TABLE runs DROP COLUMN world_size"):
        store_execute(store, sql)
    with tp.start_run(flow, store, run_id="joint", rank=0, world_size=1) as run, run.task("t") as task:
        task.generated("d", x=2)
    assert tp.query("SELECT run_id, world_size, status FROM runs ORDER BY world_size", store=store)[1] == {
        "run_id": "joint", "world_size": 1, "status": "finished"}
    assert tp.query("SELECT rank FROM tasks ORDER BY task_id", store=store) == [{"rank": None}, {"rank": 0}]


@pytest.mark.parametrize("bad", ["my run", "../../etc", "a,b", "-x", "x" * 129, "run/1", "ünï"])
def test_an_invalid_trainprov_run_id_is_a_clear_error(store, bad):
    done = run_python(
        "import sys, trainprov as tp\nfrom conftest import training_flow\ntp.start_run(training_flow(), sys.argv[1])",
        store, env={"TRAINPROV_RUN_ID": bad, "PYTHONPATH": os.path.dirname(__file__), "RANK": "0", "WORLD_SIZE": "1"},
        check=False)
    assert done.returncode == 1
    assert "trainprov.errors.CaptureError: TRAINPROV_RUN_ID=" in done.stderr
    assert "is not a valid run id" in done.stderr
    assert not os.path.exists(store), "nothing is written for a run that cannot start"
    with pytest.raises(tp.CaptureError, match="run_id=.* is not a valid run id"):
        tp.start_run(tp.Dataflow("f", [tp.Transformation("t", generates=[tp.Dataset("d", x=int)])]), store,
                     run_id=bad, rank=0, world_size=1)


def test_job_ids_are_valid_run_ids(store):
    flow = tp.Dataflow("f", [tp.Transformation("t", generates=[tp.Dataset("d", x=int)])])
    for run_id in ("4711", "4711_3", "20261204-job7", "a1b2c3d4-e5f6-7890-abcd-ef1234567890", "exp.v2"):
        tp.start_run(flow, store, record_agents=False, run_id=run_id, rank=0, world_size=1).end()
    assert len(tp.query("SELECT run_id FROM runs", store=store)) == 5
