"""`make demo`: train a Darcy-flow surrogate with Keras in one process, analyse it with SQL from another.

The training (examples/surrogate_darcy.py) writes to the embedded default store,
./trainprov.db (or $TRAINPROV_STORE). This process polls the same store with plain SQL
while it trains, printing every epoch and every adaptation as it arrives, then the run's
summary and the analysis queries of docs/queries/. Then a second, short run with a learning
rate far too high: the rule `loss_finite` stops it as soon as its loss is no longer finite, and
`trainprov check` shows the violation (docs/validation.md).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import threading
import time

import trainprov as tp
from trainprov.store import resolve_url

HERE = os.path.dirname(os.path.abspath(__file__))
QUERIES = os.path.join(os.path.dirname(HERE), "docs", "queries")

NEW_EPOCHS = """
SELECT m.epoch, m.loss, m.val_loss, m.learning_rate, m.recorded_at,
       (SELECT min(b.val_loss) FROM epoch_metrics b WHERE b.run_id = m.run_id AND b.epoch <= m.epoch) AS best
FROM epoch_metrics m
WHERE m.run_id = ? AND m.recorded_at > ?
ORDER BY m.recorded_at
"""
NEW_ADAPTATIONS = """
SELECT epoch, kind, old_value, new_value, cause, monitor_value, best_epoch, recorded_at
FROM adaptations WHERE run_id = ? AND recorded_at > ? ORDER BY recorded_at
"""


def newest_run(store: str, since: float) -> str | None:
    """The id of the surrogate run started after `since`, once it is visible."""
    if not os.path.exists(store):
        return None
    try:
        rows = tp.query(
            "SELECT run_id, started_at FROM runs WHERE dataflow = 'darcy_surrogate' ORDER BY started_at DESC LIMIT 1",
            store=store,
        )
    except tp.TrainprovError:  # the store is being created
        return None
    if rows and rows[0]["started_at"].timestamp() >= since - 1:
        return rows[0]["run_id"]
    return None


def relay(stream, prefix: str) -> None:
    """Print the training's own output, marked as such."""
    for line in stream:
        print(f"{prefix}{line.rstrip()}", flush=True)


def main() -> None:
    store = resolve_url()
    started = time.time()
    print(f"== training examples/surrogate_darcy.py in a background process; store {os.path.abspath(store)}", flush=True)
    training = subprocess.Popen(
        [sys.executable, "-u", os.path.join(HERE, "surrogate_darcy.py"), "--quiet", *sys.argv[1:]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    threading.Thread(target=relay, args=(training.stdout, "   [training] "), daemon=True).start()
    run_id = None
    while run_id is None and training.poll() is None:
        time.sleep(0.5)
        run_id = newest_run(store, started)
    run_id = run_id or newest_run(store, started)
    if run_id is None:
        sys.exit(f"the training ended (exit status {training.wait()}) before it recorded a run")
    print(f"== this process reads run {run_id} with SQL while it trains\n", flush=True)
    print(f"{'epoch':>5}  {'loss':>9}  {'val_loss':>9}  {'learning_rate':>13}  {'best val_loss':>13}", flush=True)
    seen_epoch = seen_adaptation = "0"
    with tp.connect(store) as reader:
        while True:
            finished = training.poll() is not None
            try:
                epochs = reader.rows(NEW_EPOCHS, (run_id, seen_epoch))
            except tp.QueryError:  # val_loss becomes a column when Keras first reports it
                epochs = []
            # what was seen is what was printed: a row committed after this query is new next time
            for row in epochs:
                print(f"{row['epoch']:>5}  {row['loss']:>9.5f}  {row['val_loss']:>9.5f}  {row['learning_rate']:>13.6g}  {row['best']:>13.5f}", flush=True)
                seen_epoch = row["recorded_at"]
            for a in reader.rows(NEW_ADAPTATIONS, (run_id, seen_adaptation)):
                if a["kind"] == "early_stopping":
                    print(f"   -> early stopping after epoch {a['epoch']}: val_loss {a['monitor_value']:.5f}, best epoch {a['best_epoch']}", flush=True)
                else:
                    print(f"   -> learning rate {a['old_value']:.6g} -> {a['new_value']:.6g} from epoch {a['epoch']} ({a['cause']})", flush=True)
                seen_adaptation = a["recorded_at"]
            if finished:
                break
            time.sleep(1.0)
        if training.returncode != 0:
            sys.exit(f"the training failed (exit status {training.returncode})")
        time.sleep(0.2)
        print(f"\n== trainprov show {run_id}\n", flush=True)
        subprocess.run([sys.executable, "-m", "trainprov.cli", "--store", store, "show", run_id], check=True)
        for path in sorted(glob.glob(os.path.join(QUERIES, "*.sql"))):
            sql = open(path, encoding="utf-8").read()
            title = sql.splitlines()[0].lstrip("- ")
            print(f"\n== {title}   (docs/queries/{os.path.basename(path)})", flush=True)
            frame = reader.df(sql)
            print(frame.to_string(index=False, max_colwidth=40) if len(frame) else "(no rows)", flush=True)
    bad_run(store)
    print(
        f"\nThe provenance is in {os.path.abspath(store)}. Ask it more, from any process:\n"
        f"  .venv/bin/trainprov runs\n"
        f"  .venv/bin/trainprov schema\n"
        f"  .venv/bin/trainprov query \"SELECT epoch, loss, val_loss, learning_rate FROM epoch_metrics WHERE run_id = '{run_id}'\"\n"
        f"  .venv/bin/trainprov query --file docs/queries/convergence.sql\n"
        f"  .venv/bin/trainprov analyze best val_loss\n"
        f"  .venv/bin/trainprov check latest     # rule violations of the last run\n"
        f"  .venv/bin/trainprov ui          # the dashboard, on http://127.0.0.1:8765/",
        flush=True,
    )


def bad_run(store: str) -> None:
    """A second, short training with a learning rate far too high, stopped by a rule, and its check."""
    started = time.time()
    print("\n== a second run with learning rate 1e6 (far too high): the rule loss_finite stops it", flush=True)
    done = subprocess.run(
        [sys.executable, "-u", os.path.join(HERE, "surrogate_darcy.py"), "--quiet", *sys.argv[1:],
         "--lr", "1e6", "--epochs", "20", "--name", "too-high-lr"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in done.stdout.splitlines():
        if "trainprov: rule" in line or "finished" in line:
            print(f"   [training] {line.split('RuntimeWarning: ')[-1].strip()}", flush=True)
    if done.returncode != 0:
        sys.exit(f"the second training failed (exit status {done.returncode}):\n{done.stdout}")
    run_id = newest_run(store, started)
    epochs = tp.query("SELECT count(*) AS n FROM epoch_metrics WHERE run_id = ?", (run_id,), store=store)[0]["n"]
    print(f"   it ran {epochs} of 20 epochs", flush=True)
    print(f"\n== trainprov check {run_id}\n", flush=True)
    subprocess.run([sys.executable, "-m", "trainprov.cli", "--store", store, "check", run_id, "--no-builtin"], check=True)


if __name__ == "__main__":
    main()
