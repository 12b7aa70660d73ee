"""The store's own tables, described once for every backend.

Each column is (name, attribute type); a backend maps the types to its SQL types. The
names say what the tables hold, so that users can join them in plain SQL.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ..spec import CATALOG_TABLES, ELEMENT_COLUMN_TYPES, ELEMENT_COLUMNS, Dataset


@dataclass(frozen=True)
class Table:
    """A table: its columns with attribute types, and its primary key."""

    name: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True, eq=False)  # compared by identity: hashed for every row the writer groups
class Target:
    """Where one kind of row goes: insert into, or update by key in, a table."""

    table: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    key: tuple[str, ...] = ()
    mode: str = "insert"  # "insert", "link" (an insert that ignores a row already there) or "update"
    #: when > 0 (an element's table: the first `prefix` columns are the element columns), a
    #: queued item is flat: (target or its handle, value of each column in order), see
    #: `element_item`; else it is (target or its handle, row)
    prefix: int = 0

    def row(self, **values: Any) -> tuple:
        """A row of this target from its values by column name (a column not named is NULL)."""
        unknown = set(values) - set(self.columns)
        if unknown:
            raise KeyError(f"{self.table} has no column {', '.join(sorted(unknown))}")
        return tuple(values.get(c) for c in self.columns)


#: Targets by handle. A queued element row names its Target by this number: a flat tuple of
#: plain values is one Python's garbage collector stops tracking the first time it looks, so a
#: long queue costs no full collection (a tuple holding a Target object, or other tuples, can
#: stay tracked, and is traversed again and again).
TARGETS: list[Target] = []
_HANDLES: dict[Target, int] = {}
_HANDLES_LOCK = threading.Lock()


def handle(target: Target) -> int:
    """The number that stands for `target` in queued rows (the same for the life of the process)."""
    found = _HANDLES.get(target)
    if found is None:
        with _HANDLES_LOCK:
            found = _HANDLES.get(target)
            if found is None:
                found = _HANDLES[target] = len(TARGETS)
                TARGETS.append(target)
    return found


def resolve(head: "Target | int") -> Target:
    """The Target a queued item names (by handle or as itself)."""
    return TARGETS[head] if head.__class__ is int else head  # type: ignore[index,return-value]


def element_item(head: "Target | int", element: tuple, values: dict[str, Any]) -> tuple:
    """The queued item of one element: its target (or handle), its element columns, its values in column order."""
    return (head, *element, *map(values.get, resolve(head).columns[len(element):]))


def item_row(item: tuple) -> tuple[Target, tuple]:
    """The target and the full row of a queued item."""
    tgt = resolve(item[0])
    return tgt, item[1:] if tgt.prefix else item[1]


def current_item(item: Any) -> Any:
    """A queued item as this version queues it (spool segments of older versions nest an element's values)."""
    if item.__class__ is tuple and len(item) == 3 and item[1].__class__ is tuple and resolve(item[0]).prefix:
        if item[2].__class__ is dict:
            return element_item(*item)
        return (item[0], *item[1], *item[2])
    return item


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "dataflows",
            (
                ("name", "str"),
                ("version", "int"),
                ("fingerprint", "str"),
                ("description", "str"),
                ("spec", "json"),
                ("declared_at", "datetime"),
            ),
            ("name", "version"),
        ),
        Table(
            "transformations",
            (
                ("dataflow", "str"),
                ("dataflow_version", "int"),
                ("name", "str"),
                ("description", "str"),
            ),
            ("dataflow", "dataflow_version", "name"),
        ),
        Table(
            "transformation_datasets",
            (
                ("dataflow", "str"),
                ("dataflow_version", "int"),
                ("transformation", "str"),
                ("dataset", "str"),
                ("role", "str"),
            ),
            ("dataflow", "dataflow_version", "transformation", "dataset"),
        ),
        Table(
            "datasets",
            (("name", "str"), ("description", "str"), ("declared_at", "datetime")),
            ("name",),
        ),
        Table(
            "attributes",
            (
                ("dataset", "str"),
                ("name", "str"),
                ("type", "str"),
                ("position", "int"),
                ("description", "str"),
                ("added_at", "datetime"),
                # the name a value was captured under (a metric key such as acc/top1), when
                # the column's name was made from it; NULL for a name declared as it is
                ("original_name", "str"),
            ),
            ("dataset", "name"),
        ),
        Table(
            "runs",
            (
                ("run_id", "str"),
                ("dataflow", "str"),
                ("dataflow_version", "int"),
                ("name", "str"),
                ("status", "str"),
                ("started_at", "datetime"),
                ("ended_at", "datetime"),
                ("duration_s", "float"),
                ("heartbeat_at", "datetime"),
                ("host", "str"),
                ("pid", "int"),
                ("process_started", "str"),
                ("user_name", "str"),
                ("command", "str"),
                ("working_dir", "str"),
                ("error", "str"),
                # several processes record one run (data-parallel ranks): it ends with the last
                ("world_size", "int"),
                # a run may belong to a group (a study, a sweep) and be started by a parent run
                ("group_name", "str"),
                ("parent_run_id", "str"),
            ),
            ("run_id",),
            (("status",), ("dataflow", "dataflow_version"), ("group_name",)),
        ),
        Table(
            "run_ranks",
            (
                ("run_id", "str"),
                ("rank", "int"),
                ("host", "str"),
                ("pid", "int"),
                ("status", "str"),
                ("started_at", "datetime"),
                ("ended_at", "datetime"),
                ("duration_s", "float"),
                ("error", "str"),
            ),
            ("run_id", "rank"),
        ),
        Table(
            "tasks",
            (
                ("task_id", "str"),
                ("run_id", "str"),
                ("transformation", "str"),
                ("iteration", "int"),
                ("status", "str"),
                ("started_at", "datetime"),
                ("ended_at", "datetime"),
                ("duration_s", "float"),
                ("error", "str"),
                ("rank", "int"),
            ),
            ("task_id",),
            (("run_id",),),
        ),
        Table(
            "task_dependencies",
            (("task_id", "str"), ("depends_on", "str")),
            ("task_id", "depends_on"),
        ),
        Table(
            "usages",
            (
                ("run_id", "str"),
                ("task_id", "str"),
                ("dataset", "str"),
                ("source_task_id", "str"),
                ("source_element_seq", "int"),
                ("used_at", "datetime"),
            ),
            ("task_id", "dataset", "source_task_id", "source_element_seq"),
        ),
        Table(
            "files",
            (
                ("file_id", "str"),
                ("run_id", "str"),
                ("task_id", "str"),
                ("path", "str"),
                ("role", "str"),
                ("size_bytes", "int"),
                ("sha256", "str"),
                ("modified_at", "datetime"),
                ("recorded_at", "datetime"),
                ("dataset", "str"),
                ("element_seq", "int"),
            ),
            ("file_id",),
            (("run_id",), ("sha256",)),
        ),
        Table(
            "file_derivations",
            (("file_id", "str"), ("derived_from", "str")),
            ("file_id", "derived_from"),
        ),
        Table(
            "agents",
            (
                ("run_id", "str"),
                ("agent_id", "str"),
                ("kind", "str"),
                ("name", "str"),
                ("details", "json"),
                ("acted_on_behalf_of", "str"),
            ),
            ("run_id", "agent_id"),
        ),
        Table(
            "run_groups",
            (
                ("group_name", "str"),
                ("kind", "str"),
                ("description", "str"),
                ("details", "json"),
                ("created_at", "datetime"),
            ),
            ("group_name",),
        ),
        Table(
            "run_tags",
            (("run_id", "str"), ("tag", "str"), ("value", "str")),
            ("run_id", "tag"),
            (("tag", "value"),),
        ),
        Table(
            # a request to change a running training (online steering), and its answer
            "steering_requests",
            (
                ("request_id", "str"),
                ("run_id", "str"),
                ("action", "str"),  # set, stop or checkpoint
                ("parameter", "str"),
                ("value", "json"),
                ("reason", "str"),
                ("requested_by", "str"),  # user@host
                ("requested_at", "datetime"),
                ("status", "str"),  # pending, applied or refused
                ("message", "str"),
                ("answered_at", "datetime"),
                ("epoch", "int"),  # where the training applied it
                ("step", "int"),
                ("old_value", "json"),
                ("new_value", "json"),
            ),
            ("request_id",),
            (("run_id", "status"),),
        ),
    )
}
assert tuple(TABLES) == CATALOG_TABLES


def dataset_table(dataset: Dataset) -> Table:
    """The table of a dataset: the element columns, then one column per attribute."""
    columns = tuple(zip(ELEMENT_COLUMNS, ELEMENT_COLUMN_TYPES)) + tuple(
        (a.name, a.type) for a in dataset.attributes
    )
    return Table(dataset.name, columns, ("run_id", "task_id", "element_seq"))


def target(table: str, columns: tuple[str, ...] | None = None, mode: str = "insert") -> Target:
    """A Target for some columns of a catalog table (all of them by default)."""
    spec = TABLES[table]
    types = dict(spec.columns)
    cols = columns or tuple(types)
    return Target(table, cols, tuple(types[c] for c in cols), spec.key, mode)


def element_target(dataset: Dataset) -> Target:
    """The Target that inserts elements of a dataset."""
    table = dataset_table(dataset)
    return Target(
        table.name,
        tuple(c for c, _ in table.columns),
        tuple(t for _, t in table.columns),
        table.key,
        prefix=len(ELEMENT_COLUMNS),
    )
