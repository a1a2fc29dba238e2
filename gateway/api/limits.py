"""The per-client rate limit: one token bucket per API client in the storage backend.

The bucket lives in storage (``Storage.take_tokens``), not in the worker, so that every worker
and every instance on one Redis draws from the same bucket: a client cannot multiply its
rate by spreading requests over processes. It runs after authentication, keyed by the client
id; requests without a client (health, metrics, verification) are not limited here.

A worker takes tokens a lease at a time rather than one per request, so that at high limits
one storage write serves many requests (a write per request cost a tenth of the throughput of
one-hash signing). Tokens a worker holds are not available to the others, and it may spend
them a little after it took them, so the limit can be off by one lease per worker either way:
a lease is at most 10 ms of the rate and a tenth of the burst. At the default limit (100 per
second, bursts of 200) a lease is one token, exactly the plain bucket.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from aiohttp import web

from gateway import metrics
from gateway.api.context import CLIENT, Handler, services
from gateway.errors import TooManyRequests
from gateway.settings import LimitsSettings
from gateway.storage import Storage

LEASE_SECONDS = 0.01
MAX_LEASE = 100


def bucket_name(client_id: str) -> str:
    """The storage bucket of one client (shared by every instance)."""
    return f"rate:client:{client_id}"


def lease_size(limits: LimitsSettings) -> int:
    """How many tokens a worker takes from a client's bucket at once."""
    by_rate = int(limits.requests_per_second * LEASE_SECONDS)
    return max(1, min(MAX_LEASE, by_rate, limits.burst // 10))


class LeasedBuckets:
    """This worker's tokens from the clients' shared buckets: taken a lease at a time."""

    def __init__(
        self, limits: LimitsSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self.limits = limits
        self.lease = lease_size(limits)
        # Wall-clock time, not a monotonic clock: the bucket's last refill time is shared by
        # processes and machines, and only wall clocks agree between them.
        self._clock = clock
        self._held: dict[str, int] = {}

    async def take(self, storage: Storage, bucket: str) -> float:
        """0 when the request may go on, else the seconds until the bucket has a token."""
        held = self._held.pop(bucket, 0)
        if held:
            if held > 1:
                self._held[bucket] = held - 1
            return 0.0
        taken, wait = await storage.take_tokens(
            bucket, rate=self.limits.requests_per_second, burst=self.limits.burst,
            now=self._clock(), want=self.lease,
        )
        if taken > 1:
            # Other requests may have leased meanwhile; what they hold is kept too.
            self._held[bucket] = self._held.get(bucket, 0) + taken - 1
        return wait


BUCKETS = web.AppKey("rate_limit_buckets", LeasedBuckets)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """429 with Retry-After when the authenticated client has used up its bucket."""
    caller = request.get(CLIENT)
    buckets = request.app[BUCKETS]
    limits = buckets.limits
    if caller is None or limits.requests_per_second <= 0:
        return await handler(request)
    wait = await buckets.take(services(request).storage, bucket_name(caller.id))
    if wait > 0:
        metrics.RATE_LIMITED.inc()
        raise TooManyRequests(
            f"client '{caller.name}' may send {limits.requests_per_second:g} requests per "
            f"second in bursts of up to {limits.burst}; retry in {wait:.1f} s",
            # Whole seconds, rounded up: a client that waits what it was told succeeds.
            retry_after=math.ceil(wait),
        )
    return await handler(request)
