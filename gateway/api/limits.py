"""The per-client rate limit: one token bucket per API client in the storage backend.

The bucket lives in storage (``Storage.take_token``), not in the worker, so that every worker
and every instance on one Redis draws from the same bucket: a client cannot multiply its
rate by spreading requests over processes. It runs after authentication, keyed by the client
id; requests without a client (health, metrics, verification) are not limited here.
"""

from __future__ import annotations

import math
import time

from aiohttp import web

from gateway import metrics
from gateway.api.context import CLIENT, SETTINGS, Handler, services
from gateway.errors import TooManyRequests


def bucket_name(client_id: str) -> str:
    """The storage bucket of one client (shared by every instance)."""
    return f"rate:client:{client_id}"


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """429 with Retry-After when the authenticated client has used up its bucket."""
    caller = request.get(CLIENT)
    limits = request.app[SETTINGS].limits
    if caller is None or limits.requests_per_second <= 0:
        return await handler(request)
    # Wall-clock time, not a monotonic clock: the bucket's last refill time is shared by
    # processes and machines, and only wall clocks agree between them.
    wait = await services(request).storage.take_token(
        bucket_name(caller.id), rate=limits.requests_per_second, burst=limits.burst,
        now=time.time(),
    )
    if wait > 0:
        metrics.RATE_LIMITED.inc()
        raise TooManyRequests(
            f"client '{caller.name}' may send {limits.requests_per_second:g} requests per "
            f"second in bursts of up to {limits.burst}; retry in {wait:.1f} s",
            # Whole seconds, rounded up: a client that waits what it was told succeeds.
            retry_after=math.ceil(wait),
        )
    return await handler(request)
