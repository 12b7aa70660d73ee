"""Data profiles: what a training's data looked like, as typed rows, and the skew between two profiles.

`profile_rows(data)` turns arrays, DataFrames, tensors, `(x, y)` pairs, torch Datasets and
DataLoaders into one row per feature (per channel for images): counts, missing/NaN/inf,
min, max, mean, std, zero fraction, quantiles, a histogram (numeric) or the value counts
(categorical, and the label), plus the SHA-256 of the data's bytes. Data of more than
`max_rows` examples is profiled on a seeded random sample of `max_rows` (the row says so);
`exact=True` profiles every example.

Skew between two profiles of a feature: the Jensen-Shannon divergence (base 2, in [0, 1]) of
their histograms for numeric features, the L-infinity distance of their value frequencies for
categorical ones, as TensorFlow Data Validation measures skew and drift.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import SpecError
from ..spec import Dataset, Transformation

PROFILE = "profile"
#: above this many examples a profile samples (unless exact=True)
MAX_ROWS = 100_000
BINS = 20
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
#: at most this many distinct values in an integer, bool or text feature make it categorical
MAX_CATEGORIES = 50


def data_profiles() -> Dataset:
    """The dataset of profiles: one row per profiled feature of a split."""
    return Dataset(
        "data_profiles",
        name=str, split=str, feature=str, kind=str, n_examples=int, n_profiled=int, sampled=bool, shape=str,
        dtype=str, count=int, missing=int, nan=int, inf=int, min=float, max=float, mean=float, std=float,
        zero_fraction=float, quantiles="json", histogram="json", categories="json", sha256=str,
        description="what a training's data looked like: one row per feature (per channel of images) and split",
    )


def data_skew() -> Dataset:
    """The dataset of distances between two profiles of one feature (splits of a run, or runs)."""
    return Dataset(
        "data_skew",
        name=str, feature=str, split=str, reference_split=str, reference_run=str, measure=str, value=float,
        description="skew between splits and drift against a reference: Jensen-Shannon (numeric), L-infinity (categorical)",
    )


def profile_transformation() -> Transformation:
    """The `profile` transformation: generates data profiles and their skew."""
    return Transformation(PROFILE, generates=[data_profiles(), data_skew()],
                          description="profiles of the data a training used, and the skew between its splits")


# ---- getting arrays out of what users pass ---------------------------------------------------

def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _stack(items: list[Any]) -> Any:
    first = items[0]
    if isinstance(first, Mapping):
        return {k: _stack([i[k] for i in items]) for k in first}
    if isinstance(first, (tuple, list)) and not np.isscalar(first[0] if len(first) else 0):
        return tuple(_stack([i[j] for i in items]) for j in range(len(first)))
    return np.stack([_numpy(i) for i in items])


def _sample_indices(n: int, max_rows: int | None) -> np.ndarray | None:
    if max_rows is None or n <= max_rows:
        return None
    return np.sort(np.random.default_rng(0).choice(n, size=max_rows, replace=False))


def _from_dataset(dataset: Any, max_rows: int | None) -> tuple[Any, int, bool]:
    n = len(dataset)
    index = _sample_indices(n, max_rows)
    chosen = range(n) if index is None else index.tolist()
    items = [dataset[int(i)] for i in chosen]
    if not items:
        raise SpecError("cannot profile an empty dataset")
    return _stack(items), n, index is not None


def _from_file(path: str) -> Any:
    """The data of a file a user names: .npy, .npz, .csv, .parquet."""
    lower = path.lower()
    if lower.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    if lower.endswith(".npz"):
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    if lower.endswith((".csv", ".parquet")):
        import pandas as pd

        return pd.read_csv(path) if lower.endswith(".csv") else pd.read_parquet(path)
    raise SpecError(f"cannot profile {path}: a profile reads .npy, .npz, .csv and .parquet files "
                    "(load other data yourself and pass the arrays)")


def _from_batches(batches: Any, max_rows: int | None) -> tuple[Any, int, bool]:
    """A Keras PyDataset (or Sequence): its batches, joined, up to `max_rows` examples (then sampled)."""
    parts, n = [], 0
    for i in range(len(batches)):
        batch = batches[i]
        parts.append(batch if isinstance(batch, tuple) else (batch,))
        n += len(_numpy(parts[-1][0]))
        if max_rows is not None and n >= max_rows:
            break
    joined = tuple(np.concatenate([_numpy(p[j]) for p in parts]) for j in range(min(len(p) for p in parts)))
    sampled = len(parts) < len(batches)
    total = n if not sampled else n * len(batches) // len(parts)  # an estimate: batches are alike
    return (joined if len(joined) > 1 else joined[0]), total, sampled


def split_features(data: Any, labels: Any = None, *, max_rows: int | None = MAX_ROWS,
                   channels_first: bool | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None, int, int, bool, str]:
    """(features name -> values, labels, examples, examples profiled, sampled, sha256) of what a user passed."""
    digest = hashlib.sha256()
    sampled = False
    if isinstance(data, (str, os.PathLike)):
        data = _from_file(os.fspath(data))
    if inspect.isgenerator(data) or (hasattr(data, "__next__") and not hasattr(data, "__len__")):
        raise SpecError("cannot profile a generator or iterator: it would be used up; profile the arrays (or a "
                        "Dataset) it reads from")
    if any(c.__name__ in ("PyDataset", "Sequence") for c in type(data).__mro__[1:]) and hasattr(data, "__len__"):
        data, n, sampled = _from_batches(data, max_rows)
    if hasattr(data, "dataset") and hasattr(data, "batch_size"):  # a torch DataLoader: profile its dataset
        data = data.dataset
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (np.ndarray, tuple, list, Mapping)) \
            and not hasattr(data, "columns") and not hasattr(data, "detach"):
        data, n, sampled = _from_dataset(data, max_rows)  # a torch Dataset (items: tensors, tuples or dicts)
        channels_first = True if channels_first is None else channels_first
    if sampled:  # a sample was read; it is what the profile describes
        max_rows = None
    if isinstance(data, Mapping):
        label_key = next((k for k in ("labels", "label", "y", "target") if k in data), None)
        if label_key is not None and labels is None:
            labels = data[label_key]
        data = {k: v for k, v in data.items() if k != label_key}
    elif isinstance(data, tuple) and len(data) == 2 and labels is None:
        data, labels = data
    features: dict[str, np.ndarray] = {}
    n_examples = None
    if hasattr(data, "columns"):  # a pandas DataFrame
        n_examples = len(data)
        for column in data.columns:
            values = data[column].to_numpy()
            features[str(column)] = values
    elif isinstance(data, Mapping):
        for key, value in data.items():
            features.update(_array_features(str(key), _numpy(value), channels_first))
            n_examples = len(_numpy(value))
    else:
        array = _numpy(data)
        if array.ndim == 0:
            raise SpecError(f"cannot profile {type(data).__name__}: not a collection of examples")
        n_examples = len(array)
        channels_first = hasattr(data, "detach") if channels_first is None else channels_first
        features.update(_array_features("x", array, channels_first))
    label_values = None if labels is None else _numpy(labels).reshape(n_examples if n_examples else -1, -1)
    if label_values is not None and label_values.shape[1] == 1:
        label_values = label_values[:, 0]
    for values in [*features.values(), *([] if label_values is None else [label_values])]:
        digest.update(np.ascontiguousarray(values).tobytes() if values.dtype != object else repr(values.tolist()).encode())
    profiled = n_examples
    if not sampled:
        index = _sample_indices(n_examples or 0, max_rows)
        if index is not None:
            sampled, profiled = True, len(index)
            features = {k: v[index] for k, v in features.items()}
            label_values = None if label_values is None else label_values[index]
    else:
        n_examples = n
    return features, label_values, int(n_examples or 0), int(profiled or 0), sampled, digest.hexdigest()


def _array_features(name: str, array: np.ndarray, channels_first: bool | None) -> dict[str, np.ndarray]:
    if array.ndim == 1:
        return {name: array}
    if array.ndim == 2:
        return {f"{name}[{j}]": array[:, j] for j in range(array.shape[1])}
    # images and other tensors: one feature per channel (axis 1 for torch, the last axis otherwise)
    axis = 1 if channels_first else array.ndim - 1
    moved = np.moveaxis(array, axis, 1)
    return {f"{name}[channel {c}]": moved[:, c].reshape(-1) for c in range(moved.shape[1])}


# ---- statistics ---------------------------------------------------------------------------

def _categorical(values: np.ndarray) -> bool:
    if values.dtype == object or values.dtype.kind in "USb":
        return True
    return values.dtype.kind in "iu" and len(np.unique(values)) <= MAX_CATEGORIES


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)
    return item() if item is not None else value


def feature_stats(values: np.ndarray, *, categorical: bool | None = None, bins: int = BINS) -> dict[str, Any]:
    """The statistics of one feature's values."""
    values = np.asarray(values).reshape(-1)
    categorical = _categorical(values) if categorical is None else categorical
    if categorical:
        present = [v for v in values.tolist() if v is not None and not (isinstance(v, float) and math.isnan(v))]
        keys, counts = np.unique(np.asarray([str(v) for v in present], dtype=object), return_counts=True) \
            if present else ([], [])
        return {"kind": "categorical", "count": len(values), "missing": len(values) - len(present), "nan": 0, "inf": 0,
                "categories": {str(k): int(c) for k, c in zip(keys, counts)}}
    floats = values.astype("float64")
    nan = np.isnan(floats)
    inf = np.isinf(floats)
    finite = floats[~(nan | inf)]
    out: dict[str, Any] = {"kind": "numeric", "count": int(len(floats)), "missing": 0, "nan": int(nan.sum()),
                           "inf": int(inf.sum())}
    if len(finite):
        low, high = float(finite.min()), float(finite.max())
        counts, edges = np.histogram(finite, bins=bins, range=(low, high) if high > low else (low - 0.5, high + 0.5))
        out.update(min=low, max=high, mean=float(finite.mean()), std=float(finite.std()),
                   zero_fraction=float((finite == 0).mean()),
                   quantiles={f"p{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, np.quantile(finite, QUANTILES))},
                   histogram={"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]})
    return out


def profile_rows(name: str, data: Any, split: str, *, labels: Any = None, exact: bool = False,
                 max_rows: int = MAX_ROWS, bins: int = BINS, channels_first: bool | None = None) -> list[dict[str, Any]]:
    """One `data_profiles` row per feature (and one for the label) of what a user passed."""
    if not isinstance(split, str) or not split:
        raise SpecError(f"a profile needs a split name (train, validation, test), got {split!r}")
    features, label_values, n, profiled, sampled, sha = split_features(data, labels, max_rows=None if exact else max_rows,
                                                             channels_first=channels_first)
    rows = []
    every = list(features.items()) + ([("label", label_values)] if label_values is not None else [])
    for feature, values in every:
        stats = feature_stats(values, categorical=True if feature == "label" and _categorical(values) else None,
                              bins=bins)
        rows.append({"name": name, "split": split, "feature": feature, "n_examples": n,
                     "n_profiled": profiled, "sampled": sampled, "shape": str(tuple(values.shape)), "dtype": str(values.dtype),
                     "sha256": sha, **stats})
    return rows


# ---- distances -------------------------------------------------------------------------------

def _mass_on(edges: list[float], counts: list[int], grid: np.ndarray) -> np.ndarray:
    """A histogram's mass in each interval of a finer grid (uniform within each of its bins)."""
    edges_a = np.asarray(edges, dtype=float)
    cumulative = np.concatenate([[0.0], np.cumsum(np.asarray(counts, dtype=float))])
    at = np.interp(grid, edges_a, cumulative, left=0.0, right=cumulative[-1])
    return np.diff(at)


def jensen_shannon(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two histograms {edges, counts}, on their common grid."""
    grid = np.union1d(a["edges"], b["edges"])
    p, q = _mass_on(a["edges"], a["counts"], grid), _mass_on(b["edges"], b["counts"], grid)
    if p.sum() == 0 or q.sum() == 0:
        return math.nan
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / m[mask])))

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def l_infinity(a: Mapping[str, int], b: Mapping[str, int]) -> float:
    """L-infinity distance of two value-count tables: the largest difference of a value's frequency."""
    ta, tb = sum(a.values()), sum(b.values())
    if not ta or not tb:
        return math.nan
    return max(abs(a.get(k, 0) / ta - b.get(k, 0) / tb) for k in set(a) | set(b))


def skew(row: Mapping[str, Any], reference: Mapping[str, Any]) -> tuple[str, float] | None:
    """(measure, value) between two profile rows of a feature; None if they cannot be compared."""
    if row.get("kind") != reference.get("kind"):
        return None
    if row["kind"] == "numeric" and row.get("histogram") and reference.get("histogram"):
        return "jensen_shannon", jensen_shannon(row["histogram"], reference["histogram"])
    if row["kind"] == "categorical" and row.get("categories") is not None and reference.get("categories") is not None:
        return "l_infinity", l_infinity(row["categories"], reference["categories"])
    return None


def skew_rows(rows: Iterable[Mapping[str, Any]], reference: Iterable[Mapping[str, Any]], *,
              reference_run: str | None = None) -> list[dict[str, Any]]:
    """`data_skew` rows of each feature in `rows` against the same feature in `reference`."""
    by_feature = {r["feature"]: r for r in reference}
    out = []
    for row in rows:
        other = by_feature.get(row["feature"])
        found = skew(row, other) if other is not None else None
        if found is not None:
            out.append({"name": row["name"], "feature": row["feature"], "split": row["split"],
                        "reference_split": other["split"], "reference_run": reference_run,
                        "measure": found[0], "value": found[1]})
    return out
