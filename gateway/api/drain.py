"""A graceful stop: the requests in flight finish before the worker closes its connections.

aiohttp's own shutdown marks every connection closed first, and from then on drops the bytes
that still arrive, so a request whose body was uploading when SIGTERM came waited out the
whole shutdown timeout and was cut. The worker therefore waits here first, up to that
timeout, until no request is in flight; meanwhile answers close their keep-alive connection,
so that clients take new requests elsewhere.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.api.context import Handler


class InFlight:
    """How many requests of this worker are between their headers and their answer."""

    def __init__(self) -> None:
        self.count = 0
        self.stopping = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def drained(self) -> None:
        """Stop keeping connections alive and wait until no request is in flight (the
        caller bounds the wait)."""
        self.stopping = True
        await self._idle.wait()


IN_FLIGHT = web.AppKey("in_flight", InFlight)


@web.middleware
async def in_flight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    tracker = request.app[IN_FLIGHT]
    tracker.enter()
    try:
        response = await handler(request)
        if tracker.stopping:
            response.force_close()
        return response
    finally:
        tracker.leave()
