"""A hand-written DistributedDataParallel loop started by torchrun: two CPU processes (gloo), one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import trainprov as tp

SCRIPT = '''
import json
import os
import sys
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from trainprov.torch import Tracker


def main():
    store, folder = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")  # torchrun gives RANK, WORLD_SIZE and the rendezvous
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights on both ranks (DDP also broadcasts rank zero's)
    model = DistributedDataParallel(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(192, 8, generator=g)
    data = TensorDataset(x, torch.sin(x[:, :4]).sum(1))
    loader = DataLoader(data, batch_size=32, sampler=DistributedSampler(data, shuffle=False))  # 3 batches a rank
    distributed = {"1": True, "": None}[os.environ.get("DISTRIBUTED", "")]
    tracker = Tracker(model, optimizer, store, name="torchrun", loader=loader, epochs=3, loss="mse", steps=True,
                      distributed=distributed)
    reported, steps = [], []
    with tracker:
        for epoch in range(3):
            total = 0.0
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = F.mse_loss(model(xb).squeeze(-1), yb)
                loss.backward()  # DDP averages the gradients of both ranks
                optimizer.step()
                tracker.step(loss=loss)
                steps.append(loss.item())
                total += loss.item() * len(xb)
            scheduler.step()
            own = total / (len(loader) * 32)
            both = torch.tensor([own])
            dist.all_reduce(both)  # the mean over both ranks: the same everywhere
            norm = torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())).item()
            values = {"loss": both.item() / world_size, "rank_loss": own, "weight_norm": norm}
            tracker.epoch(**values)
            reported.append(values)
        if rank == 0:  # as DDP programs do: one rank writes the model
            tracker.save(model.module.state_dict(), f"{folder}/model.pt")
    with open(f"{folder}/result-{rank}.json", "w") as f:
        json.dump({"rank": rank, "run": tracker.run.id, "epochs": reported, "steps": steps}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
'''


def torchrun(tmp_path, store, **env):
    """Run SCRIPT with `torchrun --nproc-per-node 2`; return each rank's reported values."""
    script = tmp_path / "train_ddp.py"
    script.write_text(textwrap.dedent(SCRIPT))
    clean = {k: v for k, v in os.environ.items()
             if k not in ("TRAINPROV_STORE", "TRAINPROV_RUN_ID", "RANK", "LOCAL_RANK", "WORLD_SIZE")}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), store,
         str(tmp_path)], cwd=tmp_path, env={**clean, "OMP_NUM_THREADS": "1", **env}, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    torchrun.stderr = done.stderr
    return {r: json.loads((tmp_path / f"result-{r}.json").read_text()) for r in (0, 1)}


def rows_of_rank(reader, dataset, rank, columns):
    return reader.rows(f"SELECT {columns} FROM {dataset} d JOIN tasks t ON t.task_id = d.task_id "
                       f"WHERE t.rank = {rank} ORDER BY d.recorded_at, d.element_seq")


def check_one_run_of_two_ranks(store, ranks):
    reader = tp.connect(store)
    runs = reader.rows("SELECT run_id, name, status, world_size FROM runs")
    assert runs == [{"run_id": ranks[0]["run"], "name": "torchrun", "status": "finished", "world_size": 2}]
    assert ranks[1]["run"] == ranks[0]["run"]
    assert reader.rows("SELECT rank, status FROM run_ranks ORDER BY rank") == [
        {"rank": 0, "status": "finished"}, {"rank": 1, "status": "finished"}]
    run_id = runs[0]["run_id"]
    trains = reader.rows("SELECT task_id, rank, status FROM tasks WHERE transformation = 'train' ORDER BY rank")
    assert trains == [{"task_id": f"{run_id}.r{r}.1", "rank": r, "status": "finished"} for r in (0, 1)]
    for rank in (0, 1):
        epochs = rows_of_rank(reader, "epoch_metrics", rank, "d.epoch, d.loss, d.rank_loss, d.weight_norm, d.learning_rate")
        assert [e["epoch"] for e in epochs] == [1, 2, 3] and [e["learning_rate"] for e in epochs] == [0.05, 0.05, 0.025]
        assert [{k: e[k] for k in ("loss", "rank_loss", "weight_norm")} for e in epochs] == ranks[rank]["epochs"]
        steps = rows_of_rank(reader, "step_metrics", rank, "d.global_step, d.loss")
        assert [s["loss"] for s in steps] == ranks[rank]["steps"] and [s["global_step"] for s in steps] == list(range(1, 10))
        assert rows_of_rank(reader, "hyperparameters", rank, "d.steps_per_epoch, d.batch_size") == [
            {"steps_per_epoch": 3, "batch_size": 32}]  # each rank trains on half the data
        # StepLR halves the rate after epoch 2 on every rank: each rank records it once
        assert rows_of_rank(reader, "adaptations", rank, "d.epoch, d.old_value, d.new_value") == [
            {"epoch": 3, "old_value": 0.05, "new_value": 0.025}]
    # synchronised by DDP (the weights) or by all_reduce (the mean loss): equal on both ranks; a rank's own loss: not
    first, second = ranks[0]["epochs"], ranks[1]["epochs"]
    assert [(e["loss"], e["weight_norm"]) for e in first] == [(e["loss"], e["weight_norm"]) for e in second]
    assert all(a["rank_loss"] != b["rank_loss"] for a, b in zip(first, second))
    saved = reader.rows("SELECT t.rank FROM checkpoints c JOIN tasks t ON t.task_id = c.task_id")
    assert saved == [{"rank": 0}]
    assert reader.rows("SELECT count(*) AS n FROM agents WHERE kind = 'machine'") == [{"n": 1}]  # by rank zero


def test_torchrun_with_a_run_id_from_the_environment_records_one_run(tmp_path):
    store = str(tmp_path / "store.db")
    run_id = tp.new_run_id()
    ranks = torchrun(tmp_path, store, TRAINPROV_RUN_ID=run_id)
    assert ranks[0]["run"] == run_id
    check_one_run_of_two_ranks(store, ranks)


def test_torchrun_without_a_run_id_shares_rank_zeros_run(any_store, tmp_path):
    ranks = torchrun(tmp_path, any_store, DISTRIBUTED="1")
    check_one_run_of_two_ranks(any_store, ranks)


def test_torchrun_without_either_records_a_run_per_rank_and_says_how_to_make_one(tmp_path):
    store = str(tmp_path / "store.db")
    ranks = torchrun(tmp_path, store)
    assert ranks[0]["run"] != ranks[1]["run"]
    reader = tp.connect(store)
    assert reader.rows("SELECT count(*) AS n, max(world_size) AS w FROM runs") == [{"n": 2, "w": None}]
    for rank in (0, 1):
        assert f"this process is rank {rank} of 2 in a torch.distributed job and records a run of its own" in torchrun.stderr
    assert "pass Tracker(..., distributed=True) on every rank" in torchrun.stderr


RANK_ZERO_ONLY = '''
import sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from trainprov.torch import Tracker

dist.init_process_group("gloo")
model = DistributedDataParallel(torch.nn.Linear(4, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
tracker = Tracker(model, optimizer, sys.argv[1], distributed=False) if dist.get_rank() == 0 else None
for epoch in range(2):
    optimizer.zero_grad()
    loss = model(torch.ones(8, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()
    if tracker is not None:
        tracker.epoch(loss=loss)
if tracker is not None:
    tracker.end()
dist.destroy_process_group()
'''


def test_a_tracker_made_on_rank_zero_only_records_a_run_of_its_own(tmp_path):
    # distributed=False: no collective call, so no rank waits for a Tracker the others never make
    store = str(tmp_path / "alone.db")
    script = tmp_path / "rank_zero_only.py"
    script.write_text(textwrap.dedent(RANK_ZERO_ONLY))
    clean = {k: v for k, v in os.environ.items() if k not in ("TRAINPROV_STORE", "TRAINPROV_RUN_ID")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), store], cwd=tmp_path, env={**clean, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    reader = tp.connect(store)
    assert reader.rows("SELECT status, world_size FROM runs") == [{"status": "finished", "world_size": None}]
    assert reader.rows("SELECT rank, count(*) AS n FROM tasks GROUP BY rank") == [{"rank": None, "n": 1}]
    assert reader.rows("SELECT epoch FROM epoch_metrics ORDER BY epoch") == [{"epoch": 1}, {"epoch": 2}]
