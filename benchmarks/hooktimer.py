"""Time spent inside trainprov's hooks on the training thread, for the framework benchmarks.

Hooks are wrapped with `timed` once; they are timed only inside `timing()` (one timed
training), where a hook that does nothing (`nothing`, added to the same training) measures
the timer's own cost, which `timing` takes out of the result. The first call of each
per-step hook in a training does one-time work (the first step declares the step columns
it logs) and is counted with the start.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any, Callable, Iterator

KINDS = ("step", "epoch", "start")
_ACTIVE = [False]
_SPENT = dict.fromkeys((*KINDS, "timer"), 0.0)
_CALLS = dict.fromkeys(_SPENT, 0)  # timed calls (the outer ones) of each kind
_TIMING: list[str] = []  # the kinds of the timed calls under way, outermost first
_CALLED: set[int] = set()  # the per-step hooks called so far in the timed training


def timed(function: Callable, kind: str = "step") -> Callable:
    """The function, with its time added to its kind's total while `timing()` is on (it runs on the training thread).

    A timed call inside another of the same kind is counted once, in the outer one; inside
    one of another kind (the start, inside the first step), it is taken out of the outer one.
    """
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not _ACTIVE[0]:  # not the timed training
            return function(*args, **kwargs)
        counted = kind
        if kind == "step" and id(wrapper) not in _CALLED:
            _CALLED.add(id(wrapper))
            counted = "start"
        if _TIMING and _TIMING[-1] == counted:  # counted already, in the call it is part of
            return function(*args, **kwargs)
        _TIMING.append(counted)
        _CALLS[counted] += 1
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            took = time.perf_counter() - start
            _TIMING.pop()
            _SPENT[counted] += took
            if _TIMING:
                _SPENT[_TIMING[-1]] -= took
    return wrapper


@functools.partial(timed, kind="timer")
def nothing(*args: Any, **kwargs: Any) -> None:
    """A hook that does nothing: what it costs is the timer's own cost, in the place our hooks run."""


def active() -> bool:
    """True inside `timing()`: the training to time should add a hook calling `nothing`."""
    return _ACTIVE[0]


@contextlib.contextmanager
def timing(result: dict[str, float]) -> Iterator[None]:
    """Time the hooks of the training run inside; `result` gets seconds per kind (less the timer's cost) and calls."""
    _SPENT.update(dict.fromkeys(_SPENT, 0.0))
    _CALLS.update(dict.fromkeys(_CALLS, 0))
    _CALLED.clear()
    _ACTIVE[0] = True
    try:
        yield
    finally:
        _ACTIVE[0] = False
    timer = _SPENT["timer"] / _CALLS["timer"] if _CALLS["timer"] else 0.0  # one timed call's own cost
    result["timer"] = timer
    for kind in KINDS:
        result[kind] = _SPENT[kind] - timer * _CALLS[kind]
        result[f"{kind}_calls"] = _CALLS[kind]
