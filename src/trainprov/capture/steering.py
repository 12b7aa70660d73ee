"""Online steering: requests to change a running training, kept in the store, applied at the training's safe points.

A requester (`trainprov steer`, the dashboard, a notebook) writes a row of the store's
`steering_requests` table, so steering works alike on SQLite and PostgreSQL, across
machines, with no server of its own. The training process reads its run's pending requests
on a thread of its own (one small query every `POLL_S` seconds) and puts them on a deque;
the training thread looks at that deque at each step and epoch boundary, which costs one
truth test while nobody steers. An applied request is recorded as an adaptation (cause
`steering`), then answered through the run's writer: a requester that sees the answer can
already read the adaptation.
"""

from __future__ import annotations

import collections
import json
import math
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from ..errors import QueryError, SteeringError, StoreError
from ..store import Backend, liveness, open_backend
from ..store.catalog import target
from ..store.jsonvalues import from_stored
from . import agents

ACTIONS = ("set", "stop", "checkpoint")
#: seconds between two reads of a running training's pending requests
POLL_S = 0.25
#: how long `wait_for_answer` waits by default
WAIT_S = 60.0

REQUEST = target("steering_requests")
ANSWER = target("steering_requests", ("request_id", "status", "message", "answered_at", "epoch", "step",
                                      "old_value", "new_value"), mode="update")
_COLUMNS = ", ".join(name for name in REQUEST.columns)


@dataclass
class SteeringRequest:
    """One request to change a running training, and its answer once there is one."""

    request_id: str
    run_id: str
    action: str
    parameter: str | None = None
    value: Any = None
    reason: str | None = None
    requested_by: str | None = None
    requested_at: Any = None
    status: str = "pending"
    message: str | None = None
    answered_at: Any = None
    epoch: int | None = None
    step: int | None = None
    old_value: Any = None
    new_value: Any = None

    @property
    def answered(self) -> bool:
        """True once the training applied or refused it."""
        return self.status != "pending"

    def describe(self) -> str:
        """One line for people: what was asked and what came of it."""
        what = f"set {self.parameter}={self.value!r}" if self.action == "set" else self.action
        if self.status == "pending":
            return f"request {self.request_id} ({what}) on run {self.run_id}: pending"
        return f"request {self.request_id} ({what}) on run {self.run_id}: {self.status}: {self.message}"


#: how `requested_by` names the program a person steered through: "user@host via dashboard"
VIA = " via "


def requester(via: str | None = None) -> str:
    """Who asks, as user@host (the person agent the adaptation names), and through what (`via`), if not directly."""
    person = f"{agents.user()}@{socket.gethostname()}"
    return person + (f"{VIA}{via}" if via else "")


def requester_of(requested_by: str) -> tuple[str, str | None]:
    """The person (user@host) of a request's `requested_by`, and what they steered through (None: directly)."""
    person, _, via = requested_by.partition(VIA)
    return person.strip(), via.strip() or None


def parse_value(text: str) -> Any:
    """A value as a person types it (command line, dashboard): JSON (1e-4, true, "x") if it parses, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


_JSON_FIELDS = ("value", "old_value", "new_value")


def _request_from_row(row: dict[str, Any]) -> SteeringRequest:
    values = dict(row)
    for key in _JSON_FIELDS:
        if isinstance(values.get(key), str):  # JSON text (a PostgreSQL jsonb column comes back decoded)
            values[key] = json.loads(from_stored(values[key]))
    return SteeringRequest(**values)


def _row(request: SteeringRequest, target: Any) -> tuple:
    """The request's row for a target; json columns get JSON text (a bare str would be taken as JSON text)."""
    def stored(name: str) -> Any:
        value = getattr(request, name)
        return json.dumps(value, allow_nan=True) if name in _JSON_FIELDS and value is not None else value
    return target.row(**{name: stored(name) for name in target.columns})


def _backend(store: str | os.PathLike | Backend | None) -> Backend:
    return store if isinstance(store, Backend) else open_backend(store)


def _check_request(action: str, parameter: str | None, value: Any) -> None:
    if action not in ACTIONS:
        raise SteeringError(f"unknown steering action {action!r}; use one of: {', '.join(ACTIONS)}")
    if action == "set":
        if not isinstance(parameter, str) or not parameter:
            raise SteeringError("a set request names the parameter to change (learning_rate=1e-4, say)")
        if value is None:
            raise SteeringError(f"a set request gives the new value of {parameter}")
        try:
            json.dumps(value, allow_nan=True)
        except (TypeError, ValueError):
            raise SteeringError(f"the new value of {parameter} must be a number, a string or a bool, "
                                f"got {type(value).__name__}") from None
    elif parameter is not None or value is not None:
        raise SteeringError(f"a {action} request takes no parameter or value")


def request_steering(run_id: str, action: str, parameter: str | None = None, value: Any = None, *,
                     store: str | os.PathLike | Backend | None = None, reason: str | None = None,
                     requested_by: str | None = None) -> SteeringRequest:
    """Ask a running training to change: `set` a parameter, `stop` after this epoch, save a `checkpoint` now.

    The request is a row of the store's `steering_requests`; the training answers it at
    its next step or epoch boundary. A run that is not running is answered at once
    (refused), and that answer is kept too.
    """
    _check_request(action, parameter, value)
    backend = _backend(store)
    liveness.reap(backend)  # a run whose process died is not running, whatever its row said
    try:
        found = backend.query(f"SELECT status, world_size FROM runs WHERE run_id = {backend.placeholder}", (run_id,)).rows
    except QueryError as exc:
        if not backend.exists():
            raise SteeringError(f"{backend.url} is not a trainprov store ({exc})") from None
        raise SteeringError(_refused(backend, exc)) from None
    if not found:
        raise SteeringError(f"no run {run_id!r} in {backend.url}")
    status, world_size = found[0]
    now = time.time()
    request = SteeringRequest(secrets.token_hex(8), run_id, action, parameter, value, reason,
                              requested_by or requester(), now)
    if status != "running":
        request.status, request.message, request.answered_at = (
            "refused", f"run {run_id} is {status}: only a running run can be steered", now)
    elif world_size is not None and world_size > 1:
        request.status, request.message, request.answered_at = (
            "refused", f"run {run_id} is recorded by {world_size} processes: steering such runs is not "
                       "supported (the ranks would apply a change at different steps)", now)
    row = _row(request, REQUEST)
    try:
        _ensure_requests_table(backend)
        backend.write([(REQUEST, [(REQUEST, row)])])  # items, as the writer queues them
    except Exception as exc:  # the driver's own errors too: a refused INSERT is a psycopg error
        raise SteeringError(_refused(backend, exc)) from None
    return request


def _ensure_requests_table(backend: Backend) -> None:
    """Give a store made before steering its steering_requests table (a role that may not create tables need not)."""
    try:
        backend.query("SELECT request_id FROM steering_requests LIMIT 0")
    except QueryError as unreadable:
        try:
            backend.ensure_catalog()
        except Exception:  # a role that may not read the table may not create tables either: say what it cannot read
            raise unreadable from None


def _refused(backend: Backend, exc: BaseException) -> str:
    """Why the store refused a steering request, and the access it takes."""
    cause = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, StoreError):  # unreachable, locked, ...: trainprov's own message says why
        return f"{backend.url} did not take the steering request: {cause}"
    return (f"{backend.url} refused the steering request ({cause}): steering needs "
            f"{backend.access_needed(write=['steering_requests'], read=['runs', 'steering_requests'])}; "
            "a read-only role cannot steer (see docs/steering.md#who-may-steer)")


def steering_requests(run_id: str | None = None, *, store: str | os.PathLike | Backend | None = None,
                      request_id: str | None = None) -> list[SteeringRequest]:
    """The steering requests of a run (or one request), oldest first."""
    backend = _backend(store)
    p = backend.placeholder
    where, params = [], []
    if run_id is not None:
        where.append(f"run_id = {p}")
        params.append(run_id)
    if request_id is not None:
        where.append(f"request_id = {p}")
        params.append(request_id)
    sql = f"SELECT {_COLUMNS} FROM steering_requests"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return [_request_from_row(row) for row in backend.query(sql + " ORDER BY requested_at", params).dicts()]


def wait_for_answer(request: SteeringRequest, *, store: str | os.PathLike | Backend | None = None,
                    timeout: float = WAIT_S, poll_s: float = 0.1) -> SteeringRequest:
    """The request once the training answered it; SteeringError after `timeout` seconds without an answer."""
    if request.answered:
        return request
    backend = _backend(store)
    deadline = time.monotonic() + timeout
    while True:
        found = steering_requests(store=backend, request_id=request.request_id)
        if found and found[0].answered:
            return found[0]
        # a training answers what it holds before its run's end is written: an ended run
        # without an answer never applied the request
        liveness.reap(backend)
        runs = backend.query(f"SELECT status FROM runs WHERE run_id = {backend.placeholder}", (request.run_id,)).rows
        if runs and runs[0][0] != "running":
            found = steering_requests(store=backend, request_id=request.request_id)
            if found and found[0].answered:
                return found[0]
            raise SteeringError(f"run {request.run_id} ended ({runs[0][0]}) without answering request "
                                f"{request.request_id}")
        if time.monotonic() >= deadline:
            raise SteeringError(
                f"no answer to request {request.request_id} within {timeout:.3g} s: a training applies requests at "
                "its step and epoch boundaries, and only a run recorded by a trainprov integration (with "
                "steering on) listens; the request stays pending")
        time.sleep(poll_s)


def steer(run_id: str, values: Mapping[str, Any] | None = None, *, stop: bool = False, checkpoint: bool = False,
          reason: str | None = None, store: str | os.PathLike | Backend | None = None,
          wait: float | None = None) -> list[SteeringRequest]:
    """Steer a running training: set `values`, save a checkpoint now, stop after this epoch (in that order).

    With `wait` (seconds), return once the training answered every request, or raise
    SteeringError naming those still unanswered when the time is up.
    """
    if not values and not stop and not checkpoint:
        raise SteeringError("nothing to steer: give values to set, checkpoint=True or stop=True")
    backend = _backend(store)
    asked = [(("set", name, value)) for name, value in (values or {}).items()]
    asked += [("checkpoint", None, None)] * bool(checkpoint) + [("stop", None, None)] * bool(stop)
    for action, parameter, value in asked:
        _check_request(action, parameter, value)
    requests = [request_steering(run_id, action, parameter, value, store=backend, reason=reason)
                for action, parameter, value in asked]
    if wait is None:
        return requests
    deadline = time.monotonic() + wait
    return [wait_for_answer(r, store=backend, timeout=max(0.0, deadline - time.monotonic())) for r in requests]


@dataclass
class Steerable:
    """A value a running training lets people change: how to read it, how to set it, its type and bounds."""

    name: str
    get: Callable[[], Any]
    set: Callable[[Any], Any]
    kind: type = float
    low: float | None = None
    high: float | None = None

    def coerce(self, value: Any) -> Any:
        """The value as this parameter's type; ValueError with a message for people if it is not one."""
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            raise ValueError(f"{self.name} takes true or false, got {value!r}")
        if self.kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{self.name} takes a number, got {value!r}")
            if self.kind is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(f"{self.name} takes a whole number, got {value!r}")
                value = int(value)
            else:
                value = float(value)
                if not math.isfinite(value):
                    raise ValueError(f"{self.name} takes a finite number, got {value!r}")
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                bounds = f"[{'' if self.low is None else self.low}, {'' if self.high is None else self.high}]"
                raise ValueError(f"{value!r} is outside the bounds {bounds} declared for {self.name}")
            return value
        if self.kind is str:
            if isinstance(value, str):
                return value
            raise ValueError(f"{self.name} takes a string, got {value!r}")
        raise ValueError(f"{self.name} has a type steering does not know: {self.kind!r}")


@dataclass
class Steering:
    """The training side: the requests of one run, read from the store, and what the training lets people change."""

    poll_s: float = POLL_S
    #: requests read from the store, not yet applied (the training thread takes them)
    pending: collections.deque = field(default_factory=collections.deque)
    steerables: dict[str, Steerable] = field(default_factory=dict)
    #: saves a checkpoint now through the framework: (epoch, step) -> the recorded file, or None
    #: when the framework saves a little later (the recorded checkpoint then answers the request)
    checkpointer: Callable[[int | None, int | None], Any] | None = None
    #: why this training cannot save a checkpoint on request (said when there is no checkpointer)
    no_checkpointer: str = "this training cannot save a checkpoint on request"
    #: a stop request accepted: the training stops at the end of this epoch
    stop_request: SteeringRequest | None = None
    #: checkpoint requests waiting for the framework's next save
    awaiting_checkpoint: list[SteeringRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._run: Any = None
        self._seen: set[str] = set()
        self._quit = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, name: str, get: Callable[[], Any], set: Callable[[Any], Any], *, kind: type = float,
                 low: float | None = None, high: float | None = None) -> None:
        """Let people change `name` while the training runs (set is called on the training thread, at a boundary)."""
        if kind not in (float, int, bool, str):
            raise SteeringError(f"a steerable value is a float, int, bool or str, not {kind!r}")
        self.steerables[name] = Steerable(name, get, set, kind, low, high)

    # ---- listening ----------------------------------------------------------------------

    def listen(self, run: Any) -> None:
        """Read the run's pending requests from now on, on a thread of its own."""
        if self._run is run and self._thread is not None:
            return
        self.stop_listening()
        self._run, self._quit = run, threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"trainprov-steering-{run.id}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        run = self._run
        # a run may also end without the recorder (at exit, on a signal, by run.end()): stop with it
        while not self._quit.wait(self.poll_s) and run is not None and run.status == "running":
            self.poll()

    def poll(self) -> int:
        """Read the run's new pending requests now; the number found."""
        run = self._run
        if run is None:
            return 0
        try:
            rows = run.read(f"SELECT {_COLUMNS} FROM steering_requests WHERE run_id = ? AND status = 'pending' "
                            "ORDER BY requested_at", (run.id,))
        except Exception:  # the store is away or older than steering: nobody can have asked yet
            return 0
        found = 0
        for row in rows:
            if row["request_id"] not in self._seen:
                self._seen.add(row["request_id"])
                try:
                    request = _request_from_row(row)
                except ValueError as exc:  # a row written by hand: refuse it rather than stop listening
                    request = SteeringRequest(row["request_id"], row["run_id"], "unreadable")
                    self.answer(request, "refused", f"the request cannot be read: {exc}")
                    continue
                self.pending.append(request)
                found += 1
        return found

    def stop_listening(self, why: str = "the run ended before the request reached a step or epoch boundary") -> None:
        """Stop reading requests; those not applied are refused with `why`."""
        if self._thread is not None:
            self._quit.set()
            if self._thread is not threading.current_thread():
                self._thread.join(timeout=5)
            self._thread = None
        if self._run is not None and self._run.status == "running":
            self.poll()
            for request in [*self.pending, *self.awaiting_checkpoint]:
                self.answer(request, "refused", why)
            if self.stop_request is not None:
                self.answer(self.stop_request, "refused", why)
        self.pending.clear()
        self.awaiting_checkpoint.clear()
        self.stop_request = None
        self._run = None

    # ---- answering ----------------------------------------------------------------------

    def answer(self, request: SteeringRequest, status: str, message: str, *, epoch: int | None = None,
               step: int | None = None, old_value: Any = None, new_value: Any = None) -> None:
        """Record the answer to a request (through the run's writer, after what it applied)."""
        request.status, request.message, request.answered_at = status, message, time.time()
        request.epoch, request.step, request.old_value, request.new_value = epoch, step, old_value, new_value
        if self._run is not None:
            self._run.write_row(ANSWER, _row(request, ANSWER))

    def take(self) -> Iterable[SteeringRequest]:
        """The pending requests, oldest first, each taken off the queue as it is handed out."""
        while self.pending:
            yield self.pending.popleft()

    # ---- applying (on the training thread, at a step or epoch boundary) -------------------

    def apply(self, recorder: Any, epoch: int | None, step: int | None) -> list[SteeringRequest]:
        """Apply the pending requests through `recorder` (a TrainingRecorder); the requests answered or accepted."""
        handled = []
        for request in self.take():
            handled.append(request)
            try:
                if request.action == "set":
                    self._set(recorder, request, epoch, step)
                elif request.action == "stop":
                    if self.stop_request is not None:
                        self.answer(request, "refused", f"request {self.stop_request.request_id} already stops "
                                                        "this training at the end of the epoch", epoch=epoch, step=step)
                    else:
                        self.stop_request = request  # answered when the training has stopped
                elif request.action != "checkpoint":  # a row written by hand
                    self.answer(request, "refused", f"unknown steering action {request.action!r}; use one of: "
                                                    f"{', '.join(ACTIONS)}", epoch=epoch, step=step)
                elif self.checkpointer is None:
                    self.answer(request, "refused", self.no_checkpointer, epoch=epoch, step=step)
                else:
                    request.epoch, request.step = epoch, step
                    self.awaiting_checkpoint.append(request)
                    self.checkpointer(epoch, step)  # its recorded file answers the request
            except Exception as exc:  # a setter or a save that failed: the training goes on, the requester learns why
                self.awaiting_checkpoint = [r for r in self.awaiting_checkpoint if r is not request]
                self.answer(request, "refused", f"{request.action} failed: {type(exc).__name__}: {exc}",
                            epoch=epoch, step=step)
        return handled

    def _set(self, recorder: Any, request: SteeringRequest, epoch: int | None, step: int | None) -> None:
        steerable = self.steerables.get(request.parameter or "")
        if steerable is None:
            known = ", ".join(sorted(self.steerables)) or "nothing"
            self.answer(request, "refused", f"this training has no steerable parameter {request.parameter!r}; "
                                            f"it lets people change: {known}", epoch=epoch, step=step)
            return
        try:
            value = steerable.coerce(request.value)
        except ValueError as exc:
            self.answer(request, "refused", str(exc), epoch=epoch, step=step)
            return
        old = steerable.get()
        steerable.set(value)
        new = steerable.get()
        kind = "learning_rate" if steerable.name.startswith("learning_rate") else "hyperparameter"
        recorder.record_steering(request, epoch, kind=kind, step=step, parameter=steerable.name,
                                 old_value=old, new_value=new)
        where = f"epoch {epoch}" + ("" if step is None else f", step {step}")
        self.answer(request, "applied", f"{steerable.name}: {old!r} -> {new!r} at {where}", epoch=epoch, step=step,
                    old_value=old, new_value=new)

    def checkpoint_recorded(self, recorder: Any, ref: Any, element: Any) -> None:
        """A checkpoint was recorded: it answers the checkpoint requests waiting for one."""
        while self.awaiting_checkpoint:
            request = self.awaiting_checkpoint.pop(0)
            recorder.record_steering(request, request.epoch, kind="checkpoint", step=request.step, uses=[element])
            self.answer(request, "applied", f"saved {ref.path} (sha256 {ref.sha256})", epoch=request.epoch,
                        step=request.step, new_value=ref.path)

    def stopped(self, recorder: Any, epoch: int | None, planned_epochs: Any = None) -> None:
        """The training stopped because of the stop request: record it and answer."""
        request, self.stop_request = self.stop_request, None
        if request is None:
            return
        recorder.record_steering(request, epoch, kind="stopped_by_request", parameter="epochs",
                                 old_value=planned_epochs, new_value=epoch)
        self.answer(request, "applied", f"the training stopped at the end of epoch {epoch}", epoch=epoch,
                    old_value=planned_epochs, new_value=epoch)

