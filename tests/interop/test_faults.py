"""Redis stopped, paused and restarted under traffic: fast 503s, readiness, recovery without a
restart, and nothing half-applied (sealing receipt and audit event, filing decision, receipt
and seal status are all there or none of them is)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.hsm import Hsm
from gateway.pki.devca import DevCA
from gateway.settings import Settings
from tests.api.conftest import APPLICANT, LEGAL_REPRESENTATIVE, World
from tests.api.test_sign_pdf import assert_problem, sign_path
from tests.conftest import on_redis
from tests.pdf_samples import one_page_pdf
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.interop, pytest.mark.slow]

PDF = {"Content-Type": "application/pdf"}
MATERIALS = ("business_license", "legal_rep_id", "seal_impression")


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, to stop and start at will."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def world(settings: Settings, hsm: Hsm, dev_ca: DevCA, redis: RedisServer
                ) -> AsyncIterator[World]:
    """The gateway on that Redis, with a short storage timeout so that outages show fast."""
    on_it = on_redis(settings, redis.url)
    on_it = on_it.replace(storage=dataclasses.replace(on_it.storage, timeout_seconds=1.0))
    async with World.running(on_it, hsm, dev_ca) as running:
        yield running


async def wait_until_ready(world: World) -> None:
    for _ in range(100):
        if (await world.http.get("/readyz")).status == 200:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the gateway did not become ready again")


async def assert_sealings_whole(world: World) -> None:
    """Every seal.signed event has its receipt naming it, every receipt its event."""
    storage = world.services.storage
    events = await storage.events(limit=100_000)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    by_seq = {e["seq"]: e for e in events}
    signed = [e for e in events if e["action"] == "seal.signed"]
    for event in signed:
        receipt = await storage.get("sealing_receipt", event["details"]["sealing_receipt"])
        assert receipt is not None and receipt.data["audit_seq"] == event["seq"]
    for receipt in await storage.list("sealing_receipt", limit=100_000):
        event = by_seq[receipt.data["audit_seq"]]
        assert event["details"]["sealing_receipt"] == receipt.key
    assert (await world.services.audit.verify()).intact


async def test_signing_during_a_redis_outage_is_503_and_recovers_by_itself(
    world: World, redis: RedisServer
) -> None:
    """Stopped Redis: 503 storage-unavailable and readyz 503; restarted: both recover."""
    seal = await world.active_seal()
    _, headers = await world.client("signer", [seal["id"]])
    document = one_page_pdf()
    stop = asyncio.Event()
    flowing = asyncio.Event()
    statuses: list[int] = []

    async def traffic() -> None:
        for _ in range(200):
            if stop.is_set():
                return
            response = await world.http.post(sign_path(seal["id"]), data=document,
                                             headers={**headers, **PDF})
            statuses.append(response.status)
            await response.read()
            if len(statuses) >= 2:
                flowing.set()

    sender = asyncio.create_task(traffic())
    await asyncio.wait_for(flowing.wait(), 60)
    redis.stop()
    try:
        refused = await world.http.post(sign_path(seal["id"]), data=document,
                                        headers={**headers, **PDF})
        body = await assert_problem(refused, 503, "storage-unavailable")
        assert "Redis" not in body["detail"]
        assert int(refused.headers["Retry-After"]) >= 1
        ready = await world.http.get("/readyz")
        assert ready.status == 503
        assert (await ready.json())["checks"]["storage"] != "ok"
    finally:
        redis.start()
    await wait_until_ready(world)
    recovered = await world.http.post(sign_path(seal["id"]), data=document,
                                      headers={**headers, **PDF})
    assert recovered.status == 200, await recovered.text()
    stop.set()
    await sender
    assert set(statuses) <= {200, 503}, statuses
    await assert_sealings_whole(world)


async def test_a_paused_redis_fails_requests_within_the_timeout(
    world: World, redis: RedisServer
) -> None:
    """A Redis that accepts nothing any more (SIGSTOP) gives 503s, not hanging requests."""
    _, headers = await world.client("auditor")
    assert (await world.http.get("/v1/seals", headers=headers)).status == 200
    redis.pause()
    try:
        bounded = aiohttp.ClientTimeout(total=15)
        response = await world.http.get("/v1/seals", headers=headers, timeout=bounded)
        await assert_problem(response, 503, "storage-unavailable")
    finally:
        redis.resume()
    await wait_until_ready(world)
    assert (await world.http.get("/v1/seals", headers=headers)).status == 200


async def filing_under_review(world: World) -> dict[str, Any]:
    seal = await world.draft_seal()
    filings = world.services.filings
    filing = await filings.create({"seal_id": seal["id"], "action": "new", "authority": "local",
                                   "applicant": APPLICANT,
                                   "legal_representative": LEGAL_REPRESENTATIVE}, "test")
    image = await world.services.seals.image(seal["id"])
    for kind in MATERIALS:
        await filings.put_material(filing["id"], kind, image, "test")
    return await filings.submit(filing["id"], "test")


async def assert_decisions_whole(world: World, filing_ids: list[str]) -> int:
    """Each filing is approved with its receipt, active seal and audit event, or still under
    review with none of them. Returns how many are approved."""
    storage = world.services.storage
    events = await storage.events(limit=100_000)
    approved = 0
    for filing_id in filing_ids:
        filing = (await storage.get("filing", filing_id))
        assert filing is not None
        seal = await storage.get("seal", filing.data["seal_id"])
        assert seal is not None
        decided = [e for e in events
                   if e["action"] == "filing.approved" and e["target"] == f"filing/{filing_id}"]
        if filing.data["status"] == "approved":
            approved += 1
            number = filing.data["receipt_number"]
            assert await storage.get("receipt", number) is not None
            assert seal.data["status"] == "active" and seal.data["receipt_number"] == number
            assert len(decided) == 1
        else:
            assert filing.data["status"] == "under_review"
            assert filing.data["receipt_number"] is None
            assert seal.data["status"] != "active" and seal.data["receipt_number"] is None
            assert decided == []
    assert (await world.services.audit.verify()).intact
    return approved


async def test_filing_decisions_are_all_or_nothing_across_an_outage(
    world: World, redis: RedisServer
) -> None:
    """Approvals racing a Redis stop leave each filing wholly decided or wholly undecided;
    the undecided ones are approved once Redis is back."""
    filings = [await filing_under_review(world) for _ in range(6)]
    ids = [f["id"] for f in filings]
    _, reviewer = await world.client("reviewer")

    async def approve(filing_id: str) -> int:
        response = await world.http.post(f"/v1/filings/{filing_id}/review", headers=reviewer,
                                         json={"decision": "approve"})
        await response.read()
        return response.status

    reviews = [asyncio.create_task(approve(filing_id)) for filing_id in ids]
    await asyncio.wait(reviews, return_when=asyncio.FIRST_COMPLETED)
    redis.stop()
    try:
        statuses = await asyncio.gather(*reviews)
        assert set(statuses) <= {200, 503}, statuses
    finally:
        redis.start()
    await wait_until_ready(world)
    # A 503 may still have been applied, when Redis took the commit but the answer was lost.
    assert await assert_decisions_whole(world, ids) >= statuses.count(200)
    for filing_id, status in zip(ids, statuses, strict=True):
        if status != 200:
            assert await approve(filing_id) in (200, 409)
    assert await assert_decisions_whole(world, ids) == len(ids)
