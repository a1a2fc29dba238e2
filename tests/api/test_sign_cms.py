"""POST /v1/seals/{id}/sign/cms over HTTP: detached CAdES that openssl verifies, and refusals."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms
from cryptography import x509

from gateway.hsm import Hsm, KeyAlgorithm
from gateway.pki.certs import chain_to_pem
from gateway.pki.devca import DevCA
from gateway.settings import Settings
from tests.api.conftest import World
from tests.api.test_sign_pdf import assert_problem

OCTETS = {"Content-Type": "application/octet-stream"}
CONTENT = b"Purchase contract no. 2026-0042\n" + os.urandom(64 * 1024)


def sign_path(seal_id: str) -> str:
    return f"/v1/seals/{seal_id}/sign/cms"


def openssl_verify(
    signature: Path, content: Path, dev_ca: DevCA
) -> subprocess.CompletedProcess[str]:
    """``openssl cms -verify`` of a detached DER signature against the dev CA."""
    return subprocess.run(
        ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(signature),
         "-content", str(content), "-CAfile", str(dev_ca.directory / "ca.pem"),
         "-purpose", "any", "-out", os.devnull],
        capture_output=True, text=True, check=False, timeout=120,
    )


@pytest.mark.interop
@pytest.mark.parametrize("algorithm", [KeyAlgorithm.RSA_2048, KeyAlgorithm.EC_P256], ids=str)
async def test_openssl_verifies_signature_and_catches_a_tampered_byte(
    world: World, tmp_path: Path, algorithm: KeyAlgorithm
) -> None:
    """openssl cms -verify accepts the signature over the content, and not over a changed byte."""
    seal = await world.active_seal(algorithm)
    _, headers = await world.client("signer", [seal["id"]])
    response = await world.http.post(sign_path(seal["id"]), data=CONTENT,
                                     headers={**headers, **OCTETS})
    assert response.status == 200, await response.text()
    assert response.content_type == "application/pkcs7-signature"
    signature = tmp_path / "sig.der"
    signature.write_bytes(await response.read())
    content = tmp_path / "content.bin"
    content.write_bytes(CONTENT)
    verified = openssl_verify(signature, content, dev_ca=world.ca)
    assert verified.returncode == 0, verified.stderr
    assert "Verification successful" in verified.stderr

    tampered = bytearray(CONTENT)
    tampered[100] ^= 0x20
    content.write_bytes(bytes(tampered))
    assert openssl_verify(signature, content, dev_ca=world.ca).returncode != 0


@pytest.mark.interop
async def test_level_b_t_adds_a_signature_time_stamp_that_verifies(
    world: World, tmp_path: Path
) -> None:
    """A B-T signature carries the gateway TSA's token; openssl and /v1/verify accept it."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    _, headers = await world.client("signer", [seal["id"]])
    response = await world.http.post(sign_path(seal["id"]) + "?level=B-T", data=CONTENT,
                                     headers={**headers, **OCTETS})
    assert response.status == 200, await response.text()
    der = await response.read()
    signature = tmp_path / "sig.der"
    signature.write_bytes(der)
    content = tmp_path / "content.bin"
    content.write_bytes(CONTENT)
    verified = openssl_verify(signature, content, dev_ca=world.ca)
    assert verified.returncode == 0, verified.stderr
    report = await (await world.http.post("/v1/verify", json={
        "cms": base64.b64encode(der).decode(), "content": base64.b64encode(CONTENT).decode(),
    })).json()
    assert report["valid"] is True, report
    assert report["signatures"][0]["level"] == "B-T"

    # Anyone may post to /v1/verify: a CMS with more signers than any signature has is
    # refused before any is checked (copies of this one cost seconds of CPU each).
    info = cms.ContentInfo.load(der)
    signer = info["content"]["signer_infos"][0]
    info["content"]["signer_infos"] = cms.SignerInfos([signer] * 17)
    crowded = await world.http.post("/v1/verify", json={
        "cms": base64.b64encode(info.dump()).decode(),
        "content": base64.b64encode(CONTENT).decode()})
    body = await assert_problem(crowded, 422, "validation-failed")
    assert body["errors"][0]["field"] == "cms"


@pytest.mark.interop
@pytest.mark.slow
async def test_a_large_chunked_upload_is_hashed_as_it_streams(
    world: World, tmp_path: Path
) -> None:
    """A 48 MiB body sent in chunks (no Content-Length) gets a signature openssl verifies."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    _, headers = await world.client("signer", [seal["id"]])
    content = tmp_path / "large.bin"
    block = os.urandom(1024 * 1024)
    with content.open("wb") as out:
        for index in range(48):
            out.write(block[index:] + block[:index])

    async def chunks() -> AsyncIterator[bytes]:
        with content.open("rb") as source:
            while piece := source.read(512 * 1024):
                yield piece

    response = await world.http.post(sign_path(seal["id"]), data=chunks(),
                                     headers={**headers, **OCTETS})
    assert response.status == 200, await response.text()
    signature = tmp_path / "sig.der"
    signature.write_bytes(await response.read())
    verified = openssl_verify(signature, content, dev_ca=world.ca)
    assert verified.returncode == 0, verified.stderr


async def test_sealing_receipt_names_content_and_signature_digests(world: World) -> None:
    """The receipt in Sealgate-Receipt holds SHA-256 of the content and of the signature."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    _, headers = await world.client("signer", [seal["id"]])
    response = await world.http.post(sign_path(seal["id"]), data=CONTENT,
                                     headers={**headers, **OCTETS})
    assert response.status == 200
    signature = await response.read()
    receipt_id = response.headers["Sealgate-Receipt"]
    receipt = await world.http.get(f"/v1/sealing-receipts/{receipt_id}", headers=headers)
    assert receipt.status == 200
    body = await receipt.json()
    assert body["format"] == "cms"
    assert body["seal_id"] == seal["id"]
    assert body["level"] == "B-B"
    assert body["content_bytes"] == len(CONTENT)
    assert body["document_sha256_before"] == hashlib.sha256(CONTENT).hexdigest()
    assert body["document_sha256_after"] == hashlib.sha256(signature).hexdigest()
    events = await world.services.storage.events(since_seq=body["audit_seq"] - 1, limit=1)
    assert events[0]["action"] == "seal.signed"
    assert events[0]["details"]["format"] == "cms"
    assert events[0]["details"]["sealing_receipt"] == receipt_id


async def test_signature_carries_cades_signed_attributes(world: World) -> None:
    """The signed attributes are CAdES B-B's: content-type, digest, ESS certificate, time."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    _, headers = await world.client("signer", [seal["id"]])
    response = await world.http.post(sign_path(seal["id"]) + "?level=B-B", data=CONTENT,
                                     headers={**headers, **OCTETS})
    assert response.status == 200
    (info,) = cms.ContentInfo.load(await response.read())["content"]["signer_infos"]
    assert {a["type"].native for a in info["signed_attrs"]} == {
        "content_type", "message_digest", "signing_certificate_v2", "signing_time"}


@pytest.mark.parametrize("level", ["B-Z", "anything"])
async def test_unknown_level_is_422_naming_level(
    signer_world: tuple[World, dict[str, Any], dict[str, str]], level: str
) -> None:
    """A level that does not exist is refused before the body is read."""
    world, seal, headers = signer_world
    response = await world.http.post(f"{sign_path(seal['id'])}?level={level}", data=CONTENT,
                                     headers={**headers, **OCTETS})
    body = await assert_problem(response, 422, "validation-failed")
    assert [e["field"] for e in body["errors"]] == ["level"]


async def test_empty_body_is_422_naming_body(
    signer_world: tuple[World, dict[str, Any], dict[str, str]],
) -> None:
    """Nothing to sign is a validation error, not a signature over nothing."""
    world, seal, headers = signer_world
    response = await world.http.post(sign_path(seal["id"]), data=b"",
                                     headers={**headers, **OCTETS})
    body = await assert_problem(response, 422, "validation-failed")
    assert [e["field"] for e in body["errors"]] == ["body"]


async def test_seal_without_grant_is_404_and_wrong_role_403(
    signer_world: tuple[World, dict[str, Any], dict[str, str]],
) -> None:
    """A signer without a grant sees no seal; a filer may not sign at all."""
    world, seal, _ = signer_world
    _, stranger = await world.client("signer", [])
    hidden = await world.http.post(sign_path(seal["id"]), data=CONTENT,
                                   headers={**stranger, **OCTETS})
    await assert_problem(hidden, 404, "not-found")
    _, filer = await world.client("filer")
    refused = await world.http.post(sign_path(seal["id"]), data=CONTENT,
                                    headers={**filer, **OCTETS})
    await assert_problem(refused, 403, "forbidden")


async def test_body_over_limit_is_413_declared_or_chunked(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """Content over max_body_bytes is refused whether its size is declared or it streams."""
    limit = 256 * 1024
    small = settings.replace(server=dataclasses.replace(settings.server, max_body_bytes=limit))
    async with World.running(small, hsm, dev_ca) as world:
        seal = await world.active_seal(KeyAlgorithm.EC_P256)
        _, headers = await world.client("signer", [seal["id"]])
        oversized = bytes(limit + 1)

        async def chunked() -> AsyncIterator[bytes]:
            for start in range(0, len(oversized), 64 * 1024):
                yield oversized[start:start + 64 * 1024]

        declared = await world.http.post(sign_path(seal["id"]), data=oversized,
                                         headers={**headers, **OCTETS})
        await assert_problem(declared, 413, "payload-too-large")
        streamed = await world.http.post(sign_path(seal["id"]), data=chunked(),
                                         headers={**headers, **OCTETS})
        await assert_problem(streamed, 413, "payload-too-large")
        exact = await world.http.post(sign_path(seal["id"]), data=oversized[:limit],
                                      headers={**headers, **OCTETS})
        assert exact.status == 200


async def test_a_chain_completed_after_import_is_in_the_next_signature(world: World) -> None:
    """A key certified with its leaf alone, then given the CA certificate too: the next
    signature carries both, though the leaf, and so its fingerprint, did not change."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    _, headers = await world.client("signer", [seal["id"]])
    key = await world.services.keys.get(seal["key_id"])
    leaf = x509.load_pem_x509_certificates(key["certificate_chain_pem"].encode())[0]

    async def certificates_in_a_signature() -> int:
        response = await world.http.post(
            f"/v1/seals/{seal['id']}/sign/cms", data=b"contract",
            headers={**headers, "Content-Type": "application/octet-stream"})
        assert response.status == 200, await response.text()
        return len(cms.ContentInfo.load(await response.read())["content"]["certificates"])

    await world.services.keys.import_certificate(key["id"], chain_to_pem([leaf]).encode(), "t")
    assert await certificates_in_a_signature() == 1
    await world.services.keys.import_certificate(
        key["id"], chain_to_pem([leaf, world.ca.certificate]).encode(), "t")
    assert await certificates_in_a_signature() == 2
