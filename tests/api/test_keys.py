"""The key lifecycle over HTTP: generate, CSR, certificate import and its refusals, disable,
rotation of a seal to a new key, and per-key usage limits shared by gateway instances."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import NotFound
from gateway.hsm import Hsm, KeyAlgorithm
from gateway.pki.certs import chain_to_pem
from gateway.pki.devca import PLATFORM_PROFILE, TSA_PROFILE, CertificateProfile, DevCA
from gateway.settings import Settings
from gateway.signing.tsa import TimeStampQuery
from tests.api.conftest import APPLICANT, LEGAL_REPRESENTATIVE, ORGANIZATION, World
from tests.api.test_sign_pdf import assert_problem, sign_path
from tests.pdf_samples import one_page_pdf

PDF = {"Content-Type": "application/pdf"}
PEM = {"Content-Type": "application/x-pem-file"}
ENCIPHERMENT_ONLY = CertificateProfile("encipherment", {"key_encipherment": True})
SIGNATURE_ONLY = CertificateProfile("signature", {"digital_signature": True})
TIME_STAMPING_ONLY = CertificateProfile(
    "time-stamping", {"digital_signature": True, "content_commitment": True},
    (ExtendedKeyUsageOID.TIME_STAMPING,), eku_critical=True)
NO_REPUDIATION = ("the leaf certificate lacks nonRepudiation (contentCommitment) in its key "
                  "usage, which validators require of a document signer")


async def officer(world: World) -> dict[str, str]:
    return (await world.client("key_officer"))[1]


async def create_key(world: World, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await world.http.post("/v1/keys", json={"label": "合同专用章密钥",
                                                        "algorithm": "ec-p256", **body},
                                      headers=headers)
    assert response.status == 201, await response.text()
    created: dict[str, Any] = await response.json()
    return created


def certificate_for(world: World, key: dict[str, Any], **issue: Any) -> bytes:
    public_der = world.services.keys.public_key_der(key)
    cert = world.ca.issue(public_der, "测试合同专用章", ORGANIZATION["name"], **issue)
    return chain_to_pem([cert, world.ca.certificate]).encode()


async def sealing_key(world: World, receipt_id: str) -> str:
    return str((await world.services.sealing.sealing_receipt(receipt_id))["key_id"])


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
async def test_keys_are_generated_in_the_hsm_sensitive_and_never_extractable(
    world: World, hsm: Hsm, algorithm: KeyAlgorithm
) -> None:
    """POST /v1/keys makes a key pair on the token whose private half can never leave it."""
    headers = await officer(world)
    key = await create_key(world, headers, algorithm=algorithm.value)
    assert key["status"] == "enabled"
    assert key["algorithm"] == algorithm.value
    assert set(key) >= {"id", "label", "algorithm", "public_key_pem", "status", "created_at"}
    public = serialization.load_pem_public_key(key["public_key_pem"].encode())
    size = algorithm.rsa_bits if algorithm.is_rsa else {"ec-p256": 256, "ec-p384": 384}[algorithm]
    assert public.key_size == size  # type: ignore[union-attr]
    attributes = await hsm.key_attributes(uuid.UUID(key["id"]).bytes)
    assert attributes == {"sensitive": True, "extractable": False, "always_sensitive": True,
                          "never_extractable": True, "private": True, "sign": True,
                          "sign_recover": False, "decrypt": False, "unwrap": False,
                          "derive": False}
    fetched = await world.http.get(f"/v1/keys/{key['id']}", headers=headers)
    assert (await fetched.json())["public_key_pem"] == key["public_key_pem"]


async def test_csr_carries_the_subject_and_is_signed_by_the_hsm_key(world: World) -> None:
    """The CSR names the subject given and verifies under the key's own public key."""
    headers = await officer(world)
    key = await create_key(world, headers, algorithm="rsa-2048")
    response = await world.http.post(f"/v1/keys/{key['id']}/csr", headers=headers, json={
        "subject": {"common_name": "示例科技有限公司合同专用章", "organization": "示例科技有限公司",
                    "country": "CN"}})
    assert response.status == 200, await response.text()
    assert response.content_type == "application/pkcs10"
    csr = x509.load_pem_x509_csr(await response.read())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == \
        "示例科技有限公司合同专用章"
    assert csr.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode() == key["public_key_pem"]


@pytest.mark.parametrize(
    ("subject", "field"),
    [
        ({"organization": "x"}, "subject.common_name"),
        ({"common_name": {"a": 1}}, "subject.common_name"),
        ({"common_name": "章" * 65}, "subject.common_name"),
        ({"common_name": "x", "locality": 7}, "subject.locality"),
        ({"common_name": "x", "serial_number": "证书01"}, "subject.serial_number"),
        ({"common_name": "x", "serial_number": "\U000bdfe5"}, "subject.serial_number"),
        ({"common_name": "x", "country": "ÄÖ"}, "subject.country"),
    ],
    ids=["missing", "not-a-string", "past-the-rfc-5280-bound", "number",
         "serial-not-printable", "serial-past-latin-1", "country-not-printable"],
)
async def test_a_bad_csr_subject_is_422_naming_the_field(
    world: World, subject: dict[str, Any], field: str
) -> None:
    """A missing common name, a value that is not a string or one longer than RFC 5280's
    upper bound: each refused naming the field, instead of a CSR a CA would refuse."""
    headers = await officer(world)
    key = await create_key(world, headers)
    response = await world.http.post(f"/v1/keys/{key['id']}/csr", headers=headers,
                                     json={"subject": subject})
    body = await assert_problem(response, 422, "validation-failed")
    assert body["errors"][0]["field"] == field


async def test_valid_certificate_chain_is_imported(world: World) -> None:
    """A leaf for this key, valid now and for signing, is attached with its summary."""
    headers = await officer(world)
    key = await create_key(world, headers)
    response = await world.http.put(f"/v1/keys/{key['id']}/certificate",
                                    data=certificate_for(world, key), headers={**headers, **PEM})
    assert response.status == 200, await response.text()
    certificate = (await response.json())["certificate"]
    assert set(certificate) == {"serial", "subject", "issuer", "sha256", "not_before",
                                "not_after"}
    events = await world.services.storage.events()
    assert events[-1]["action"] == "key.certificate_imported"
    assert events[-1]["details"]["sha256"] == certificate["sha256"]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.mark.parametrize(
    ("make_chain", "rule"),
    [
        (lambda world, key, other: certificate_for(world, other),
         "the leaf certificate's public key is not this key's public key"),
        (lambda world, key, other: certificate_for(
            world, key, not_before=_now() - dt.timedelta(days=10), days=1),
         "the leaf certificate has expired"),
        (lambda world, key, other: certificate_for(
            world, key, not_before=_now() + dt.timedelta(days=1)),
         "the leaf certificate is not valid yet"),
        (lambda world, key, other: certificate_for(world, key, profile=ENCIPHERMENT_ONLY),
         NO_REPUDIATION),
        (lambda world, key, other: certificate_for(world, key, profile=SIGNATURE_ONLY),
         NO_REPUDIATION),
        (lambda world, key, other: certificate_for(world, key, profile=TIME_STAMPING_ONLY),
         "the leaf certificate is for time-stamping only"),
        (lambda world, key, other: certificate_for(world, key)
         + certificate_for(world, other).split(b"-----END CERTIFICATE-----")[0]
         + b"-----END CERTIFICATE-----\n",
         "the chain is not in order (each certificate's issuer must follow it)"),
    ],
    ids=["wrong-key", "expired", "not-yet-valid", "no-signing-usage", "signature-only",
         "time-stamping-only", "misordered"],
)
async def test_certificate_import_refuses_a_broken_leaf_naming_the_rule(
    world: World, make_chain: Any, rule: str
) -> None:
    """Wrong key, expired, not yet valid, or no signing usage: 422 naming the rule."""
    headers = await officer(world)
    key = await create_key(world, headers)
    other = await create_key(world, headers)
    response = await world.http.put(f"/v1/keys/{key['id']}/certificate",
                                    data=make_chain(world, key, other),
                                    headers={**headers, **PEM})
    body = await assert_problem(response, 422, "validation-failed")
    assert body["errors"] == [{"field": "certificate", "message": rule}]
    stored = await world.services.keys.get(key["id"])
    assert stored["certificate"] is None


async def test_certificate_import_refuses_a_chain_link_another_ca_signed(
    world: World, tmp_path: Path
) -> None:
    """A CA with the same name as the real one but another key: the names chain, the
    signatures do not, and the import says which certificate is not signed."""
    headers = await officer(world)
    key = await create_key(world, headers)
    impostor = DevCA.open_or_create(tmp_path / "impostor", world.ca.certificate.subject
                                    .get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    assert impostor.certificate.subject == world.ca.certificate.subject
    leaf = impostor.issue(world.services.keys.public_key_der(key), "测试合同专用章",
                          ORGANIZATION["name"])
    response = await world.http.put(
        f"/v1/keys/{key['id']}/certificate",
        data=chain_to_pem([leaf, world.ca.certificate]).encode(), headers={**headers, **PEM})
    body = await assert_problem(response, 422, "validation-failed")
    assert "is not signed by the certificate that follows it" in body["errors"][0]["message"]


async def test_disabled_key_signs_nothing(world: World) -> None:
    """After POST /v1/keys/{id}/disable the seal's signing is refused with seal-key-disabled."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    _, signer = await world.client("signer", [seal["id"]])
    headers = await officer(world)
    disabled = await world.http.post(f"/v1/keys/{seal['key_id']}/disable", headers=headers)
    assert (await disabled.json())["status"] == "disabled"
    response = await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                                     headers={**signer, **PDF})
    await assert_problem(response, 409, "seal-key-disabled")
    again = await world.http.post(f"/v1/keys/{seal['key_id']}/disable", headers=headers)
    await assert_problem(again, 409, "conflict")


async def test_auditor_reads_keys_but_changes_none(world: World) -> None:
    """Auditors may list keys; creating one is 403."""
    _, auditor = await world.client("auditor")
    assert (await world.http.get("/v1/keys", headers=auditor)).status == 200
    response = await world.http.post("/v1/keys", json={"label": "x", "algorithm": "ec-p256"},
                                     headers=auditor)
    await assert_problem(response, 403, "forbidden")


async def test_rotation_moves_signing_to_the_new_key_without_a_gap(world: World) -> None:
    """Signing never stops during rotation; then the new key signs, the old one is history."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    old_key = seal["key_id"]
    new_key = (await world.key(KeyAlgorithm.EC_P256))["id"]
    _, signer = await world.client("signer", [seal["id"]])
    headers = await officer(world)

    async def sign() -> Any:
        return await world.http.post(sign_path(seal["id"]) + "?visible=false",
                                     data=one_page_pdf(), headers={**signer, **PDF})

    async def rotate() -> Any:
        return await world.http.post(f"/v1/seals/{seal['id']}/rotate-key",
                                     json={"key_id": new_key}, headers=headers)

    *during, rotated = await asyncio.gather(*(sign() for _ in range(6)), rotate())
    assert rotated.status == 200, await rotated.text()
    assert [r.status for r in during] == [200] * 6
    used = {await sealing_key(world, r.headers["Sealgate-Receipt"]) for r in during}
    assert used <= {old_key, new_key}

    body = await rotated.json()
    assert body["key_id"] == new_key
    assert [h["key_id"] for h in body["key_history"]] == [old_key]
    after = await sign()
    assert await sealing_key(world, after.headers["Sealgate-Receipt"]) == new_key
    assert (await world.services.keys.get(old_key))["status"] == "enabled"
    event = [e for e in await world.services.storage.events() if
             e["action"] == "seal.key_rotated"][-1]
    assert event["details"]["from_key"] == old_key
    assert event["details"]["to_key"] == new_key


async def test_rotation_refuses_keys_that_cannot_sign_for_the_seal(world: World) -> None:
    """No certificate, disabled, the same key, or another seal's key: each refused by name."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    other_seal = await world.draft_seal(KeyAlgorithm.EC_P256)
    headers = await officer(world)
    bare = await world.services.keys.create("bare", "ec-p256", "test")
    disabled = await world.key(KeyAlgorithm.EC_P256)
    await world.services.keys.disable(disabled["id"], "test")
    path = f"/v1/seals/{seal['id']}/rotate-key"
    for key_id, message in (
        (bare["id"], "the key has no certificate valid now"),
        (disabled["id"], "the key is disabled"),
        (seal["key_id"], "is the seal's current key already"),
        (str(uuid.uuid4()), "names no key"),
    ):
        response = await world.http.post(path, json={"key_id": key_id}, headers=headers)
        body = await assert_problem(response, 422, "validation-failed")
        assert body["errors"] == [{"field": "key_id", "message": message}]
    taken = await world.http.post(path, json={"key_id": other_seal["key_id"]}, headers=headers)
    body = await assert_problem(taken, 409, "conflict")
    assert other_seal["id"] in body["detail"]
    _, signer = await world.client("signer", [seal["id"]])
    forbidden = await world.http.post(path, json={"key_id": bare["id"]}, headers=signer)
    await assert_problem(forbidden, 403, "forbidden")


async def test_a_new_seal_takes_only_a_key_no_seal_or_platform_has(world: World) -> None:
    """POST /v1/seals refuses the platform's keys and a key another seal has or had, and of
    two seals created at once with one key, only one gets it."""
    _, filer = await world.client("filer")
    existing = await world.draft_seal(KeyAlgorithm.EC_P256)

    async def create(key_id: str) -> Any:
        return await world.http.post("/v1/seals", headers=filer, json={
            "name": "合同专用章", "type": "04", "organization": ORGANIZATION, "key_id": key_id})

    for key_id in sorted(await world.services.keys.platform_key_ids()):
        body = await assert_problem(await create(key_id), 409, "conflict")
        assert "platform" in body["detail"]
    body = await assert_problem(await create(existing["key_id"]), 409, "conflict")
    assert existing["id"] in body["detail"]

    free = (await world.key(KeyAlgorithm.EC_P256))["id"]
    answers = await asyncio.gather(create(free), create(free))
    assert sorted(r.status for r in answers) == [201, 409]
    seals = [s for s in await world.services.storage.list("seal") if s.data["key_id"] == free]
    assert len(seals) == 1


async def test_usage_limit_is_validated(world: World) -> None:
    """usage_limit must be a whole number above zero."""
    headers = await officer(world)
    for bad in (0, -1, "3", True, 1.5):
        response = await world.http.post(
            "/v1/keys", json={"label": "x", "algorithm": "ec-p256", "usage_limit": bad},
            headers=headers)
        body = await assert_problem(response, 422, "validation-failed")
        assert body["errors"][0]["field"] == "usage_limit"


async def limited_seal(world: World, limit: int) -> dict[str, Any]:
    """An active seal whose key may make ``limit`` signatures."""
    key = await world.services.keys.create("limited", "ec-p256", "test", usage_limit=limit)
    await world.services.keys.import_certificate(key["id"], certificate_for(world, key), "test")
    seal = await world.services.seals.create(
        {"name": "合同专用章", "type": "04", "organization": ORGANIZATION, "key_id": key["id"]},
        "test")
    await world.services.filings.file_and_approve_locally(
        seal["id"], APPLICANT, LEGAL_REPRESENTATIVE, "test")
    return (await world.services.seals.record(seal["id"])).data


async def test_usage_limit_holds_across_two_gateway_instances(
    world: World, settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """Two instances on one database sign at most usage_limit times together, even at once."""
    seal = await limited_seal(world, 3)
    _, signer = await world.client("signer", [seal["id"]])
    async with World.running(settings, hsm, dev_ca) as second:
        requests = [instance.http.post(sign_path(seal["id"]) + "?visible=false",
                                       data=one_page_pdf(), headers={**signer, **PDF})
                    for instance in (world, second) * 3]
        responses = await asyncio.gather(*requests)
        statuses = sorted(r.status for r in responses)
        assert statuses == [200, 200, 200, 409, 409, 409]
        for response in responses:
            if response.status == 409:
                await assert_problem(response, 409, "seal-key-usage-exhausted")
        usage = await second.http.get(f"/v1/keys/{seal['key_id']}/usage",
                                      headers=await officer(second))
        assert await usage.json() == {"usage_limit": 3, "usage_count": 3}


async def test_a_refused_document_uses_none_of_the_usage_budget(world: World) -> None:
    """Bad options, a damaged PDF and a page it lacks are refused before the HSM signs, and
    leave the budget whole: the one signature a key may make still goes to a good request."""
    seal = await limited_seal(world, 1)
    _, signer = await world.client("signer", [seal["id"]])
    headers = {**signer, **PDF}
    path = sign_path(seal["id"])
    for query, body, status, slug in (
        ("?level=B-X", one_page_pdf(), 422, "validation-failed"),
        ("", b"%PDF-1.7\n" + bytes(200), 422, "bad-document"),
        ("?page=9", one_page_pdf(), 422, "validation-failed"),
    ):
        response = await world.http.post(path + query, data=body, headers=headers)
        await assert_problem(response, status, slug)
    assert (await world.http.post(path, data=one_page_pdf(), headers=headers)).status == 200
    spent = await world.http.post(path, data=one_page_pdf(), headers=headers)
    await assert_problem(spent, 409, "seal-key-usage-exhausted")


async def test_usage_endpoint_is_null_without_a_limit(world: World) -> None:
    """A key without a usage limit reports neither limit nor count."""
    headers = await officer(world)
    key = await create_key(world, headers)
    usage = await world.http.get(f"/v1/keys/{key['id']}/usage", headers=headers)
    assert await usage.json() == {"usage_limit": None, "usage_count": None}


async def test_unknown_key_is_404(world: World, hsm: Hsm) -> None:
    """Reading, disabling or certifying a key that does not exist is 404."""
    headers = await officer(world)
    missing = str(uuid.uuid4())
    for response in (await world.http.get(f"/v1/keys/{missing}", headers=headers),
                     await world.http.post(f"/v1/keys/{missing}/disable", headers=headers)):
        await assert_problem(response, 404, "not-found")
    with pytest.raises(NotFound):
        await hsm.key_attributes(uuid.UUID(missing).bytes)


async def test_renewed_platform_and_tsa_certificates_are_used_from_the_next_signature(
    world: World,
) -> None:
    """The platform's receipt and time-stamping keys get new certificates while the gateway
    runs: the next receipt names the new receipt certificate, the next time-stamp token
    carries the new TSA certificate, and the earlier receipt still verifies."""
    services = world.services
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    earlier = await services.receipts.get(seal["receipt_number"])
    await services.timestamps.issue(TimeStampQuery.for_digest(bytes(32), "sha256"))

    renewed = []
    for record, profile in ((await services.keys.platform_key(), PLATFORM_PROFILE),
                            (await services.keys.tsa_key(), TSA_PROFILE)):
        assert record is not None
        certificate = world.ca.issue(services.keys.public_key_der(record), "Renewed",
                                     "SealGate Platform", profile=profile)
        await services.keys.import_certificate(
            record["id"], chain_to_pem([certificate, world.ca.certificate]).encode(), "test")
        renewed.append(certificate.public_bytes(serialization.Encoding.DER))
    platform_certificate, tsa_certificate = renewed

    jws = await services.platform.sign({"n": 1})
    header = json.loads(base64.urlsafe_b64decode(jws.split(".")[0] + "=="))
    assert base64.b64decode(header["x5c"][0]) == platform_certificate
    token = await services.timestamps.issue(TimeStampQuery.for_digest(bytes(32), "sha256"))
    carried = [c.chosen.dump() for c in token["content"]["certificates"]]
    assert tsa_certificate in carried
    verdict = await services.receipts.verify_json(earlier, dt.datetime.now(dt.UTC))
    assert verdict["status"] == "current", verdict


@pytest.mark.parametrize("status", ["lost", "cancelled"])
async def test_a_lost_or_cancelled_seal_keeps_its_key(world: World, status: str) -> None:
    """A lost seal is only ever cancelled, and a cancelled one is done: their keys may not
    be rotated."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    record = await world.services.seals.record(seal["id"])
    await world.services.seals.update(record, {"status": status})
    new_key = await world.key(KeyAlgorithm.EC_P256)
    refused = await world.http.post(f"/v1/seals/{seal['id']}/rotate-key",
                                    json={"key_id": new_key["id"]}, headers=await officer(world))
    await assert_problem(refused, 409, "conflict")
    assert (await world.services.seals.record(seal["id"])).data["key_id"] == seal["key_id"]


async def test_a_label_that_is_not_text_is_refused(world: World) -> None:
    """A label sent as a list, number or object is 422 naming it, not stored as its Python
    spelling ("[None, None]") on the key and in the HSM."""
    headers = await officer(world)
    for bad in ([None, None], 7, {"a": "b"}):
        response = await world.http.post(
            "/v1/keys", json={"label": bad, "algorithm": "ec-p256"}, headers=headers)
        body = await assert_problem(response, 422, "validation-failed")
        assert body["errors"][0]["field"] == "label"
    assert [k for k in (await world.services.keys.list()) if k["label"] == "[None, None]"] == []
