"""Certificate chains: parsing PEM, checking a leaf against its HSM key, and summaries."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.clock import isoformat
from gateway.errors import ValidationFailed

E = TypeVar("E", bound=x509.ExtensionType)
TIME_STAMPING = ExtendedKeyUsageOID.TIME_STAMPING


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
    chain: list[x509.Certificate], key_public_der: bytes, now: dt.datetime,
    *, time_stamping: bool = False,
) -> None:
    """Refuse a chain whose leaf is not for this key, not valid now, or not for its use.

    A key that signs documents (a seal, the platform's receipts) needs nonRepudiation
    (contentCommitment) in its key usage, as validators require of a document signer
    (pyHanko's default, and this gateway's own ``POST /v1/verify``), and no extended key
    usage that confines it to time-stamping. The time-stamping key needs exactly that: a
    critical extended key usage of id-kp-timeStamping alone (RFC 3161 §2.3). Each
    certificate of the chain must be signed by the one after it.

    Each failure is a 422 naming the rule, so a key officer knows what to fix.
    """
    leaf = chain[0]
    if public_key_der(leaf) != key_public_der:
        _refuse("the leaf certificate's public key is not this key's public key")
    if now < leaf.not_valid_before_utc:
        _refuse("the leaf certificate is not valid yet")
    if now > leaf.not_valid_after_utc:
        _refuse("the leaf certificate has expired")
    for child, issuer in itertools.pairwise(chain):
        if child.issuer != issuer.subject:
            _refuse("the chain is not in order (each certificate's issuer must follow it)")
        try:
            child.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            _refuse(f"{child.subject.rfc4514_string()} is not signed by the certificate "
                    "that follows it")
    constraints = _extension(leaf, x509.BasicConstraints)
    if constraints is not None and constraints.value.ca:
        _refuse("the leaf certificate is a CA certificate")
    usage = _extension(leaf, x509.KeyUsage)
    purposes = _extension(leaf, x509.ExtendedKeyUsage)
    only_time_stamping = purposes is not None and list(purposes.value) == [TIME_STAMPING]
    if time_stamping:
        if not (only_time_stamping and purposes is not None and purposes.critical):
            _refuse("a time-stamping certificate needs a critical extended key usage of "
                    "timeStamping alone (RFC 3161)")
        if usage is not None and not (usage.value.digital_signature
                                      or usage.value.content_commitment):
            _refuse("the leaf certificate allows neither digitalSignature nor nonRepudiation")
        return
    if usage is None or not usage.value.content_commitment:
        _refuse("the leaf certificate lacks nonRepudiation (contentCommitment) in its key "
                "usage, which validators require of a document signer")
    if only_time_stamping:
        _refuse("the leaf certificate is for time-stamping only")


def _extension(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E] | None:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def _refuse(message: str) -> NoReturn:
    raise ValidationFailed.one("certificate", message)
