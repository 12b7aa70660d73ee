"""Overhead of per-step capture in the PyTorch, Lightning and Transformers integrations.

Run:  .venv/bin/python benchmarks/frameworks_bench.py [--framework pytorch|lightning|transformers|all]

Each framework trains the same MLP (128-H-H-10, H = 512 or --hidden, batch 96, on generated data) again and
again, without trainprov and with trainprov recording every step. Each round runs both in
a shuffled order; the overhead is the median over rounds of a training's wall time against
the one without trainprov of the same round (quartiles beside it). Each round also runs a
third training, timed: the time spent inside trainprov's code on the training thread is
added up, in the hooks each step calls (the framework's step or log hook, the optimizer's
pre-hook, the learning-rate watcher) per step, in the epoch hooks (each ends with a flush:
the epoch's rows are committed before the training goes on) per epoch, and once at the
start; the median over rounds is shown. (The timers' wrappers stay in place, inactive, in
the untimed trainings with trainprov: a call each, counted against trainprov.)
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import tempfile
import time
import warnings
from typing import Any, Callable

import torch

from hooktimer import active, nothing, timed, timing

BATCH, FEATURES, CLASSES = 96, 128, 10
HIDDEN = [512]  # the width of the MLP's two hidden layers (--hidden)


def watcher_instrument() -> None:
    """The learning-rate watcher's hooks: the optimizer's pre-hook, and each setting of a rate."""
    from trainprov.integrations import torch_support

    torch_support.LearningRateWatcher._before_step = timed(torch_support.LearningRateWatcher._before_step)
    torch_support._WatchedGroup.__setitem__ = timed(torch_support._WatchedGroup.__setitem__)


def data(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(steps * BATCH, FEATURES, generator=g), torch.randint(0, CLASSES, (steps * BATCH,), generator=g)


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    width = HIDDEN[0]
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                               torch.nn.ReLU(), torch.nn.Linear(width, CLASSES))


# ---- plain PyTorch ------------------------------------------------------------------------

def pytorch_fit(store: str | None, epochs: int, steps: int) -> float:
    """A hand-written loop reading its loss every step; with a store, a Tracker records every step."""
    from trainprov.torch import Tracker

    x, y = data(steps)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tracker = Tracker(model, opt, store, record_agents=False, steps=True) if store else None
    if active() and store:
        opt.register_step_pre_hook(nothing)
    start = time.perf_counter()
    for _ in range(epochs):
        for i in range(steps):
            xb, yb = x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]
            opt.zero_grad()
            logits = model(xb)
            loss = torch.nn.functional.cross_entropy(logits, yb)
            loss.backward()
            opt.step()
            value = loss.item()  # what a loop reads for its running loss, with or without trainprov
            if tracker is not None:
                tracker.step(loss=value)
        if tracker is not None:
            tracker.epoch(loss=value)
    if tracker is not None:
        tracker.end()
    return time.perf_counter() - start


def pytorch_instrument() -> None:
    from trainprov.integrations import torch as integration

    watcher_instrument()
    integration.Tracker.step = timed(integration.Tracker.step)
    integration.Tracker.__init__ = timed(integration.Tracker.__init__, "start")  # before the clock starts: timed here
    integration.Tracker.begin = timed(integration.Tracker.begin, "start")  # inside the first step
    integration.Tracker.epoch = timed(integration.Tracker.epoch, "epoch")


# ---- Lightning ----------------------------------------------------------------------------

def lightning_fit(store: str | None, epochs: int, steps: int) -> float:
    """Trainer.fit logging the loss at every step; with a store, trainprov's Provenance records each."""
    import lightning.pytorch as pl

    from trainprov.lightning import Provenance

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            self.log("loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class NullLogger(pl.loggers.Logger):
        """A logger that keeps nothing: without trainprov, Lightning still hands every step's values to a logger."""

        name, version = "null", "0"

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            pass

        def log_metrics(self, metrics: Any, step: Any = None) -> None:
            pass

    x, y = data(steps)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
    callbacks: list = [Provenance(store, record_agents=False, steps=True)] if store else []
    if active() and store:
        callbacks.append(type("Nothing", (pl.Callback,), {"on_train_batch_end": nothing})())
    # trainprov brings its own logger; the run without it gets one that does nothing, so that
    # both pay Lightning's cost of handing values to a logger
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False if store else NullLogger(), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                         callbacks=callbacks, default_root_dir=tempfile.gettempdir())
    start = time.perf_counter()
    trainer.fit(Module(), loader)
    took = time.perf_counter() - start
    for callback in callbacks:
        if store:
            callback.end()
            break
    return took


def lightning_instrument() -> None:
    from trainprov.integrations import lightning as integration

    watcher_instrument()
    cls = integration.Provenance
    cls._metrics_logged = timed(cls._metrics_logged)  # what the logger's log_metrics is, for each Provenance
    cls.on_train_batch_end = timed(cls.on_train_batch_end)
    for hook in ("on_train_epoch_start", "on_train_epoch_end", "on_validation_start", "on_validation_epoch_end",
                 "on_validation_end", "on_fit_end"):
        setattr(cls, hook, timed(getattr(cls, hook), "epoch"))
    cls.on_train_start = timed(cls.on_train_start, "start")


# ---- Transformers -------------------------------------------------------------------------

def transformers_fit(store: str | None, epochs: int, steps: int) -> float:
    """Trainer.train logging at every step (logging_steps=1); with a store, trainprov's callback records each."""
    import transformers

    from trainprov.transformers import ProvenanceCallback

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self.net(x)
            return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}

    x, y = data(steps)
    rows = [{"x": x[i], "labels": y[i]} for i in range(len(x))]
    args = transformers.TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf-bench-"), per_device_train_batch_size=BATCH, num_train_epochs=epochs,
        learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0, seed=0)
    callbacks: list = [ProvenanceCallback(store, record_agents=False)] if store else []
    if active() and store:
        callbacks.append(type("Nothing", (transformers.TrainerCallback,), {"on_step_end": nothing})())
    trainer = transformers.Trainer(model=Model(), args=args, train_dataset=rows, callbacks=callbacks)
    trainer.remove_callback(transformers.PrinterCallback)  # it prints every log line (disable_tqdm puts it in)
    start = time.perf_counter()
    trainer.train()
    took = time.perf_counter() - start
    for callback in callbacks:
        if store:
            callback.end()
            break
    return took


def transformers_instrument() -> None:
    from trainprov.integrations import transformers as integration

    watcher_instrument()
    cls = integration.ProvenanceCallback
    on_log, closing = timed(cls.on_log), timed(cls.on_log, "epoch")

    def log(self: Any, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        # train()'s closing log (train_runtime, train_loss) writes the last epoch: an epoch hook's work
        (closing if logs and "train_runtime" in logs else on_log)(self, args, state, control, logs, **kwargs)

    cls.on_log = log
    cls.on_step_end = timed(cls.on_step_end)
    for hook in ("on_epoch_begin", "on_epoch_end", "on_train_end"):
        setattr(cls, hook, timed(getattr(cls, hook), "epoch"))
    cls.on_train_begin = timed(cls.on_train_begin, "start")


FRAMEWORKS: dict[str, tuple[Callable[[str | None, int, int], float], Callable[[], None]]] = {
    "pytorch": (pytorch_fit, pytorch_instrument),
    "lightning": (lightning_fit, lightning_instrument),
    "transformers": (transformers_fit, transformers_instrument),
}


def inside_once(fit: Callable[[str | None, int, int], float], store: str, epochs: int, steps: int,
                inside: dict[str, list[float]]) -> None:
    """One timed training: the seconds inside trainprov of each kind (less the timer's cost) and calls, added to `inside`."""
    result: dict[str, float] = {}
    with timing(result):
        fit(store, epochs, steps)
    for kind, value in result.items():
        inside.setdefault(kind, []).append(value)


def bench(name: str, rounds: int, epochs: int, steps: int) -> None:
    fit, instrument = FRAMEWORKS[name]
    folder = tempfile.mkdtemp(prefix=f"{name}-bench-")
    store = os.path.join(folder, "bench.db")
    fit(None, 1, steps)  # warm-up: allocation, lazy imports
    fit(store, 1, steps)
    instrument()  # the timers wait, inactive, until the timed training of each round
    order = random.Random(0)
    seconds: dict[str, list[float]] = {"without": [], "with": []}
    ratios: list[float] = []
    inside: dict[str, list[float]] = {}
    total_steps = epochs * steps
    for _ in range(rounds):
        took = {}
        for kind in order.sample(["without", "with", "timed"], 3):
            if kind == "timed":
                inside_once(fit, store, epochs, steps, inside)
                continue
            took[kind] = fit(store if kind == "with" else None, epochs, steps)
            seconds[kind].append(took[kind])
        ratios.append(took["with"] / took["without"])
    step_s = statistics.median(seconds["without"]) / total_steps
    per_step, per_epoch, start, timer = (statistics.median(inside[kind]) for kind in ("step", "epoch", "start", "timer"))
    per_step /= total_steps
    per_epoch /= epochs
    amortized = per_step + per_epoch / steps
    r = sorted(ratios)
    q1, q3 = r[len(r) // 4], r[(3 * len(r)) // 4]
    print(f"{name}: MLP {FEATURES}-{HIDDEN[0]}-{HIDDEN[0]}-{CLASSES}, batch {BATCH}, {epochs} epochs x {steps} steps, {rounds} rounds")
    print(f"  one training step without trainprov: {step_s * 1000:.2f} ms (median)")
    low, high = min(inside["step"]) / total_steps, max(inside["step"]) / total_steps
    print(f"  inside trainprov on the training thread, every-step capture: {per_step * 1e6:.1f} us per step "
          f"= {100 * per_step / step_s:.2f} % of a step in its step hooks (median of {rounds} timed trainings, "
          f"range {low * 1e6:.1f} .. {high * 1e6:.1f} us); {per_epoch * 1e3:.2f} ms per epoch in its epoch hooks; "
          f"with those, {amortized * 1e6:.1f} us per step = {100 * amortized / step_s:.2f} % "
          f"(and {start * 1e3:.0f} ms once, at the start)")
    print(f"  (the timer's own cost, {timer * 1e6:.1f} us per timed call, measured on a hook that does nothing in the "
          f"same trainings, is taken out: {statistics.median(inside['step_calls']) / total_steps:.1f} timed calls per step)")
    print(f"  wall time with every-step capture: {statistics.median(seconds['with']):.3f} s against "
          f"{statistics.median(seconds['without']):.3f} s; overhead {100 * (statistics.median(r) - 1):+.2f} % "
          f"(median of paired rounds; quartiles {100 * (q1 - 1):+.2f} .. {100 * (q3 - 1):+.2f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--framework", choices=[*FRAMEWORKS, "all"], default="all")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="steps per epoch")
    parser.add_argument("--hidden", type=int, default=512, help="width of the MLP's hidden layers (1024: a step 3-4 times longer)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # frameworks' advice on workers and devices, not ours
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.disable(logging.WARNING)  # Lightning's banner at every fit
    HIDDEN[0] = args.hidden
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in FRAMEWORKS if args.framework == "all" else [args.framework]:
        bench(name, args.rounds, args.epochs, args.steps)


if __name__ == "__main__":
    main()
