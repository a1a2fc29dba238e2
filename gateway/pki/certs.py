"""Certificate chains: parsing PEM, checking a leaf against its HSM key, and summaries."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway.clock import isoformat
from gateway.errors import ValidationFailed


@dataclass(frozen=True)
class CertificateSummary:
    serial: str
    subject: str
    issuer: str
    sha256: str
    not_before: str
    not_after: str

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def parse_pem_chain(pem: bytes, field: str = "certificate") -> list[x509.Certificate]:
    """Certificates of a PEM bundle, leaf first; 422 naming the field when there are none."""
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ValidationFailed.one(field, "is not a PEM certificate chain") from exc
    if not chain:
        raise ValidationFailed.one(field, "contains no certificate")
    return chain


def chain_to_pem(chain: list[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)


def public_key_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def summarize(cert: x509.Certificate) -> CertificateSummary:
    return CertificateSummary(
        serial=format(cert.serial_number, "x"),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
        not_before=isoformat(cert.not_valid_before_utc),
        not_after=isoformat(cert.not_valid_after_utc),
    )


def check_signing_leaf(
    chain: list[x509.Certificate], key_public_der: bytes, now: dt.datetime
) -> None:
    """Refuse a chain whose leaf is not for this key, not valid now, or not for signing.

    Each failure is a 422 naming the rule, so a key officer knows what to fix.
    """
    leaf = chain[0]
    if public_key_der(leaf) != key_public_der:
        raise ValidationFailed.one(
            "certificate", "the leaf certificate's public key is not this key's public key"
        )
    if now < leaf.not_valid_before_utc:
        raise ValidationFailed.one("certificate", "the leaf certificate is not valid yet")
    if now > leaf.not_valid_after_utc:
        raise ValidationFailed.one("certificate", "the leaf certificate has expired")
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not (usage.digital_signature or usage.content_commitment):
        raise ValidationFailed.one(
            "certificate",
            "the leaf certificate allows neither digitalSignature nor nonRepudiation",
        )
    for child, issuer in itertools.pairwise(chain):
        if child.issuer != issuer.subject:
            raise ValidationFailed.one(
                "certificate",
                "the chain is not in order (each certificate's issuer must follow it)",
            )
