"""Middlewares, outermost first: request id, metrics, problem+json, authentication."""

from __future__ import annotations

import logging
import re
import time
import uuid

from aiohttp import web

from gateway import metrics
from gateway.api import problems
from gateway.api.context import CLIENT, REQUEST_ID, ROLES_ATTR, Handler, services
from gateway.errors import Forbidden, SealGateError, Unauthorized

log = logging.getLogger("gateway.api")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every response carries X-Request-Id; a caller's well-formed id is kept for tracing."""
    incoming = request.headers.get("X-Request-Id", "")
    rid = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = rid
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers["X-Request-Id"] = rid
        raise
    response.headers["X-Request-Id"] = rid
    return response


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts and times every request by route template (not raw path: bounded labels)."""
    route = _route_template(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics.HTTP_REQUESTS.labels(route, request.method, str(status)).inc()
        metrics.HTTP_REQUEST_SECONDS.labels(route, request.method).observe(
            time.perf_counter() - started
        )


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turns every error into problem+json; unexpected ones are logged, never shown."""
    rid = str(request.get(REQUEST_ID, "-"))
    try:
        return await handler(request)
    except SealGateError as exc:
        if exc.status >= 500:
            log.warning("request %s failed: %s (%s)", rid, exc.type_slug,
                        type(exc.__cause__).__name__ if exc.__cause__ else "-")
        return problems.from_error(exc, rid)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problems.from_http_exception(exc, rid)
    except Exception:
        log.exception("request %s: unexpected error", rid)
        return problems.internal_error(rid)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place roles are checked: the route's handler carries its allowed roles."""
    allowed = getattr(request.match_info.handler, ROLES_ATTR, None)
    if allowed is None or allowed == ():
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        metrics.AUTH_FAILURES.labels("missing").inc()
        raise Unauthorized("send 'Authorization: Bearer <token>'")
    found = await services(request).clients.authenticate(token.strip())
    if found is None:
        metrics.AUTH_FAILURES.labels("invalid").inc()
        await services(request).audit.append(
            "anonymous", "auth.failed", request.path,
            {"remote": request.remote or "", "reason": "unknown or revoked token"},
        )
        raise Unauthorized("the token is unknown or revoked")
    if not found.has_role(*allowed):
        raise Forbidden(f"role '{found.role}' may not do this; needs one of: {', '.join(allowed)}")
    request[CLIENT] = found
    return await handler(request)


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


ALL = [request_id_middleware, metrics_middleware, problem_middleware, auth_middleware]
