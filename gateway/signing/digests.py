"""Signing digests computed elsewhere: checking them, and naming the algorithms by their OIDs.

``POST /v1/seals/{id}/sign/hash`` and the CSC API's ``signatures/signHash`` both receive
base64 digests and answer with raw signature values. The HSM signs any SHA-2 digest with any
seal key (RSA: PKCS#1 v1.5 over the DigestInfo; EC: ECDSA on the digest, DER-encoded), so the
client picks the digest algorithm and this module names the resulting signature algorithm.

RSASSA-PSS is deliberately not offered to remote clients: the HSM layer signs PSS with a salt
as long as the digest only, while clients such as pyHanko ask for the longest salt the key
allows, and a signature with other parameters than the ones requested would not verify.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from gateway.errors import FieldError, ValidationFailed
from gateway.hsm import HASHES, KeyAlgorithm, SignatureScheme

RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
"""The bare RSA OID: CSC clients send it with a separate hash algorithm OID."""

_SIGNATURE_OIDS: dict[tuple[SignatureScheme, str], str] = {
    (SignatureScheme.PKCS1V15, "sha256"): "1.2.840.113549.1.1.11",
    (SignatureScheme.PKCS1V15, "sha384"): "1.2.840.113549.1.1.12",
    (SignatureScheme.PKCS1V15, "sha512"): "1.2.840.113549.1.1.13",
    (SignatureScheme.ECDSA, "sha256"): "1.2.840.10045.4.3.2",
    (SignatureScheme.ECDSA, "sha384"): "1.2.840.10045.4.3.3",
    (SignatureScheme.ECDSA, "sha512"): "1.2.840.10045.4.3.4",
}
_BY_SIGNATURE_OID = {oid: pair for pair, oid in _SIGNATURE_OIDS.items()}
_BY_HASH_OID = {h.oid: h.name for h in HASHES.values()}
_CURVES = {  # named curve OID and size in bits
    KeyAlgorithm.EC_P256: ("1.2.840.10045.3.1.7", 256),
    KeyAlgorithm.EC_P384: ("1.3.132.0.34", 384),
}


def signature_scheme(algorithm: KeyAlgorithm) -> SignatureScheme:
    """The scheme digests are signed with for remote clients (never PSS; see the module doc)."""
    return SignatureScheme.PKCS1V15 if algorithm.is_rsa else SignatureScheme.ECDSA


def signature_algorithm_oid(algorithm: KeyAlgorithm, hash_name: str) -> str:
    """The OID of the signature algorithm a digest of ``hash_name`` is signed with."""
    return _SIGNATURE_OIDS[(signature_scheme(algorithm), hash_name)]


def offered_signature_algorithms(algorithm: KeyAlgorithm) -> list[str]:
    """Signature algorithm OIDs a remote client may ask for with this key (CSC ``key.algo``)."""
    scheme = signature_scheme(algorithm)
    named = [oid for (each, _hash), oid in _SIGNATURE_OIDS.items() if each is scheme]
    return [RSA_ENCRYPTION, *named] if algorithm.is_rsa else named


def curve_oid(algorithm: KeyAlgorithm) -> str | None:
    """The named curve of an EC key as an OID; None for RSA."""
    return None if algorithm.is_rsa else _CURVES[algorithm][0]


def key_bits(algorithm: KeyAlgorithm) -> int:
    return algorithm.rsa_bits if algorithm.is_rsa else _CURVES[algorithm][1]


def hash_for_signature(
    sign_oid: str, hash_oid: str | None, sign_field: str = "signAlgo",
    hash_field: str = "hashAlgo",
) -> str:
    """The digest algorithm's name for a requested signature OID (and optional hash OID).

    Raises ValidationFailed naming ``sign_field`` for a signature algorithm the gateway does
    not make, and ``hash_field`` for a hash OID that is unknown, missing where the signature
    OID does not imply one, or contradicts it.
    """
    hash_name = None
    if hash_oid is not None:
        hash_name = _BY_HASH_OID.get(hash_oid)
        if hash_name is None:
            raise ValidationFailed.one(
                hash_field, f"must be one of {', '.join(_BY_HASH_OID)} (SHA-256/384/512)")
    if sign_oid == RSA_ENCRYPTION:
        if hash_name is None:
            raise ValidationFailed.one(hash_field, f"is required with {RSA_ENCRYPTION}")
        return hash_name
    pair = _BY_SIGNATURE_OID.get(sign_oid)
    if pair is None:
        offered = ", ".join([RSA_ENCRYPTION, *_BY_SIGNATURE_OID])
        raise ValidationFailed.one(sign_field, f"must be one of {offered}")
    implied = pair[1]
    if hash_name is not None and hash_name != implied:
        raise ValidationFailed.one(hash_field, f"contradicts {sign_field}, which implies {implied}")
    return implied


def check_key_signs(algorithm: KeyAlgorithm, sign_oid: str, sign_field: str = "signAlgo") -> None:
    """Raise ValidationFailed naming ``sign_field`` unless this key makes that signature."""
    offered = offered_signature_algorithms(algorithm)
    if sign_oid not in offered:
        raise ValidationFailed.one(
            sign_field, f"this key ({algorithm}) signs with {', '.join(offered)}")


def decode_digests(
    values: object, hash_name: str, *, field: str, max_count: int
) -> list[bytes]:
    """Base64 digests of ``hash_name``, in order; every bad element is named by its index."""
    if not isinstance(values, list) or not values:
        raise ValidationFailed.one(field, "must be a non-empty array of base64 digests")
    if len(values) > max_count:
        raise ValidationFailed.one(
            field, f"has {len(values)} digests; at most {max_count} are signed per request")
    size = HASHES[hash_name].size
    digests: list[bytes] = []
    errors: list[FieldError] = []
    for index, value in enumerate(values):
        where = f"{field}[{index}]"
        try:
            digest = decode_base64(value)
        except ValueError as exc:
            errors.append(FieldError(where, str(exc)))
            continue
        if len(digest) != size:
            errors.append(FieldError(where, f"a {hash_name} digest has {size} bytes, "
                                            f"not {len(digest)}"))
        digests.append(digest)
    if errors:
        raise ValidationFailed(errors)
    return digests


def decode_base64(value: object) -> bytes:
    """Strict standard base64 (padding required, no stray characters); ValueError otherwise."""
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None


def batch_fingerprint(parts: Sequence[bytes]) -> bytes:
    """Length-prefixed concatenation, so that two different batches never join the same way."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)
