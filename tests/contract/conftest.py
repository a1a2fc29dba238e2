"""Fixtures of the storage contract suite: each test runs once per backend, on fresh state.

Backends are created through the plugin manager by name, as the gateway creates them, so a
third-party backend runs the suite by overriding ``storage_settings`` in its own conftest
with settings that name its plugin. Redis runs as one real server per test session; each test
gets its own key prefix there, and its own SQLite file.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from gateway.plugins import plugin_manager, storage_backend
from gateway.settings import Settings, load_settings
from gateway.storage import Storage
from tests.redis_server import RedisServer

STORAGE_BACKENDS = ("sqlite", "redis")

OpenStorage = Callable[[], Awaitable[Storage]]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The test session's redis-server on a free loopback port."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=STORAGE_BACKENDS)
def storage_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings that point the backend under test at state nobody else uses."""
    base = load_settings(environ={})
    storage = dataclasses.replace(
        base.storage,
        backend=request.param,
        sqlite_path=str(tmp_path / "contract.db"),
        redis_prefix=f"contract:{uuid.uuid4().hex}:",
        timeout_seconds=5.0,
    )
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        storage = dataclasses.replace(storage, redis_url=server.url)
    return base.replace(var_dir=str(tmp_path), storage=storage)


def create_storage(settings: Settings) -> Storage:
    """The backend ``settings.storage.backend`` names, made the way the gateway makes it."""
    return storage_backend(plugin_manager(), settings)


@pytest.fixture
async def open_storage(storage_settings: Settings) -> AsyncIterator[OpenStorage]:
    """Opens further instances on the same state (a restart, a second process's view)."""
    opened: list[Storage] = []

    async def open_one() -> Storage:
        backend = create_storage(storage_settings)
        await backend.open()
        opened.append(backend)
        return backend

    yield open_one
    for backend in opened:
        await backend.close()


@pytest.fixture
async def storage(open_storage: OpenStorage) -> Storage:
    """An opened backend on fresh state."""
    return await open_storage()
