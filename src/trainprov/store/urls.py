"""How a store's URL is shown: never with its password (messages, pages, `backend.url`)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit


def hide_password(url: str) -> str:
    """The URL with its password, if any, replaced by *** (for messages and `backend.url`)."""
    try:
        password = urlsplit(url).password
    except ValueError:  # not a URL that urllib understands: show only its scheme
        return url.split("://", 1)[0] + "://..."
    if password:
        url = url.replace(f":{password}@", ":***@", 1)
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)
