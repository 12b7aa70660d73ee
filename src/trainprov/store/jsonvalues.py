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
import re
from typing import Any

_WORDS = ("NaN", "Infinity", "-Infinity")
_ESCAPED = re.compile(r"~*(?:NaN|-?Infinity)")  # a real string that must be told apart
# One pass over the JSON text, no parsing (so no depth limit): each string, with the colon
# that makes it an object key, or a bare non-finite number.
_TOKENS = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"(\s*:)?|(-?Infinity|NaN)')


def _may_hold_words(text: str) -> bool:
    # every non-finite number and every string to escape or unescape holds one of these
    return "NaN" in text or "Infinity" in text


def _encode(match: re.Match) -> str:
    bare = match.group(3)
    if bare is not None:
        return f'"{bare}"'
    inner = match.group(1)
    if match.group(2) is None and _ESCAPED.fullmatch(inner):
        return f'"~{inner}"'
    return match.group(0)


def _decode(match: re.Match) -> str:
    inner = match.group(1)
    if inner is None or match.group(2) is not None:  # a bare word (an older row) or a key
        return match.group(0)
    if inner in _WORDS:
        return inner
    if inner.startswith("~") and _ESCAPED.fullmatch(inner):
        return f'"{inner[1:]}"'
    return match.group(0)


def to_stored(value: Any) -> str | None:
    """The JSON text a store keeps for a json value (Python's JSON text, or an object to write as JSON)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return _TOKENS.sub(_encode, text) if _may_hold_words(text) else text


def from_stored(text: Any) -> Any:
    """The JSON text a reader gives back for stored JSON text: NaN and Infinity as numbers again."""
    if not isinstance(text, str) or not _may_hold_words(text):
        return text
    return _TOKENS.sub(_decode, text)
