"""How `json` values with NaN and infinities are stored as valid JSON, and read back.

Python writes a non-finite float as the bare word NaN, Infinity or -Infinity, which is not
JSON: SQLite's json_extract and PostgreSQL's jsonb refuse it. The store keeps such a number
as the JSON string "NaN", "Infinity" or "-Infinity" (what PostgreSQL's to_jsonb writes for
a float), so the database's JSON functions work. A string that really is one of those
words gets one "~" in front ("~NaN"), as does such a string that already starts with "~"
("~~NaN"), so that the two never mix. trainprov's readers undo both: they give back the
JSON text Python writes, with the numbers as NaN and Infinity again. Object keys are
never changed. See docs/schema.md.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_WORDS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_ESCAPED = re.compile(r"~*(?:NaN|-?Infinity)\Z")  # a real string that must be told apart


def _may_hold_words(text: str) -> bool:
    # every non-finite number and every string to escape or unescape ends in one of these
    return "NaN" in text or "Infinity" in text


def _encode(value: Any) -> Any:
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (math.inf, -math.inf):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, str):
        return "~" + value if _ESCAPED.match(value) else value
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, str):
        number = _WORDS.get(value)
        if number is not None:
            return number
        return value[1:] if value.startswith("~") and _ESCAPED.match(value) else value
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def to_stored(value: Any) -> str | None:
    """The JSON text a store keeps for a json value (Python JSON text, or an object to dump)."""
    if value is None:
        return None
    if isinstance(value, str):
        if not _may_hold_words(value):
            return value  # the usual case: nothing to encode
        try:
            parsed = json.loads(value)
        except ValueError:  # not JSON at all: the store or its reader says so for this row
            return value
        return json.dumps(_encode(parsed), sort_keys=True)
    text = json.dumps(value, sort_keys=True, default=str)
    return to_stored(text)


def from_stored(text: Any) -> Any:
    """The JSON text a reader gives back for stored JSON text: NaN and Infinity as numbers again."""
    if not isinstance(text, str) or not _may_hold_words(text):
        return text
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):  # not written by trainprov: show it as it is
        return text
    return json.dumps(_decode(parsed))
