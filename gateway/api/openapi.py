"""GET /openapi.json: the OpenAPI 3.1 document, built from the routes the app really serves.

Paths, methods, roles and summaries come from the route table and the handlers themselves
(their role marks and docstrings); query parameters, bodies, answers and errors come from each
handler's ``@documented`` mark (:mod:`gateway.api.spec`), so the document cannot drift from
the code. The tests compare it with the HTTP contract in API.md, and check every answer the
API tests receive against it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.api.bodies import json_response
from gateway.api.context import OPEN_WHEN_ATTR, ROLES_ATTR, SETTINGS, roles
from gateway.api.idempotency import HEADER, IDEMPOTENT_ROUTES, KEY_FORMAT, REPLAYED_HEADER
from gateway.api.problems import PROBLEM, PROBLEM_CONTENT_TYPE
from gateway.api.spec import (
    Answer,
    Component,
    ErrorForm,
    Query,
    Spec,
    documented,
    json_answer,
    spec_of,
)

routes = web.RouteTableDef()

VERSION = "1.0.0"
_PATTERN = re.compile(r"\{(\w+):[^}]*\}")
_PARAMETER = re.compile(r"\{(\w+)\}")

PROBLEMS = ErrorForm(PROBLEM_CONTENT_TYPE, PROBLEM)
ERROR_DESCRIPTIONS = {
    400: "The body is not readable (not JSON, say)",
    401: "No token, or one that is unknown or revoked",
    403: "The token's role or grants do not allow this",
    404: "Nothing with that id (or nothing this client may see)",
    408: "The body stopped arriving",
    409: "The thing is not in a state that allows this, or the Idempotency-Key was used "
         "with another body",
    413: "The body is larger than the limit",
    415: "The body's media type is not one this endpoint takes",
    422: "A field or parameter is invalid; errors names it",
    429: "Too many requests or failed authentications; Retry-After says when to retry",
    500: "The gateway failed; quote the request id",
    503: "The HSM, the storage or the gateway's capacity is unavailable; see Retry-After",
}
# Every operation may meet an outage or a failure; one with a token, authentication and its
# limit; one with a body, the reading of it; one keyed by Idempotency-Key, a reused key.
_EVERY = (500, 503)
_WITH_TOKEN = (401, 403, 429)
_WITH_BODY = (400, 408, 413, 415)
_WITH_KEY = (409, 422)


def openapi_path(template: str) -> str:
    """aiohttp's ``{number:[A-Z0-9-]+}.pdf`` is OpenAPI's ``{number}.pdf``."""
    return _PATTERN.sub(r"{\1}", template)


def build_document(app: web.Application) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, Any] = {}
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS", "*") or route.resource is None:
            continue
        path = openapi_path(route.resource.canonical)
        operation = _operation(route, path, app)
        paths.setdefault(path, {})[route.method.lower()] = _referenced(operation, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "SealGate", "version": VERSION,
                 "description": "Document-signing gateway for organisations' electronic "
                                "seals; keys never leave the HSM."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": dict(sorted(components.items())),
        },
    }


def _referenced(value: Any, components: dict[str, Any]) -> Any:
    """``value`` with every Component replaced by its ``$ref``, collected in ``components``."""
    if isinstance(value, Component):
        if value.name not in components:
            components[value.name] = None  # a schema that refers to itself stops here
            components[value.name] = _referenced(value.schema, components)
        return {"$ref": f"#/components/schemas/{value.name}"}
    if isinstance(value, Mapping):
        return {key: _referenced(item, components) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_referenced(item, components) for item in value]
    return value


def _operation(route: web.AbstractRoute, path: str, app: web.Application) -> dict[str, Any]:
    handler = route.handler
    doc = (getattr(handler, "__doc__", None) or "").strip()
    allowed: tuple[str, ...] | None = getattr(handler, ROLES_ATTR, None)
    open_when = getattr(handler, OPEN_WHEN_ATTR, None)
    if open_when is not None and open_when(app[SETTINGS]):
        allowed = None  # open to anyone with these settings (the TSA, say)
    spec = spec_of(handler) or Spec((Answer(200, "Success"),))
    keyed = (route.method, route.resource.canonical if route.resource else "") in IDEMPOTENT_ROUTES
    operation: dict[str, Any] = {
        "operationId": getattr(handler, "__name__", "operation"),
        "summary": doc.splitlines()[0] if doc else getattr(handler, "__name__", ""),
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAMETER.findall(path)
        ] + [_query(q) for q in spec.query],
    }
    if spec.body is not None:
        operation["requestBody"] = {
            "required": spec.body_required,
            "content": {media: {"schema": schema} for media, schema in spec.body.items()},
        }
    operation["responses"] = _responses(spec, bool(allowed), keyed, bool(_PARAMETER.search(path)))
    if keyed:
        operation["parameters"].append({
            "name": HEADER, "in": "header", "required": False,
            "schema": {"type": "string", "pattern": KEY_FORMAT.pattern},
            "description": "A retry with the same key and body returns the same answer; "
                           "the same key with another body is 409. A keyed body is held in "
                           "memory, so it may have at most [idempotency] max_body_bytes "
                           "(413 otherwise; without the key, a large document is streamed).",
        })
    if allowed:
        operation["security"] = [{"bearer": []}]
        operation["x-roles"] = [*allowed, "admin"]
    return operation


def _query(query: Query) -> dict[str, Any]:
    parameter: dict[str, Any] = {"name": query.name, "in": "query", "required": False,
                                 "schema": query.schema}
    if query.description:
        parameter["description"] = query.description
    if query.empty_is_absent:
        parameter["allowEmptyValue"] = True
    return parameter


def _responses(spec: Spec, with_token: bool, keyed: bool, with_id: bool) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    replayed = {REPLAYED_HEADER: "true when this is the answer stored under the key, replayed"}
    for answer in spec.answers:
        headers = {**answer.headers, **(replayed if keyed else {})}
        responses[str(answer.status)] = _answer(answer.description, answer.content, headers)
    # Clients written against the first document read success from the 2XX range.
    responses["2XX"] = _answer("Success: the answers above say what each status carries",
                               {}, replayed if keyed else {})
    form = spec.error_form or PROBLEMS
    statuses = {*spec.errors, *_EVERY, *(_WITH_TOKEN if with_token else ()),
                *(_WITH_BODY if spec.body is not None else ()), *(_WITH_KEY if keyed else ()),
                *((404,) if with_id else ())}
    for status in sorted({form.status_of(s) for s in statuses} - {a.status for a in spec.answers}):
        description = form.descriptions.get(status) or ERROR_DESCRIPTIONS.get(status, "An error")
        responses[str(status)] = _answer(description, {form.media_type: form.schema},
                                         _error_headers(status))
    return responses


def _error_headers(status: int) -> dict[str, str]:
    if status in (429, 503):
        return {"Retry-After": "Seconds to wait before retrying"}
    if status == 401:
        return {"WWW-Authenticate": "The Bearer challenge (RFC 6750)"}
    return {}


def _answer(description: str, content: Mapping[str, Any], headers: Mapping[str, str]
            ) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if content:
        answer["content"] = {media: {"schema": schema} for media, schema in content.items()}
    if headers:
        answer["headers"] = {name: {"description": what, "schema": {"type": "string"}}
                             for name, what in headers.items()}
    return answer


@routes.get("/openapi.json")
@roles()
@documented(json_answer(200, "The OpenAPI 3.1 document", {"type": "object",
                                                          "required": ["openapi", "paths"]}))
async def openapi_document(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of this API."""
    return json_response(build_document(request.app))

