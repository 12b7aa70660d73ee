"""Online steering: how fast a request reaches a training, and what listening costs a training that nobody steers.

    .venv/bin/python benchmarks/steering_bench.py [--store URL] [--requests 20] [--step-ms 2]

1. latency: a training in a child process takes steps of --step-ms; this process writes
   learning-rate requests one at a time and measures (a) written -> applied (the request's
   requested_at to its adaptation's recorded_at, one clock) and (b) written -> the answer
   seen by the requester (`wait_for_answer`, polling every 0.1 s as `trainprov steer --wait` does);
2. idle cost: `apply_steering` with nothing pending (ns per call), and a loop of CPU-bound
   steps with steering on vs off (paired, shuffled rounds), the listener's thread polling.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import timeit

import trainprov as tp
from trainprov.capture.steering import request_steering, wait_for_answer
from trainprov.capture.training import TrainingRecorder

CHILD = """
import sys, time
from trainprov.capture.training import TrainingRecorder
store, step_s = sys.argv[1], float(sys.argv[2])
rec = TrainingRecorder("bench", store, record_agents=False)
state = {"lr": 0.1}
rec.steerable("learning_rate", lambda: state["lr"], lambda v: state.__setitem__("lr", v), low=0)
rec.start(); rec.begin_training({"epochs": 10**6})
sys.stdout.write(f"run {rec.run.id}\\n"); sys.stdout.flush()
epoch = 0
while not rec.stop_requested:
    epoch += 1
    for step in range(1, 101):
        end = time.perf_counter() + step_s
        while time.perf_counter() < end:
            pass
        rec.step(epoch, step, {"loss": 1.0})
        rec.apply_steering(epoch, step)
    rec.epoch(epoch, {"loss": 1.0}, learning_rate=state["lr"])
    rec.apply_steering(epoch)
rec.end_training(); rec.end()
"""


def seconds(value: object) -> float:
    """A stored timestamp (datetime or ISO text) as epoch seconds."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.timestamp()


def latency(store: str, requests: int, step_ms: float) -> None:
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD), store, str(step_ms / 1000)],
                             stdout=subprocess.PIPE, text=True)
    run_id = child.stdout.readline().split()[1]
    applied, answered = [], []
    try:
        for i in range(requests):
            time.sleep(random.uniform(0.05, 0.3))  # requests arrive at any moment of the poll cycle
            start = time.time()
            request = request_steering(run_id, "set", "learning_rate", 0.1 / (i + 2), store=store)
            answer = wait_for_answer(request, store=store, timeout=30)
            answered.append(time.time() - start)
            assert answer.status == "applied", answer.message
        tp.steer(run_id, stop=True, store=store, wait=30)
    finally:
        child.wait(timeout=60)
    with tp.connect(store) as reader:
        for row in reader.rows("SELECT a.recorded_at, s.requested_at FROM adaptations a JOIN steering_requests s "
                               "ON a.request_id = s.request_id WHERE a.run_id = ? AND a.kind = 'learning_rate'", [run_id]):
            applied.append(seconds(row["recorded_at"]) - seconds(row["requested_at"]))
    print(f"latency over {requests} requests, steps of {step_ms:g} ms:")
    for name, values in (("written -> applied", applied), ("written -> answer seen by the requester", answered)):
        values = sorted(values)
        print(f"  {name:40s} median {statistics.median(values) * 1000:6.0f} ms   max {values[-1] * 1000:6.0f} ms")


def idle_cost(store: str, rounds: int, steps: int, step_ms: float) -> None:
    recorder = TrainingRecorder("bench", store, record_agents=False)
    recorder.start()
    recorder.begin_training({"epochs": 1})
    calls = 1_000_000
    per_call = min(timeit.repeat(lambda: recorder.apply_steering(1, 1), number=calls, repeat=5)) / calls
    print(f"apply_steering with nothing pending: {per_call * 1e9:.0f} ns per call")
    recorder.end_training()
    recorder.end()

    def loop(steering: bool) -> float:
        rec = TrainingRecorder("bench", store, record_agents=False, steering=steering)
        rec.start()
        rec.begin_training({"epochs": 1})
        start = time.perf_counter()
        for step in range(1, steps + 1):
            end = time.perf_counter() + step_ms / 1000
            x = 0
            while time.perf_counter() < end:  # a CPU-bound step that holds the GIL, as Python-heavy steps do
                x += 1
            rec.apply_steering(1, step)
        took = time.perf_counter() - start
        rec.end_training()
        rec.end()
        return took

    on, off = [], []
    for _ in range(rounds):
        order = [True, False]
        random.shuffle(order)
        for steering in order:
            (on if steering else off).append(loop(steering))
    diffs = sorted((a - b) / b * 100 for a, b in zip(on, off))
    print(f"{steps} steps of {step_ms:g} ms, {rounds} paired rounds: steering on {statistics.median(on):.3f} s, "
          f"off {statistics.median(off):.3f} s, difference median {statistics.median(diffs):+.2f} % "
          f"(range {diffs[0]:+.2f} to {diffs[-1]:+.2f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="a store URL (default: a new SQLite file)")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--step-ms", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = args.store or os.path.join(folder, "steering.db")
        latency(store, args.requests, args.step_ms)
        idle_cost(store, args.rounds, args.steps, args.step_ms)


if __name__ == "__main__":
    main()
