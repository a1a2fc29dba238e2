"""The bytes of request bodies a worker holds at once: bounded in memory and in spool files."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from gateway.api import bodies
from gateway.api.body_budget import BODY_BUDGET
from gateway.errors import ConfigError
from gateway.hsm import Hsm, KeyAlgorithm
from gateway.pki.devca import DevCA
from gateway.settings import ServerSettings, Settings
from tests.api.conftest import World
from tests.api.test_sign_pdf import PDF, assert_problem, sign_path
from tests.api.test_sign_pdf_spooled import padded_pdf

KIB = 1024


def with_server(settings: Settings, **changes: int) -> Settings:
    return settings.replace(server=dataclasses.replace(settings.server, **changes))


@contextlib.asynccontextmanager
async def held_body(world: World, path: str, declared: int,
                    headers: dict[str, str]) -> AsyncIterator[None]:
    """A request that declares ``declared`` bytes, sends a few and waits: what a slow (or
    hostile) client does. The connection is dropped on leaving."""
    server = world.http.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\n{head}"
                 f"Content-Type: application/pdf\r\nContent-Length: {declared}\r\n\r\n"
                 f"%PDF-1.7\n".encode())
    await writer.drain()
    await asyncio.sleep(0.2)  # the worker is now reading that body
    try:
        yield
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        reader.feed_eof()


async def given_back(world: World) -> None:
    """Until the dropped request has given its bytes back (its handler sees the close)."""
    budget = world.http.server.app[BODY_BUDGET]
    for _ in range(100):
        if budget.memory.held == 0 and budget.spool.held == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"bytes still held: {budget.memory.held}, {budget.spool.held}")


async def chunks_of(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 64 * KIB):
        yield data[start:start + 64 * KIB]


async def test_documents_to_verify_beyond_the_memory_budget_are_503_until_it_frees(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """Anyone may post to /v1/verify. While one body of 500 KiB is being read, another of
    400 KiB would pass the 768 KiB budget: 503 overloaded, before it is read when its length
    is declared and once it passes when chunked. When the first is dropped, it is verified."""
    limited = with_server(settings, max_body_bytes=512 * KIB,
                          max_body_memory_bytes=768 * KIB)
    async with World.running(limited, hsm, dev_ca) as world:
        document = padded_pdf(400 * KIB)
        async with held_body(world, "/v1/verify", 500 * KIB, {}):
            declared = await world.http.post("/v1/verify", data=document, headers=PDF)
            body = await assert_problem(declared, 503, "overloaded")
            assert "in memory" in body["detail"]
            assert declared.headers["Retry-After"]
            chunked = await world.http.post("/v1/verify", data=chunks_of(document),
                                            headers=PDF)
            await assert_problem(chunked, 503, "overloaded")
        await given_back(world)
        answered = await world.http.post("/v1/verify", data=document, headers=PDF)
        assert answered.status == 200, await answered.text()
        assert (await answered.json())["signatures"] == []
        await given_back(world)


async def test_documents_to_seal_beyond_the_spool_budget_are_503_until_it_frees(
    settings: Settings, hsm: Hsm, dev_ca: DevCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large documents to seal are spooled to disk; a second one that would take the
    worker's spool files past their budget is 503, and sealed once the first is dropped."""
    monkeypatch.setattr(bodies, "SPOOL_BYTES", 64 * KIB)
    limited = with_server(settings, max_body_bytes=512 * KIB, max_spool_bytes=768 * KIB)
    async with World.running(limited, hsm, dev_ca) as world:
        seal = await world.active_seal(KeyAlgorithm.EC_P256)
        _, headers = await world.client("signer", [seal["id"]])
        document = padded_pdf(400 * KIB)
        async with held_body(world, sign_path(seal["id"]), 500 * KIB, headers):
            for data in (document, chunks_of(document)):
                refused = await world.http.post(sign_path(seal["id"]), data=data,
                                                headers={**headers, **PDF})
                body = await assert_problem(refused, 503, "overloaded")
                assert "spool" in body["detail"]
        await given_back(world)
        sealed = await world.http.post(sign_path(seal["id"]), data=document,
                                       headers={**headers, **PDF})
        assert sealed.status == 200, await sealed.text()
        await given_back(world)


async def test_a_client_that_leaves_mid_body_is_no_server_error(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that closes its connection halfway through its body (the test server then
    cancels the handler) is counted as 499, not as a 500 the error alerts would count; for
    a real server see tests/interop/test_workers.py."""
    labels = {"route": "/v1/verify", "method": "POST", "status": "499"}
    before = REGISTRY.get_sample_value("sealgate_http_requests_total", labels) or 0.0
    async with held_body(world, "/v1/verify", 500 * KIB, {}):
        pass
    await given_back(world)
    assert REGISTRY.get_sample_value("sealgate_http_requests_total", labels) == before + 1
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


@pytest.mark.parametrize("name", ["max_body_memory_bytes", "max_spool_bytes"])
def test_a_budget_below_one_body_is_refused_at_start(name: str) -> None:
    with pytest.raises(ConfigError, match=f"server.{name}.*max_body_bytes"):
        ServerSettings(max_body_bytes=1024, **{name: 1023})


async def test_a_keyed_body_counts_once_against_the_memory_budget(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """The idempotency middleware reads a keyed body to fingerprint it and hands the same
    bytes to the handler: one body in memory, counted once, so a body that fits the budget
    alone is not refused on an idle worker because it carries a key."""
    limited = with_server(settings, max_body_bytes=16 * KIB, max_body_memory_bytes=16 * KIB)
    async with World.running(limited, hsm, dev_ca) as world:
        seal = await world.active_seal(KeyAlgorithm.EC_P256)
        _, headers = await world.client("signer", [seal["id"]])
        digest = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
        body = {"hash_algorithm": "sha256", "hashes": [digest] * 256}  # about 12 KiB
        signed = await world.http.post(
            f"/v1/seals/{seal['id']}/sign/hash", json=body,
            headers={**headers, "Idempotency-Key": str(uuid.uuid4())})
        assert signed.status == 200, await signed.text()
        await given_back(world)


async def test_a_body_moved_to_a_spool_file_gives_its_memory_back(
    settings: Settings, hsm: Hsm, dev_ca: DevCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunked document found large while it arrives moves from memory to a spool file:
    from then on it counts against the spool budget only."""
    monkeypatch.setattr(bodies, "SPOOL_BYTES", 64 * KIB)
    async with World.running(settings, hsm, dev_ca) as world:
        seal = await world.active_seal(KeyAlgorithm.EC_P256)
        _, headers = await world.client("signer", [seal["id"]])
        budget = world.http.server.app[BODY_BUDGET]
        arrived = asyncio.Event()
        document = padded_pdf(400 * KIB)

        async def slowly() -> AsyncIterator[bytes]:
            yield document[:200 * KIB]
            arrived.set()
            await asyncio.sleep(0.5)
            yield document[200 * KIB:]

        sealing = asyncio.ensure_future(world.http.post(
            sign_path(seal["id"]), data=slowly(), headers={**headers, **PDF}))
        await arrived.wait()
        await asyncio.sleep(0.2)
        assert budget.spool.held > 0
        assert budget.memory.held == 0
        assert (await sealing).status == 200
        await given_back(world)


def test_budgets_left_unset_grow_with_a_larger_body_limit() -> None:
    """A deployment whose body limit is above the default budgets starts as before the
    budgets existed: unset (0), each is its default or one body, whichever is larger."""
    large = ServerSettings(max_body_bytes=400_000_000)
    assert large.body_memory_budget == 400_000_000
    assert large.spool_budget == 4 * 1024 * 1024 * 1024
    assert ServerSettings().body_memory_budget == 256 * 1024 * 1024
