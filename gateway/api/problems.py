"""Errors leave as application/problem+json (RFC 9457), 4xx precise, 5xx saying nothing internal."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.api.spec import INTEGER, TEXT, Component, array, obj
from gateway.errors import (
    SealGateError,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_BASE = "https://sealgate.dev/problems/"

PROBLEM = Component("Problem", {
    **obj({"type": {"type": "string", "format": "uri"}, "title": TEXT, "status": INTEGER,
           "detail": TEXT, "request_id": TEXT,
           "errors": array(obj({"field": TEXT, "message": TEXT}))},
          optional=["errors"]),
    "description": "An error (RFC 9457); validation errors name each field in errors.",
})

# aiohttp's own HTTP errors (no route, wrong method, body too large for client_max_size).
_HTTP_SLUGS = {
    404: "not-found", 405: "method-not-allowed", 413: "payload-too-large",
    415: "unsupported-media-type", 400: "bad-request",
}


def problem_response(
    status: int, slug: str, title: str, detail: str, request_id: str, **extra: Any
) -> web.Response:
    body = {"type": TYPE_BASE + slug, "title": title, "status": status, "detail": detail,
            "request_id": request_id, **extra}
    return web.Response(
        status=status, text=json.dumps(body, ensure_ascii=False),
        content_type=PROBLEM_CONTENT_TYPE, charset="utf-8",
    )


def from_error(error: SealGateError, request_id: str) -> web.Response:
    extra: dict[str, Any] = {}
    if isinstance(error, ValidationFailed):
        extra["errors"] = [{"field": e.field, "message": e.message} for e in error.errors]
    response = problem_response(error.status, error.type_slug, error.title, error.detail,
                                request_id, **extra)
    if isinstance(error, TooManyRequests | ServiceUnavailable):
        response.headers["Retry-After"] = str(max(1, round(error.retry_after)))
    if isinstance(error, Unauthorized):
        response.headers["WWW-Authenticate"] = error.challenge
    return response


def from_http_exception(exc: web.HTTPException, request_id: str) -> web.Response:
    slug = _HTTP_SLUGS.get(exc.status, "http-error")
    detail = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
    response = problem_response(exc.status, slug, exc.reason, detail, request_id)
    if exc.status == 405 and "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


def internal_error(request_id: str) -> web.Response:
    return problem_response(500, "internal-error", "Internal error",
                            "The gateway failed to process the request; quote the request id.",
                            request_id)
