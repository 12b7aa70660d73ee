"""`make demo`: train with capture in one process, analyse with SQL from another while it runs.

The training (examples/numpy_regression.py) writes to the embedded default store,
./trainprov.db (or $TRAINPROV_STORE). This process polls the same store with plain SQL
and prints each epoch as it arrives, then the run's summary and a few analysis queries.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import trainprov as tp
from trainprov.store import resolve_url

HERE = os.path.dirname(os.path.abspath(__file__))

LIVE = """
SELECT m.epoch, m.loss, m.val_loss, m.lr,
       (SELECT min(val_loss) FROM epoch_metrics b WHERE b.run_id = m.run_id AND b.epoch <= m.epoch) AS best_val_loss
FROM epoch_metrics m
WHERE m.run_id = ? AND m.epoch > ?
ORDER BY m.epoch
"""

ANALYSES = {
    "best validation loss per run, with its hyperparameters": """
        SELECT r.run_id, r.status, h.lr, h.batch_size, min(m.val_loss) AS best_val_loss,
               count(*) AS epochs
        FROM runs r
        JOIN hyperparameters h ON h.run_id = r.run_id
        JOIN epoch_metrics m ON m.run_id = r.run_id
        WHERE r.dataflow = 'numpy_regression'
        GROUP BY r.run_id, r.status, h.lr, h.batch_size
        ORDER BY best_val_loss
        LIMIT 5""",
    "effect of each learning-rate change (mean val_loss 3 epochs before and after)": """
        SELECT a.run_id, a.epoch, a.old_value, a.new_value,
               (SELECT avg(val_loss) FROM epoch_metrics m
                 WHERE m.run_id = a.run_id AND m.epoch BETWEEN a.epoch - 3 AND a.epoch - 1) AS before,
               (SELECT avg(val_loss) FROM epoch_metrics m
                 WHERE m.run_id = a.run_id AND m.epoch BETWEEN a.epoch AND a.epoch + 2) AS after
        FROM adaptations a WHERE a.run_id = ? ORDER BY a.epoch""",
    "checkpoints (path and SHA-256 recorded at capture time)": """
        SELECT c.epoch, f.size_bytes, substr(f.sha256, 1, 16) AS sha256_prefix
        FROM checkpoints c JOIN files f ON f.task_id = c.task_id AND f.element_seq = c.element_seq
        WHERE c.run_id = ? ORDER BY c.epoch DESC LIMIT 3""",
}


def latest_run(store: str, since: float) -> str | None:
    """The id of the numpy_regression run started after `since`, once it is visible."""
    if not os.path.exists(store):
        return None
    try:
        rows = tp.query(
            "SELECT run_id, started_at FROM runs WHERE dataflow = 'numpy_regression' ORDER BY started_at DESC LIMIT 1",
            store=store,
        )
    except tp.TrainprovError:
        return None
    if rows and rows[0]["started_at"].timestamp() >= since - 1:
        return rows[0]["run_id"]
    return None


def main() -> None:
    store = resolve_url()
    started = time.time()
    print(f"== training examples/numpy_regression.py in a background process, store {os.path.abspath(store)}")
    training = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "numpy_regression.py"), "--epochs", "30", "--seconds-per-epoch", "0.25"]
    )
    run_id = None
    while run_id is None and training.poll() is None:
        time.sleep(0.2)
        run_id = latest_run(store, started)
    run_id = run_id or latest_run(store, started)
    print(f"== this process queries run {run_id} with SQL while it trains\n")
    print(f"{'epoch':>5}  {'loss':>10}  {'val_loss':>10}  {'lr':>8}  {'best so far':>11}")
    seen = 0
    with tp.connect(store) as reader:
        while True:
            finished = training.poll() is not None
            for row in reader.rows(LIVE, (run_id, seen)):
                print(f"{row['epoch']:>5}  {row['loss']:>10.5f}  {row['val_loss']:>10.5f}  {row['lr']:>8.4f}  {row['best_val_loss']:>11.5f}")
                seen = row["epoch"]
            if finished:
                break
            time.sleep(0.5)
        if training.returncode != 0:
            sys.exit(f"the training failed (exit status {training.returncode})")
        print()
        subprocess.run([sys.executable, "-m", "trainprov.cli", "--store", store, "show", run_id], check=True)
        for title, sql in ANALYSES.items():
            print(f"\n== {title}")
            frame = reader.df(sql, (run_id,) if "?" in sql else ())
            print(frame.to_string(index=False))
    print(
        f"\nThe provenance is in {os.path.abspath(store)}. Query it with SQL, for example:\n"
        f"  .venv/bin/trainprov runs\n"
        f"  .venv/bin/trainprov schema\n"
        f"  .venv/bin/trainprov query \"SELECT epoch, loss, val_loss FROM epoch_metrics WHERE run_id = '{run_id}'\""
    )


if __name__ == "__main__":
    main()
