"""The dashboard's steering controls: a request from a run's page, checked and written to the store, and its answer.

The dashboard takes steering requests only when started with `--allow-steering`, and only
from its own pages (app.py checks both, with the SQL console's checks). A request goes
through `capture.steering.request_steering`, as `trainprov steer` does, and names the
dashboard's person with "via dashboard"; the page then reads the answer from the store.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..capture.steering import ACTIONS, SteeringRequest, parse_value, request_steering, requester, steering_requests
from ..errors import SteeringError
from ..query import Reader
from .present import jsonable

#: what requests from the dashboard say in `requested_by` after the person: "user@host via dashboard"
VIA = "dashboard"
#: the longest reason taken (a sentence or two; the column is text, but a page is no place for a file)
MAX_REASON = 2000


def requested_by() -> str:
    """Who the dashboard's requests come from: the person who started it, via the dashboard."""
    return requester(via=VIA)


def _request_fields(body: dict[str, Any]) -> tuple[str, str | None, Any, str | None]:
    """(action, parameter, value, reason) from a page's JSON; SteeringError naming what is wrong."""
    action = body.get("action")
    if action not in ACTIONS:
        raise SteeringError(f"unknown steering action {action!r}; use one of: {', '.join(ACTIONS)}")
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise SteeringError("the reason is text")
    reason = (reason or "").strip() or None
    if reason is not None and len(reason) > MAX_REASON:
        raise SteeringError(f"the reason is {len(reason)} characters long; at most {MAX_REASON} are taken")
    if action != "set":
        return action, None, None, reason
    parameter, value = body.get("parameter"), body.get("value")
    if not isinstance(parameter, str) or not parameter.strip():
        raise SteeringError("name the parameter to set (learning_rate, say)")
    if isinstance(value, str):  # as typed: 1e-4 is a number, true a bool, anything else text (as on the command line)
        value = parse_value(value.strip()) if value.strip() else None
    if value is None:
        raise SteeringError(f"give the new value of {parameter.strip()}")
    return action, parameter.strip(), value, reason


def shown(request: SteeringRequest) -> dict[str, Any]:
    """A request and its answer as the page shows it (JSON-safe), with a one-line description."""
    return {**jsonable(dataclasses.asdict(request)), "description": request.describe()}


def send(reader: Reader, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Write the request a page sent for `run_id`; the request as written (refused at once if the run is not running)."""
    action, parameter, value, reason = _request_fields(body)
    return shown(request_steering(run_id, action, parameter, value, store=reader.backend, reason=reason,
                                  requested_by=requested_by()))


def answer(reader: Reader, run_id: str, request_id: str) -> dict[str, Any] | None:
    """A request of `run_id` and its answer so far, or None if the run has no such request."""
    found = [r for r in steering_requests(store=reader.backend, request_id=request_id) if r.run_id == run_id]
    return shown(found[0]) if found else None
