"""Middlewares, outermost first: requests in flight (drain.py), request id, metrics,
problem+json, authentication.

The per-client rate limit (limits.py) and Idempotency-Key replay (idempotency.py) follow
authentication in ``ALL``, because both are keyed by the authenticated client.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
import uuid

from aiohttp import web

from gateway import metrics
from gateway.api import problems
from gateway.api.bodies import ClientClosed
from gateway.api.body_budget import body_budget_middleware
from gateway.api.context import (
    CLIENT,
    OPEN_WHEN_ATTR,
    REQUEST_ID,
    ROLES_ATTR,
    SETTINGS,
    Handler,
    services,
)
from gateway.api.drain import in_flight_middleware
from gateway.api.idempotency import idempotency_middleware
from gateway.api.limits import rate_limit_middleware
from gateway.api.remote import client_address
from gateway.errors import (
    Conflict,
    Forbidden,
    SealGateError,
    StorageUnavailable,
    TooManyRequests,
    Unauthorized,
)
from gateway.storage import BackendUnavailable, StaleWrite

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


# Methods that name themselves in the metrics; any other is "other": a client may send any
# token as a method (aiohttp's pure-Python parser passes them on), and each would be a series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# What nginx logs for a request whose client closed the connection before the answer.
CLIENT_CLOSED_STATUS = 499


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
    except asyncio.CancelledError:
        # The client left before its answer and aiohttp cancelled the handler: not a server
        # error for the error-ratio alert.
        status = CLIENT_CLOSED_STATUS
        raise
    finally:
        method = request.method if request.method in KNOWN_METHODS else "other"
        metrics.HTTP_REQUESTS.labels(route, method, str(status)).inc()
        metrics.HTTP_REQUEST_SECONDS.labels(route, method).observe(
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
    except StaleWrite:
        # Another request changed the same record between this one's read and its write
        # (two reviewers deciding one filing at once): nothing of this one was written.
        return problems.from_error(Conflict(
            "another request changed it meanwhile; read it again and retry"), rid)
    except BackendUnavailable as exc:
        # The one place a storage outage becomes an answer: every handler and service below
        # lets BackendUnavailable rise, and the client gets a 503 it can retry, not a 500.
        metrics.STORAGE_UNAVAILABLE.inc()
        log.warning("request %s: storage unavailable: %s", rid, exc)
        return problems.from_error(
            StorageUnavailable("the storage backend cannot be reached; retry shortly"), rid)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problems.from_http_exception(exc, rid)
    except ClientClosed as exc:
        # An answer nobody reads (aiohttp would log the exception as its own error).
        log.info("request %s: %s", rid, exc)
        return web.Response(status=CLIENT_CLOSED_STATUS)
    except Exception:
        log.exception("request %s: unexpected error", rid)
        return problems.internal_error(rid)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place roles are checked: the route's handler carries its allowed roles."""
    allowed = getattr(request.match_info.handler, ROLES_ATTR, None)
    open_when = getattr(request.match_info.handler, OPEN_WHEN_ATTR, None)
    if allowed is None or allowed == () or (open_when and open_when(request.app[SETTINGS])):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        metrics.AUTH_FAILURES.labels("missing").inc()
        raise Unauthorized("send 'Authorization: Bearer <token>'")
    found = await services(request).clients.authenticate(token.strip())
    if found is None:
        raise await _failed_authentication(request)
    if not found.has_role(*allowed):
        raise Forbidden(f"role '{found.role}' may not do this; needs one of: {', '.join(allowed)}")
    request[CLIENT] = found
    return await handler(request)


async def _failed_authentication(request: web.Request) -> SealGateError:
    """Audit a refused token (never the token itself), within a limit per client address
    (api/remote.py: the peer, or the client named by a trusted proxy).

    Each failure takes one token from the address's bucket in storage, shared by every
    worker; an empty bucket turns the answer into 429 and stops auditing each attempt, so a
    flood of bad tokens can neither fill the audit log nor burn storage writes. Only failures
    count: a valid token still works from a limited address, because tokens have 256 bits
    (nothing to guess) and a client behind the same NAT address must not be locked out.
    """
    svc = services(request)
    limits = request.app[SETTINGS].auth
    remote = client_address(request)
    _, wait = await svc.storage.take_tokens(
        f"auth-failures/{failure_bucket(remote)}", rate=limits.failures_per_minute / 60,
        burst=limits.failure_burst, now=time.time())
    if wait > 0:
        metrics.AUTH_FAILURES.labels("rate_limited").inc()
        # One event per limited stretch, so the audit shows the flood without holding it.
        if await svc.storage.put_expiring(f"auth-limited/{remote}", {}, wait):
            await svc.audit.append("anonymous", "auth.rate_limited", request.path,
                                   {"remote": remote})
        return TooManyRequests("too many failed authentications from this address", wait)
    metrics.AUTH_FAILURES.labels("invalid").inc()
    await svc.audit.append("anonymous", "auth.failed", request.path,
                           {"remote": remote, "reason": "unknown or revoked token"})
    return Unauthorized("the token is unknown or revoked", token_sent=True)


def failure_bucket(remote: str) -> str:
    """Whose failures count together: one IPv4 address, or one IPv6 /64 (a single host is
    commonly given a whole /64, and could otherwise take a new address for every try)."""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


ALL = [in_flight_middleware, request_id_middleware, metrics_middleware, problem_middleware,
       body_budget_middleware, auth_middleware, rate_limit_middleware, idempotency_middleware]
