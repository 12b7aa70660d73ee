"""A small PROV-CONSTRAINTS checker for exported documents, on the `prov` package's model.

It checks what an export must keep true, in the terms of W3C PROV-CONSTRAINTS:

- uniqueness and typing: an identifier names one kind of element, declared once (entities
  and activities are disjoint; an activity has one start and one end time, key
  constraints); the collection of a `hadMember` is typed `prov:Collection`;
- every relation's endpoints are declared, as the kind the relation needs (an
  entity where `used` names an entity, ...);
- event ordering (section 5.2), on the records' times: an activity starts before it ends;
  generations and usages happen while their activity runs; an entity's generations are
  simultaneous and precede its usages; a derived entity is generated after what it was
  derived from; an informant starts before the informed activity ends; a start's time is
  its activity's start time, and its starter had started by then.

PROV-CONSTRAINTS orders events, not clock times; a timestamp consistent with the order
is what a reader expects, so equal times count as ordered (clocks have a resolution).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from prov.identifier import QualifiedName
from prov.model import ProvDocument

PROV_NS = "http://www.w3.org/ns/prov#"
# which kind of element each formal attribute of a relation refers to
ENTITY_ROLES = {"entity", "trigger", "generatedEntity", "usedEntity", "specificEntity", "generalEntity",
                "alternate1", "alternate2", "collection", "plan"}
ACTIVITY_ROLES = {"activity", "informed", "informant", "starter", "ender"}
AGENT_ROLES = {"agent", "delegate", "responsible"}


def _time(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
    return None


def _formal(record) -> dict[str, Any]:
    return {name.localpart: value for name, value in record.formal_attributes}


def violations(document: ProvDocument) -> list[str]:
    """Every constraint the document breaks, each as a sentence naming the records."""
    found: list[str] = []
    kinds: dict[str, set[str]] = defaultdict(set)
    declared: dict[tuple[str, str], int] = defaultdict(int)
    times: dict[str, set[tuple[Any, Any]]] = defaultdict(set)
    types: dict[str, set[str]] = defaultdict(set)
    records = list(document.get_records())
    for r in records:
        if not r.is_element():
            continue
        uri, kind = r.identifier.uri, r.get_type().localpart
        kinds[uri].add(kind)
        declared[(uri, kind)] += 1
        types[uri] |= {v.uri for k, v in r.attributes if k.uri == PROV_NS + "type" and isinstance(v, QualifiedName)}
        if kind == "Activity":
            times[uri].add((_time(r.get_startTime()), _time(r.get_endTime())))

    # uniqueness and typing
    for uri, found_kinds in sorted(kinds.items()):
        if {"Entity", "Activity"} <= found_kinds:
            found.append(f"{uri} is both an entity and an activity")
    for (uri, kind), n in sorted(declared.items()):
        if n > 1:
            found.append(f"{kind} {uri} is declared {n} times")
    for uri, pairs in sorted(times.items()):
        if len(pairs) > 1:
            found.append(f"activity {uri} has several start/end times: {sorted(map(str, pairs))}")
    start = {u: next(iter(p))[0] for u, p in times.items()}
    end = {u: next(iter(p))[1] for u, p in times.items()}
    for uri in start:
        if start[uri] and end[uri] and start[uri] > end[uri]:
            found.append(f"activity {uri} ends ({end[uri]}) before it starts ({start[uri]})")

    # endpoints declared, as the right kind
    expected = [(ENTITY_ROLES, "Entity"), (ACTIVITY_ROLES, "Activity"), (AGENT_ROLES, "Agent")]
    generations: dict[str, set[dt.datetime]] = defaultdict(set)
    usages: list[tuple[str, str, dt.datetime]] = []
    for r in records:
        if not r.is_relation():
            continue
        kind = r.get_type().localpart
        formal = _formal(r)
        for role, value in formal.items():
            if not isinstance(value, QualifiedName):
                continue
            for roles, needed in expected:
                if role in roles and needed not in kinds.get(value.uri, set()):
                    found.append(f"{kind}: its {role} {value.uri} is not a declared {needed.lower()}")
        at = _time(formal.get("time"))
        if kind in ("Generation", "Usage"):
            activity, entity = formal.get("activity"), formal.get("entity")
            if at is not None and activity is not None:
                a = activity.uri
                if start.get(a) and at < start[a]:
                    found.append(f"{kind} of {entity.uri} at {at} is before {a} starts ({start[a]})")
                if end.get(a) and at > end[a]:
                    found.append(f"{kind} of {entity.uri} at {at} is after {a} ends ({end[a]})")
            if at is not None and entity is not None:
                if kind == "Generation":
                    generations[entity.uri].add(at)
                else:
                    usages.append((entity.uri, activity.uri if activity is not None else "-", at))
        elif kind == "Communication":
            informed, informant = formal["informed"].uri, formal["informant"].uri
            if start.get(informant) and end.get(informed) and start[informant] > end[informed]:
                found.append(f"{informed} was informed by {informant}, which started after it ended")
        elif kind == "Start":
            activity, starter = formal["activity"].uri, formal.get("starter")
            if at is not None and start.get(activity) and at != start[activity]:
                found.append(f"the start of {activity} at {at} is not its start time {start[activity]}")
            if at is not None and starter is not None and start.get(starter.uri) and start[starter.uri] > at:
                found.append(f"{activity} was started at {at} by {starter.uri}, which started later")
        elif kind == "Membership":
            collection = formal["collection"].uri
            if PROV_NS + "Collection" not in types.get(collection, set()):
                found.append(f"{collection} has members but is not typed prov:Collection")
    for uri, at in sorted(generations.items()):
        if len(at) > 1:
            found.append(f"{uri} is generated at several times: {sorted(map(str, at))}")
    for entity, activity, at in usages:
        if generations.get(entity) and min(generations[entity]) > at:
            found.append(f"{entity} is used by {activity} at {at}, before it was generated ({min(generations[entity])})")
    for r in records:
        if r.is_relation() and r.get_type().localpart == "Derivation":
            formal = _formal(r)
            new, old = formal["generatedEntity"].uri, formal["usedEntity"].uri
            if generations.get(new) and generations.get(old) and min(generations[old]) > min(generations[new]):
                found.append(f"{new} derives from {old}, which was generated after it")
    return found
