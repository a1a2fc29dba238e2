"""POST /v1/seals/{id}/sign/hash over HTTP: batches verified with cryptography, and refusals."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from prometheus_client import REGISTRY

from gateway.errors import HsmUnavailable
from gateway.hsm import Hsm, KeyAlgorithm
from gateway.pki.devca import DevCA
from gateway.settings import Settings
from tests.api.conftest import World
from tests.api.test_sign_pdf import assert_problem

SignerWorld = tuple[World, dict[str, Any], dict[str, str]]
HASHES = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}
SIGNATURE_OIDS = {
    (True, "sha256"): "1.2.840.113549.1.1.11", (True, "sha384"): "1.2.840.113549.1.1.12",
    (True, "sha512"): "1.2.840.113549.1.1.13", (False, "sha256"): "1.2.840.10045.4.3.2",
    (False, "sha384"): "1.2.840.10045.4.3.3", (False, "sha512"): "1.2.840.10045.4.3.4",
}


def sign_path(seal_id: str) -> str:
    return f"/v1/seals/{seal_id}/sign/hash"


def digests_of(hash_name: str, count: int) -> list[bytes]:
    return [hashlib.new(hash_name, f"document {i}".encode()).digest() for i in range(count)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def verify(certificate: x509.Certificate, signature: bytes, digest: bytes, hash_name: str) -> None:
    """Raise InvalidSignature unless ``signature`` is over the pre-computed ``digest``."""
    key = certificate.public_key()
    prehashed = Prehashed(HASHES[hash_name])
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, digest, padding.PKCS1v15(), prehashed)
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(signature, digest, ec.ECDSA(prehashed))


def hsm_sign_hops() -> float:
    """How many times this process has gone to the HSM thread to sign."""
    return REGISTRY.get_sample_value(
        "sealgate_hsm_operation_seconds_count", {"operation": "sign"}) or 0.0


@pytest.mark.interop
@pytest.mark.parametrize("algorithm", [KeyAlgorithm.RSA_2048, KeyAlgorithm.EC_P256], ids=str)
@pytest.mark.parametrize("hash_name", list(HASHES))
async def test_each_signature_verifies_against_the_certificate_in_order(
    world: World, algorithm: KeyAlgorithm, hash_name: str
) -> None:
    """Every signature verifies with cryptography over its own digest, in request order."""
    seal = await world.active_seal(algorithm)
    _, headers = await world.client("signer", [seal["id"]])
    digests = digests_of(hash_name, 5)
    response = await world.http.post(sign_path(seal["id"]), headers=headers, json={
        "hash_algorithm": hash_name, "hashes": [b64(d) for d in digests]})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["signature_algorithm"] == SIGNATURE_OIDS[(algorithm.is_rsa, hash_name)]
    chain = [x509.load_der_x509_certificate(base64.b64decode(c))
             for c in body["certificate_chain"]]
    assert chain[1].subject == world.ca.certificate.subject
    signatures = [base64.b64decode(s) for s in body["signatures"]]
    assert len(signatures) == len(digests)
    for signature, digest in zip(signatures, digests, strict=True):
        verify(chain[0], signature, digest, hash_name)


async def test_a_batch_is_one_hop_to_the_hsm(signer_world: SignerWorld) -> None:
    """All digests of a request are signed in a single call on the HSM thread."""
    world, seal, headers = signer_world
    before = hsm_sign_hops()
    response = await world.http.post(sign_path(seal["id"]), headers=headers, json={
        "hash_algorithm": "sha256", "hashes": [b64(d) for d in digests_of("sha256", 8)]})
    assert response.status == 200, await response.text()
    assert hsm_sign_hops() - before == 1


async def test_a_batch_while_the_token_is_gone_is_503_and_recovers(
    signer_world: SignerWorld, token_dir: Path
) -> None:
    """Batches sign with a session copy of the key (SoftHSM); the copy outlives the token's
    files, but the batch checks the token first, so a token that is gone is an outage for
    batches as for single signatures, and after it returns batches sign again."""
    world, seal, headers = signer_world
    batch = {"hash_algorithm": "sha256", "hashes": [b64(d) for d in digests_of("sha256", 4)]}
    assert (await world.http.post(sign_path(seal["id"]), headers=headers, json=batch)).status \
        == 200
    tokens, away = token_dir / "tokens", token_dir / "tokens.away"
    tokens.rename(away)
    try:
        response = await world.http.post(sign_path(seal["id"]), headers=headers, json=batch)
        await assert_problem(response, 503, "hsm-unavailable")
    finally:
        away.rename(tokens)
    for _ in range(50):
        response = await world.http.post(sign_path(seal["id"]), headers=headers, json=batch)
        if response.status == 200:
            break
        await asyncio.sleep(0.1)
    assert response.status == 200, await response.text()


async def test_receipt_lists_the_digests(signer_world: SignerWorld) -> None:
    """The sealing receipt (body and header) records the batch's digests and algorithm."""
    world, seal, headers = signer_world
    digests = digests_of("sha384", 3)
    response = await world.http.post(sign_path(seal["id"]), headers=headers, json={
        "hash_algorithm": "SHA384", "hashes": [b64(d) for d in digests]})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["sealing_receipt"] == response.headers["Sealgate-Receipt"]
    receipt = await (await world.http.get(
        f"/v1/sealing-receipts/{body['sealing_receipt']}", headers=headers)).json()
    assert receipt["format"] == "hash"
    assert receipt["hash_algorithm"] == "sha384"
    assert receipt["count"] == 3
    assert receipt["digests_sha256"] == [d.hex() for d in digests]
    events = await world.services.storage.events(since_seq=receipt["audit_seq"] - 1, limit=1)
    assert events[0]["details"]["sealing_receipt"] == body["sealing_receipt"]


@pytest.mark.parametrize(
    ("hashes", "field"),
    [
        ([], "hashes"),
        (None, "hashes"),
        ("not-a-list", "hashes"),
        ([b64(bytes(32))] * 3 + [b64(bytes(31))], "hashes[3]"),
        ([b64(bytes(32)), "%%%not base64%%%"], "hashes[1]"),
        ([b64(bytes(32)), 42], "hashes[1]"),
    ],
    ids=["empty", "missing", "not-array", "short-digest", "bad-base64", "not-string"],
)
async def test_bad_hashes_are_422_naming_the_field_or_index(
    signer_world: SignerWorld, hashes: Any, field: str
) -> None:
    """An empty or missing list names ``hashes``; a bad element names its index."""
    world, seal, headers = signer_world
    body: dict[str, Any] = {"hash_algorithm": "sha256"}
    if hashes is not None:
        body["hashes"] = hashes
    response = await world.http.post(sign_path(seal["id"]), headers=headers, json=body)
    problem = await assert_problem(response, 422, "validation-failed")
    assert [e["field"] for e in problem["errors"]] == [field]


@pytest.mark.parametrize("name", ["md5", "", None])
async def test_unknown_hash_algorithm_is_422(signer_world: SignerWorld, name: Any) -> None:
    """Only sha256, sha384 and sha512 are accepted."""
    world, seal, headers = signer_world
    response = await world.http.post(sign_path(seal["id"]), headers=headers, json={
        "hash_algorithm": name, "hashes": [b64(bytes(32))]})
    problem = await assert_problem(response, 422, "validation-failed")
    assert [e["field"] for e in problem["errors"]] == ["hash_algorithm"]


async def test_batch_over_the_configured_size_is_422(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """signing.max_hash_batch digests are signed; one more is refused naming ``hashes``."""
    limited = settings.replace(signing=dataclasses.replace(settings.signing, max_hash_batch=4))
    async with World.running(limited, hsm, dev_ca) as world:
        seal = await world.active_seal(KeyAlgorithm.EC_P256)
        _, headers = await world.client("signer", [seal["id"]])
        full = await world.http.post(sign_path(seal["id"]), headers=headers, json={
            "hash_algorithm": "sha256", "hashes": [b64(d) for d in digests_of("sha256", 4)]})
        assert full.status == 200
        over = await world.http.post(sign_path(seal["id"]), headers=headers, json={
            "hash_algorithm": "sha256", "hashes": [b64(d) for d in digests_of("sha256", 5)]})
        problem = await assert_problem(over, 422, "validation-failed")
        assert [e["field"] for e in problem["errors"]] == ["hashes"]


async def test_seal_without_grant_is_404(signer_world: SignerWorld) -> None:
    """A signer without a grant for the seal cannot learn that it exists."""
    world, seal, _ = signer_world
    _, stranger = await world.client("signer", [])
    response = await world.http.post(sign_path(seal["id"]), headers=stranger, json={
        "hash_algorithm": "sha256", "hashes": [b64(bytes(32))]})
    await assert_problem(response, 404, "not-found")


@pytest.mark.parametrize(
    "body", [b"[" * 100_000 + b"]" * 100_000, b'{"hashes": ' + b"9" * 5000 + b"}"],
    ids=["nested-past-the-recursion-limit", "integer-past-the-conversion-limit"],
)
async def test_json_the_decoder_cannot_read_is_4xx_on_every_json_endpoint(
    signer_world: SignerWorld, body: bytes
) -> None:
    """Well-formed JSON that json.loads still refuses is the client's problem everywhere,
    anonymous verification endpoints included, never a 500: 400, as any unreadable JSON."""
    world, seal, headers = signer_world
    json_type = {"Content-Type": "application/json"}
    signed = await world.http.post(sign_path(seal["id"]), data=body,
                                   headers={**headers, **json_type})
    await assert_problem(signed, 400, "bad-request")
    for path in ("/v1/verify", "/v1/receipts/verify"):
        response = await world.http.post(path, data=body, headers=json_type)
        await assert_problem(response, 400, "bad-request")
    csc = await world.http.post("/csc/v1/signatures/signHash", data=body,
                                headers={**headers, **json_type})
    assert csc.status == 400
    assert (await csc.json())["error"] == "invalid_request"


async def test_an_hsm_that_stops_answering_is_down_in_the_metrics_until_it_answers(
    signer_world: SignerWorld, hsm: Hsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PKCS#11 call that hangs: signing answers 503 after the operation timeout, and
    sealgate_hsm_up is 0 (the HsmDown alert reads it) until a call completes again."""
    world, seal, headers = signer_world
    monkeypatch.setattr(hsm.token, "_settings", dataclasses.replace(
        hsm.token._settings, operation_timeout_seconds=0.3))
    release = threading.Event()
    stuck = asyncio.ensure_future(hsm.token.run("stuck", lambda _session: release.wait(10)))
    try:
        await asyncio.sleep(0.1)
        body = {"hash_algorithm": "sha256", "hashes": [b64(digests_of("sha256", 1)[0])]}
        response = await world.http.post(sign_path(seal["id"]), headers=headers, json=body)
        await assert_problem(response, 503, "hsm-unavailable")
        assert REGISTRY.get_sample_value("sealgate_hsm_up") == 0
    finally:
        release.set()
        with pytest.raises(HsmUnavailable):
            await stuck
    response = await world.http.post(sign_path(seal["id"]), headers=headers, json=body)
    assert response.status == 200, await response.text()
    assert REGISTRY.get_sample_value("sealgate_hsm_up") == 1


async def test_a_failure_nobody_foresaw_is_counted_as_a_signing_error(
    signer_world: SignerWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A defect in the signing path (an exception no layer knows) answers 500 and is
    counted with reason internal-error, which the signing error ratio alert reads."""
    world, seal, headers = signer_world

    async def defect(*_args: object, **_kwargs: object) -> list[bytes]:
        raise RuntimeError("a defect")

    monkeypatch.setattr(world.services.sealing._hsm, "sign_digests", defect)
    labels = {"format": "hash", "reason": "internal-error"}
    before = REGISTRY.get_sample_value("sealgate_signing_errors_total", labels) or 0.0
    body = {"hash_algorithm": "sha256", "hashes": [b64(d) for d in digests_of("sha256", 2)]}
    response = await world.http.post(sign_path(seal["id"]), headers=headers, json=body)
    await assert_problem(response, 500, "internal-error")
    assert REGISTRY.get_sample_value("sealgate_signing_errors_total", labels) == before + 1
