"""Keras facts the callback records: a model's layers and settings, its schedule's steps, the backend's device."""

from __future__ import annotations

import math
from typing import Any, Mapping

import keras
import numpy as np

from ..capture.training import learning_rate_changes


def to_float(value: Any) -> float:
    """A Keras tensor or variable (of one value) as a Python float."""
    return float(keras.ops.convert_to_numpy(value))


def name_of(thing: Any) -> str | None:
    """The name of a loss, activation or other Keras object (a string stays as it is)."""
    if thing is None or isinstance(thing, str):
        return thing
    return getattr(thing, "name", None) or getattr(thing, "__name__", None) or type(thing).__name__


def accelerated() -> bool:
    """True if the Keras backend computes on a GPU or another accelerator."""
    backend = keras.backend.backend()
    try:
        if backend == "torch":
            import torch

            return bool(torch.cuda.is_available())
        if backend == "jax":
            import jax

            return jax.default_backend() != "cpu"
        if backend == "tensorflow":
            import tensorflow as tf

            return bool(tf.config.list_physical_devices("GPU"))
    except Exception:  # a backend that cannot say: assume the accelerator, the safe side for speed
        return True
    return False


def layer_facts(model: keras.Model) -> list[dict[str, Any]]:
    """One dict per layer: name, class, output shape, parameters and the settings that define it."""
    rows = []
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    for index, layer in enumerate(layers, 1):
        try:
            shape = str(tuple(layer.output.shape))
        except Exception:  # subclassed models have no symbolic outputs
            shape = None
        activation = getattr(layer, "activation", None)
        if activation is not None:
            try:
                activation = keras.activations.serialize(activation)
            except Exception:  # a custom callable
                activation = name_of(activation)
            activation = activation if isinstance(activation, str) else name_of(activation)
        rate = getattr(layer, "rate", None) if isinstance(layer, keras.layers.Dropout) else getattr(layer, "dropout", None)
        rows.append(
            {
                "layer_index": index,
                "name": layer.name,
                "class_name": type(layer).__name__,
                "output_shape": shape,
                "params": layer.count_params() if layer.built else None,
                "trainable_params": sum(math.prod(w.shape) for w in layer.trainable_weights),
                "activation": activation,
                "units": getattr(layer, "units", None),
                "filters": getattr(layer, "filters", None),
                "kernel_size": str(layer.kernel_size) if hasattr(layer, "kernel_size") else None,
                "strides": str(layer.strides) if hasattr(layer, "strides") else None,
                "dropout_rate": float(rate) if isinstance(rate, (int, float)) else None,
            }
        )
    return rows


def batch_size_of(data: Any) -> int | None:
    """The leading dimension of a batch of data, or None."""
    try:
        return int(keras.tree.flatten(data)[0].shape[0])
    except Exception:  # an input without a leading batch dimension
        return None


def model_hyperparameters(model: keras.Model, optimizer: Any, schedule: Any, params: Mapping[str, Any],
                          batch_size: int | None) -> dict[str, Any]:
    """What a compiled model trains with: optimizer and its settings, schedule, loss, metrics, sizes."""
    try:
        compiled = model.get_compile_config() or {}
    except Exception:  # a model whose compile arguments do not serialize
        compiled = {}
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    return {
        "optimizer": type(optimizer).__name__,
        "learning_rate": to_float(schedule(0)) if schedule is not None else to_float(optimizer.learning_rate),
        "optimizer_config": optimizer.get_config(),
        "lr_schedule": {"class": type(schedule).__name__, **schedule.get_config()} if schedule is not None else None,
        "loss": name_of(model.loss),
        "metrics": compiled.get("metrics"),
        "batch_size": batch_size,
        "epochs": params.get("epochs"),
        "steps_per_epoch": params.get("steps"),
        "n_layers": len([layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]),
        "trainable_params": trainable,
        "non_trainable_params": model.count_params() - trainable,
    }


def schedule_changes(schedule: Any, first: int, end: int) -> list[tuple[int, float, float]] | None:
    """Where a discrete schedule (piecewise constant, staircase) changes the rate in iterations first .. end - 1.

    (iteration, old, new) for each change; None for a continuous decay, whose rates are no adaptations.
    """
    config = schedule.get_config()
    if isinstance(schedule, keras.optimizers.schedules.PiecewiseConstantDecay):
        # the first step above each boundary b (iteration b + 1) takes the next value
        bounds, values = config["boundaries"], config["values"]
        return [(int(b) + 1, float(np.float32(values[k])), float(np.float32(values[k + 1])))
                for k, b in enumerate(bounds) if first <= int(b) + 1 <= end - 1]
    if config.get("staircase"):  # a monotone step function: bisection finds each step
        return learning_rate_changes(lambda k: to_float(schedule(k)), max(0, first - 1), end - 1)
    return None
