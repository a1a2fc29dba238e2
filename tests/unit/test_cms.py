"""Detached CAdES B-B from gateway.signing.cms, checked with asn1crypto and openssl cms."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms, core

from gateway.errors import Conflict, ValidationFailed
from gateway.hsm import Hsm, KeyAlgorithm
from gateway.pki.devca import DevCA
from gateway.signing import SealKey
from gateway.signing.cms import (
    CmsSealer,
    ContentDigest,
    check_level,
    prepare,
    signing_time_attribute,
)
from gateway.signing.cms_template import der

CONTENT = "合同正文 — contract text\n".encode() * 1000
SIGNED_AT = dt.datetime(2026, 3, 1, 8, 30, 15, tzinfo=dt.UTC)


@pytest.fixture(
    scope="module", params=[KeyAlgorithm.RSA_2048, KeyAlgorithm.EC_P256, KeyAlgorithm.EC_P384],
    ids=str,
)
async def seal_key(
    request: pytest.FixtureRequest, hsm: Hsm, key_factory: Any, dev_ca: DevCA
) -> SealKey:
    algorithm: KeyAlgorithm = request.param
    key_id, cert = await key_factory(algorithm)
    return SealKey.create(hsm, key_id, algorithm, cert, [dev_ca.certificate])


def openssl_verifies(signature: bytes, content: bytes, dev_ca: DevCA, tmp_path: Path) -> bool:
    """Whether ``openssl cms -verify`` accepts the detached signature over ``content``."""
    (tmp_path / "sig.der").write_bytes(signature)
    (tmp_path / "content.bin").write_bytes(content)
    run = subprocess.run(
        ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(tmp_path / "sig.der"),
         "-content", str(tmp_path / "content.bin"), "-CAfile", str(dev_ca.directory / "ca.pem"),
         "-purpose", "any", "-out", str(tmp_path / "verified.bin")],
        capture_output=True, text=True, check=False, timeout=60,
    )
    return run.returncode == 0 and "Verification successful" in run.stderr


def signer_info(signature: bytes) -> cms.SignerInfo:
    info = cms.ContentInfo.load(signature)
    assert info["content_type"].native == "signed_data"
    signed_data = info["content"]
    assert signed_data["encap_content_info"]["content"].native is None, "must be detached"
    (only,) = signed_data["signer_infos"]
    return only


async def sign(key: SealKey, content: bytes = CONTENT) -> bytes:
    digest = hashlib.new(key.hash_name, content).digest()
    return await CmsSealer().sign(key, digest, signing_time=SIGNED_AT)


@pytest.mark.interop
async def test_openssl_verifies_the_detached_signature(
    seal_key: SealKey, dev_ca: DevCA, tmp_path: Path
) -> None:
    """openssl cms -verify accepts the signature with the content and the dev CA."""
    assert openssl_verifies(await sign(seal_key), CONTENT, dev_ca, tmp_path)


@pytest.mark.interop
async def test_openssl_refuses_a_tampered_content_byte(
    seal_key: SealKey, dev_ca: DevCA, tmp_path: Path
) -> None:
    """One changed byte of the content makes openssl's verification fail."""
    tampered = bytearray(CONTENT)
    tampered[len(tampered) // 2] ^= 0x01
    assert not openssl_verifies(await sign(seal_key), bytes(tampered), dev_ca, tmp_path)


async def test_signed_attributes_are_cades_baseline_b(seal_key: SealKey) -> None:
    """content-type, message-digest, signing-certificate-v2 and signing-time, nothing else."""
    info = signer_info(await sign(seal_key))
    attributes = {a["type"].native: a["values"][0] for a in info["signed_attrs"]}
    assert set(attributes) == {"content_type", "message_digest", "signing_certificate_v2",
                               "signing_time"}
    assert attributes["content_type"].native == "data"
    assert attributes["message_digest"].native == hashlib.new(seal_key.hash_name, CONTENT).digest()
    assert attributes["signing_time"].native == SIGNED_AT
    cert_id = attributes["signing_certificate_v2"]["certs"][0]
    assert cert_id["cert_hash"].native == hashlib.sha256(seal_key.certificate.dump()).digest()
    assert info["digest_algorithm"]["algorithm"].native == seal_key.hash_name
    assert not info["unsigned_attrs"]


async def test_certificates_are_the_leaf_and_its_issuer(seal_key: SealKey) -> None:
    """The signed-data carries the seal's certificate and its CA certificate, once each."""
    signed_data = cms.ContentInfo.load(await sign(seal_key))["content"]
    embedded = sorted(c.chosen.dump() for c in signed_data["certificates"])
    assert embedded == sorted(c.dump() for c in (seal_key.certificate, *seal_key.chain))


async def test_without_unsigned_attributes_it_is_the_template_structure(
    seal_key: SealKey,
) -> None:
    """finish() frames exactly as the PDF path's CmsTemplate when there is nothing unsigned."""
    prepared = prepare(seal_key, hashlib.new(seal_key.hash_name, CONTENT).digest(), SIGNED_AT)
    signature = await seal_key.sign_digest(prepared.digest_to_sign)
    assert prepared.finish(seal_key, signature) == seal_key.cms.signed_data(
        prepared.signed_attributes, signature)


@pytest.mark.interop
async def test_unsigned_attributes_land_in_the_signer_info(
    seal_key: SealKey, dev_ca: DevCA, tmp_path: Path
) -> None:
    """The hook for higher levels adds unsigned attributes that leave the signature valid."""
    prepared = prepare(seal_key, hashlib.new(seal_key.hash_name, CONTENT).digest(), SIGNED_AT)
    signature = await seal_key.sign_digest(prepared.digest_to_sign)
    # An attribute of a private OID: openssl allows unknown attributes anywhere, while it
    # refuses ones that RFC 5652 confines to the signed attributes (such as signing-time).
    extra = der(0x30, core.ObjectIdentifier("1.3.6.1.4.1.99999.1").dump()
                + der(0x31, core.OctetString(b"unsigned").dump()))
    signed = prepared.finish(seal_key, signature, [extra])
    unsigned = signer_info(signed)["unsigned_attrs"]
    assert [a.dump() for a in unsigned] == [extra]
    assert openssl_verifies(signed, CONTENT, dev_ca, tmp_path)


def test_signing_time_uses_generalized_time_from_2050() -> None:
    """RFC 5652 §11.3: UTCTime up to 2049, GeneralizedTime after."""
    early = cms.CMSAttribute.load(signing_time_attribute(SIGNED_AT))["values"][0]
    late = cms.CMSAttribute.load(
        signing_time_attribute(dt.datetime(2050, 1, 1, tzinfo=dt.UTC)))["values"][0]
    assert early.name == "utc_time"
    assert late.name == "generalized_time"


@pytest.mark.parametrize("level", ["B-Z", "B-LT", "B-LTA"])
def test_levels_beyond_b_t_are_refused_naming_level(level: str) -> None:
    """Unknown levels, and those needing a DSS a detached CMS cannot carry, name ``level``."""
    with pytest.raises(ValidationFailed) as caught:
        check_level(level)
    assert [e.field for e in caught.value.errors] == ["level"]


def test_level_is_case_insensitive() -> None:
    """b-b is B-B."""
    assert check_level("b-b") == "B-B"


def test_content_digest_hashes_chunks_with_sha256_and_the_key_hash() -> None:
    """Chunked hashing equals hashing the whole; another algorithm is a conflict."""
    digest = ContentDigest("sha384")
    for start in range(0, len(CONTENT), 4096):
        digest.update(CONTENT[start:start + 4096])
    assert digest.size == len(CONTENT)
    assert digest.digest("sha384") == hashlib.sha384(CONTENT).digest()
    assert digest.sha256_hex == hashlib.sha256(CONTENT).hexdigest()
    with pytest.raises(Conflict):
        digest.digest("sha512")


async def test_a_digest_of_the_wrong_size_is_refused(seal_key: SealKey) -> None:
    """prepare() refuses a digest that is not of the key's hash algorithm."""
    with pytest.raises(ValueError, match="bytes"):
        prepare(seal_key, b"\x00" * 20, SIGNED_AT)
