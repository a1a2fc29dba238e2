"""Reading request bodies within the configured size limit, and JSON bodies with clear errors."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.api.context import SETTINGS
from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed

CHUNK = 256 * 1024


def body_limit(request: web.Request) -> int:
    return request.app[SETTINGS].server.max_body_bytes


def check_declared_size(request: web.Request, limit: int | None = None) -> int:
    """413 from the Content-Length header alone, before a byte of the body is read."""
    limit = body_limit(request) if limit is None else limit
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"the body has {request.content_length} bytes; the limit is {limit} bytes"
        )
    return limit


async def read_limited(request: web.Request, limit: int | None = None) -> bytes:
    """The whole body, refusing (413) as soon as it passes the limit, even when chunked."""
    limit = check_declared_size(request, limit)
    parts: list[bytes] = []
    size = 0
    while chunk := await request.content.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def media_type(request: web.Request) -> str:
    return request.content_type.lower() if request.headers.get("Content-Type") else ""


async def json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object: 415 for another media type, 400 for broken JSON."""
    if media_type(request) not in ("application/json", ""):
        raise UnsupportedMediaType(f"send application/json, not {request.content_type}")
    raw = await read_limited(request)
    try:
        value = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValidationFailed.one("body", "must be a JSON object")
    return value


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data, ensure_ascii=False),
        content_type="application/json", charset="utf-8",
    )
