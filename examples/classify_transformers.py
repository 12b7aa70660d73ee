"""A tiny BERT learns a rule on generated token sequences, with the Transformers Trainer and trainprov.

Each sequence holds 16 tokens; its label says whether most of them come from the lower half
of the vocabulary. The model is built from a config (no download); the Trainer evaluates and
saves a checkpoint every epoch, halves the learning rate when eval_loss stops improving
(`reduce_lr_on_plateau`, recorded as adaptations) and stops early; the callback records it
all, and the script prints what the store holds at the end.

    python examples/classify_transformers.py [--epochs 30] [--store PATH] [--schedule linear]
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local: never ask the Hub

import torch  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    EarlyStoppingCallback,
    Trainer,
    TrainingArguments,
)

import trainprov as tp  # noqa: E402
from trainprov.transformers import ProvenanceCallback  # noqa: E402

VOCAB, LENGTH = 32, 16


class Majority(torch.utils.data.Dataset):
    """Token sequences labelled 1 when most tokens are below VOCAB / 2 (token 0 is reserved for padding)."""

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, LENGTH), generator=generator)
        self.labels = ((self.ids < VOCAB // 2).sum(1) > LENGTH // 2).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def accuracy(prediction) -> dict:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def report(store: str, run_id: str) -> None:
    """What the store holds about the run, read back with SQL."""
    reader = tp.connect(store)
    print(f"\n== run {run_id}: one row per epoch (loss: the epoch's mean, logged at its end)")
    print(reader.df(
        "SELECT epoch, loss, eval_loss, eval_accuracy, learning_rate, round(epoch_time_s, 2) AS seconds "
        "FROM epoch_metrics WHERE run_id = ? ORDER BY epoch", [run_id]).to_string(index=False))
    print("\n== adaptations (learning-rate changes from ReduceLROnPlateau, early stopping)")
    adaptations = reader.df(
        "SELECT epoch, step, kind, old_value, new_value, cause, monitor_value FROM adaptations "
        "WHERE run_id = ? AND parameter IN ('learning_rate', 'epochs') ORDER BY epoch, step", [run_id])
    print(adaptations.to_string(index=False) if len(adaptations) else "(none)")
    print("\n== checkpoints: the weights of each checkpoint-N (save_total_limit=2 deleted most; their SHA-256 stays)")
    print(reader.df(
        "SELECT c.epoch, c.monitor_value AS eval_loss, f.size_bytes, substr(f.sha256, 1, 12) AS sha256, f.path "
        "FROM checkpoints c JOIN files f ON f.task_id = c.task_id AND f.element_seq = c.element_seq "
        "WHERE c.run_id = ? ORDER BY c.epoch", [run_id]).to_string(index=False))
    print("\n== test results (trainer.evaluate on held-out data after training)")
    print(reader.df("SELECT split, loss, accuracy, evaluation_time_s FROM test_results WHERE run_id = ?",
                    [run_id]).to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--samples", type=int, default=1000, help="training sequences")
    parser.add_argument("--store", default=None, help="store path (default: $TRAINPROV_STORE or ./trainprov.db)")
    parser.add_argument("--schedule", default="reduce_lr_on_plateau", help="the Trainer's lr_scheduler_type")
    parser.add_argument("--output-dir", default=None, help="where the Trainer saves checkpoints (default: a temporary folder)")
    args = parser.parse_args()
    store = args.store or os.environ.get("TRAINPROV_STORE") or "trainprov.db"
    output_dir = args.output_dir or tempfile.mkdtemp(prefix="classify_transformers_")

    torch.set_num_threads(1)  # a model this small runs fastest on one thread
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=LENGTH, num_labels=2)
    model = BertForSequenceClassification(config)
    schedule_kwargs = {"patience": 1, "factor": 0.5} if args.schedule == "reduce_lr_on_plateau" else {}
    training = TrainingArguments(
        output_dir=output_dir, report_to="none", use_cpu=True, disable_tqdm=True, log_level="error",
        num_train_epochs=args.epochs, per_device_train_batch_size=32, per_device_eval_batch_size=128,
        learning_rate=2e-3, weight_decay=0.01, lr_scheduler_type=args.schedule, lr_scheduler_kwargs=schedule_kwargs,
        logging_strategy="epoch", eval_strategy="epoch", save_strategy="epoch", save_total_limit=2,
        metric_for_best_model="loss", load_best_model_at_end=True, seed=0,
    )
    data = {"dataset": "generated majority tokens", "vocab": VOCAB, "sequence_length": LENGTH, "n_train": args.samples}
    with ProvenanceCallback(store, name="classify_transformers", hyperparameters=data) as prov:
        trainer = Trainer(
            model=model, args=training, train_dataset=Majority(args.samples, 0), eval_dataset=Majority(500, 1),
            compute_metrics=accuracy,
            callbacks=[prov, EarlyStoppingCallback(early_stopping_patience=3, early_stopping_threshold=1e-3)],
        )
        trainer.train()
        result = trainer.evaluate(Majority(1000, 2), metric_key_prefix="test")
    print(f"run {prov.run.id}: test accuracy {result['test_accuracy']:.3f}; store {os.path.abspath(store)}")
    report(store, prov.run.id)


if __name__ == "__main__":
    main()
