"""POST /v1/seals/{id}/sign/pdf over HTTP: sealed output, receipts, and every refusal."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from gateway.hsm import Hsm, KeyAlgorithm
from gateway.pki.devca import DevCA
from gateway.settings import Settings
from tests.api.conftest import World
from tests.pdf_samples import (
    encrypted_pdf,
    garbage_pdf,
    multi_page_pdf,
    object_stream_pdf,
    one_page_pdf,
    overindexed_pdf,
    truncated_pdf,
)

PDF = {"Content-Type": "application/pdf"}
SignerWorld = tuple[World, dict[str, Any], dict[str, str]]


def sign_path(seal_id: str) -> str:
    return f"/v1/seals/{seal_id}/sign/pdf"


async def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    """The response is problem+json with this status and type, and carries the request id."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json()
    assert body["type"].endswith("/" + slug), body
    assert body["status"] == status
    assert body["detail"]
    assert body["request_id"] == response.headers["X-Request-Id"]
    return body


@pytest.mark.interop
async def test_sealed_pdf_is_valid_in_pdfsig_and_names_its_receipt(
    signer_world: SignerWorld, tmp_path: Path, poppler: str
) -> None:
    """A sealed PDF comes back valid for pdfsig, with a Sealgate-Receipt header."""
    world, seal, headers = signer_world
    response = await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                                     headers={**headers, **PDF})
    assert response.status == 200, await response.text()
    assert response.content_type == "application/pdf"
    receipt_id = response.headers["Sealgate-Receipt"]
    out = tmp_path / "sealed.pdf"
    out.write_bytes(await response.read())
    report = subprocess.run([poppler, str(out)], capture_output=True, text=True, check=False)
    assert "Signature is Valid" in report.stdout, report.stdout
    assert report.stdout.count("Signature #") == 1

    receipt = await world.http.get(f"/v1/sealing-receipts/{receipt_id}", headers=headers)
    assert receipt.status == 200
    body = await receipt.json()
    assert body["seal_id"] == seal["id"]
    assert body["format"] == "pdf"
    assert isinstance(body["audit_seq"], int)
    assert body["signature"].count(".") == 2
    events = await world.services.storage.events(since_seq=body["audit_seq"] - 1, limit=1)
    assert events[0]["details"]["sealing_receipt"] == receipt_id


@pytest.mark.interop
@pytest.mark.parametrize("make_document", [multi_page_pdf, object_stream_pdf])
async def test_other_producers_pdfs_seal_validly(
    signer_world: SignerWorld, tmp_path: Path, poppler: str, make_document: Any
) -> None:
    """Multi-page and object-stream PDFs seal validly, stamped on the page asked for."""
    world, seal, headers = signer_world
    response = await world.http.post(sign_path(seal["id"]) + "?page=2&x=72&y=72&width=90",
                                     data=make_document(), headers={**headers, **PDF})
    assert response.status == 200, await response.text()
    out = tmp_path / "sealed.pdf"
    out.write_bytes(await response.read())
    report = subprocess.run([poppler, str(out)], capture_output=True, text=True, check=False)
    assert "Signature is Valid" in report.stdout


@pytest.mark.interop
async def test_sealing_twice_keeps_the_first_signature_valid(
    signer_world: SignerWorld, tmp_path: Path, poppler: str
) -> None:
    """An already-sealed PDF sealed again keeps both signatures valid (incremental update)."""
    world, seal, headers = signer_world
    first = await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                                  headers={**headers, **PDF})
    second = await world.http.post(sign_path(seal["id"]) + "?visible=false",
                                   data=await first.read(), headers={**headers, **PDF})
    assert second.status == 200
    out = tmp_path / "twice.pdf"
    out.write_bytes(await second.read())
    report = subprocess.run([poppler, str(out)], capture_output=True, text=True, check=False)
    assert report.stdout.count("Signature is Valid") == 2, report.stdout


async def test_missing_and_unknown_tokens_are_401(signer_world: SignerWorld) -> None:
    """No token and a made-up token are both 401 problems."""
    world, seal, _ = signer_world
    for headers in ({}, {"Authorization": "Bearer sg_not-a-token"}, {"Authorization": "Basic x"}):
        response = await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                                         headers={**headers, **PDF})
        await assert_problem(response, 401, "unauthorized")


async def test_seal_without_grant_is_indistinguishable_from_unknown_seal(
    signer_world: SignerWorld,
) -> None:
    """A seal the signer holds no grant for answers exactly like one that does not exist."""
    world, seal, _ = signer_world
    _, stranger = await world.client("signer", [])
    hidden = await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                                   headers={**stranger, **PDF})
    missing = await world.http.post(sign_path("00000000-0000-0000-0000-000000000000"),
                                    data=one_page_pdf(), headers={**stranger, **PDF})
    first = await assert_problem(hidden, 404, "not-found")
    second = await assert_problem(missing, 404, "not-found")
    assert first["title"] == second["title"]
    listed = await world.http.get("/v1/seals", headers=stranger)
    assert (await listed.json())["seals"] == []


async def test_wrong_role_is_403(signer_world: SignerWorld) -> None:
    """A filer may not sign."""
    world, seal, _ = signer_world
    _, filer = await world.client("filer")
    response = await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                                     headers={**filer, **PDF})
    await assert_problem(response, 403, "forbidden")


@pytest.mark.parametrize(
    ("document", "status", "slug", "content_type"),
    [
        (b"hello, not a pdf", 415, "unsupported-media-type", "application/pdf"),
        (truncated_pdf(), 422, "bad-document", "application/pdf"),
        (garbage_pdf(), 422, "bad-document", "application/pdf"),
        (encrypted_pdf(), 422, "encrypted-document", "application/pdf"),
        (overindexed_pdf(), 422, "bad-document", "application/pdf"),
        (b"", 422, "validation-failed", "application/pdf"),
        (one_page_pdf(), 415, "unsupported-media-type", "text/plain"),
        (b"\xef\xbb\xbf" + one_page_pdf(), 422, "bad-document", "application/pdf"),
        (b"\r\n" + one_page_pdf(), 422, "bad-document", "application/pdf"),
    ],
    ids=["not-pdf", "truncated", "garbage", "encrypted", "overindexed", "empty",
         "declared-as-text", "byte-order-mark", "leading-whitespace"],
)
async def test_bad_documents_get_precise_problems(
    signer_world: SignerWorld, document: bytes, status: int, slug: str, content_type: str
) -> None:
    """Non-PDFs, damaged, encrypted and empty PDFs, a PDF declared as something else, and
    one with bytes before its header (which no reader agrees on), are refused with the
    reason."""
    world, seal, headers = signer_world
    response = await world.http.post(sign_path(seal["id"]), data=document,
                                     headers={**headers, "Content-Type": content_type})
    body = await assert_problem(response, status, slug)
    if slug == "encrypted-document":
        assert "encrypted" in body["detail"]
    if document.startswith((b"\xef", b"\r")):
        assert "bytes before its %PDF- header" in body["detail"]


@pytest.mark.parametrize(
    ("query", "field"),
    [("page=0", "page"), ("page=99", "page"), ("page=two", "page"), ("level=B-Z", "level"),
     ("visible=maybe", "visible"), ("x=abc", "x")],
)
async def test_bad_options_are_422_naming_the_field(
    signer_world: SignerWorld, query: str, field: str
) -> None:
    """Each bad query parameter is a 422 whose errors name it."""
    world, seal, headers = signer_world
    response = await world.http.post(f"{sign_path(seal['id'])}?{query}", data=one_page_pdf(),
                                     headers={**headers, **PDF})
    body = await assert_problem(response, 422, "validation-failed")
    assert [e["field"] for e in body["errors"]] == [field]


async def test_body_over_limit_is_413(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """A body over the limit is 413, whether its size is declared or it arrives chunked."""
    limit = 256 * 1024
    small = settings.replace(server=dataclasses.replace(settings.server, max_body_bytes=limit))
    async with World.running(small, hsm, dev_ca) as world:
        seal = await world.active_seal(KeyAlgorithm.EC_P256)
        _, headers = await world.client("signer", [seal["id"]])
        oversized = b"%PDF-1.7\n" + bytes(limit)

        async def chunked() -> AsyncIterator[bytes]:
            for start in range(0, len(oversized), 64 * 1024):
                yield oversized[start:start + 64 * 1024]

        declared = await world.http.post(sign_path(seal["id"]), data=oversized,
                                         headers={**headers, **PDF})
        await assert_problem(declared, 413, "payload-too-large")
        streamed = await world.http.post(sign_path(seal["id"]), data=chunked(),
                                         headers={**headers, **PDF})
        await assert_problem(streamed, 413, "payload-too-large")


async def test_seal_that_is_not_filed_may_not_sign(world: World) -> None:
    """A draft seal is refused with seal-not-filed."""
    seal = await world.draft_seal()
    _, headers = await world.client("signer", [seal["id"]])
    response = await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                                     headers={**headers, **PDF})
    await assert_problem(response, 409, "seal-not-filed")


async def test_health_readiness_and_metrics(signer_world: SignerWorld) -> None:
    """healthz and readyz answer ok; metrics count signatures and HSM operations."""
    world, seal, headers = signer_world
    await world.http.post(sign_path(seal["id"]), data=one_page_pdf(), headers={**headers, **PDF})
    assert await (await world.http.get("/healthz")).json() == {"status": "ok"}
    ready = await world.http.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {"hsm": "ok", "storage": "ok"}
    text = await (await world.http.get("/metrics")).text()
    assert 'sealgate_signatures_total{format="pdf"}' in text
    assert 'sealgate_signing_seconds_bucket{format="pdf"' in text
    assert 'sealgate_hsm_operation_seconds_bucket{le="0.0005",operation="sign"}' in text
    assert 'route="/v1/seals/{id}/sign/pdf",status="200"' in text


@pytest.mark.parametrize("path", ["sign/pdf", "sign/cms"])
async def test_a_body_that_stops_arriving_is_408_and_the_seal_signs_on(
    settings: Settings, hsm: Hsm, dev_ca: DevCA, path: str
) -> None:
    """Half a document, then silence: after body_idle_seconds the answer is 408 and nothing
    is signed or held; the next request signs."""
    quick = settings.replace(server=dataclasses.replace(settings.server, body_idle_seconds=0.5))
    async with World.running(quick, hsm, dev_ca) as world:
        seal = await world.active_seal(KeyAlgorithm.EC_P256)
        _, headers = await world.client("signer", [seal["id"]])
        document = one_page_pdf()
        host, port = world.http.server.host, world.http.server.port
        reader, writer = await asyncio.open_connection(host, port)
        head = (f"POST /v1/seals/{seal['id']}/{path} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {headers['Authorization']}\r\n"
                f"Content-Type: application/pdf\r\nContent-Length: {len(document)}\r\n\r\n")
        writer.write(head.encode() + document[:200])
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer
        signed = await world.http.post(sign_path(seal["id"]), data=document,
                                       headers={**headers, **PDF})
        assert signed.status == 200
        assert not [e for e in await world.services.storage.events()
                    if e["action"] == "seal.signed" and e["details"]["format"] == "cms"]


async def test_storage_that_cannot_write_is_503_counted_and_not_ready(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """Another process holds SQLite's write lock: reads still work, so the request gets as
    far as its sealing commit. It is 503, counted as a signing error (what the error-ratio
    alert reads), readiness says storage is down, and all recovers when the lock goes."""
    quick = settings.replace(
        storage=dataclasses.replace(settings.storage, timeout_seconds=0.3),
        limits=dataclasses.replace(settings.limits, requests_per_second=0.0))
    async with World.running(quick, hsm, dev_ca) as world:
        seal = await world.active_seal(KeyAlgorithm.EC_P256)
        _, headers = await world.client("signer", [seal["id"]])
        counted = {"format": "pdf", "reason": "storage-unavailable"}
        before = REGISTRY.get_sample_value("sealgate_signing_errors_total", counted) or 0.0
        holder = sqlite3.connect(quick.storage.sqlite_path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            refused = await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                                            headers={**headers, **PDF})
            await assert_problem(refused, 503, "storage-unavailable")
            after = REGISTRY.get_sample_value("sealgate_signing_errors_total", counted)
            assert after is not None and after > before
            ready = await world.http.get("/readyz")
            assert ready.status == 503
            assert (await ready.json())["checks"]["storage"] != "ok"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert (await world.http.get("/readyz")).status == 200
        signed = await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                                       headers={**headers, **PDF})
        assert signed.status == 200, await signed.text()


async def test_hsm_outage_is_503_and_recovers_without_restart(
    signer_world: SignerWorld, token_dir: Path
) -> None:
    """With the token gone, readyz and signing answer 503; when it returns, both recover."""
    world, seal, headers = signer_world
    tokens = token_dir / "tokens"
    away = token_dir / "tokens.away"
    tokens.rename(away)
    try:
        signing = await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                                        headers={**headers, **PDF})
        await assert_problem(signing, 503, "hsm-unavailable")
        assert "Retry-After" in signing.headers
        ready = await world.http.get("/readyz")
        assert ready.status == 503
        assert (await ready.json())["checks"]["hsm"] != "ok"
    finally:
        away.rename(tokens)
    for _ in range(50):
        ready = await world.http.get("/readyz")
        if ready.status == 200:
            break
        await asyncio.sleep(0.1)
    assert ready.status == 200
    response = await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                                     headers={**headers, **PDF})
    assert response.status == 200
