"""GET /openapi.json: the OpenAPI 3.1 document, built from the routes the app really serves.

Paths, methods, roles and summaries come from the route table and the handlers themselves
(their role marks and docstrings), so the document cannot drift from the code; the tests
compare it with the HTTP contract in API.md.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from gateway.api.bodies import json_response
from gateway.api.context import OPEN_WHEN_ATTR, ROLES_ATTR, SETTINGS, roles
from gateway.api.idempotency import HEADER, IDEMPOTENT_ROUTES, KEY_FORMAT, REPLAYED_HEADER

routes = web.RouteTableDef()

VERSION = "1.0.0"
_PATTERN = re.compile(r"\{(\w+):[^}]*\}")
_PARAMETER = re.compile(r"\{(\w+)\}")

PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "request_id"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {"type": "array", "items": {
            "type": "object", "properties": {"field": {"type": "string"},
                                             "message": {"type": "string"}}}},
    },
}


def openapi_path(template: str) -> str:
    """aiohttp's ``{number:[A-Z0-9-]+}.pdf`` is OpenAPI's ``{number}.pdf``."""
    return _PATTERN.sub(r"{\1}", template)


def build_document(app: web.Application) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS", "*") or route.resource is None:
            continue
        path = openapi_path(route.resource.canonical)
        paths.setdefault(path, {})[route.method.lower()] = _operation(route, path, app)
    return {
        "openapi": "3.1.0",
        "info": {"title": "SealGate", "version": VERSION,
                 "description": "Document-signing gateway for organisations' electronic "
                                "seals; keys never leave the HSM."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Problem": PROBLEM},
        },
    }


def _operation(route: web.AbstractRoute, path: str, app: web.Application) -> dict[str, Any]:
    handler = route.handler
    doc = (getattr(handler, "__doc__", None) or "").strip()
    allowed: tuple[str, ...] | None = getattr(handler, ROLES_ATTR, None)
    open_when = getattr(handler, OPEN_WHEN_ATTR, None)
    if open_when is not None and open_when(app[SETTINGS]):
        allowed = None  # open to anyone with these settings (the TSA, say)
    operation: dict[str, Any] = {
        "operationId": getattr(handler, "__name__", "operation"),
        "summary": doc.splitlines()[0] if doc else getattr(handler, "__name__", ""),
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAMETER.findall(path)
        ],
        "responses": {
            "default": {"description": "An error (RFC 9457)", "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            }},
        },
    }
    operation["responses"]["2XX"] = {"description": "Success"}
    if (route.method, route.resource.canonical if route.resource else "") in IDEMPOTENT_ROUTES:
        operation["parameters"].append({
            "name": HEADER, "in": "header", "required": False,
            "schema": {"type": "string", "pattern": KEY_FORMAT.pattern},
            "description": "A retry with the same key and body returns the same answer; "
                           "the same key with another body is 409. A keyed body is held in "
                           "memory, so it may have at most [idempotency] max_body_bytes "
                           "(413 otherwise; without the key, a large document is streamed).",
        })
        operation["responses"]["2XX"]["headers"] = {REPLAYED_HEADER: {
            "description": "true when this is the answer stored under the key, replayed",
            "schema": {"type": "string", "enum": ["true"]},
        }}
    if allowed:
        operation["security"] = [{"bearer": []}]
        operation["x-roles"] = [*allowed, "admin"]
    return operation


@routes.get("/openapi.json")
@roles()
async def openapi_document(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of this API."""
    return json_response(build_document(request.app))
