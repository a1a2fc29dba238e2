"""RFC 3161 queries and tokens (gateway.signing.tsa) with a real TSA key in SoftHSM."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import algos, cms, tsp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from gateway.hsm import Hsm, KeyAlgorithm
from gateway.pki.devca import TSA_PROFILE, DevCA
from gateway.signing.tsa import (
    TimeStampAuthority,
    TimeStampQuery,
    TsaRefusal,
    parse_query,
    query_bytes,
    read_response,
    refusal_response,
    token_info,
)
from tests.conftest import new_key_id

POLICY = "1.2.3.4.5"
AT = dt.datetime(2025, 10, 9, 8, 30, 15, 123456, tzinfo=dt.UTC)


@pytest.fixture(scope="module", params=[KeyAlgorithm.EC_P256, KeyAlgorithm.RSA_2048], ids=str)
async def authority(request: pytest.FixtureRequest, hsm: Hsm, dev_ca: DevCA) -> TimeStampAuthority:
    """A TSA whose key is in the HSM and whose certificate the dev CA issued for time-stamping."""
    algorithm: KeyAlgorithm = request.param
    key_id = new_key_id()
    public = await hsm.generate_key(algorithm, "tsa-test", key_id)
    cert = dev_ca.issue(public, "Test TSA", "测试有限公司", profile=TSA_PROFILE)
    return TimeStampAuthority.create(hsm, key_id, algorithm, cert, [dev_ca.certificate], POLICY)


def openssl_query(tmp_path: Path, *options: str) -> tuple[bytes, bytes]:
    """A query made by `openssl ts -query` over a small file, and the file's content."""
    data = tmp_path / "data.txt"
    data.write_bytes(b"document to time-stamp\n")
    out = tmp_path / "query.tsq"
    subprocess.run(["openssl", "ts", "-query", "-data", str(data), *options, "-out", str(out)],
                   check=True, capture_output=True)
    return out.read_bytes(), data.read_bytes()


def request(**fields: Any) -> bytes:
    """A TimeStampReq built field by field, for queries openssl will not make."""
    values: dict[str, Any] = {
        "version": "v1",
        "message_imprint": {"hash_algorithm": {"algorithm": "sha256"},
                            "hashed_message": bytes(32)},
    }
    values.update(fields)
    return bytes(tsp.TimeStampReq(values).dump())


def test_openssl_query_is_read_with_its_hash_nonce_and_cert_request(tmp_path: Path) -> None:
    """A query from openssl gives back its SHA-256 imprint, its nonce and certReq."""
    der, data = openssl_query(tmp_path, "-sha256", "-cert")
    query = parse_query(der, POLICY)
    assert query.hash_name == "sha256"
    assert query.digest == hashlib.sha256(data).digest()
    assert isinstance(query.nonce, int)
    assert query.cert_req is True
    no_cert = parse_query(openssl_query(tmp_path, "-sha512", "-no_nonce")[0], POLICY)
    assert (no_cert.hash_name, no_cert.nonce, no_cert.cert_req) == ("sha512", None, False)


@pytest.mark.parametrize(
    ("make", "failure"),
    [
        (lambda tmp: b"not a query", "bad_data_format"),
        (lambda tmp: b"", "bad_data_format"),
        (lambda tmp: request() + b"\x00", "bad_data_format"),
        (lambda tmp: openssl_query(tmp, "-sha1")[0], "bad_alg"),
        (lambda tmp: openssl_query(tmp, "-md5")[0], "bad_alg"),
        (lambda tmp: request(message_imprint={"hash_algorithm": {"algorithm": "sha256"},
                                              "hashed_message": bytes(20)}), "bad_data_format"),
        (lambda tmp: request(version=2), "bad_request"),
        (lambda tmp: request(req_policy="1.2.3.4.6"), "unaccepted_policy"),
        (lambda tmp: request(extensions=[{"extn_id": "1.2.3.4.7", "extn_value": b"\x05\x00"}]),
         "unaccepted_extensions"),
    ],
    ids=["garbage", "empty", "trailing-bytes", "sha1", "md5", "short-digest", "version-2",
         "other-policy", "extension"],
)
def test_queries_not_stamped_are_refused_with_the_failure_bit(
    tmp_path: Path, make: Any, failure: str
) -> None:
    """Unsupported hashes, malformed queries, other policies and extensions are refused."""
    with pytest.raises(TsaRefusal) as refused:
        parse_query(make(tmp_path), POLICY)
    assert refused.value.failure == failure


def test_query_naming_the_tsa_policy_is_accepted() -> None:
    """A query may name the TSA's own policy."""
    assert parse_query(request(req_policy=POLICY), POLICY).hash_name == "sha256"


def test_refusal_is_a_response_with_status_rejection_and_its_reason(tmp_path: Path) -> None:
    """A refusal reads back as status rejection with the failure bit and the text."""
    answer = refusal_response(TsaRefusal("bad_alg", "sha1 is not accepted"))
    reply = tmp_path / "reply.tsr"
    reply.write_bytes(answer)
    text = subprocess.run(["openssl", "ts", "-reply", "-in", str(reply), "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "Status: Rejected" in text
    assert "unrecognized or unsupported algorithm identifier" in text
    assert "sha1 is not accepted" in text
    query = TimeStampQuery.for_digest(bytes(32), "sha256")
    with pytest.raises(TsaRefusal) as refused:
        read_response(answer, query)
    assert refused.value.failure == "bad_alg"


async def test_token_carries_imprint_serial_policy_time_and_echoes_nonce(
    authority: TimeStampAuthority,
) -> None:
    """TSTInfo holds the query's imprint and nonce, the serial, the policy and the time."""
    digest = hashlib.sha384(b"content").digest()
    query = TimeStampQuery.for_digest(digest, "sha384", nonce=2**62 + 7)
    answer = await authority.respond(query, 42, AT)
    token = read_response(answer, query)
    info = token_info(token)
    assert info["serial_number"].native == 42
    assert info["nonce"].native == 2**62 + 7
    assert info["policy"].dotted == POLICY
    assert info["message_imprint"]["hashed_message"].native == digest
    assert info["gen_time"].native == AT.replace(microsecond=123000)
    assert info["tsa"].chosen == authority.certificate.subject
    assert info["accuracy"]["seconds"].native == 1


async def test_token_signature_verifies_over_its_signed_attributes(
    authority: TimeStampAuthority,
) -> None:
    """The SignerInfo's signature verifies with the TSA certificate; the digest matches TSTInfo."""
    token = await authority.token(TimeStampQuery.for_digest(bytes(32), "sha256"), 1, AT)
    signed_data = token["content"]
    tst_info = signed_data["encap_content_info"]["content"].contents
    signer = signed_data["signer_infos"][0]
    attributes = {a["type"].native: a["values"][0] for a in signer["signed_attrs"]}
    assert attributes["content_type"].native == "tst_info"
    assert attributes["message_digest"].native == hashlib.sha256(tst_info).digest()
    assert attributes["signing_certificate_v2"]["certs"][0]["cert_hash"].native == (
        hashlib.sha256(authority.certificate.dump()).digest()
    )
    public = load_der_public_key(authority.certificate.public_key.dump())
    signed = b"\x31" + signer["signed_attrs"].dump()[1:]
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signer["signature"].native, signed, ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(signer["signature"].native, signed, padding.PKCS1v15(), hashes.SHA256())


async def test_certificates_are_included_only_when_asked_for(
    authority: TimeStampAuthority,
) -> None:
    """certReq true adds the TSA certificate and its issuer; false leaves them out."""
    asked = await authority.token(TimeStampQuery.for_digest(bytes(32), "sha256"), 1, AT)
    # A SET OF in DER: in the order of their encodings, not the order given.
    assert sorted(c.chosen.dump() for c in asked["content"]["certificates"]) == sorted(
        c.dump() for c in (authority.certificate, *authority.chain))
    not_asked = await authority.token(
        TimeStampQuery.for_digest(bytes(32), "sha256", cert_req=False), 2, AT)
    assert not_asked["content"]["certificates"].native is None


@pytest.mark.parametrize("hash_name", ["sha256", "sha384", "sha512"])
async def test_max_token_size_bounds_real_tokens(
    authority: TimeStampAuthority, hash_name: str
) -> None:
    """No in-process token is larger than max_token_size says, whatever its serial and time."""
    bound = authority.max_token_size(hash_name)
    digest = hashlib.new(hash_name, b"x").digest()
    for serial, at in ((1, AT.replace(microsecond=0)), (2**62, AT), (10**12, AT)):
        token = await authority.token(TimeStampQuery.for_digest(digest, hash_name), serial, at)
        assert len(token.dump()) <= bound


def test_read_response_refuses_a_token_for_another_imprint_or_nonce() -> None:
    """An outside TSA's answer must be for our imprint and echo our nonce."""
    ours = TimeStampQuery.for_digest(bytes(32), "sha256", nonce=5)
    granted = {"status": {"status": "granted"}}
    for other in (TimeStampQuery.for_digest(b"\x01" * 32, "sha256", nonce=5),
                  TimeStampQuery.for_digest(bytes(32), "sha256", nonce=6)):
        tst_info = tsp.TSTInfo({
            "version": "v1", "policy": POLICY, "message_imprint": other.imprint,
            "serial_number": 1, "gen_time": AT, "nonce": other.nonce,
        })
        token = cms.ContentInfo({"content_type": "signed_data", "content": {
            "version": "v3", "digest_algorithms": [algos.DigestAlgorithm({"algorithm": "sha256"})],
            "encap_content_info": {"content_type": "tst_info",
                                   "content": cms.ParsableOctetString(tst_info.dump())},
            "signer_infos": [],
        }})
        answer = tsp.TimeStampResp({**granted, "time_stamp_token": token}).dump()
        with pytest.raises(ValueError, match=r"imprint|nonce"):
            read_response(answer, ours)


def test_query_bytes_round_trip_through_parse_query() -> None:
    """A query written for an outside TSA reads back the same."""
    query = TimeStampQuery.for_digest(bytes(64), "sha512", nonce=99)
    parsed = parse_query(query_bytes(query), POLICY)
    assert (parsed.hash_name, parsed.digest, parsed.nonce, parsed.cert_req) == (
        "sha512", bytes(64), 99, True)
