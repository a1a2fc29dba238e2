"""create_app(settings): wiring only. Start-up and shut-down live in cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

from aiohttp import web

from gateway import metrics
from gateway.api import (
    approvals,
    audit,
    csc,
    detached_signing,
    filings,
    health,
    keys,
    middlewares,
    openapi,
    pki,
    receipts,
    seals,
    signing,
    tsa,
    verify,
)
from gateway.api.body_budget import BODY_BUDGET, BodyBudget
from gateway.api.context import SERVICES, SETTINGS
from gateway.api.drain import IN_FLIGHT, InFlight
from gateway.api.limits import BUCKETS, LeasedBuckets
from gateway.api.remote import trusted_networks
from gateway.clock import parse, utcnow
from gateway.errors import SealGateError
from gateway.filing.authority_calls import ADAPTER_TIMEOUT_SECONDS
from gateway.filing.states import EXPIRED
from gateway.hsm import Hsm
from gateway.keys.registry import KEY
from gateway.seals.policy import effective_status
from gateway.seals.registry import SEAL
from gateway.services import Services, close_services, open_services
from gateway.settings import Settings
from gateway.storage import BackendUnavailable, hold_lease

log = logging.getLogger(__name__)

ROUTE_TABLES = (health.routes, openapi.routes, keys.routes, seals.routes, signing.routes,
                filings.routes, receipts.routes, approvals.routes, audit.routes,
                detached_signing.routes, csc.routes, tsa.routes, verify.routes, pki.routes)


def create_app(
    settings: Settings, *, hsm: Hsm | None = None, extra_plugins: tuple[object, ...] = ()
) -> web.Application:
    trusted_networks(settings.server.trusted_proxies)  # a wrong entry stops the start here
    # JSON bodies go through request.read(); documents are streamed with their own limit.
    app = web.Application(
        middlewares=csc.with_csc_errors(middlewares.ALL),
        client_max_size=settings.server.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[BUCKETS] = LeasedBuckets(settings.limits)
    app[IN_FLIGHT] = InFlight()
    app[BODY_BUDGET] = BodyBudget(settings.server.body_memory_budget,
                                  settings.server.spool_budget)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        services = await open_services(settings, hsm=hsm, extra_plugins=extra_plugins)
        app[SERVICES] = services
        poller = asyncio.create_task(_poll_filings(services))
        watcher = asyncio.create_task(_watch(services))
        yield
        for task in (poller, watcher):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await close_services(services)

    app.cleanup_ctx.append(lifecycle)
    for table in ROUTE_TABLES:
        app.add_routes(table)
    return app


POLLER_LEASE = "lease:filing-poller"


async def _poll_filings(services: Services) -> None:
    """Hand pending filings to remote authorities and collect their decisions.

    Every worker of every instance runs this loop, but only the holder of the poller lease
    polls, so that N workers do not ask the authorities N times; when the holder dies, the
    lease lapses (after one authority call's time) and another worker takes over.
    """
    interval = services.settings.filing.poll_interval_seconds
    holder = uuid.uuid4().hex
    # Renewed before each filing, and longer than one authority call may take: a pass
    # outlasting its lease let a second worker poll the same filings at the same time.
    lease_seconds = max(3 * interval, ADAPTER_TIMEOUT_SECONDS + interval)

    async def still_ours() -> bool:
        return await hold_lease(services.storage, POLLER_LEASE, holder, lease_seconds)
    try:
        if encrypted := await services.filings.encrypt_stored_materials():
            log.info("encrypted %d filing material(s) stored before encryption", encrypted)
    except Exception:  # e.g. storage or HSM down at start: the next start tries again
        log.exception("filing materials stored before encryption are still plain")
    while True:
        await asyncio.sleep(interval)
        try:
            if await still_ours():
                await services.filings.process_pending(still_ours)
        except Exception:  # the poller must outlive any one failure (storage down, ...)
            log.exception("filing poller failed; retrying in %.1f s", interval)


async def _watch(services: Services) -> None:
    """Probe storage and the HSM and publish every active seal's validity end, at start and
    then every ``metrics.refresh_seconds``: the up-gauges stay true between requests, and a
    seal renewed or cancelled through any instance shows within one period."""
    interval = services.settings.metrics.refresh_seconds
    while True:
        try:
            await services.storage.ping()
        except Exception as exc:  # whatever the probe meets, storage is not serving
            metrics.STORAGE_UP.set(0)
            if not isinstance(exc, BackendUnavailable):
                log.exception("storage probe failed; retrying in %.1f s", interval)
        else:
            metrics.STORAGE_UP.set(1)
            try:
                await _publish_seal_validity(services)
            except Exception:  # the watcher must outlive any one failure
                log.exception("metrics refresh failed; retrying in %.1f s", interval)
        with contextlib.suppress(SealGateError):
            await services.hsm.check()  # sets sealgate_hsm_up either way
        await asyncio.sleep(interval)


async def _publish_seal_validity(services: Services) -> None:
    """Active seals, and expired ones (still active in storage): the expiry alerts need
    both, the one before the end and the one after it. A seal signs until its filing's end
    or its certificate's, whichever comes first: a certificate that ends sooner stops the
    seal as surely, and the same alerts must see it coming."""
    now = utcnow()
    certificate_ends = {
        record.key: parse((record.data.get("certificate") or {}).get("not_after"))
        for record in await services.storage.list(KEY, limit=1_000_000)
    }
    in_force: dict[tuple[str, str], float] = {}
    for record in await services.storage.list(SEAL, limit=1_000_000):
        valid_to = parse(record.data.get("valid_to"))
        if valid_to is None or effective_status(record.data, now) not in ("active", EXPIRED):
            continue
        certificate_end = certificate_ends.get(str(record.data.get("key_id")))
        if certificate_end is not None:
            valid_to = min(valid_to, certificate_end)
        in_force[(record.key, str(record.data.get("name", "")))] = valid_to.timestamp()
    metrics.publish_seal_validity(in_force)
