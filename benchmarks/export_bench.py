"""Benchmark of the W3C PROV export and of the lineage query, on runs of 100 and 1,000 epochs.

Run:  .venv/bin/python benchmarks/export_bench.py  [--epochs 100 1000] [--steps-per-epoch 100]

Each run has the shape of examples/numpy_regression.py (data parameters, three data files,
hyperparameters, a learning-rate drop every 10 epochs, a checkpoint file per epoch, epoch
metrics, a test result) plus per-step metrics (`step_metrics`, --steps-per-epoch rows per
epoch). For each run it prints the time to build the document from the store and to
serialize it, and the size, in the default export (per-step rows summarised) and with
`members=True` (every step an entity), then the time of the lineage query of the last
checkpoint.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import trainprov as tp
from trainprov import export as ex
from trainprov.lineage import lineage

FLOW = tp.Dataflow("bench_export", [
    tp.Transformation("generate_data", uses=[tp.Dataset("data_params", n_samples=int, seed=int)],
                      generates=[tp.Dataset("data_files", split=str, n_rows=int, path="file")]),
    tp.Transformation(
        "train",
        uses=["data_files", tp.Dataset("hyperparameters", optimizer=str, learning_rate=float, batch_size=int, epochs=int)],
        generates=[
            tp.Dataset("step_metrics", epoch=int, step=int, loss=float, learning_rate=float),
            tp.Dataset("epoch_metrics", epoch=int, loss=float, val_loss=float, learning_rate=float),
            tp.Dataset("adaptations", epoch=int, kind=str, parameter=str, old_value=float, new_value=float, cause=str),
            tp.Dataset("checkpoints", epoch=int, path="file"),
        ],
    ),
    tp.Transformation("evaluate", uses=["checkpoints"], generates=[tp.Dataset("test_results", loss=float)]),
])


def record_run(store: str, folder: str, epochs: int, steps: int) -> str:
    """A run with the example's shape; values are made up, the provenance is real."""
    with tp.start_run(FLOW, store) as run:
        with run.task("generate_data") as gen:
            gen.used("data_params", n_samples=2000, seed=7)
            files = []
            for split in ("train", "val", "test"):
                path = os.path.join(folder, f"{split}.npz")
                with open(path, "wb") as f:
                    f.write(os.urandom(50_000))
                files.append(gen.generated("data_files", split=split, n_rows=500, path=path))
        with run.task("train", depends_on=[gen]) as train:
            train.used(files[0])
            train.used(files[1])
            lr = 0.05
            train.used("hyperparameters", optimizer="sgd", learning_rate=lr, batch_size=32, epochs=epochs)
            for epoch in range(1, epochs + 1):
                if epoch > 1 and (epoch - 1) % 10 == 0:
                    train.generated("adaptations", epoch=epoch, kind="learning_rate", parameter="learning_rate",
                                    old_value=lr, new_value=lr * 0.9, cause="step schedule")
                    lr *= 0.9
                for step in range(1, steps + 1):
                    train.generated("step_metrics", epoch=epoch, step=step, loss=1.0 / (epoch + step), learning_rate=lr)
                path = os.path.join(folder, "checkpoint.bin")
                with open(path, "wb") as f:
                    f.write(epoch.to_bytes(4, "little") * 256)
                checkpoint = train.generated("checkpoints", epoch=epoch, path=path)
                train.generated("epoch_metrics", epoch=epoch, loss=1.0 / epoch, val_loss=1.1 / epoch, learning_rate=lr)
        with run.task("evaluate", depends_on=[train]) as evaluate:
            evaluate.used(checkpoint)
            evaluate.generated("test_results", loss=math.pi / 100)
    return run.id


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return str(size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--formats", nargs="+", default=["json", "provn", "xml", "turtle"],
                        help="formats of the default export (the --members export is written as PROV-JSON only)")
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="trainprov-export-bench-")
    print(f"store and files in {folder}; {args.steps_per_epoch} per-step rows per epoch\n")
    header = f"{'epochs':>6}  {'export':<22} {'records':>8}  {'build s':>8}  {'format':<7} {'write s':>8}  {'size':>9}"
    print(header)
    print("-" * len(header))
    for epochs in args.epochs:
        store = os.path.join(folder, f"run{epochs}.db")
        run_id, took = timed(record_run, store, folder, epochs, args.steps_per_epoch)
        rows = epochs * (args.steps_per_epoch + 2) + epochs // 10
        for label, members, formats in (("default (summarised)", False, args.formats), ("--members", True, ["json"])):
            doc, build = timed(ex.build_document, run_id, store=store, members=members)
            records = len(doc.get_records())
            for i, fmt in enumerate(formats):
                data, write = timed(ex.serialize, doc, fmt)
                first = f"{label:<22} {records:>8,}  {build:>8.2f}" if i == 0 else " " * 42
                print(f"{epochs:>6}  {first}  {fmt:<7} {write:>8.2f}  {human(len(data)):>9}")
        ancestors, query = timed(lineage, "checkpoints", store=store, run=run_id)
        print(f"{epochs:>6}  lineage of the last checkpoint: {len(ancestors.ancestors)} ancestors in {query:.2f} s "
              f"(the run: {rows:,} elements, recorded in {took:.1f} s)\n")


if __name__ == "__main__":
    main()
