"""The CSC API v1 over HTTP: credentials within grants, SAD binding and spending, CSC errors."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from gateway.hsm import Hsm, KeyAlgorithm
from gateway.keys.registry import usage_counter
from gateway.pki.devca import DevCA
from gateway.settings import Settings
from tests.api.conftest import APPLICANT, LEGAL_REPRESENTATIVE, ORGANIZATION, World
from tests.conftest import on_redis
from tests.redis_server import RedisServer

SHA256 = "2.16.840.1.101.3.4.2.1"
SHA384 = "2.16.840.1.101.3.4.2.2"
ECDSA_SHA256 = "1.2.840.10045.4.3.2"
RSA_SHA256 = "1.2.840.113549.1.1.11"
RSA = "1.2.840.113549.1.1.1"
RSA_PSS = "1.2.840.113549.1.1.10"
Credential = tuple[World, dict[str, Any], dict[str, str]]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


async def csc(world: World, method: str, headers: dict[str, str], body: dict[str, Any],
              status: int = 200) -> dict[str, Any]:
    """POST a CSC method; check the status; return the JSON body."""
    response = await world.http.post(f"/csc/v1/{method}", headers=headers, json=body)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    answer: dict[str, Any] = await response.json()
    return answer


async def csc_error(world: World, method: str, headers: dict[str, str], body: dict[str, Any],
                    status: int = 400, error: str = "invalid_request") -> str:
    """The call fails with a CSC error object of this status and code; its description."""
    answer = await csc(world, method, headers, body, status)
    assert set(answer) == {"error", "error_description"}, answer
    assert answer["error"] == error
    description: str = answer["error_description"]
    return description


async def authorize(world: World, headers: dict[str, str], seal_id: str,
                    digests: list[bytes]) -> str:
    answer = await csc(world, "credentials/authorize", headers, {
        "credentialID": seal_id, "numSignatures": len(digests),
        "hash": [b64(d) for d in digests]})
    sad: str = answer["SAD"]
    return sad


def sign_body(seal_id: str, sad: str, digests: list[bytes]) -> dict[str, Any]:
    return {"credentialID": seal_id, "SAD": sad, "hash": [b64(d) for d in digests],
            "hashAlgo": SHA256, "signAlgo": ECDSA_SHA256}


@pytest.fixture
async def credential(world: World) -> Credential:
    """An active EC P-256 seal and a signer granted it."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    _, headers = await world.client("signer", [seal["id"]])
    return world, seal, headers


async def test_info_needs_no_token_and_names_v1_methods(world: World) -> None:
    """info answers anyone with specs 1.0.4.0 and the implemented methods."""
    answer = await csc(world, "info", {}, {})
    assert answer["specs"] == "1.0.4.0"
    assert set(answer["methods"]) == {"credentials/list", "credentials/info",
                                      "credentials/authorize", "signatures/signHash"}


async def test_a_client_without_grant_sees_no_credentials(credential: Credential) -> None:
    """credentials/list shows granted seals only; info on another's seal is refused."""
    world, seal, headers = credential
    assert (await csc(world, "credentials/list", headers, {}))["credentialIDs"] == [seal["id"]]
    _, stranger = await world.client("signer", [])
    assert (await csc(world, "credentials/list", stranger, {}))["credentialIDs"] == []
    description = await csc_error(world, "credentials/info", stranger,
                                  {"credentialID": seal["id"]})
    assert "credentialID" in description
    await csc_error(world, "credentials/authorize", stranger, {
        "credentialID": seal["id"], "numSignatures": 1, "hash": [b64(digest("x"))]})


async def test_credentials_list_pages(world: World) -> None:
    """maxResults and nextPageToken walk through every granted seal once."""
    seals = [await world.active_seal(KeyAlgorithm.EC_P256) for _ in range(3)]
    _, headers = await world.client("signer", [s["id"] for s in seals])
    first = await csc(world, "credentials/list", headers, {"maxResults": 2})
    second = await csc(world, "credentials/list", headers,
                       {"maxResults": 2, "pageToken": first["nextPageToken"]})
    assert "nextPageToken" not in second
    assert first["credentialIDs"] + second["credentialIDs"] == [s["id"] for s in seals]


@pytest.mark.parametrize("token", ["²", "١", "-1", "1.0"])
async def test_a_page_token_of_other_than_ascii_digits_is_invalid(world: World,
                                                                 token: str) -> None:
    """pageToken is the decimal offset the gateway gave: a superscript or Arabic-Indic digit
    (digits to Python's isdigit) is 400, not a 500 or another page."""
    _, headers = await world.client("signer")
    description = await csc_error(world, "credentials/list", headers,
                                  {"maxResults": 1, "pageToken": token})
    assert "pageToken" in description


async def test_credentials_info_describes_key_certificates_and_scal(
    credential: Credential,
) -> None:
    """Key algorithms as OIDs, the chain signer first, SCAL 2 and the batch size."""
    world, seal, headers = credential
    answer = await csc(world, "credentials/info", headers, {
        "credentialID": seal["id"], "certificates": "chain", "certInfo": True,
        "authInfo": True})
    assert answer["key"]["status"] == "enabled"
    assert answer["key"]["algo"] == [ECDSA_SHA256, "1.2.840.10045.4.3.3", "1.2.840.10045.4.3.4"]
    assert answer["key"]["len"] == 256
    assert answer["key"]["curve"] == "1.2.840.10045.3.1.7"
    assert answer["SCAL"] == "2"
    assert answer["multisign"] == world.services.settings.signing.max_hash_batch
    assert answer["authMode"] == "explicit"
    assert answer["PIN"]["presence"] == "false"
    certificates = [x509.load_der_x509_certificate(base64.b64decode(c))
                    for c in answer["cert"]["certificates"]]
    assert len(certificates) == 2
    assert certificates[1] == world.ca.certificate
    assert answer["cert"]["status"] == "valid"
    assert answer["cert"]["serialNumber"] == format(certificates[0].serial_number, "x")
    assert len(answer["cert"]["validTo"]) == 15
    single = await csc(world, "credentials/info", headers, {"credentialID": seal["id"]})
    assert len(single["cert"]["certificates"]) == 1
    assert "issuerDN" not in single["cert"]


async def test_rsa_credential_offers_pkcs1_but_not_pss(world: World) -> None:
    """An RSA key offers rsaEncryption and sha*WithRSA; RSASSA-PSS is refused in signHash."""
    seal = await world.active_seal(KeyAlgorithm.RSA_2048)
    _, headers = await world.client("signer", [seal["id"]])
    info = await csc(world, "credentials/info", headers, {"credentialID": seal["id"]})
    assert RSA in info["key"]["algo"] and RSA_SHA256 in info["key"]["algo"]
    assert RSA_PSS not in info["key"]["algo"]
    digests = [digest("rsa")]
    sad = await authorize(world, headers, seal["id"], digests)
    body = {**sign_body(seal["id"], sad, digests), "signAlgo": RSA_PSS}
    assert "signAlgo" in await csc_error(world, "signatures/signHash", headers, body)
    bare = {**sign_body(seal["id"], sad, digests), "signAlgo": RSA}
    answer = await csc(world, "signatures/signHash", headers, bare)
    assert len(answer["signatures"]) == 1


async def test_sign_hash_signs_in_order_and_names_its_receipt(credential: Credential) -> None:
    """Signatures verify over their own digests; Sealgate-Receipt names a csc receipt."""
    world, seal, headers = credential
    digests = [digest("one"), digest("two"), digest("three")]
    sad = await authorize(world, headers, seal["id"], digests)
    response = await world.http.post("/csc/v1/signatures/signHash", headers=headers,
                                      json=sign_body(seal["id"], sad, digests))
    assert response.status == 200
    signatures = [base64.b64decode(s) for s in (await response.json())["signatures"]]
    info = await csc(world, "credentials/info", headers, {"credentialID": seal["id"]})
    leaf = x509.load_der_x509_certificate(base64.b64decode(info["cert"]["certificates"][0]))
    public_key = leaf.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    for signature, each in zip(signatures, digests, strict=True):
        public_key.verify(signature, each, ec.ECDSA(Prehashed(hashes.SHA256())))
    receipt = await (await world.http.get(
        f"/v1/sealing-receipts/{response.headers['Sealgate-Receipt']}", headers=headers)).json()
    assert receipt["format"] == "csc"
    assert receipt["digests_sha256"] == [d.hex() for d in digests]


async def test_a_used_sad_is_refused(credential: Credential) -> None:
    """A SAD for one signature signs once; the same request again is refused."""
    world, seal, headers = credential
    digests = [digest("once")]
    sad = await authorize(world, headers, seal["id"], digests)
    await csc(world, "signatures/signHash", headers, sign_body(seal["id"], sad, digests))
    description = await csc_error(world, "signatures/signHash", headers,
                                  sign_body(seal["id"], sad, digests))
    assert "SAD" in description


async def test_num_signatures_is_a_total_over_several_calls(credential: Credential) -> None:
    """Two authorized signatures can be spent one by one, and not a third time."""
    world, seal, headers = credential
    first, second = digest("first"), digest("second")
    sad = await authorize(world, headers, seal["id"], [first, second])
    await csc(world, "signatures/signHash", headers, sign_body(seal["id"], sad, [first]))
    await csc(world, "signatures/signHash", headers, sign_body(seal["id"], sad, [second]))
    await csc_error(world, "signatures/signHash", headers, sign_body(seal["id"], sad, [first]))


async def test_concurrent_uses_of_one_sad_sign_only_once(credential: Credential) -> None:
    """Of several simultaneous requests spending a one-signature SAD, exactly one signs."""
    world, seal, headers = credential
    digests = [digest("race")]
    sad = await authorize(world, headers, seal["id"], digests)
    responses = await asyncio.gather(*(
        world.http.post("/csc/v1/signatures/signHash", headers=headers,
                        json=sign_body(seal["id"], sad, digests))
        for _ in range(5)))
    assert sorted(r.status for r in responses) == [200, 400, 400, 400, 400]


async def test_sads_work_across_gateway_instances_on_redis(
    settings: Settings, hsm: Hsm, dev_ca: DevCA, redis_server: RedisServer
) -> None:
    """A SAD issued by one instance signs on another, once, and the first then refuses it."""
    shared = on_redis(settings, redis_server.url)
    async with World.running(shared, hsm, dev_ca) as one, \
            World.running(shared, hsm, dev_ca) as other:
        seal = await one.active_seal(KeyAlgorithm.EC_P256)
        _, headers = await one.client("signer", [seal["id"]])
        digests = [digest("shared")]
        sad = await authorize(one, headers, seal["id"], digests)
        await csc(other, "signatures/signHash", headers, sign_body(seal["id"], sad, digests))
        await csc_error(one, "signatures/signHash", headers,
                        sign_body(seal["id"], sad, digests))


async def test_an_expired_sad_is_refused(credential: Credential) -> None:
    """Once its lifetime has passed (on the service's clock), a SAD signs nothing."""
    world, seal, headers = credential
    digests = [digest("late")]
    sad = await authorize(world, headers, seal["id"], digests)
    sads = world.services.csc.sads
    ttl = sads.ttl_seconds
    sads.clock = lambda: time.time() + ttl + 1
    description = await csc_error(world, "signatures/signHash", headers,
                                  sign_body(seal["id"], sad, digests))
    assert description == "SAD expired"


async def test_a_sad_for_another_credential_is_refused(world: World) -> None:
    """A SAD authorized for seal A cannot sign with seal B, even for the same client."""
    seal_a = await world.active_seal(KeyAlgorithm.EC_P256)
    seal_b = await world.active_seal(KeyAlgorithm.EC_P256)
    _, headers = await world.client("signer", [seal_a["id"], seal_b["id"]])
    digests = [digest("a")]
    sad = await authorize(world, headers, seal_a["id"], digests)
    description = await csc_error(world, "signatures/signHash", headers,
                                  sign_body(seal_b["id"], sad, digests))
    assert description == "Invalid parameter SAD"
    await csc(world, "signatures/signHash", headers, sign_body(seal_a["id"], sad, digests))


async def test_an_unknown_credential_is_named_even_with_a_valid_sad(
    credential: Credential,
) -> None:
    """signHash for a credentialID the client cannot use names credentialID, not the SAD
    that was issued for another one (CSC §11.9)."""
    world, seal, headers = credential
    digests = [digest("x")]
    sad = await authorize(world, headers, seal["id"], digests)
    description = await csc_error(world, "signatures/signHash", headers,
                                  sign_body("no-such-seal", sad, digests))
    assert description == "Invalid parameter credentialID"
    await csc(world, "signatures/signHash", headers, sign_body(seal["id"], sad, digests))


async def test_a_sad_signs_only_with_the_key_and_certificate_it_was_authorized_for(
    credential: Credential,
) -> None:
    """After the seal moves to another key, or its key gets another certificate, a SAD
    issued before is refused and nothing is signed: the client has already put the old
    certificate into what it signs."""
    world, seal, headers = credential
    digests = [digest("rotated")]
    sad = await authorize(world, headers, seal["id"], digests)
    await world.services.seals.rotate_key(
        seal["id"], (await world.key(KeyAlgorithm.EC_P256))["id"], "test")
    description = await csc_error(world, "signatures/signHash", headers,
                                  sign_body(seal["id"], sad, digests))
    assert description.startswith("Invalid parameter SAD: ")
    renewed = await authorize(world, headers, seal["id"], digests)
    key = await world.services.keys.get(
        (await world.services.seals.record(seal["id"])).data["key_id"])
    await world.services.keys.certify(key, world.ca, "测试合同专用章", ORGANIZATION["name"],
                                      "test")
    description = await csc_error(world, "signatures/signHash", headers,
                                  sign_body(seal["id"], renewed, digests))
    assert description.startswith("Invalid parameter SAD: ")
    assert await world.services.storage.list("sealing_receipt") == []
    sad = await authorize(world, headers, seal["id"], digests)
    await csc(world, "signatures/signHash", headers, sign_body(seal["id"], sad, digests))


async def test_a_sad_of_another_client_is_refused(credential: Credential) -> None:
    """A SAD is bound to the client that asked for it, even when another holds a grant."""
    world, seal, headers = credential
    _, colleague = await world.client("signer", [seal["id"]])
    digests = [digest("mine")]
    sad = await authorize(world, headers, seal["id"], digests)
    await csc_error(world, "signatures/signHash", colleague, sign_body(seal["id"], sad, digests))


async def test_scal2_sad_signs_only_its_hashes(credential: Credential) -> None:
    """A hash other than those given at authorization is refused, and spends nothing."""
    world, seal, headers = credential
    authorized, other = digest("authorized"), digest("other")
    sad = await authorize(world, headers, seal["id"], [authorized])
    description = await csc_error(world, "signatures/signHash", headers,
                                  sign_body(seal["id"], sad, [other]))
    assert description == "Hash is not authorized by the SAD"
    await csc(world, "signatures/signHash", headers, sign_body(seal["id"], sad, [authorized]))


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"numSignatures": 1}, "hash"),
        ({"numSignatures": 2, "hash": [b64(digest("x"))]}, "numSignatures"),
        ({"numSignatures": 0, "hash": [b64(digest("x"))]}, "numSignatures"),
        ({"numSignatures": "1", "hash": [b64(digest("x"))]}, "numSignatures"),
        ({"numSignatures": 1, "hash": ["%%%"]}, "Base64"),
        ({"numSignatures": 1, "hash": [b64(b"short")]}, "length"),
    ],
    ids=["no-hash", "count-mismatch", "zero", "string-count", "bad-base64", "bad-length"],
)
async def test_authorize_refuses_bad_requests(
    credential: Credential, body: dict[str, Any], fragment: str
) -> None:
    """SCAL 2 needs one valid hash per signature; each mistake is a 400 saying which."""
    world, seal, headers = credential
    description = await csc_error(world, "credentials/authorize", headers,
                                  {"credentialID": seal["id"], **body})
    assert fragment in description


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"hashAlgo": SHA384}, "hashAlgo"),
        ({"signAlgo": "1.2.3.4"}, "signAlgo"),
        ({"signAlgo": RSA_SHA256}, "signAlgo"),
        ({"signAlgoParams": "BQA="}, "signAlgoParams"),
        ({"hash": []}, "Empty hash array"),
        ({"SAD": None}, "SAD"),
    ],
    ids=["hash-contradicts", "unknown-algorithm", "rsa-on-ec-key", "params", "empty", "no-sad"],
)
async def test_sign_hash_refuses_bad_requests(
    credential: Credential, change: dict[str, Any], fragment: str
) -> None:
    """Wrong algorithms, parameters, empty batches and a missing SAD are 400s naming them."""
    world, seal, headers = credential
    digests = [digest("x")]
    sad = await authorize(world, headers, seal["id"], digests)
    body = {**sign_body(seal["id"], sad, digests), **change}
    assert fragment in await csc_error(world, "signatures/signHash", headers, body)


async def test_a_sign_algo_the_key_cannot_make_leaves_the_sad_unspent(
    credential: Credential,
) -> None:
    """An RSA signAlgo for an EC key is refused before the SAD is spent: the corrected
    request signs with the same authorization."""
    world, seal, headers = credential
    digests = [digest("x")]
    sad = await authorize(world, headers, seal["id"], digests)
    wrong = {**sign_body(seal["id"], sad, digests), "signAlgo": RSA_SHA256}
    assert "signAlgo" in await csc_error(world, "signatures/signHash", headers, wrong)
    answer = await csc(world, "signatures/signHash", headers, sign_body(seal["id"], sad, digests))
    assert len(answer["signatures"]) == 1


async def file_locally(world: World, seal_id: str, action: str) -> None:
    """A status change of the seal (suspend, resume) filed and approved locally."""
    filings = world.services.filings
    filing = await filings.create({
        "seal_id": seal_id, "action": action, "authority": "local", "applicant": APPLICANT,
        "legal_representative": LEGAL_REPRESENTATIVE}, "test")
    await filings.submit(filing["id"], "test")
    await filings.review(filing["id"], {"decision": "approve"}, "test")


async def test_a_seal_that_may_not_sign_leaves_the_sad_unspent(credential: Credential) -> None:
    """signHash for a suspended seal is refused before the SAD is spent: once the seal is
    resumed, the same authorization signs."""
    world, seal, headers = credential
    digests = [digest("suspended")]
    sad = await authorize(world, headers, seal["id"], digests)
    await file_locally(world, seal["id"], "suspend")
    assert "suspended" in await csc_error(world, "signatures/signHash", headers,
                                          sign_body(seal["id"], sad, digests))
    await file_locally(world, seal["id"], "resume")
    answer = await csc(world, "signatures/signHash", headers, sign_body(seal["id"], sad, digests))
    assert len(answer["signatures"]) == 1


async def test_a_used_up_key_budget_gives_the_sad_back(world: World) -> None:
    """A key whose usage budget is used up refuses signHash and gives the signatures back to
    the SAD: with budget again (here: one use given back), the same authorization signs."""
    key = await world.services.keys.create("budget", KeyAlgorithm.EC_P256.value, "test",
                                           usage_limit=1)
    key = await world.services.keys.certify(key, world.ca, "测试合同专用章",
                                            ORGANIZATION["name"], "test")
    seal = await world.services.seals.create(
        {"name": "合同专用章", "type": "04", "organization": ORGANIZATION, "key_id": key["id"]},
        "test")
    await world.services.filings.file_and_approve_locally(
        seal["id"], APPLICANT, LEGAL_REPRESENTATIVE, "test")
    _, headers = await world.client("signer", [seal["id"]])
    first, second = digest("first"), digest("second")
    used = await authorize(world, headers, seal["id"], [first])
    sad = await authorize(world, headers, seal["id"], [second])
    await csc(world, "signatures/signHash", headers, sign_body(seal["id"], used, [first]))
    assert "limit" in await csc_error(world, "signatures/signHash", headers,
                                      sign_body(seal["id"], sad, [second]))
    await world.services.storage.incr(usage_counter(key["id"]), -1)
    await csc(world, "signatures/signHash", headers, sign_body(seal["id"], sad, [second]))


async def test_sign_hash_in_an_hsm_outage_gives_the_sad_back(
    credential: Credential, token_dir: Path
) -> None:
    """signHash answered 503 while the token is gone signed nothing, so it spends nothing:
    the same request signs once the token is back, and the SAD is spent after that."""
    world, seal, headers = credential
    digests = [digest("outage")]
    sad = await authorize(world, headers, seal["id"], digests)
    tokens, away = token_dir / "tokens", token_dir / "tokens.away"
    tokens.rename(away)
    try:
        await csc_error(world, "signatures/signHash", headers,
                        sign_body(seal["id"], sad, digests), status=503,
                        error="temporarily_unavailable")
    finally:
        away.rename(tokens)
    for _ in range(50):
        response = await world.http.post("/csc/v1/signatures/signHash", headers=headers,
                                          json=sign_body(seal["id"], sad, digests))
        if response.status != 503:
            break
        await asyncio.sleep(0.1)
    assert response.status == 200, await response.text()
    assert "SAD" in await csc_error(world, "signatures/signHash", headers,
                                    sign_body(seal["id"], sad, digests))


async def test_token_problems_are_csc_errors(credential: Credential) -> None:
    """A missing or unknown token is 401 invalid_token with a Bearer challenge; a filer 403."""
    world, _seal, _ = credential
    for headers in ({}, {"Authorization": "Bearer sg_unknown"}):
        response = await world.http.post("/csc/v1/credentials/list", headers=headers, json={})
        assert response.status == 401
        assert (await response.json())["error"] == "invalid_token"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.headers["X-Request-Id"]
    _, filer = await world.client("filer")
    await csc_error(world, "credentials/list", filer, {}, status=403, error="access_denied")


async def test_broken_json_is_a_csc_error(credential: Credential) -> None:
    """A body that is not JSON is 400 invalid_request in CSC form, not problem+json."""
    world, _seal, headers = credential
    response = await world.http.post("/csc/v1/credentials/list", data=b"{not json",
                                      headers={**headers, "Content-Type": "application/json"})
    assert response.status == 400
    assert response.content_type == "application/json"
    assert (await response.json())["error"] == "invalid_request"


@pytest.mark.parametrize("body", [b"{not json", b"\x00", b"[1, 2]"], ids=["broken", "nul", "array"])
async def test_info_refuses_a_body_that_is_no_json_object(world: World, body: bytes) -> None:
    """info, open to anyone, reads its optional body like the other methods: one that is no
    JSON object is 400 invalid_request, not ignored."""
    response = await world.http.post("/csc/v1/info", data=body,
                                     headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_request"


async def test_a_wrong_http_method_is_405_in_csc_form(world: World) -> None:
    """GET on a CSC method is 405 with its Allow header (RFC 9110 §15.5.6) and a CSC error
    body, not a 400 that blames the parameters."""
    response = await world.http.get("/csc/v1/info")
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert (await response.json())["error"] == "invalid_request"


async def test_an_unimplemented_method_is_501(credential: Credential) -> None:
    """A CSC method the gateway does not offer (auth/login) is 501 in CSC form."""
    world, _seal, headers = credential
    await csc_error(world, "auth/login", headers, {}, status=501)
