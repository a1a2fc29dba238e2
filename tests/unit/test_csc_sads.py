"""SAD spending shared by workers: signatures taken and given back, never more than authorized."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.csc import SadStore
from gateway.errors import CscRequestError
from gateway.plugins import plugin_manager, storage_backend
from gateway.settings import load_settings
from gateway.storage import Storage
from tests.redis_server import RedisServer

KEY = {"id": "key-1", "certificate": {"sha256": "ab" * 32}}
Workers = tuple[SadStore, SadStore]


@pytest.fixture(params=["sqlite", "redis"])
async def workers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Workers]:
    """Two SAD stores over one backend's state, each with its own connection, as two worker
    processes have them."""
    base = load_settings(environ={})
    storage = dataclasses.replace(
        base.storage, backend=request.param, sqlite_path=str(tmp_path / "sads.db"),
        redis_prefix=f"sads:{uuid.uuid4().hex}:", timeout_seconds=5.0)
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        storage = dataclasses.replace(storage, redis_url=server.url)
    settings = base.replace(var_dir=str(tmp_path), storage=storage)
    backends: list[Storage] = [storage_backend(plugin_manager(), settings) for _ in range(2)]
    for backend in backends:
        await backend.open()
    try:
        yield SadStore(backends[0], 300), SadStore(backends[1], 300)
    finally:
        for backend in backends:
            await backend.close()


async def test_concurrent_spends_and_give_backs_never_exceed_the_authorization(
    workers: Workers,
) -> None:
    """Requests in two workers spending one SAD at once, some of them giving their share
    back, together keep at most numSignatures, and everything given back is spent again."""
    one, other = workers
    sad = await one.issue("seal-1", "client-1", KEY, 3, None)
    kept: list[int] = []

    async def use(store: SadStore, count: int, gives_back: bool) -> None:
        activation = await store.find(sad)
        try:
            spending = await store.spend(activation, count)
        except CscRequestError:
            return
        await asyncio.sleep(0)
        if gives_back:
            await store.give_back(spending)
        else:
            kept.append(count)

    await asyncio.gather(*(
        use(one if i % 2 else other, 1 + i % 2, i % 3 == 0) for i in range(24)))
    assert sum(kept) <= 3
    activation = await other.find(sad)
    left = 3 - sum(kept)
    if left:
        await other.spend(activation, left)
    with pytest.raises(CscRequestError, match="0 left"):
        await one.spend(activation, 1)


async def test_a_give_back_returns_only_its_own_signatures(workers: Workers) -> None:
    """A share given back after another request spent its own returns what it took and no
    more: the other request's signature stays spent."""
    one, other = workers
    sad = await one.issue("seal-1", "client-1", KEY, 2, None)
    activation = await one.find(sad)
    mine = await one.spend(activation, 1)
    await other.spend(activation, 1)
    await one.give_back(mine)
    await one.spend(activation, 1)
    with pytest.raises(CscRequestError, match="2 signatures, 0 left"):
        await other.spend(activation, 1)


async def test_a_sad_remembers_the_key_and_certificate_it_was_issued_for(
    workers: Workers,
) -> None:
    """Another key, or the same key with another certificate, is not what the SAD signs with."""
    one, _ = workers
    activation = await one.find(await one.issue("seal-1", "client-1", KEY, 1, None))
    assert activation.signs_with(KEY)
    assert not activation.signs_with({**KEY, "id": "key-2"})
    assert not activation.signs_with({**KEY, "certificate": {"sha256": "cd" * 32}})
