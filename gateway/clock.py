"""Time as the gateway writes it: timezone-aware UTC, RFC 3339 with a trailing Z."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def isoformat(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse(value: object) -> dt.datetime | None:
    """Parse what :func:`isoformat` wrote; None for an empty value."""
    if not value:
        return None
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
