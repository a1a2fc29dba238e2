"""Two real gateway processes on different ports, one Redis and one SoftHSM token directory,
behaving as one service: filing, grants, revocation, idempotency and one audit chain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.pki.certs import chain_to_pem
from gateway.pki.devca import DevCA
from tests.api.conftest import APPLICANT, LEGAL_REPRESENTATIVE, ORGANIZATION
from tests.gateway_process import Deployment, GatewayProcess
from tests.pdf_samples import one_page_pdf
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.interop, pytest.mark.slow]

DOCUMENT = one_page_pdf()
MATERIALS = ("business_license", "legal_rep_id", "seal_impression")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
               ) -> Deployment:
    return Deployment.create(tmp_path_factory.mktemp("instances"), redis_url=redis_server.url,
                             redis_prefix=f"instances:{uuid.uuid4().hex}:")


@pytest.fixture(scope="module")
def one(deployment: Deployment) -> Iterator[GatewayProcess]:
    with deployment.serve(name="one") as gateway:
        yield gateway


@pytest.fixture(scope="module")
def other(deployment: Deployment, one: GatewayProcess) -> Iterator[GatewayProcess]:
    with deployment.serve(name="other") as gateway:
        yield gateway


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


async def call(http: aiohttp.ClientSession, method: str, url: str, status: int,
               **kwargs: Any) -> Any:
    """One request that must answer ``status``; returns the JSON body (or None)."""
    async with http.request(method, url, **kwargs) as response:
        text = await response.text()
        assert response.status == status, f"{method} {url}: {response.status} {text}"
        return json.loads(text) if "json" in response.content_type else None


async def sign(http: aiohttp.ClientSession, gateway: GatewayProcess, seal_id: str, token: str,
               key: str | None = None) -> tuple[int, bytes, str]:
    headers = bearer(token, **{"Content-Type": "application/pdf"})
    if key:
        headers["Idempotency-Key"] = key
    async with http.post(gateway.url(f"/v1/seals/{seal_id}/sign/pdf"), data=DOCUMENT,
                         headers=headers) as response:
        return response.status, await response.read(), response.headers.get("Sealgate-Receipt", "")


async def test_a_seal_filed_through_one_signs_through_the_other(
    deployment: Deployment, one: GatewayProcess, other: GatewayProcess
) -> None:
    """Key, seal, filing and grant made through both gateways; the seal signs on both."""
    officer = deployment.create_client("officer-1", "key_officer")
    second_officer = deployment.create_client("officer-2", "key_officer")
    filer = deployment.create_client("filer-1", "filer")
    reviewer = deployment.create_client("reviewer-1", "reviewer")
    signer = deployment.create_client("signer-1", "signer")
    ca = DevCA.open_or_create(deployment.var / "ca")
    async with aiohttp.ClientSession() as http:
        key = await call(http, "POST", one.url("/v1/keys"), 201, headers=bearer(officer),
                         json={"label": "instances", "algorithm": "ec-p256"})
        public_der = serialization.load_pem_public_key(key["public_key_pem"].encode()) \
            .public_bytes(serialization.Encoding.DER,
                          serialization.PublicFormat.SubjectPublicKeyInfo)
        chain = chain_to_pem([ca.issue(public_der, "示例公章", ORGANIZATION["name"]),
                              ca.certificate])
        # Generated through one instance's HSM session, certified through the other's.
        await call(http, "PUT", other.url(f"/v1/keys/{key['id']}/certificate"), 200,
                   headers=bearer(second_officer), data=chain.encode())
        seal = await call(http, "POST", one.url("/v1/seals"), 201, headers=bearer(filer),
                          json={"name": "公章", "type": "01", "organization": ORGANIZATION,
                                "key_id": key["id"]})
        filing = await call(http, "POST", other.url("/v1/filings"), 201, headers=bearer(filer),
                            json={"seal_id": seal["id"], "action": "new", "authority": "local",
                                  "applicant": APPLICANT,
                                  "legal_representative": LEGAL_REPRESENTATIVE})
        async with http.get(one.url(f"/v1/seals/{seal['id']}/image"),
                            headers=bearer(filer)) as response:
            image = await response.read()
        for kind in MATERIALS:
            await call(http, "PUT", one.url(f"/v1/filings/{filing['id']}/materials/{kind}"), 200,
                       headers=bearer(filer, **{"Content-Type": "image/png"}), data=image)
        await call(http, "POST", other.url(f"/v1/filings/{filing['id']}/submit"), 202,
                   headers=bearer(filer, **{"Idempotency-Key": "submit"}))
        await call(http, "POST", one.url(f"/v1/filings/{filing['id']}/review"), 200,
                   headers=bearer(reviewer), json={"decision": "approve"})
        approval = await call(http, "POST", one.url("/v1/approvals"), 201,
                              headers=bearer(officer),
                              json={"action": "grant_seal",
                                    "params": {"client_id": "signer-1", "seal_id": seal["id"]}})
        await call(http, "POST", other.url(f"/v1/approvals/{approval['id']}/approve"), 200,
                   headers=bearer(second_officer))
        for gateway in (other, one):
            status, sealed, _ = await sign(http, gateway, seal["id"], signer)
            assert status == 200
            assert sealed.startswith(b"%PDF-")


async def test_a_revoked_client_is_refused_by_both_at_its_next_request(
    deployment: Deployment, one: GatewayProcess, other: GatewayProcess
) -> None:
    """Revocation (by the operator, in the shared storage) reaches both gateways at once."""
    token = deployment.create_client("auditor-1", "auditor")
    async with aiohttp.ClientSession() as http:
        for gateway in (one, other):
            await call(http, "GET", gateway.url("/v1/seals"), 200, headers=bearer(token))
        deployment.sealgate("clients", "revoke", "auditor-1")
        for gateway in (other, one):
            await call(http, "GET", gateway.url("/v1/seals"), 401, headers=bearer(token))


async def test_a_retry_through_the_other_instance_gets_the_same_document(
    deployment: Deployment, one: GatewayProcess, other: GatewayProcess
) -> None:
    """The same Idempotency-Key through the other gateway replays the first answer."""
    async with aiohttp.ClientSession() as http:
        first = await sign(http, one, deployment.seal_id, deployment.token, key="cross-instance")
        retry = await sign(http, other, deployment.seal_id, deployment.token,
                           key="cross-instance")
    assert first[0] == retry[0] == 200
    assert retry[1] == first[1]
    assert retry[2] == first[2]


async def test_concurrent_signing_on_both_keeps_one_audit_chain(
    deployment: Deployment, one: GatewayProcess, other: GatewayProcess
) -> None:
    """Sealings racing through both gateways append to one gap-free, intact chain."""
    before = len(deployment.audit_events())
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(
            sign(http, (one, other)[i % 2], deployment.seal_id, deployment.token)
            for i in range(12)))
    assert [status for status, _, _ in answers] == [200] * 12
    events = deployment.audit_events()
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    signed = {e["details"]["sealing_receipt"]  # type: ignore[index]
              for e in events[before:] if e["action"] == "seal.signed"}
    assert signed == {receipt for _, _, receipt in answers}
    verified = deployment.sealgate("audit", "verify")
    assert json.loads(verified.stdout)["intact"] is True


# Short claims, so that retries after the killed worker's claim lapses finish within the test.
SHORT_CLAIMS = {"SEALGATE_IDEMPOTENCY__LOCK_SECONDS": "3.0",
                "SEALGATE_IDEMPOTENCY__WAIT_SECONDS": "2.0"}


async def test_keyed_load_on_two_instances_survives_a_killed_worker_signing_each_once(
    deployment: Deployment,
) -> None:
    """Two instances with two workers each on one Redis: clients retry each document with
    its key through either instance while a worker is SIGKILLed mid-sealing. Every document
    is sealed exactly once, every retry gets that sealing, and the chain stays intact."""
    before = len(deployment.audit_events())
    with deployment.serve(workers=2, name="pair-a", env=SHORT_CLAIMS) as pair_a, \
            deployment.serve(workers=2, name="pair-b", env=SHORT_CLAIMS) as pair_b:
        gateways = (pair_a, pair_b)

        async def until_done(http: aiohttp.ClientSession, key: str, first: int
                             ) -> set[tuple[bytes, str]]:
            """Send through alternating instances until two answers came back: the first
            and a repeat (on the other instance, unless a failure came between), which
            must be the same sealing."""
            answers: set[tuple[bytes, str]] = set()
            successes = 0
            for attempt in range(60):
                try:
                    status, body, receipt = await sign(
                        http, gateways[(first + attempt) % 2], deployment.seal_id,
                        deployment.token, key)
                except aiohttp.ClientError:
                    status = 0  # the connection died with the worker
                if status == 200:
                    answers.add((body, receipt))
                    successes += 1
                    if successes == 2:
                        return answers
                else:
                    assert status in (0, 409, 503), status
                await asyncio.sleep(0.2)
            raise AssertionError(f"{key}: {successes} answers in 60 tries")

        async with aiohttp.ClientSession() as http:
            keys = [f"pair-{uuid.uuid4().hex[:8]}-{i}" for i in range(12)]
            work = [asyncio.create_task(until_done(http, key, i % 2))
                    for i, key in enumerate(keys)]
            victim = await pair_a.busy_worker()
            os.kill(victim, signal.SIGKILL)
            results = await asyncio.gather(*work)
        assert "was killed by SIGKILL" in pair_a.log()
    # One answer per key, whichever instance and however many tries it took.
    assert all(len(answers) == 1 for answers in results), [len(a) for a in results]
    returned = {receipt for answers in results for _, receipt in answers}
    assert len(returned) == len(keys)
    events = deployment.audit_events()
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    signed = {e["details"]["sealing_receipt"]  # type: ignore[index]
              for e in events[before:] if e["action"] == "seal.signed"}
    assert signed == returned
    verified = deployment.sealgate("audit", "verify")
    assert json.loads(verified.stdout)["intact"] is True
