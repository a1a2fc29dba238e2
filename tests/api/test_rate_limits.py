"""Per-client rate limits: a token bucket in storage, 429 with Retry-After, shared by instances."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from gateway.api.limits import LeasedBuckets, lease_size
from gateway.hsm import Hsm
from gateway.pki.devca import DevCA
from gateway.plugins import plugin_manager, storage_backend
from gateway.settings import LimitsSettings, Settings
from tests.api.conftest import World
from tests.api.test_sign_pdf import assert_problem
from tests.conftest import on_redis
from tests.redis_server import RedisServer

BURST = 3


def limited(settings: Settings, requests_per_second: float = 0.01, burst: int = BURST) -> Settings:
    """A limit so slow that no token comes back during a test: only the burst is available."""
    return settings.replace(limits=dataclasses.replace(
        settings.limits, requests_per_second=requests_per_second, burst=burst))


async def rate_limited_total(world: World) -> float:
    text = await (await world.http.get("/metrics")).text()
    found = re.search(r"^sealgate_rate_limited_total (\S+)$", text, re.MULTILINE)
    assert found, "sealgate_rate_limited_total is not exported"
    return float(found.group(1))


async def test_a_client_past_its_burst_gets_429_with_retry_after(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """The burst passes; the next request is a 429 problem that says when to come back."""
    async with World.running(limited(settings), hsm, dev_ca) as world:
        _, headers = await world.client("auditor")
        counted_before = await rate_limited_total(world)
        for _ in range(BURST):
            assert (await world.http.get("/v1/seals", headers=headers)).status == 200
        refused = await world.http.get("/v1/seals", headers=headers)
        body = await assert_problem(refused, 429, "rate-limited")
        assert "requests per second" in body["detail"]
        # With 0.01 tokens per second the next token is about 100 s away.
        assert 50 <= int(refused.headers["Retry-After"]) <= 100
        assert await rate_limited_total(world) == counted_before + 1


async def test_clients_have_their_own_buckets_and_anonymous_routes_none(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """One client's exhausted bucket neither limits another client nor health checks."""
    async with World.running(limited(settings, burst=1), hsm, dev_ca) as world:
        _, first = await world.client("auditor")
        _, second = await world.client("auditor")
        assert (await world.http.get("/v1/seals", headers=first)).status == 200
        await assert_problem(await world.http.get("/v1/seals", headers=first), 429,
                             "rate-limited")
        assert (await world.http.get("/v1/seals", headers=second)).status == 200
        for _ in range(3):
            assert (await world.http.get("/healthz")).status == 200


async def test_zero_rate_turns_the_limit_off(settings: Settings, hsm: Hsm, dev_ca: DevCA) -> None:
    """requests_per_second = 0 means no limit at all."""
    async with World.running(limited(settings, requests_per_second=0, burst=1), hsm,
                             dev_ca) as world:
        _, headers = await world.client("auditor")
        for _ in range(5):
            assert (await world.http.get("/v1/seals", headers=headers)).status == 200


async def test_the_bucket_is_shared_by_two_instances_on_one_redis(
    settings: Settings, hsm: Hsm, dev_ca: DevCA, redis_server: RedisServer
) -> None:
    """Requests through either gateway draw from one bucket: the burst is not doubled."""
    shared = on_redis(limited(settings), redis_server.url)
    async with World.running(shared, hsm, dev_ca) as one, \
            World.running(shared, hsm, dev_ca) as other:
        _, headers = await one.client("auditor")
        for gateway in (one, other, one):
            assert (await gateway.http.get("/v1/seals", headers=headers)).status == 200
        for gateway in (other, one):
            await assert_problem(await gateway.http.get("/v1/seals", headers=headers), 429,
                                 "rate-limited")


@pytest.mark.parametrize(("rate", "burst", "lease"), [
    (100.0, 200, 1),  # the defaults: a token at a time, the plain bucket
    (1000.0, 2000, 10),  # 10 ms of the rate
    (5000.0, 30, 3),  # a tenth of the burst
    (1e6, 1_000_000, 100),  # never more than a hundred
    (0.01, 3, 1),
])
def test_a_lease_is_10_ms_of_the_rate_and_a_tenth_of_the_burst_at_most(
    rate: float, burst: int, lease: int
) -> None:
    assert lease_size(LimitsSettings(requests_per_second=rate, burst=burst)) == lease


async def test_workers_leasing_from_one_bucket_share_it_exactly(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers taking leases of ten from a bucket of 100 admit exactly 100 requests
    between them, with one storage write per lease instead of one per request."""
    storage = storage_backend(plugin_manager(), settings)
    await storage.open()
    writes = 0
    take_tokens = storage.take_tokens

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal writes
        writes += 1
        return await take_tokens(*args, **kwargs)

    monkeypatch.setattr(storage, "take_tokens", counted)
    limits = LimitsSettings(requests_per_second=1000.0, burst=100)
    # The clock stands still, so no token comes back during the test.
    workers = [LeasedBuckets(limits, clock=lambda: 5000.0) for _ in range(2)]
    try:
        admitted = 0
        for turn in range(150):
            if await workers[turn % 2].take(storage, "rate:client:one") == 0:
                admitted += 1
        assert admitted == 100
        assert writes - 10 == 150 - 100  # ten leases, then one refused take per refusal
        # Each worker knows when to come back: one token takes 1 ms at 1000 per second.
        assert await workers[0].take(storage, "rate:client:one") == pytest.approx(0.001)
        assert await workers[1].take(storage, "rate:client:other") == 0
    finally:
        await storage.close()
