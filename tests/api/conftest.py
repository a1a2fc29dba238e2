"""Fixtures for API tests: the real app on the real SoftHSM token, and a world to populate it.

Each test gets a fresh SQLite database (and so fresh clients, seals and audit chain) while the
test session's one HSM session is shared, as PKCS#11 allows one login per process.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from gateway.api.context import SERVICES
from gateway.app import create_app
from gateway.auth import ApiClient
from gateway.hsm import Hsm, KeyAlgorithm
from gateway.pki.devca import DevCA
from gateway.services import Services
from gateway.settings import Settings
from tests.api.openapi_check import DocumentedClient

ORGANIZATION = {"name": "示例科技有限公司", "uscc": "91350100M000100Y43"}
LEGAL_REPRESENTATIVE = {"name": "张三", "id_number": "11010519491231002X"}
APPLICANT = {"name": "李四", "phone": "13800000000"}


@dataclass
class World:
    """The running app plus shortcuts that set up what a test needs through the services."""

    http: DocumentedClient
    services: Services
    ca: DevCA

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, settings: Settings, hsm: Hsm, ca: DevCA,
                      plugins: tuple[object, ...] = ()) -> AsyncIterator[World]:
        """The app started on a free loopback port with these settings (and ``plugins``
        besides the installed ones), stopped afterwards; every answer its client gets is
        checked against the OpenAPI document."""
        app = create_app(settings, hsm=hsm, extra_plugins=plugins)
        client = DocumentedClient(TestServer(app))
        await client.start_server()
        try:
            services = app[SERVICES]
            await services.keys.ensure_platform_key(ca)
            await services.keys.ensure_tsa_key(ca)
            yield cls(client, services, ca)
        finally:
            await client.close()

    async def client(self, role: str, seals: list[str] | None = None,
                     name: str | None = None) -> tuple[ApiClient, dict[str, str]]:
        """A new API client and the Authorization header that carries its token."""
        created, token = await self.services.clients.create(
            name or f"{role}-{uuid.uuid4().hex[:8]}", role, seals or [])
        return created, {"Authorization": f"Bearer {token}"}

    async def key(self, algorithm: KeyAlgorithm = KeyAlgorithm.RSA_2048,
                  common_name: str = "测试合同专用章") -> dict[str, Any]:
        """A key in the HSM with a dev-CA certificate imported."""
        key = await self.services.keys.create(f"test-{algorithm}", algorithm.value, "test")
        return await self.services.keys.certify(key, self.ca, common_name,
                                                ORGANIZATION["name"], "test")

    async def draft_seal(self, algorithm: KeyAlgorithm = KeyAlgorithm.RSA_2048,
                         seal_type: str = "04") -> dict[str, Any]:
        key = await self.key(algorithm)
        return await self.services.seals.create(
            {"name": "合同专用章", "type": seal_type, "organization": ORGANIZATION,
             "key_id": key["id"]}, "test")

    async def active_seal(self, algorithm: KeyAlgorithm = KeyAlgorithm.RSA_2048) -> dict[str, Any]:
        """A seal filed and approved through the local authority: it may sign."""
        seal = await self.draft_seal(algorithm)
        await self.services.filings.file_and_approve_locally(
            seal["id"], APPLICANT, LEGAL_REPRESENTATIVE, "test")
        return (await self.services.seals.record(seal["id"])).data


@pytest.fixture
async def world(settings: Settings, hsm: Hsm, dev_ca: DevCA) -> AsyncIterator[World]:
    async with World.running(settings, hsm, dev_ca) as running:
        yield running


@pytest.fixture
async def signer_world(world: World) -> tuple[World, dict[str, Any], dict[str, str]]:
    """An active RSA seal and the headers of a signer granted that seal."""
    seal = await world.active_seal()
    _, headers = await world.client("signer", [seal["id"]])
    return world, seal, headers
