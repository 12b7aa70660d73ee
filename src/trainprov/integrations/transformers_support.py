"""Hugging Face Transformers facts the callback records: a Trainer's settings, its schedules, its checkpoint files."""

from __future__ import annotations

import functools
import glob
import os
import re
import sys
from enum import Enum
from typing import Any, Mapping

from .torch_support import jsonable, model_layers, optimizer_hyperparameters, scheduler_config

# Files of a checkpoint folder that hold the model's weights (whole, sharded, or a PEFT adapter).
_WEIGHTS = re.compile(r"^(model|adapter_model)(-\d+-of-\d+)?\.safetensors$|^(pytorch_model|adapter_model)(-\d+-of-\d+)?\.bin$")
# A few TrainingArguments that deserve a column of their own (all of them are in `training_arguments`).
_ARGUMENT_COLUMNS = ("per_device_train_batch_size", "gradient_accumulation_steps", "weight_decay", "max_grad_norm",
                     "lr_scheduler_type", "seed")


def plain_value(value: Any) -> Any:
    """A TrainingArguments value as a plain Python value (its enums are str subclasses)."""
    return jsonable(value.value if isinstance(value, Enum) else value)


def describe_lambda(function: Any) -> Any:
    """A LambdaLR function as JSON: the Trainer's schedules are partials whose keywords define them."""
    if isinstance(function, functools.partial):
        return {"function": getattr(function.func, "__qualname__", repr(function.func)), **jsonable(function.keywords)}
    return getattr(function, "__qualname__", type(function).__name__)


def schedule_config(scheduler: Any) -> dict[str, Any] | None:
    """The learning-rate scheduler's settings, with the Trainer's LambdaLR functions and their arguments."""
    config = scheduler_config(scheduler)
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if config is not None and lambdas:
        described = [describe_lambda(f) for f in lambdas]
        # the Trainer gives every parameter group the same function: say it once
        config["lr_lambdas"] = described[:1] if all(d == described[0] for d in described) else described
    return config


def updates_per_epoch(args: Any, dataloader: Any) -> int | None:
    """Optimizer updates per epoch, computed as the Trainer does; None for a loader without a length."""
    try:
        batches = len(dataloader)
    except TypeError:
        return None
    accumulation = max(1, int(args.gradient_accumulation_steps))
    return max(batches // accumulation + int(batches % accumulation > 0), 1)


def checkpoint_weights(folder: str) -> list[str]:
    """The weight files the Trainer wrote in a checkpoint folder (one, or its shards), sorted."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(os.path.join(folder, n) for n in names if _WEIGHTS.match(n))


def checkpoint_folder(args: Any, state: Any) -> str | None:
    """The folder of the checkpoint just saved: output_dir/checkpoint-N (or under a search trial's folder)."""
    name = f"checkpoint-{state.global_step}"
    direct = os.path.join(args.output_dir, name)
    if os.path.isdir(direct):
        return direct
    # hyperparameter search saves under output_dir/<trial>/: the newest such folder is ours
    found = [p for p in glob.glob(os.path.join(glob.escape(args.output_dir), "*", name)) if os.path.isdir(p)]
    return max(found, key=os.path.getmtime) if found else None


def split_of(metrics: Mapping[str, Any]) -> str | None:
    """The metric_key_prefix of an evaluation ('eval', 'test', 'eval_<name>'): the Trainer always reports <prefix>_runtime."""
    prefixes = [k[: -len("_runtime")] for k in metrics if k.endswith("_runtime")]
    return min(prefixes, key=len) if prefixes else None



def trainer_hyperparameters(args: Any, state: Any, model: Any, optimizer: Any, scheduler: Any,
                            updates_per_epoch: int | None) -> dict[str, Any]:
    """What a Trainer trains with: optimizer, schedule, batch and epoch sizes, TrainingArguments, the model's config."""
    values: dict[str, Any] = {}
    if optimizer is not None:
        values.update(optimizer_hyperparameters(optimizer))
    else:
        values["learning_rate"] = float(args.learning_rate)
    config = getattr(model, "config", None)
    facts, _ = model_layers(model) if model is not None else ({}, [])
    values.update(
        {
            "lr_schedule": schedule_config(scheduler),
            "loss": getattr(model, "loss_type", None),  # the Transformers loss family (ForCausalLM, ...)
            # samples per optimizer update, across gradient accumulation and data-parallel processes
            "batch_size": (state.train_batch_size or args.per_device_train_batch_size)
            * args.gradient_accumulation_steps * max(1, args.world_size),
            # without a dataloader length the Trainer plans sys.maxsize epochs: no number to record
            "epochs": state.num_train_epochs if state.num_train_epochs < sys.maxsize else None,
            "steps_per_epoch": updates_per_epoch,
            **facts,
            **{name: plain_value(getattr(args, name, None)) for name in _ARGUMENT_COLUMNS},
            "max_steps": state.max_steps,
            "warmup_steps": args.get_warmup_steps(state.max_steps) if hasattr(args, "get_warmup_steps") else None,
            "world_size": args.world_size,
            "model_class": type(model).__name__ if model is not None else None,
            "model_type": getattr(config, "model_type", None) or None,
            "model_config": jsonable(config.to_dict()) if hasattr(config, "to_dict") else None,
            "training_arguments": jsonable(args.to_dict()),  # to_dict masks every *_token
            "trial_params": jsonable(state.trial_params) if state.trial_params else None,
        }
    )
    return values
