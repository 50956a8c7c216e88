"""Text from a Kubernetes API server or an exec plugin, made safe to put into a message or a log line."""

from __future__ import annotations

import re
from typing import Final

# The most of a peer's text that goes into one message.
MESSAGE_LIMIT: Final = 500

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def clean(text: str) -> str:
    """Collapse control characters (terminal escapes, newlines) that a hostile peer could put into logs."""
    return _CONTROL_CHARS.sub(" ", text).strip()
