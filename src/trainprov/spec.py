"""The prospective model: dataflows, transformations, datasets and typed attributes.

Pure Python, no I/O. Besides the declarations it holds the value checks that capture calls
run on the training thread, so they are written for speed: an exact type test first, the
general conversion only when that fails.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import numbers
import os
import re
import reprlib
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Callable, Iterable, Mapping

from .errors import SpecError, ValueTypeError

ATTRIBUTE_TYPES = ("int", "float", "str", "bool", "datetime", "json", "file")

# Python types a user may write instead of a type name.
_PY_TYPES: dict[Any, str] = {
    int: "int",
    float: "float",
    str: "str",
    bool: "bool",
    _dt.datetime: "datetime",
    dict: "json",
    list: "json",
    PurePath: "file",
}

# Columns every dataset table has before its attributes.
ELEMENT_COLUMNS = ("run_id", "task_id", "element_seq", "recorded_at")
ELEMENT_COLUMN_TYPES = ("str", "str", "int", "datetime")

# Tables the store keeps for itself; no dataset may take these names.
CATALOG_TABLES = (
    "dataflows",
    "transformations",
    "transformation_datasets",
    "datasets",
    "attributes",
    "runs",
    "run_ranks",
    "tasks",
    "task_dependencies",
    "usages",
    "files",
    "file_derivations",
    "agents",
    "run_groups",
    "run_tags",
    "steering_requests",
)

# Words that would force users to quote a name in SQL: SQLite's keywords and PostgreSQL's
# reserved words, since a name must work on both stores.
SQL_RESERVED = frozenset(
    """
    abort add all alter analyze and as asc attach autoincrement before begin between by
    cascade case cast check collate column commit constraint create cross current
    current_date current_time current_timestamp current_user database default deferrable
    deferred delete desc detach distinct do drop each else end escape except exclusive
    exists explain false fetch filter for foreign from full glob group having if ilike
    immediate in index initially inner insert instead intersect into is isnull join key
    lateral leading left like limit match natural not notnull null of offset on only or
    order outer over partition placing pragma primary raise recursive references regexp
    reindex release rename replace restrict returning right rollback row rows savepoint
    select session_user set some symmetric table temp temporary then to trailing
    transaction trigger true union unique update user using vacuum values variadic view
    virtual when where window with without
    analyse any array asymmetric authorization binary both collation concurrently
    current_catalog current_role current_schema freeze grant localtime localtimestamp
    overlaps similar system_user tablesample verbose
    nothing
    """.split()
)

# Columns PostgreSQL gives every table: no attribute may take these names.
SYSTEM_COLUMNS = frozenset(("tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"))

_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,62}\Z")


def check_name(kind: str, name: object) -> str:
    """Return name if it is a safe SQL identifier, else raise SpecError naming the problem."""
    if not isinstance(name, str):
        raise SpecError(f"{kind} name must be a string, got {type(name).__name__}: {name!r}")
    if not _NAME_RE.match(name):
        raise SpecError(
            f"{kind} name {name!r} is not a safe SQL identifier: use lowercase letters, digits "
            "and underscores, starting with a letter, at most 63 characters"
        )
    if name in SQL_RESERVED:
        raise SpecError(f"{kind} name {name!r} is an SQL keyword; choose another name")
    return name


def check_dataset_name(name: object) -> str:
    """Return name if a dataset (a table in the store) may take it, else raise SpecError naming the problem."""
    check_name("dataset", name)
    assert isinstance(name, str)
    if name in CATALOG_TABLES:
        raise SpecError(
            f"dataset name {name!r} is reserved for the store's own tables "
            f"({', '.join(CATALOG_TABLES)})"
        )
    if name.startswith("sqlite_"):
        raise SpecError(f"dataset name {name!r} is reserved: SQLite keeps names starting with sqlite_ for itself")
    if name.startswith(tuple(t + "_" for t in CATALOG_TABLES)) and name.endswith(("_idx", "_pkey")):
        raise SpecError(
            f"dataset name {name!r} is reserved for the indexes of the store's own tables; choose another name"
        )
    return name


def sanitize_name(text: str) -> str:
    """Turn free text (a framework's metric name, say) into a safe SQL identifier."""
    name = re.sub(r"[^a-z0-9_]+", "_", text.strip().lower()).strip("_") or "value"
    if not name[0].isalpha():
        name = "m_" + name
    name = name[:63]
    return name + "_" if name in SQL_RESERVED or name in SYSTEM_COLUMNS else name


def type_name(declared: object) -> str:
    """Normalise a declared attribute type (a name such as 'float' or a Python type)."""
    if isinstance(declared, str) and declared in ATTRIBUTE_TYPES:
        return declared
    if isinstance(declared, type):
        for py_type, name in _PY_TYPES.items():
            if issubclass(declared, py_type) and not (py_type is int and declared is bool):
                return name
    raise SpecError(
        f"unknown attribute type {declared!r}; use one of {', '.join(ATTRIBUTE_TYPES)} "
        "(or int, float, str, bool, datetime.datetime, dict, pathlib.Path)"
    )


# ---- value conversion (called on the training thread) -------------------------------------


def _bad(dataset: str, attr: str, kind: str, value: object) -> ValueTypeError:
    return ValueTypeError(
        f"dataset {dataset!r} attribute {attr!r} is {kind}, got {type(value).__name__}: "
        f"{_short_repr(value)}"
    )


def _short_repr(value: object) -> str:
    try:
        text = repr(value)
    except RecursionError:  # a value nested too deeply for repr: reprlib stops at a few levels
        text = reprlib.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unwrap_scalar(value: object) -> object:
    """Turn a NumPy scalar, 0-d array or one-element tensor into a Python number."""
    item = getattr(value, "item", None)
    if item is not None and (getattr(value, "ndim", None) == 0 or getattr(value, "shape", None) == (1,)):
        try:
            return item()
        except Exception:  # not a scalar after all; the caller reports the type
            return value
    return value


INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # what SQL's BIGINT holds


def text_problem(text: str) -> str | None:
    """What keeps a str from being stored as text in both stores, or None if nothing does."""
    if "\x00" in text:
        return "it contains a NUL character (\\x00), which PostgreSQL text cannot hold"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (
                f"it contains a lone surrogate ({text[exc.start]!r} at index {exc.start}), "
                "which is not valid Unicode text and cannot be stored"
            )
    return None


def check_text(what: str, value: object) -> str:
    """Return value if it is a str that a store can hold, else raise ValueTypeError naming what it is for."""
    if not isinstance(value, str):
        raise ValueTypeError(f"{what} must be a str, got {type(value).__name__}: {_short_repr(value)}")
    problem = text_problem(value)
    if problem is not None:
        raise ValueTypeError(f"{what} cannot be stored: {problem}: {_short_repr(value)}")
    return str.__str__(value)


def _bad_text(dataset: str, attr: str, problem: str, value: str) -> ValueTypeError:
    return ValueTypeError(f"dataset {dataset!r} attribute {attr!r} cannot store this text: {problem}: {_short_repr(value)}")


def _to_int(dataset: str, attr: str, value: object) -> int:
    value = _unwrap_scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise _bad(dataset, attr, "int", value)
    if not INT_MIN <= int(value) <= INT_MAX:
        raise ValueTypeError(f"dataset {dataset!r} attribute {attr!r} is int (64-bit), got {value}, which does not fit")
    return int(value)


def _to_float(dataset: str, attr: str, value: object) -> float:
    value = _unwrap_scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad(dataset, attr, "float", value)
    try:
        return float(value)
    except OverflowError:
        raise ValueTypeError(
            f"dataset {dataset!r} attribute {attr!r} is float (64-bit), got {_short_repr(value)}, "
            "which is too large for a 64-bit float"
        ) from None


def _to_str(dataset: str, attr: str, value: object) -> str:
    if isinstance(value, str):
        value = str.__str__(value)  # the text itself: str() of a str enum would give its name
        problem = text_problem(value)
        if problem is not None:
            raise _bad_text(dataset, attr, problem, value)
        return value
    raise _bad(dataset, attr, "str", value)


def _to_bool(dataset: str, attr: str, value: object) -> bool:
    value = _unwrap_scalar(value)
    if isinstance(value, bool):
        return value
    raise _bad(dataset, attr, "bool", value)


def _to_datetime(dataset: str, attr: str, value: object) -> _dt.datetime:
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value)
        except ValueError:
            raise _bad(dataset, attr, "datetime (ISO 8601 text is accepted)", value) from None
    elif isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
        value = _dt.datetime(value.year, value.month, value.day, tzinfo=_dt.timezone.utc)
    if not isinstance(value, _dt.datetime):
        raise _bad(dataset, attr, "datetime", value)
    try:
        # naive datetimes are local time, as datetime.now() gives them
        return value.astimezone(_dt.timezone.utc)
    except OverflowError:
        raise ValueTypeError(
            f"dataset {dataset!r} attribute {attr!r} is datetime, got {_short_repr(value)}, which is "
            "outside the range of datetimes in UTC (years 1 to 9999)"
        ) from None


# a JSON escape of NUL that is not itself an escaped backslash followed by "u0000"
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _to_json(dataset: str, attr: str, value: object) -> str:
    # Non-finite numbers stay as Python writes them (NaN, Infinity): the store encodes
    # them as valid JSON (store/jsonvalues.py) and its readers give them back.
    try:
        text = json.dumps(value, sort_keys=True, default=_json_default)
        if "\\ud" in text:  # a surrogate escape: a pair (fine) or a lone one (no store takes it)
            json.dumps(value, sort_keys=True, default=_json_default, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise ValueTypeError(
            f"dataset {dataset!r} attribute {attr!r} is json, but {_short_repr(value)} is nested too "
            "deeply to be written as JSON"
        ) from None
    except UnicodeEncodeError as exc:
        raise ValueTypeError(
            f"dataset {dataset!r} attribute {attr!r} is json, but {_short_repr(value)} holds text with a "
            f"lone surrogate ({exc.object[exc.start]!r}), which is not valid Unicode and cannot be stored"
        ) from None
    except (TypeError, ValueError) as exc:
        raise ValueTypeError(
            f"dataset {dataset!r} attribute {attr!r} is json, but {_short_repr(value)} "
            f"cannot be written as JSON: {exc}"
        ) from None
    if "\\u0000" in text and _JSON_NUL.search(text):
        raise ValueTypeError(
            f"dataset {dataset!r} attribute {attr!r} is json, but {_short_repr(value)} holds text with a "
            "NUL character (\\x00), which PostgreSQL's JSON cannot hold"
        )
    return text


def _json_default(value: object) -> object:
    unwrapped = _unwrap_scalar(value)
    if unwrapped is not value:
        return unwrapped
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _to_file(dataset: str, attr: str, value: object) -> str:
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if isinstance(path, str):
            path = str.__str__(path)
            problem = text_problem(path)
            if problem is None:
                return path
            raise _bad_text(dataset, attr, problem, path)
    raise _bad(dataset, attr, "file (a path)", value)


# For each type, the Python type stored without conversion (fast path on the training thread).
_EXACT: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool, "file": str}
_CONVERT: dict[str, Callable[[str, str, object], object]] = {
    "int": _to_int,
    "float": _to_float,
    "str": _to_str,
    "bool": _to_bool,
    "datetime": _to_datetime,
    "json": _to_json,
    "file": _to_file,
}


# ---- declarations -------------------------------------------------------------------------


@dataclass(frozen=True)
class Attribute:
    """A typed column of a dataset."""

    name: str
    type: str
    description: str = ""
    #: the name the values were captured under when it is not a safe column name (a
    #: framework's metric key such as "acc/top1"), from which `name` was made
    original_name: str | None = None

    def __post_init__(self) -> None:
        check_name("attribute", self.name)
        if self.original_name is not None:
            check_text(f"attribute {self.name!r}'s original name", self.original_name)
        if self.name in SYSTEM_COLUMNS:
            raise SpecError(
                f"attribute name {self.name!r} is reserved: PostgreSQL gives every table a system "
                f"column of that name ({', '.join(sorted(SYSTEM_COLUMNS))}); choose another name"
            )
        if self.name in ELEMENT_COLUMNS:
            raise SpecError(
                f"attribute name {self.name!r} is reserved: every dataset already has the "
                f"columns {', '.join(ELEMENT_COLUMNS)}"
            )
        object.__setattr__(self, "type", type_name(self.type))


class Dataset:
    """A named, typed schema of values that transformations use or generate."""

    def __init__(
        self,
        name: str,
        attributes: Mapping[str, object] | Iterable[Attribute] | None = None,
        /,
        *,
        description: str = "",
        **attrs: object,
    ) -> None:
        check_dataset_name(name)
        items: list[Attribute] = []
        if isinstance(attributes, Mapping):
            items += [Attribute(k, v) for k, v in attributes.items()]
        elif attributes is not None:
            items += [a if isinstance(a, Attribute) else Attribute(*a) for a in attributes]
        items += [Attribute(k, v) for k, v in attrs.items()]
        seen: set[str] = set()
        for attr in items:
            if attr.name in seen:
                raise SpecError(f"dataset {name!r} declares attribute {attr.name!r} twice")
            seen.add(attr.name)
        self.name = name
        self.description = description
        self.attributes: tuple[Attribute, ...] = tuple(items)
        self.types: dict[str, str] = {a.name: a.type for a in items}
        self.file_attributes = tuple(a.name for a in items if a.type == "file")
        # the one Python type stored as it is; any other value goes through the conversion
        self._exact = {a.name: _EXACT.get(a.type) for a in items}
        self._convert = {a.name: _CONVERT[a.type] for a in items}

    @property
    def attribute_names(self) -> tuple[str, ...]:
        """Names of the declared attributes, in declaration order."""
        return tuple(self.types)

    def exact_type(self, name: str) -> type | None:
        """The Python type an attribute stores as it is (every other value is converted); None for an unknown name."""
        return self._exact.get(name)

    def check(self, values: dict[str, object]) -> dict[str, object]:
        """Validate (and where needed convert) one element's values; raise naming the problem."""
        exact = self._exact
        for key, value in values.items():
            kind = exact.get(key)
            if type(value) is not kind:
                if key not in exact:
                    raise self._unknown(key)
                if value is not None:
                    values[key] = self._convert[key](self.name, key, value)
            elif kind is int:
                if not INT_MIN <= value <= INT_MAX:
                    raise ValueTypeError(
                        f"dataset {self.name!r} attribute {key!r} is int (64-bit), got {value}, which does not fit"
                    )
            # isascii() is O(1): only other text pays for the full check
            elif kind is str and not (value.isascii() and "\x00" not in value):
                problem = text_problem(value)
                if problem is not None:
                    raise _bad_text(self.name, key, problem, value)
        return values

    def _unknown(self, key: str) -> SpecError:
        known = ", ".join(self.types) or "(none)"
        return SpecError(f"dataset {self.name!r} has no attribute {key!r}; declared: {known}")

    def with_attributes(self, attributes: Mapping[str, object] | None = None, **attrs: object) -> "Dataset":
        """Return a copy of this dataset with more attributes (flexible capture): name -> type or Attribute."""
        extra = dict(attributes or {}, **attrs)
        merged = [a for a in self.attributes if a.name not in extra]
        merged += [v if isinstance(v, Attribute) and v.name == k else Attribute(k, v) for k, v in extra.items()]
        return Dataset(self.name, merged, description=self.description)

    def to_dict(self) -> dict:
        """A JSON-ready description of the dataset."""
        return {
            "name": self.name,
            "description": self.description,
            # the original name only where there is one: older specifications keep their fingerprint
            "attributes": [
                {"name": a.name, "type": a.type, "description": a.description}
                | ({"original_name": a.original_name} if a.original_name is not None else {})
                for a in self.attributes
            ],
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dataset) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        attrs = ", ".join(f"{a.name}={a.type}" for a in self.attributes)
        return f"Dataset({self.name!r}, {attrs})"


@dataclass(frozen=True)
class Transformation:
    """A step of a dataflow and the datasets it uses and generates."""

    name: str
    uses: tuple[Dataset | str, ...] = ()
    generates: tuple[Dataset | str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        check_name("transformation", self.name)
        object.__setattr__(self, "uses", tuple(self.uses))
        object.__setattr__(self, "generates", tuple(self.generates))

    @property
    def used_names(self) -> tuple[str, ...]:
        """Names of the datasets this transformation uses."""
        return tuple(d if isinstance(d, str) else d.name for d in self.uses)

    @property
    def generated_names(self) -> tuple[str, ...]:
        """Names of the datasets this transformation generates."""
        return tuple(d if isinstance(d, str) else d.name for d in self.generates)


class Dataflow:
    """A named specification of a training pipeline: its transformations and datasets."""

    def __init__(
        self, name: str, transformations: Iterable[Transformation], *, description: str = ""
    ) -> None:
        check_name("dataflow", name)
        self.name = name
        self.description = description
        self.transformations: dict[str, Transformation] = {}
        self.datasets: dict[str, Dataset] = {}
        for t in transformations:
            if not isinstance(t, Transformation):
                raise SpecError(f"dataflow {name!r}: expected a Transformation, got {t!r}")
            if t.name in self.transformations:
                raise SpecError(f"dataflow {name!r} declares transformation {t.name!r} twice")
            self.transformations[t.name] = t
            both = set(t.used_names) & set(t.generated_names)
            if both:
                raise SpecError(
                    f"transformation {t.name!r} both uses and generates {sorted(both)}; "
                    "a task's output is a new dataset"
                )
            for ds in (*t.uses, *t.generates):
                if isinstance(ds, Dataset):
                    known = self.datasets.get(ds.name)
                    if known is not None and known != ds:
                        raise SpecError(
                            f"dataflow {name!r} declares dataset {ds.name!r} twice with "
                            f"different attributes: {known!r} and {ds!r}"
                        )
                    self.datasets[ds.name] = ds
        for t in self.transformations.values():
            for ds_name in (*t.used_names, *t.generated_names):
                if ds_name not in self.datasets:
                    raise SpecError(
                        f"transformation {t.name!r} refers to dataset {ds_name!r}, which no "
                        f"transformation of dataflow {name!r} declares with its attributes"
                    )

    def transformation(self, name: str) -> Transformation:
        """The transformation of that name, or a SpecError listing the declared ones."""
        try:
            return self.transformations[name]
        except KeyError:
            raise SpecError(
                f"dataflow {self.name!r} has no transformation {name!r}; declared: "
                f"{', '.join(self.transformations)}"
            ) from None

    def dataset(self, name: str) -> Dataset:
        """The dataset of that name, or a SpecError listing the declared ones."""
        try:
            return self.datasets[name]
        except (KeyError, TypeError):
            raise SpecError(
                f"dataflow {self.name!r} has no dataset {name!r}; declared: "
                f"{', '.join(self.datasets)}"
            ) from None

    def with_transformation(self, transformation: Transformation) -> "Dataflow":
        """Return a copy with one more (or one replaced) transformation."""
        kept = [t for n, t in self.transformations.items() if n != transformation.name]
        return Dataflow(self.name, [*kept, transformation], description=self.description)

    def with_attributes(self, dataset: str, attributes: Mapping[str, object] | None = None, **attrs: object) -> "Dataflow":
        """Return a copy in which one dataset has more attributes."""
        grown = self.dataset(dataset).with_attributes(attributes, **attrs)

        def swap(items: tuple[Dataset | str, ...]) -> tuple[Dataset | str, ...]:
            return tuple(grown if not isinstance(d, str) and d.name == dataset else d for d in items)

        return Dataflow(
            self.name,
            [
                Transformation(t.name, swap(t.uses), swap(t.generates), t.description)
                for t in self.transformations.values()
            ],
            description=self.description,
        )

    def to_dict(self) -> dict:
        """A JSON-ready description of the whole specification."""
        return {
            "name": self.name,
            "description": self.description,
            "transformations": [
                {
                    "name": t.name,
                    "description": t.description,
                    "uses": list(t.used_names),
                    "generates": list(t.generated_names),
                }
                for t in self.transformations.values()
            ],
            "datasets": [self.datasets[n].to_dict() for n in sorted(self.datasets)],
        }

    @classmethod
    def from_dict(cls, spec: dict) -> "Dataflow":
        """The Dataflow a `to_dict` description (a stored `dataflows.spec`) describes."""
        datasets = {
            d["name"]: Dataset(
                d["name"],
                [Attribute(a["name"], a["type"], a.get("description") or "", a.get("original_name"))
                 for a in d["attributes"]],
                description=d.get("description") or "",
            )
            for d in spec["datasets"]
        }
        transformations = [
            Transformation(
                t["name"],
                uses=[datasets[n] for n in t["uses"]],
                generates=[datasets[n] for n in t["generates"]],
                description=t.get("description") or "",
            )
            for t in spec["transformations"]
        ]
        return cls(spec["name"], transformations, description=spec.get("description") or "")

    def fingerprint(self) -> str:
        """A hash of the specification; a changed specification is a new version."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"Dataflow({self.name!r}, transformations={list(self.transformations)})"
