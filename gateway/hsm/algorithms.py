"""Key algorithms the gateway offers and how each signs a pre-computed digest.

The HSM always receives a digest, never the document: RSA PKCS#1 v1.5 signs a DigestInfo with
raw ``CKM_RSA_PKCS``, PSS uses ``CKM_RSA_PKCS_PSS`` with explicit parameters, and ECDSA signs
the digest with raw ``CKM_ECDSA`` (SoftHSM 2.6 has no ``CKM_ECDSA_SHA256``), its r‖s output
DER-encoded here so that every caller gets the X.509/CMS form.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.errors import ValidationFailed


class KeyAlgorithm(enum.StrEnum):
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"

    @property
    def is_rsa(self) -> bool:
        return self.value.startswith("rsa")

    @property
    def rsa_bits(self) -> int:
        return int(self.value.split("-")[1])

    @property
    def curve(self) -> str:
        """The curve's OpenSSL/SEC name, for EC keys."""
        return {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}[self.value]

    @property
    def default_hash(self) -> str:
        return "sha384" if self is KeyAlgorithm.EC_P384 else "sha256"

    @classmethod
    def parse(cls, value: object, field: str = "algorithm") -> KeyAlgorithm:
        try:
            return cls(str(value))
        except ValueError:
            allowed = ", ".join(a.value for a in cls)
            raise ValidationFailed.one(field, f"must be one of {allowed}") from None


class SignatureScheme(enum.StrEnum):
    PKCS1V15 = "pkcs1v15"
    PSS = "pss"
    ECDSA = "ecdsa"

    @classmethod
    def default_for(cls, algorithm: KeyAlgorithm) -> SignatureScheme:
        return cls.PKCS1V15 if algorithm.is_rsa else cls.ECDSA


@dataclass(frozen=True)
class HashAlgorithm:
    name: str
    size: int
    digest_info_prefix: bytes
    oid: str


# DER prefixes of DigestInfo (RFC 8017 §9.2 note 1).
HASHES: dict[str, HashAlgorithm] = {
    h.name: h
    for h in (
        HashAlgorithm(
            "sha256", 32, bytes.fromhex("3031300d060960864801650304020105000420"),
            "2.16.840.1.101.3.4.2.1",
        ),
        HashAlgorithm(
            "sha384", 48, bytes.fromhex("3041300d060960864801650304020205000430"),
            "2.16.840.1.101.3.4.2.2",
        ),
        HashAlgorithm(
            "sha512", 64, bytes.fromhex("3051300d060960864801650304020305000440"),
            "2.16.840.1.101.3.4.2.3",
        ),
    )
}


def hash_algorithm(name: str, field: str = "hash_algorithm") -> HashAlgorithm:
    try:
        return HASHES[name.lower()]
    except KeyError:
        raise ValidationFailed.one(field, f"must be one of {', '.join(HASHES)}") from None


def ecdsa_raw_to_der(raw: bytes) -> bytes:
    """PKCS#11 returns ECDSA signatures as r‖s; X.509 and CMS want a DER SEQUENCE of the two
    INTEGERs. Written out by hand: it runs once per signature of a batch, and the general
    encoder costs twice as much. Lengths stay below 128 for every curve offered."""
    half = len(raw) // 2
    body = _der_unsigned(raw[:half]) + _der_unsigned(raw[half:])
    return b"\x30" + bytes((len(body),)) + body


def _der_unsigned(value: bytes) -> bytes:
    value = value.lstrip(b"\x00") or b"\x00"
    if value[0] & 0x80:
        value = b"\x00" + value  # keep it positive
    return b"\x02" + bytes((len(value),)) + value
