"""Audit endpoints for auditors: the event log filtered, and verification of the whole chain."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.api.bodies import json_response
from gateway.api.context import roles, services
from gateway.api.spec import (
    ANY_OBJECT,
    BOOLEAN,
    INTEGER,
    TEXT,
    TIME,
    Query,
    array,
    documented,
    json_answer,
    nullable,
    obj,
)
from gateway.clock import parse as parse_time
from gateway.errors import ValidationFailed
from gateway.storage import Storage

routes = web.RouteTableDef()

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_PAGE = 1000
_LAST_SEQ = 2**62

EVENT = obj({"seq": INTEGER, "time": TIME, "actor": TEXT, "action": TEXT, "target": TEXT,
             "details": nullable(ANY_OBJECT), "prev_hash": TEXT, "hash": TEXT})
EVENT_QUERY = (
    Query("since", TIME, "events at or after this RFC 3339 time (with a zone)"),
    Query("until", TIME, "events before this time"),
    Query("seal", TEXT, "a seal's id: its events and those naming it"),
    Query("action", TEXT, "an action, or a prefix ending in *"),
    Query("after", {**INTEGER, "minimum": 0, "maximum": _LAST_SEQ},
          "a seq: the next_after of the previous page"),
    Query("limit", {**INTEGER, "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}),
)


@dataclasses.dataclass(frozen=True)
class EventFilter:
    """What ``GET /v1/audit`` asks for; ``action`` ending in ``*`` matches a prefix."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    seal: str | None = None
    action: str | None = None
    after: int = 0
    limit: int = DEFAULT_LIMIT

    def matches(self, event: Mapping[str, Any]) -> bool:
        if self.action is not None and not (
            event["action"].startswith(self.action[:-1]) if self.action.endswith("*")
            else event["action"] == self.action
        ):
            return False
        if self.seal is not None and not _about_seal(event, self.seal):
            return False
        if self.since is None and self.until is None:
            return True
        time = parse_time(event["time"])
        assert time is not None
        return (self.since is None or time >= self.since) and (
            self.until is None or time < self.until)


@routes.get("/v1/audit")
@roles("auditor")
@documented(json_answer(200, "Events, oldest first", obj({
    "events": array(EVENT), "next_after": nullable(INTEGER)})), query=EVENT_QUERY, errors=[422])
async def list_events(request: web.Request) -> web.Response:
    """Audit events, oldest first; ``since``/``until`` (RFC 3339), ``seal``, ``action``, ``limit``.

    ``after`` (a seq) pages on: the answer's ``next_after`` is the value for the next page.
    """
    wanted = event_filter(request.query)
    events = await find_events(services(request).storage, wanted)
    more = len(events) == wanted.limit
    return json_response({"events": events, "next_after": events[-1]["seq"] if more else None})


@routes.get("/v1/audit/verify")
@roles("auditor")
@documented(json_answer(200, "Whether the chain is intact", obj({
    "intact": BOOLEAN, "events": INTEGER, "checkpoints": INTEGER,
    "first_bad_seq": nullable(INTEGER), "problem": nullable(TEXT)}, optional=["problem"])))
async def verify_chain(request: web.Request) -> web.Response:
    """Check every event and checkpoint; name the first bad seq when the chain is broken."""
    result = await services(request).audit.verify()
    return json_response(dataclasses.asdict(result))


async def find_events(storage: Storage, wanted: EventFilter) -> list[dict[str, Any]]:
    """Matching events in seq order, at most ``wanted.limit``.

    Event times are taken just before each commit, so across worker processes they are not
    strictly ordered by seq; the scan therefore never stops early on time, only on the limit.
    """
    found: list[dict[str, Any]] = []
    since_seq = wanted.after
    while len(found) < wanted.limit:
        batch = await storage.events(since_seq=since_seq, limit=_PAGE)
        for event in batch:
            if wanted.matches(event):
                found.append(event)
                if len(found) == wanted.limit:
                    break
        if len(batch) < _PAGE:
            break
        since_seq = batch[-1]["seq"]
    return found


def _about_seal(event: Mapping[str, Any], seal_id: str) -> bool:
    """The seal's own events, and those that name it in their details: a signature's, a
    filing's, and a dual-control request's (a grant of the seal, a client created with it)."""
    if event["target"] == f"seal/{seal_id}":
        return True
    details = event.get("details") or {}
    params = details.get("params") or {}
    return (details.get("seal_id") == seal_id or params.get("seal_id") == seal_id
            or seal_id in (params.get("seals") or ()))


def event_filter(query: Mapping[str, str]) -> EventFilter:
    """The query parameters, each checked with a 422 naming it."""
    return EventFilter(
        since=_time(query, "since"),
        until=_time(query, "until"),
        seal=query.get("seal") or None,
        action=query.get("action") or None,
        after=_whole(query, "after", 0, 0, _LAST_SEQ),
        limit=_whole(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
    )


def _time(query: Mapping[str, str], name: str) -> dt.datetime | None:
    raw = query.get(name, "")
    if not raw:
        return None
    try:
        value = parse_time(raw)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise ValidationFailed.one(name, "must be an RFC 3339 time with a zone, "
                                         "e.g. 2025-01-31T08:00:00Z")
    return value


def _whole(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ValidationFailed.one(name, f"must be a whole number from {low} to {high}")
    return value
