"""How fast the dashboard answers on a big store: 1,000 runs of 100 epochs.

Fills a store through the capture API (one process, runs one after the other; per-epoch
rows go through the background writer in batches), then starts the dashboard in this
process and measures, over several requests each:

- the runs list page (`/`) and its live table (`/runs/table`), the run page (`/runs/ID`)
  and its curve data (`/api/runs/ID/epochs`): server-side time from the `Server-Timing`
  header the dashboard sets (time in the application, from request to response start),
  and the wall-clock time of the request seen by the client;
- the runs list's SQL: the time spent in the store's query() while the list is built (the
  default list, newest first, summarises the metrics of the runs it shows; a list sorted by
  a metric summarises every run), and `trainprov.analysis.runs_overview()` over all runs.

Targets: the runs list and a run page under 200 ms each (server side), the list's SQL under
100 ms. Run it on a quiet machine:

    python benchmarks/ui_bench.py                 # fills a new store in a temporary folder
    python benchmarks/ui_bench.py --store big.db  # reuses (or fills) that store
    python benchmarks/ui_bench.py --runs 100 --repeat 5   # a quick check
"""

from __future__ import annotations

import argparse
import math
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

import trainprov as tp
from trainprov import analysis
from trainprov.capture.training import training_dataflow
from trainprov.ui.listing import RunsQuery, runs_list


def fill(store: str, runs: int, epochs: int, seed: int = 0) -> float:
    """Record `runs` runs of `epochs` epochs each; returns the seconds it took."""
    rng = random.Random(seed)
    flow = training_dataflow("bench_training").with_attributes(
        "epoch_metrics", {"val_loss": "float", "accuracy": "float", "val_accuracy": "float"}
    )
    flow = flow.with_attributes("test_results", {"accuracy": "float"})
    start = time.perf_counter()
    for i in range(runs):
        lr = rng.choice([0.1, 0.03, 0.01, 0.003, 0.001])
        optimizer = rng.choice(["adam", "sgd", "rmsprop"])
        batch = rng.choice([32, 64, 128])
        # the last run records its agents too, as a real run does (the run page shows them)
        with tp.start_run(flow, store, name=f"{optimizer}-lr{lr}-b{batch}", record_agents=i == runs - 1,
                          handle_signals=False) as run:
            with run.task("train") as train:
                train.used("hyperparameters", framework="bench", optimizer=optimizer, learning_rate=lr,
                           batch_size=batch, epochs=epochs, n_layers=4, trainable_params=12_345)
                for j, (cls, units) in enumerate([("Dense", 64), ("Dropout", None), ("Dense", 32), ("Dense", 10)]):
                    train.used("layers", layer_index=j, name=f"layer{j}", class_name=cls, units=units,
                               dropout_rate=0.2 if cls == "Dropout" else None)
                floor = rng.uniform(0.05, 0.3)
                rate = rng.uniform(0.03, 0.1)
                current = lr
                for epoch in range(1, epochs + 1):
                    if epoch == epochs // 2:
                        with run.task("adapt", depends_on=[train]) as adapt:
                            adapt.generated("adaptations", epoch=epoch, kind="learning_rate", parameter="learning_rate",
                                            old_value=current, new_value=current / 10, cause="ReduceLROnPlateau")
                        current /= 10
                    loss = floor + math.exp(-rate * epoch) + rng.gauss(0, 0.01)
                    train.generated("epoch_metrics", epoch=epoch, loss=loss, val_loss=loss * 1.1 + rng.gauss(0, 0.01),
                                    accuracy=1 - loss / 2, val_accuracy=1 - loss / 1.8, learning_rate=current,
                                    epoch_time_s=rng.uniform(0.5, 2.0))
            with run.task("evaluate", depends_on=[train]) as evaluate:
                evaluate.generated("test_results", loss=floor * 1.2, accuracy=1 - floor, evaluation_time_s=0.3)
        if (i + 1) % 100 == 0:
            print(f"  {i + 1} runs recorded ({time.perf_counter() - start:.0f} s)", flush=True)
    return time.perf_counter() - start


def _server(store: str) -> tuple[str, threading.Thread, object]:
    """Start the dashboard on a free loopback port in a thread; returns its base URL."""
    import uvicorn

    from trainprov.ui import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(store), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/health", timeout=2).read()
            return base, thread, server
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the dashboard did not start")


def _get(url: str) -> tuple[float, float, int]:
    """(server ms from Server-Timing, client wall ms, bytes) of one GET."""
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        body = response.read()
        timing = response.headers.get("Server-Timing", "")
    wall = (time.perf_counter() - start) * 1000
    server = float(timing.split("dur=")[1]) if "dur=" in timing else math.nan
    return server, wall, len(body)


def _sql_time(reader: tp.Reader, work) -> float:
    """Milliseconds spent in the store's query() (SQL, fetching, NaN decoding) while `work` runs."""
    backend = reader.backend
    query = backend.query
    spent = [0.0]

    def timed(sql, params=()):
        start = time.perf_counter()
        try:
            return query(sql, params)
        finally:
            spent[0] += time.perf_counter() - start

    backend.query = timed  # an instance attribute, for this measurement only
    try:
        work()
    finally:
        del backend.query
    return spent[0] * 1000


def _summary(label: str, samples: list[float], target: float | None) -> str:
    median = statistics.median(samples)
    p90 = sorted(samples)[max(0, math.ceil(0.9 * len(samples)) - 1)]
    verdict = "" if target is None else ("  ok" if median < target else f"  OVER the {target:.0f} ms target")
    return f"  {label:<62} median {median:7.1f} ms   p90 {p90:7.1f} ms{verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="store to use (filled if it has no runs); default: a new temporary one")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20, help="requests per measurement")
    args = parser.parse_args()

    folder = None
    store = args.store
    if store is None:
        folder = tempfile.mkdtemp(prefix="trainprov-ui-bench-")
        store = os.path.join(folder, "bench.db")
    existing = 0
    if os.path.exists(store):
        existing = tp.query("SELECT count(*) AS n FROM runs", store=store)[0]["n"]
    if existing < args.runs:
        print(f"filling {store} with {args.runs - existing} runs of {args.epochs} epochs ...", flush=True)
        seconds = fill(store, args.runs - existing, args.epochs)
        print(f"  done in {seconds:.1f} s", flush=True)
    with tp.connect(store) as reader:
        counts = reader.rows("SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM epoch_metrics) AS epochs")[0]
        latest = reader.resolve_run("latest")
        print(f"store: {store} ({os.path.getsize(store) / 1e6:.0f} MB): {counts['runs']} runs, {counts['epochs']} epochs")

        print(f"\nthe runs list's SQL: the statements it runs, timed where the Reader sends them, {args.repeat} times")
        for label, query in (("runs list, newest first (100 shown)", RunsQuery()),
                             ("runs list sorted by best val_loss (all summarised)", RunsQuery(sort="best_val_loss", order="asc"))):
            runs_list(reader, query)  # warm the page cache
            samples = [_sql_time(reader, lambda: runs_list(reader, query)) for _ in range(args.repeat)]
            print(_summary(label, samples, 100))
        samples = [_sql_time(reader, lambda: analysis.runs_overview(store=reader)) for _ in range(args.repeat)]
        print(_summary(f"analysis.runs_overview() (all {counts['runs']} runs, every metric)", samples, 100))

    base, _, server = _server(store)
    print(f"\nthe dashboard at {base}, {args.repeat} requests each (server: Server-Timing; client: wall clock)")
    pages = [("runs list  /", "/", 200), ("runs list table  /runs/table", "/runs/table", 200),
             ("runs list by best val_loss  /?sort=best_val_loss", "/?sort=best_val_loss&order=asc", 200),
             ("runs list JSON  /api/runs", "/api/runs", 200), ("run page  /runs/ID", f"/runs/{latest}", 200),
             ("run curves  /api/runs/ID/epochs", f"/api/runs/{latest}/epochs", 200)]
    for label, path, target in pages:
        _get(base + path)  # first request: templates compiled, connections opened
        results = [_get(base + path) for _ in range(args.repeat)]
        print(_summary(f"{label} (server)", [r[0] for r in results], target))
        print(_summary(f"{label} (client, {results[0][2] / 1000:.0f} kB)", [r[1] for r in results], None))
    server.should_exit = True  # type: ignore[attr-defined]
    if folder:
        print(f"\n(the store stays in {folder} for another run: --store {store})")


if __name__ == "__main__":
    sys.exit(main())
