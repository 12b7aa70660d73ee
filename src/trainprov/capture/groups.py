"""Run groups and tags: a run may belong to a group (a study, a sweep, an experiment) and carry key/value tags.

A group is a row of `run_groups` (its kind and details, e.g. an Optuna study's sampler);
runs name it in `runs.group_name`. Tags are rows of `run_tags`. Both are written by the
process's writer like every other row, so they cost the caller a queue put.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import numbers
import os
import time
from typing import Any, Callable, Iterator, Mapping

from ..errors import CaptureError
from ..store.catalog import target
from .writer import writer_for

GROUP = target("run_groups", mode="link")  # every run of a group names it; the first one counts
GROUP_DETAILS = target("run_groups", ("group_name", "kind", "description", "details"), mode="update")
TAG = target("run_tags", mode="link")
TAG_VALUE = target("run_tags", mode="update")


def check_group(name: Any) -> str:
    """A group name: any non-empty text (an Optuna study name, a sweep's name)."""
    if not isinstance(name, str) or not name.strip():
        raise CaptureError(f"a run group is named by a non-empty string, got {name!r}")
    return name


def check_tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    """Tags as text: keys are non-empty strings, values strings, numbers or booleans (stored as text)."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise CaptureError(f"tags are a mapping of names to values, got {type(tags).__name__}")
    out: dict[str, str] = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not key:
            raise CaptureError(f"a tag name is a non-empty string, got {key!r}")
        if isinstance(value, str):
            out[key] = value
        elif isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, numbers.Real):
            out[key] = repr(value) if isinstance(value, float) else str(value)
        else:
            raise CaptureError(
                f"tag {key!r}: a tag value is a string, a number or a boolean, got {type(value).__name__}; "
                "record structured values as hyperparameters or in a dataset"
            )
    return out


def group_rows(name: str, kind: str | None = None, description: str | None = None,
               details: Mapping[str, Any] | None = None, created: float | None = None) -> list[tuple]:
    """The queue items that create a group (kept if it exists) and, when given, set its kind, description, details."""
    name = check_group(name)
    if details is not None:
        try:
            json.dumps(details)
        except (TypeError, ValueError) as exc:
            raise CaptureError(f"the details of group {name!r} are not JSON: {exc}") from None
    items = [(GROUP, (name, kind, description, details, created if created is not None else time.time()))]
    if kind is not None or description is not None or details is not None:
        items.append((GROUP_DETAILS, (name, kind, description, details)))
    return items


def tag_rows(run_id: str, tags: Mapping[str, str], replace: bool = True) -> list[tuple]:
    """The queue items that set a run's tags (a tag set again takes the new value when `replace`)."""
    items: list[tuple] = [(TAG, (run_id, k, v)) for k, v in tags.items()]
    if replace:
        items += [(TAG_VALUE, (run_id, k, v)) for k, v in tags.items()]
    return items


def record_group(name: str, *, kind: str | None = None, description: str | None = None,
                 details: Mapping[str, Any] | None = None, store: str | os.PathLike | None = None) -> str:
    """Create a run group in the store, or update its kind, description and details; returns its name.

    Runs join it with `start_run(..., group=name)`; a group is also created by its first run.
    """
    writer = writer_for(store)
    writer.backend.ensure_catalog()  # a group may be recorded before the store's first run
    for item in group_rows(name, kind, description, details):
        writer.put(item)
    writer.flush()
    return name


class Joining:
    """Runs started while this is active (`joining`) belong to a group; the first one is `run`.

    An Optuna trial uses it: the training run a trial's objective starts through any
    integration becomes the trial's run, rather than a second run beside it.
    """

    def __init__(self, group: str, tags: Mapping[str, Any] | None = None, parent: str | None = None, *,
                 hyperparameters: Callable[[], Mapping[str, Any]] | None = None, hold: bool = False) -> None:
        self.group = check_group(group)
        self.tags = check_tags(tags)
        self.parent = parent
        #: values a training started inside adds to its hyperparameters (a trial's sampled values)
        self.hyperparameters = hyperparameters
        #: True: an integration ending its run inside leaves it open for the owner to record the outcome and end it
        self.hold = hold
        #: the (status, error) an integration ended the held run with
        self.ended: tuple[str, str | None] | None = None
        self.run: Any = None  # the first run started inside

    def claim(self, run: Any) -> None:
        """Note a run started inside; the first is the one this context stands for."""
        if self.run is None:
            self.run = run


_ambient: contextvars.ContextVar[Joining | None] = contextvars.ContextVar("trainprov_joining", default=None)


def ambient() -> Joining | None:
    """The active Joining of this thread or task, if any."""
    return _ambient.get()


@contextlib.contextmanager
def joining(context: Joining) -> Iterator[Joining]:
    """Make runs started inside the block join `context`'s group, with its tags and parent."""
    token = _ambient.set(context)
    try:
        yield context
    finally:
        _ambient.reset(token)
