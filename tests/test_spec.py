"""The specification: names, types, value checks and dataflow validation."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pytest

import trainprov as tp
from trainprov.spec import check_name, sanitize_name


@pytest.mark.parametrize("name", ["Loss", "1st", "val-loss", "my name", "select", "order", "a" * 64, "", "naïve"])
def test_unsafe_names_are_refused_with_the_name_in_the_message(name):
    with pytest.raises(tp.SpecError) as info:
        check_name("attribute", name)
    assert repr(name) in str(info.value)


def test_safe_names_pass():
    for name in ("val_loss", "epoch", "lr2", "a" * 63):
        assert check_name("attribute", name) == name


def test_sanitize_name_gives_safe_identifiers():
    for text in ("val_Sparse-Categorical Accuracy", "1cycle", "order", "   "):
        check_name("attribute", sanitize_name(text))
    assert sanitize_name("val_Sparse-Categorical Accuracy") == "val_sparse_categorical_accuracy"


def test_reserved_columns_and_catalog_names_are_refused():
    with pytest.raises(tp.SpecError, match="reserved"):
        tp.Dataset("metrics", run_id=int)
    with pytest.raises(tp.SpecError, match="reserved"):
        tp.Dataset("runs", x=int)
    with pytest.raises(tp.SpecError, match="twice"):
        tp.Dataset("metrics", [("loss", "float")], loss=float)


def test_types_by_name_or_python_type():
    ds = tp.Dataset("d", a=int, b="float", c=str, d=bool, e=dt.datetime, f=dict, g=Path, h="json")
    assert ds.types == {"a": "int", "b": "float", "c": "str", "d": "bool", "e": "datetime", "f": "json", "g": "file", "h": "json"}
    with pytest.raises(tp.SpecError, match="unknown attribute type 'decimal'"):
        tp.Dataset("d", a="decimal")


def test_unknown_attribute_names_dataset_attribute_and_declared_ones():
    ds = tp.Dataset("epoch_metrics", epoch=int, loss=float)
    with pytest.raises(tp.SpecError) as info:
        ds.check({"epoch": 1, "accuracy": 0.5})
    message = str(info.value)
    assert "'epoch_metrics'" in message and "'accuracy'" in message and "epoch, loss" in message
    with pytest.raises(tp.SpecError, match="accuracy"):
        ds.check({"accuracy": None})  # even a missing value of an unknown attribute


def test_wrong_type_names_dataset_attribute_and_both_types():
    ds = tp.Dataset("epoch_metrics", epoch=int, loss=float, optimizer=str, early=bool)
    with pytest.raises(tp.ValueTypeError) as info:
        ds.check({"loss": "0.5"})
    assert "'epoch_metrics'" in str(info.value) and "'loss'" in str(info.value)
    assert "float" in str(info.value) and "str" in str(info.value)
    with pytest.raises(tp.ValueTypeError, match="int"):
        ds.check({"epoch": True})  # a bool is not an epoch number
    with pytest.raises(tp.ValueTypeError):
        ds.check({"epoch": 1.5})
    with pytest.raises(tp.ValueTypeError):
        ds.check({"optimizer": 3})
    with pytest.raises(tp.ValueTypeError):
        ds.check({"early": 1})


def test_numbers_from_numpy_and_ints_are_converted():
    ds = tp.Dataset("m", epoch=int, loss=float)
    values = ds.check({"epoch": np.int64(3), "loss": np.float32(0.25)})
    assert values == {"epoch": 3, "loss": 0.25}
    assert type(values["epoch"]) is int and type(values["loss"]) is float
    assert ds.check({"loss": 2})["loss"] == 2.0 and type(ds.check({"loss": 2})["loss"]) is float
    assert ds.check({"loss": np.array(0.5)})["loss"] == 0.5
    assert math.isnan(ds.check({"loss": float("nan")})["loss"])
    assert ds.check({"loss": None}) == {"loss": None}


def test_datetime_json_and_file_values():
    ds = tp.Dataset("d", at=dt.datetime, config="json", path="file")
    naive = dt.datetime(2026, 1, 2, 3, 4, 5)
    checked = ds.check({"at": naive, "config": {"b": [1, 2], "a": np.float32(0.5)}, "path": Path("/tmp/x")})
    assert checked["at"].tzinfo is not None and checked["at"] == naive.astimezone(dt.timezone.utc)
    assert checked["config"] == '{"a": 0.5, "b": [1, 2]}'
    assert checked["path"] == "/tmp/x"
    assert ds.check({"at": "2026-01-02T03:04:05+00:00"})["at"] == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    with pytest.raises(tp.ValueTypeError, match="cannot be written as JSON"):
        ds.check({"config": {"f": object()}})
    with pytest.raises(tp.ValueTypeError, match="file"):
        ds.check({"path": 3})
    with pytest.raises(tp.ValueTypeError, match="datetime"):
        ds.check({"at": "yesterday"})


def test_dataflow_validation():
    metrics = tp.Dataset("metrics", loss=float)
    with pytest.raises(tp.SpecError, match="refers to dataset 'data'"):
        tp.Dataflow("f", [tp.Transformation("train", uses=["data"], generates=[metrics])])
    with pytest.raises(tp.SpecError, match="twice with different attributes"):
        tp.Dataflow("f", [
            tp.Transformation("a", generates=[metrics]),
            tp.Transformation("b", generates=[tp.Dataset("metrics", loss=str)]),
        ])
    with pytest.raises(tp.SpecError, match="both uses and generates"):
        tp.Dataflow("f", [tp.Transformation("a", uses=[metrics], generates=["metrics"])])
    with pytest.raises(tp.SpecError, match="transformation 'a' twice"):
        tp.Dataflow("f", [tp.Transformation("a"), tp.Transformation("a")])
    flow = tp.Dataflow("f", [tp.Transformation("a", generates=[metrics])])
    with pytest.raises(tp.SpecError, match="no transformation 'b'; declared: a"):
        flow.transformation("b")


def test_flexible_capture_extends_a_dataflow():
    flow = tp.Dataflow("f", [tp.Transformation("train", generates=[tp.Dataset("metrics", loss=float)])])
    grown = flow.with_attributes("metrics", grad_norm=float)
    assert grown.datasets["metrics"].types == {"loss": "float", "grad_norm": "float"}
    custom = grown.with_transformation(
        tp.Transformation("augment", uses=["metrics"], generates=[tp.Dataset("augment_params", flips=bool)])
    )
    assert set(custom.transformations) == {"train", "augment"}
    assert len({flow.fingerprint(), grown.fingerprint(), custom.fingerprint()}) == 3
    assert flow.fingerprint() == tp.Dataflow("f", [tp.Transformation("train", generates=[tp.Dataset("metrics", loss=float)])]).fingerprint()


@pytest.mark.parametrize(
    "declare, words",
    [
        (lambda: tp.Dataset("nothing", x=int), "SQL keyword"),  # SQLite cannot take it as a table name
        (lambda: tp.Dataset("d", nothing=int), "SQL keyword"),
        (lambda: tp.Dataset("sqlite_stats", x=int), "starting with sqlite_"),
        (lambda: tp.Dataset("sqlite_sequence", x=int), "starting with sqlite_"),
        (lambda: tp.Dataset("runs_status_idx", x=int), "indexes of the store's own tables"),
        (lambda: tp.Dataset("runs_pkey", x=int), "indexes of the store's own tables"),
        (lambda: tp.Dataset("d", xmin=int), "system column"),
        (lambda: tp.Dataset("d", ctid=float), "system column"),
    ],
)
def test_names_a_store_cannot_take_are_refused_when_declared(declare, words):
    with pytest.raises(tp.SpecError, match=words):
        declare()


def test_sanitized_names_avoid_what_the_stores_cannot_take():
    assert sanitize_name("nothing") == "nothing_"
    assert sanitize_name("xmin") == "xmin_"
    for text in ("nothing", "xmin", "ctid", "tableoid"):
        tp.Dataset("d", **{sanitize_name(text): float})
