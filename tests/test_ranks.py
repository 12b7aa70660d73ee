"""One run recorded by several processes (data-parallel ranks), on both stores."""

from __future__ import annotations

import json
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


RANK_VALUES = """
import sys, trainprov as tp
store, run_id, rank, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
flow = tp.Dataflow("ranked", [
    tp.Transformation("train", uses=[tp.Dataset("hyperparameters", lr=float, batch_size=int)], generates=[
        tp.Dataset("epoch_metrics", epoch=int, loss=float, val_loss=float, epoch_time_s=float),
        tp.Dataset("step_metrics", epoch=int, step=int, global_step=int, loss=float),
        tp.Dataset("adaptations", epoch=int, kind=str, parameter=str, old_value=float, new_value=float, cause=str)]),
    tp.Transformation("evaluate", generates=[tp.Dataset("test_results", loss=float)]),
])
with tp.start_run(flow, store, run_id=run_id, rank=rank, world_size=2, name="two ranks") as run:
    with run.task("train") as train:
        train.used("hyperparameters", lr=0.1 * (rank + 1), batch_size=32 * (rank + 1))
        for epoch in range(1, epochs + 1):
            train.generated("epoch_metrics", epoch=epoch, loss=rank + 1 / epoch, val_loss=10 * rank + 2 / epoch,
                            epoch_time_s=1.0 + rank)
            train.generated("step_metrics", epoch=epoch, step=1, global_step=epoch, loss=rank + 1 / epoch)
        train.generated("adaptations", epoch=2, kind="learning_rate", parameter="learning_rate",
                        old_value=0.1 * (rank + 1), new_value=0.01 * (rank + 1), cause=f"rank {rank}")
    with run.task("evaluate") as evaluate:
        evaluate.generated("test_results", loss=5.0 + rank)
"""


def record_two_ranks_and_one_process(store):
    """A run of two processes whose ranks recorded different values (rank 1 first, 4 epochs; rank 0, 3), and a run of one."""
    run_id = tp.new_run_id()
    env = {"PYTHONPATH": os.path.dirname(__file__)}
    run_python(RANK_VALUES, store, run_id, "1", "4", env=env)  # rank 1 first: its rows come first in the store
    run_python(RANK_VALUES, store, run_id, "0", "3", env=env)
    run_python(RANK_VALUES.replace("run_id=run_id, rank=rank, world_size=2, ", ""), store, "-", "0", "2", env=env)
    assert tp.query(f"SELECT status, world_size FROM runs WHERE run_id = '{run_id}'", store=store) == [
        {"status": "finished", "world_size": 2}]
    one = [r["run_id"] for r in tp.query(f"SELECT run_id FROM runs WHERE run_id <> '{run_id}'", store=store)][0]
    return run_id, one


def test_analysis_and_the_dashboard_read_rank_zero_of_a_run_of_two_unless_asked(any_store):
    """Each rank of one run recorded its own values: every view shows rank 0's, or rank 1's when asked."""
    from trainprov import analysis
    from trainprov.ui import data, listing

    run_id, one = record_two_ranks_and_one_process(any_store)

    def val_losses(rank_epochs, rank):
        return [10 * rank + 2 / e for e in range(1, rank_epochs + 1)]

    for rank, epochs, kwargs in ((0, 3, {}), (1, 4, {"rank": 1})):
        overview = analysis.runs_overview(runs=[run_id], store=any_store, **kwargs).iloc[0]
        assert (overview["epochs_run"], overview["best_val_loss"]) == (epochs, val_losses(epochs, rank)[-1])
        assert (overview["lr"], overview["batch_size"]) == (pytest.approx(0.1 * (rank + 1)), 32 * (rank + 1))
        best = analysis.best_runs("val_loss", "last", store=any_store, **kwargs).set_index("run_id")
        assert (best.loc[run_id, "epoch"], best.loc[run_id, "val_loss"], best.loc[run_id, "epochs_run"]) == (
            epochs, val_losses(epochs, rank)[-1], epochs)
        assert best.loc[one, "val_loss"] == 1.0  # the run of one process: whole, whatever the rank asked
        assert analysis.progress(run_id, last=10, store=any_store, **kwargs)["val_loss"].tolist() == val_losses(epochs, rank)
        assert analysis.curves(run_id, ["val_loss"], store=any_store, **kwargs)["val_loss"].tolist() == val_losses(epochs, rank)
        assert analysis.side_by_side([run_id, one], store=any_store, **kwargs)[run_id].dropna().tolist() == val_losses(epochs, rank)
        assert analysis.hyperparameters(run_id, store=any_store, **kwargs).loc[run_id, "batch_size"] == 32 * (rank + 1)
        effect = analysis.adaptation_effect("val_loss", window=1, runs=[run_id], store=any_store, **kwargs)
        assert effect["cause"].tolist() == [f"rank {rank}"]
        assert effect["val_loss_before"].tolist() == [val_losses(epochs, rank)[0]]
        assert analysis.convergence("val_loss", runs=[run_id], store=any_store, **kwargs)["epochs_run"].tolist() == [epochs]
        times = analysis.epoch_time(["batch_size"], store=any_store, **kwargs)
        assert times[times["batch_size"] == 32 * (rank + 1)]["epochs"].tolist() == [epochs + (2 if rank == 0 else 0)]
        tests = analysis.architecture_vs_test("loss", store=any_store, **kwargs)
        assert tests[tests["run_id"] == run_id]["loss"].tolist() == [5.0 + rank]
        # the dashboard's data of the run page, the runs list and the comparison
        with tp.connect(any_store) as reader:
            curves = data.epochs(reader, run_id, **kwargs)
            assert curves["epochs"] == list(range(1, epochs + 1)) and curves["series"]["val_loss"] == val_losses(epochs, rank)
            assert [a["cause"] for a in curves["adaptations"]] == [f"rank {rank}"]
            assert data.steps(reader, run_id, **kwargs)["x"] == list(range(1, epochs + 1))
            detail = data.run_detail(reader, run_id, **kwargs)
            assert (detail["rank"], detail["world_size"]) == (rank, 2)
            hp = next(t for t in detail["inputs"] if t["name"] == "hyperparameters")
            assert hp["count"] == 1 and hp["rows"][0][hp["columns"].index("batch_size")]["text"] == str(32 * (rank + 1))
            listed = listing.runs_list(reader, listing.RunsQuery.from_params({"rank": str(rank)} if rank else {}))
            row = next(r for r in listed.rows if r["run_id"] == run_id)
            assert (row["epochs_run"], row["best_val_loss"], row["batch_size"]) == (epochs, val_losses(epochs, rank)[-1], 32 * (rank + 1))
            compared = data.compare_curves(reader, [run_id, one], **kwargs)
            assert compared["series"][run_id]["val_loss"] == val_losses(epochs, rank)
            # rank 0 was configured as the run of one process; rank 1 was not
            assert compared["hyperparameters"] == ({} if rank == 0 else {"lr": [0.2, 0.1], "batch_size": [64, 32]})
    from click.testing import CliRunner
    from trainprov.cli import main

    for rank_args, epochs in (([], 3), (["--rank", "1"], 4)):
        done = CliRunner().invoke(main, ["--store", any_store, "analyze", "progress", run_id, "--last", "10",
                                         "--format", "json", *rank_args], catch_exceptions=False)
        assert [row["epoch"] for row in json.loads(done.output)] == list(range(1, epochs + 1))
    with pytest.raises(tp.QueryError, match="recorded by 2 processes .* there is no rank 2"):
        analysis.curves(run_id, rank=2, store=any_store)
    with pytest.raises(tp.QueryError, match="rank must be a whole number"):
        analysis.runs_overview(rank=-1, store=any_store)


def test_the_dashboard_pages_show_one_rank_and_link_the_others(store):
    from test_ui import get, start_dashboard, stop

    run_id, _ = record_two_ranks_and_one_process(store)
    proc, url = start_dashboard(store)
    try:
        base = url.rstrip("/")
        for query, epochs in (("", [1, 2, 3]), ("?rank=1", [1, 2, 3, 4])):
            status, _, body = get(f"{base}/api/runs/{run_id}/epochs{query}")
            assert status == 200 and json.loads(body)["epochs"] == epochs
            status, _, body = get(f"{base}/runs/{run_id}{query}")
            page = body.decode()
            rank = 1 if query else 0
            assert status == 200 and f"2 ranks; showing the values of rank {rank}" in page
            assert f'href="/runs/{run_id}{"" if rank else "?rank=1"}">rank {1 - rank}</a>' in page
            status, _, body = get(f"{base}/api/runs{query}")
            listed = next(r for r in json.loads(body)["runs"] if r["run_id"] == run_id)
            assert (listed["epochs_run"], listed["batch_size"]) == (len(epochs), 32 * (rank + 1))
        status, _, body = get(f"{base}/api/runs/{run_id}/epochs?rank=2")
        assert status == 400 and "no rank 2" in json.loads(body)["error"]
        status, _, body = get(f"{base}/api/runs/{run_id}/epochs?rank=first")
        assert status == 400 and "rank must be a whole number" in json.loads(body)["error"]
    finally:
        stop(proc)

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
