"""create_app(settings): wiring only. Start-up and shut-down live in cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.api import filings, health, keys, middlewares, openapi, receipts, seals, signing
from gateway.api.context import SERVICES, SETTINGS
from gateway.hsm import Hsm
from gateway.services import Services, close_services, open_services
from gateway.settings import Settings

log = logging.getLogger(__name__)

ROUTE_TABLES = (health.routes, openapi.routes, keys.routes, seals.routes, signing.routes,
                filings.routes, receipts.routes)


def create_app(
    settings: Settings, *, hsm: Hsm | None = None, extra_plugins: tuple[object, ...] = ()
) -> web.Application:
    # JSON bodies go through request.read(); documents are streamed with their own limit.
    app = web.Application(
        middlewares=middlewares.ALL, client_max_size=settings.server.max_body_bytes
    )
    app[SETTINGS] = settings

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        services = await open_services(settings, hsm=hsm, extra_plugins=extra_plugins)
        app[SERVICES] = services
        poller = asyncio.create_task(_poll_filings(services))
        yield
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        await close_services(services)

    app.cleanup_ctx.append(lifecycle)
    for table in ROUTE_TABLES:
        app.add_routes(table)
    return app


async def _poll_filings(services: Services) -> None:
    """Hand pending filings to remote authorities and collect their decisions."""
    interval = services.settings.filing.poll_interval_seconds
    while True:
        await asyncio.sleep(interval)
        try:
            await services.filings.process_pending()
        except Exception:  # the poller must outlive any one failure (storage down, ...)
            log.exception("filing poller failed; retrying in %.1f s", interval)
