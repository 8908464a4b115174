"""Strings that decoded JSON may hold but nothing downstream can store: lone UTF-16 surrogates.

Python's ``json`` (and aiohttp's ``request.json()``) accepts ``"\\ud800"`` and gives a ``str`` no UTF-8 encoder
takes; the value was accepted, then failed when a spec was measured or an event encoded: an HTTP 500, a CLI
traceback, a NATS request never answered. Checked once where input enters, naming where the bad string is.
"""

from __future__ import annotations

from typing import Any


NOT_UNICODE = "not valid Unicode (a lone UTF-16 surrogate, as \\ud800, that no UTF-8 text can hold)"


def encodes(text: str) -> bool:
    """Whether ``text`` is valid Unicode (every character UTF-8 can encode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unencodable_at(value: Any, path: str = "") -> str | None:
    """The path (``a.b[2]``, or ``body`` for the top) of the first string or key that is not valid Unicode (a lone
    surrogate), or None."""
    if isinstance(value, str):
        return None if encodes(value) else (path or "body")
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and not encodes(key):  # the key itself, escaped
                return where
            found = unencodable_at(item, where)
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = unencodable_at(item, f"{path}[{i}]")
            if found:
                return found
    return None


def unencodable_reason(value: Any) -> str | None:
    """``"<path>: not valid Unicode (a lone surrogate such as \\ud800)"``, or None if every string encodes."""
    where = unencodable_at(value)
    if where is None:
        return None
    return f"{where.encode('utf-8', 'backslashreplace').decode()}: {NOT_UNICODE}"
