"""Per-client rate limits: a token bucket in storage, 429 with Retry-After, shared by instances."""

from __future__ import annotations

import dataclasses
import re

from gateway.hsm import Hsm
from gateway.pki.devca import DevCA
from gateway.settings import Settings
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
