"""POST /v1/verify: signed PDFs and CMS signatures, valid, tampered, untrusted, for anyone."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import io
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign.validation import pdf_embedded
from pyhanko.sign.validation.pdf_embedded import EmbeddedPdfSignature

from gateway.hsm import Hsm
from gateway.pki.certs import chain_to_pem
from gateway.pki.devca import DevCA
from gateway.settings import Settings
from gateway.signing import verify as verify_module
from gateway.signing.ltv import add_signature_timestamp, signature_value
from gateway.signing.tsa import TimeStampQuery
from tests.api.conftest import APPLICANT, LEGAL_REPRESENTATIVE, ORGANIZATION, World
from tests.api.test_sign_pdf import assert_problem
from tests.pdf_samples import one_page_pdf, overindexed_pdf, unreadable_signature_pdf

PDF = {"Content-Type": "application/pdf"}
CONTENT = "合同正文：双方同意以下条款。\n".encode() * 50
SignerWorld = tuple[World, dict[str, Any], dict[str, str]]


async def sealed_pdf(world: World, seal: dict[str, Any], headers: dict[str, str],
                     level: str = "B-B") -> bytes:
    response = await world.http.post(f"/v1/seals/{seal['id']}/sign/pdf?level={level}",
                                     data=one_page_pdf(), headers={**headers, **PDF})
    assert response.status == 200, await response.text()
    return await response.read()


async def verify_pdf(world: World, document: bytes) -> dict[str, Any]:
    """Verify without any token: anyone may."""
    response = await world.http.post("/v1/verify", data=document, headers=PDF)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def verify_cms(world: World, signature: bytes, content: bytes | None) -> dict[str, Any]:
    payload = {"cms": base64.b64encode(signature).decode()}
    if content is not None:
        payload["content"] = base64.b64encode(content).decode()
    response = await world.http.post("/v1/verify", json=payload)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


def flipped(document: bytes, marker: bytes, offset: int = 0) -> bytes:
    """``document`` with one byte changed where ``marker`` last occurs (plus ``offset``).

    A hex digit stays a hex digit (``a`` ^ 1 would be a backtick and make the file
    unreadable rather than changed), so the PDF still parses and only the signature breaks.
    """
    at = document.rindex(marker) + offset
    changed = bytearray(document)
    original = changed[at]
    if bytes([original]) in b"0123456789abcdefABCDEF":
        changed[at] = ord("1") if original != ord("1") else ord("2")
    else:
        changed[at] = original ^ 0x01
    return bytes(changed)


async def foreign_ca_seal(world: World, tmp_path: Path) -> dict[str, Any]:
    """An active seal whose certificate comes from a CA the gateway does not trust."""
    other = DevCA.open_or_create(tmp_path / "untrusted-ca", "Untrusted CA")
    services = world.services
    key = await services.keys.create("untrusted-key", "ec-p256", "test")
    cert = other.issue(services.keys.public_key_der(key), "不受信任的印章", ORGANIZATION["name"])
    await services.keys.import_certificate(
        key["id"], chain_to_pem([cert, other.certificate]).encode(), "test")
    seal = await services.seals.create(
        {"name": "合同专用章", "type": "04", "organization": ORGANIZATION, "key_id": key["id"]},
        "test")
    await services.filings.file_and_approve_locally(
        seal["id"], APPLICANT, LEGAL_REPRESENTATIVE, "test")
    return seal


def openssl_cms(tmp_path: Path, ca: DevCA | None, content: bytes) -> bytes:
    """A detached CAdES signature made by `openssl cms -sign -cades` with a software key,
    certified by ``ca`` (self-signed when None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    if ca is not None:
        cert = ca.issue(public, "OpenSSL Signer", "测试有限公司")
    else:
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Self Signed")])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(1)
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp_path / "signer.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "signer.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "content.bin").write_bytes(content)
    subprocess.run(
        ["openssl", "cms", "-sign", "-binary", "-cades", "-in", str(tmp_path / "content.bin"),
         "-signer", str(tmp_path / "signer.pem"), "-inkey", str(tmp_path / "signer.key"),
         "-outform", "DER", "-out", str(tmp_path / "sig.der")],
        check=True, capture_output=True)
    return (tmp_path / "sig.der").read_bytes()


async def test_sealed_pdf_is_valid_and_names_its_seal(signer_world: SignerWorld) -> None:
    """A freshly sealed PDF: valid, intact, trusted, B-B, the seal's id, no problems."""
    world, seal, headers = signer_world
    body = await verify_pdf(world, await sealed_pdf(world, seal, headers))
    assert body["valid"] is True
    [signature] = body["signatures"]
    assert signature["seal_id"] == seal["id"]
    assert (signature["intact"], signature["trusted"], signature["level"]) == (True, True, "B-B")
    assert "测试合同专用章" in signature["signer"]
    assert signature["signed_at"].endswith("Z") and signature["problems"] == []


async def test_a_pdf_sealed_before_a_certificate_renewal_still_names_its_seal(
    signer_world: SignerWorld,
) -> None:
    """The key's certificate is renewed (same key): earlier documents keep their seal."""
    world, seal, headers = signer_world
    earlier = await sealed_pdf(world, seal, headers)
    key = await world.services.keys.get(seal["key_id"])
    renewed = world.ca.issue(world.services.keys.public_key_der(key), "测试合同专用章 (renewed)",
                             ORGANIZATION["name"])
    await world.services.keys.import_certificate(
        key["id"], chain_to_pem([renewed, world.ca.certificate]).encode(), "test")
    for document in (earlier, await sealed_pdf(world, seal, headers)):
        [signature] = (await verify_pdf(world, document))["signatures"]
        assert signature["seal_id"] == seal["id"]


async def test_b_lta_pdf_reports_the_seal_and_the_document_time_stamp(
    signer_world: SignerWorld,
) -> None:
    """A B-LTA seal is reported at its level, with the document time-stamp as a signature."""
    world, seal, headers = signer_world
    body = await verify_pdf(world, await sealed_pdf(world, seal, headers, "B-LTA"))
    assert body["valid"] is True
    first, archive = body["signatures"]
    assert (first["level"], first["seal_id"], first["problems"]) == ("B-LTA", seal["id"], [])
    assert archive["kind"] == "document_timestamp" and "seal_id" not in archive
    assert archive["intact"] and archive["trusted"]


async def test_many_fields_naming_one_signature_are_verified_once(
    signer_world: SignerWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sixty more fields whose value is the seal's one signature dictionary: that signature
    is read and validated once, not sixty-one times (anyone may post such a file; 20,000
    such fields in 125 KB took 2 s when each signature was read before the copies were
    dropped)."""
    world, seal, headers = signer_world
    read: list[object] = []

    class CountedSignature(EmbeddedPdfSignature):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            read.append(args)
            super().__init__(*args, **kwargs)

    for module in (pdf_embedded, verify_module):
        monkeypatch.setattr(module, "EmbeddedPdfSignature", CountedSignature)
    writer = IncrementalPdfFileWriter(io.BytesIO(await sealed_pdf(world, seal, headers)))
    fields = writer.root["/AcroForm"]["/Fields"]
    value = fields[0].get_object().raw_get("/V")
    for n in range(60):
        fields.append(writer.add_object(generic.DictionaryObject({
            generic.NameObject("/FT"): generic.NameObject("/Sig"),
            generic.NameObject("/T"): generic.TextStringObject(f"copy-{n}"),
            generic.NameObject("/V"): value,
        })))
    writer.update_container(fields)
    out = io.BytesIO()
    writer.write(out)  # type: ignore[no-untyped-call]  # pyHanko's writer is unannotated
    body = await verify_pdf(world, out.getvalue())
    assert len(body["signatures"]) == 1
    assert len(read) == 1


@pytest.mark.parametrize(
    ("marker", "offset"),
    [(b"Test page", 0), (b"%PDF-1.", 11), (b"/M (D", 12), (b"/ID [ <", 9)],
    ids=["page-content", "header-comment", "signing-time", "trailer-id"],
)
async def test_a_changed_byte_in_the_signed_range_is_not_intact(
    signer_world: SignerWorld, marker: bytes, offset: int
) -> None:
    """One flipped byte anywhere the signature covers makes it not intact and not valid."""
    world, seal, headers = signer_world
    document = await sealed_pdf(world, seal, headers)
    body = await verify_pdf(world, flipped(document, marker, offset))
    assert body["valid"] is False
    [signature] = body["signatures"]
    assert signature["intact"] is False
    assert signature["problems"]


async def test_changes_appended_after_signing_are_reported(signer_world: SignerWorld) -> None:
    """An incremental update after the seal leaves it intact but reports the change."""
    world, seal, headers = signer_world
    writer = IncrementalPdfFileWriter(io.BytesIO(await sealed_pdf(world, seal, headers)))
    writer.root["/Lang"] = generic.TextStringObject("en")
    writer.update_root()
    changed = io.BytesIO()
    writer.write(changed)
    body = await verify_pdf(world, changed.getvalue())
    [signature] = body["signatures"]
    assert signature["intact"] is True
    assert any("changed after this signature" in p for p in signature["problems"])
    assert body["valid"] is False


async def test_bytes_appended_after_the_seal_make_the_document_not_valid(
    signer_world: SignerWorld,
) -> None:
    """Text appended after %%EOF is no revision pyHanko reads, but the seal no longer covers
    the whole file: the problem is listed, and the answer is not valid."""
    world, seal, headers = signer_world
    appended = await sealed_pdf(world, seal, headers) + b"\nTHIS TEXT WAS ADDED LATER\n"
    body = await verify_pdf(world, appended)
    [signature] = body["signatures"]
    assert signature["intact"] is True and signature["problems"]
    assert body["valid"] is False


async def test_signer_outside_the_trust_roots_is_not_trusted(
    world: World, tmp_path: Path
) -> None:
    """A seal certified by a CA that is not a trust root is intact but not trusted."""
    seal = await foreign_ca_seal(world, tmp_path)
    _, headers = await world.client("signer", [seal["id"]])
    body = await verify_pdf(world, await sealed_pdf(world, seal, headers))
    [signature] = body["signatures"]
    assert (signature["intact"], signature["trusted"], body["valid"]) == (True, False, False)
    assert any("trusted root" in p for p in signature["problems"])


async def test_pdf_without_signatures_is_not_valid(world: World) -> None:
    """A PDF with no signature verifies as not valid, with nothing listed."""
    assert await verify_pdf(world, one_page_pdf()) == {"valid": False, "signatures": []}


async def test_cms_from_openssl_over_its_content_is_valid(
    world: World, dev_ca: DevCA, tmp_path: Path
) -> None:
    """A CAdES signature from openssl by a dev-CA certificate verifies over its content."""
    body = await verify_cms(world, openssl_cms(tmp_path, dev_ca, CONTENT), CONTENT)
    assert body["valid"] is True
    [signature] = body["signatures"]
    assert (signature["intact"], signature["trusted"], signature["level"]) == (True, True, "B-B")
    assert "OpenSSL Signer" in signature["signer"] and "seal_id" not in signature
    assert signature["signed_at"]


async def test_cms_over_changed_content_is_not_intact(
    world: World, dev_ca: DevCA, tmp_path: Path
) -> None:
    """One changed byte of the content breaks the message digest."""
    signature = openssl_cms(tmp_path, dev_ca, CONTENT)
    body = await verify_cms(world, signature, CONTENT[:-1] + b"?")
    assert body["valid"] is False
    assert body["signatures"][0]["intact"] is False
    assert any("message digest" in p for p in body["signatures"][0]["problems"])


async def test_cms_with_a_changed_signature_value_is_not_intact(
    world: World, dev_ca: DevCA, tmp_path: Path
) -> None:
    """A flipped byte in the signature value fails the signature check."""
    signature = openssl_cms(tmp_path, dev_ca, CONTENT)
    value = signature_value(signature)
    tampered = signature.replace(value, value[:-1] + bytes([value[-1] ^ 1]))
    body = await verify_cms(world, tampered, CONTENT)
    assert body["signatures"][0]["intact"] is False
    assert body["valid"] is False


async def test_self_signed_cms_is_not_trusted(world: World, tmp_path: Path) -> None:
    """A signer outside the trust roots is reported intact but not trusted."""
    body = await verify_cms(world, openssl_cms(tmp_path, None, CONTENT), CONTENT)
    [signature] = body["signatures"]
    assert (signature["intact"], signature["trusted"], body["valid"]) == (True, False, False)


async def test_cms_from_the_gateway_names_its_seal_and_a_time_stamp_makes_it_b_t(
    signer_world: SignerWorld,
) -> None:
    """sign/cms output verifies and names the seal; with a signature time-stamp it is B-T."""
    world, seal, headers = signer_world
    response = await world.http.post(f"/v1/seals/{seal['id']}/sign/cms", data=CONTENT,
                                     headers={**headers, "Content-Type": "text/plain"})
    assert response.status == 200, await response.text()
    signature = await response.read()
    body = await verify_cms(world, signature, CONTENT)
    [found] = body["signatures"]
    assert (body["valid"], found["seal_id"], found["level"]) == (True, seal["id"], "B-B")
    token = await world.services.timestamps.timestamp(
        hashlib.sha256(signature_value(signature)).digest(), "sha256")
    stamped = await verify_cms(world, add_signature_timestamp(signature, token), CONTENT)
    [found] = stamped["signatures"]
    assert (stamped["valid"], found["level"], found["problems"]) == (True, "B-T", [])


async def test_malformed_verify_requests_are_refused_naming_the_field(world: World) -> None:
    """Missing or broken cms, a non-base64 content, and other media types are refused."""
    for payload, field in (({"content": "AA=="}, "cms"), ({"cms": "%%%"}, "cms"),
                           ({"cms": "MAA=", "content": 5}, "content"),
                           ({"cms": base64.b64encode(b"junk").decode()}, "cms")):
        response = await world.http.post("/v1/verify", json=payload)
        body = await assert_problem(response, 422, "validation-failed")
        assert body["errors"][0]["field"] == field, body
    other = await world.http.post("/v1/verify", data=b"x",
                                  headers={"Content-Type": "text/plain"})
    await assert_problem(other, 415, "unsupported-media-type")


async def test_a_seal_on_a_pdf_with_an_unreadable_signature_is_verified(
    signer_world: SignerWorld,
) -> None:
    """A signature whose /Contents is no CMS is reported as unreadable, and a seal added to
    its document verifies beside it (the whole document was refused as unreadable: the
    gateway sealed a PDF it could not verify)."""
    world, seal, headers = signer_world
    response = await world.http.post(f"/v1/seals/{seal['id']}/sign/pdf",
                                     data=unreadable_signature_pdf(), headers={**headers, **PDF})
    assert response.status == 200, await response.text()
    verdict = await verify_pdf(world, await response.read())
    broken, sealed = sorted(verdict["signatures"], key=lambda s: s["intact"])
    assert (broken["intact"], broken["problems"]) == (
        False, ["cannot read field Broken: ValueError"])
    assert (sealed["intact"], sealed["trusted"], sealed["seal_id"]) == (True, True, seal["id"])
    assert verdict["valid"] is False


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/v1/verify", "/v1/receipts/verify"])
async def test_a_pdf_declaring_billions_of_objects_is_422_and_verification_goes_on(
    world: World, path: str
) -> None:
    """A cross-reference stream declaring two billion entries held the verification thread
    for good (every later verification then waited behind it); it is a bad document now."""
    refused = await world.http.post(path, data=overindexed_pdf(), headers=PDF)
    body = await assert_problem(refused, 422, "bad-document")
    assert "declares" in body["detail"]
    assert await verify_pdf(world, one_page_pdf()) == {"valid": False, "signatures": []}


@pytest.mark.parametrize("dss", [
    generic.NumberObject(7),
    generic.DictionaryObject({generic.NameObject("/Certs"): generic.NumberObject(1)}),
    generic.DictionaryObject({generic.NameObject("/Certs"): generic.ArrayObject(
        [generic.NumberObject(1)])}),
], ids=["number", "certs-number", "certs-of-numbers"])
async def test_a_malformed_dss_after_a_time_stamped_seal_lowers_the_level_only(
    signer_world: SignerWorld, dss: generic.PdfObject
) -> None:
    """Anyone may post a document: a DSS that cannot be read is no server error, only no
    long-term validation data (the seal stays intact and B-T)."""
    world, seal, headers = signer_world
    writer = IncrementalPdfFileWriter(io.BytesIO(await sealed_pdf(world, seal, headers, "B-T")))
    writer.root[generic.NameObject("/DSS")] = dss
    writer.update_root()
    out = io.BytesIO()
    writer.write(out)  # type: ignore[no-untyped-call]  # pyHanko's writer is unannotated
    [signature] = (await verify_pdf(world, out.getvalue()))["signatures"]
    assert (signature["intact"], signature["level"]) == (True, "B-T")


async def test_a_cms_encapsulating_a_time_stamp_token_is_verified(world: World) -> None:
    """An RFC 3161 token is a CMS whose content is a TSTInfo, not data: its digest is over
    the encapsulated octets, and it verifies."""
    token = await world.services.timestamps.issue(
        TimeStampQuery.for_digest(hashlib.sha256(b"x").digest(), "sha256"))
    body = await verify_cms(world, token.dump(), None)
    [signature] = body["signatures"]
    assert signature["intact"] is True, signature


async def test_a_pdf_sent_as_any_bytes_is_verified_as_a_pdf(signer_world: SignerWorld) -> None:
    """Like sign/pdf and the receipt check, /v1/verify takes a PDF sent as
    application/octet-stream (what many clients send for bytes)."""
    world, seal, headers = signer_world
    document = await sealed_pdf(world, seal, headers)
    response = await world.http.post("/v1/verify", data=document,
                                     headers={"Content-Type": "application/octet-stream"})
    assert response.status == 200, await response.text()
    assert (await response.json())["valid"] is True


@pytest.mark.parametrize("path", ["/v1/keys", "/v1/verify", "/v1/receipts/verify"])
async def test_json_that_does_not_parse_is_400_everywhere(world: World, path: str) -> None:
    _, officer = await world.client("key_officer")
    response = await world.http.post(path, data=b"{bad", headers={
        **officer, "Content-Type": "application/json"})
    await assert_problem(response, 400, "bad-request")


async def test_an_endpoint_s_own_body_limit_never_exceeds_the_server_s(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """The receipt check takes receipts up to 8 MiB, but never more than
    ``[server] max_body_bytes``: anyone may call it."""
    small = settings.replace(server=dataclasses.replace(settings.server, max_body_bytes=4096))
    async with World.running(small, hsm, dev_ca) as world:
        response = await world.http.post("/v1/receipts/verify", data=b"{" + b" " * 5000 + b"}",
                                         headers={"Content-Type": "application/json"})
        await assert_problem(response, 413, "payload-too-large")
