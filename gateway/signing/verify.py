"""Checking PDF signatures with pyHanko's validator: intact, trusted, level, later changes."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from asn1crypto import pem as asn1_pem
from asn1crypto import x509 as asn1_x509
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko.sign.validation.pdf_embedded import EmbeddedPdfSignature
from pyhanko.sign.validation.status import PdfSignatureStatus
from pyhanko_certvalidator import ValidationContext

from gateway.errors import BadDocument


@dataclass(frozen=True)
class SignatureReport:
    signer: str
    signed_at: str | None
    intact: bool
    trusted: bool
    level: str | None
    covers_whole_document: bool
    signer_certificate_pem: bytes
    problems: list[str] = field(default_factory=list)


def pades_level(signature: EmbeddedPdfSignature, status: PdfSignatureStatus) -> str | None:
    """The PAdES baseline level (ETSI EN 319 142-1 §6) a validated signature reaches."""
    attributes = {attr["type"].native for attr in signature.signer_info["signed_attrs"]}
    if (
        signature.sig_object.get("/SubFilter") != "/ETSI.CAdES.detached"
        or not {"content_type", "message_digest", "signing_certificate_v2"} <= attributes
        or "signing_time" in attributes
        or "/M" not in signature.sig_object
    ):
        return None
    if status.timestamp_validity is None:
        return "B-B"
    if "/DSS" not in signature.reader.root:
        return "B-T"
    later = signature.reader.embedded_signatures[signature.signed_revision + 1 :]
    return "B-LTA" if any(s.sig_object_type == "/DocTimeStamp" for s in later) else "B-LT"


def trust_roots(pem_bundles: Sequence[bytes]) -> list[asn1_x509.Certificate]:
    roots = []
    for bundle in pem_bundles:
        for _, _, der in asn1_pem.unarmor(bundle, multiple=True):
            roots.append(asn1_x509.Certificate.load(der))
    return roots


def validate_pdf_signatures(
    document: bytes, roots_pem: Sequence[bytes]
) -> list[SignatureReport]:
    """Every signature of the PDF, each validated against the given trust roots.

    Blocking (pyHanko parses and hashes the whole file): call it from a worker thread.
    """
    try:
        reader = PdfFileReader(io.BytesIO(document), strict=False)
        signatures = list(reader.embedded_signatures)
    except Exception as exc:  # pyHanko raises many types for damaged files
        raise BadDocument("the PDF cannot be read") from exc
    context = ValidationContext(trust_roots=trust_roots(roots_pem), allow_fetching=False)
    return [_report(sig, context) for sig in signatures]


def _report(signature: EmbeddedPdfSignature, context: ValidationContext) -> SignatureReport:
    cert = signature.signer_cert
    problems: list[str] = []
    try:
        status = validate_pdf_signature(signature, context)
    except Exception as exc:  # a malformed signature is a finding, not a server error
        return SignatureReport(
            signer=cert.subject.human_friendly if cert else "unknown", signed_at=None,
            intact=False, trusted=False, level=None, covers_whole_document=False,
            signer_certificate_pem=_pem(cert), problems=[f"cannot validate: {type(exc).__name__}"],
        )
    if not status.intact:
        problems.append("the signed bytes were changed after signing")
    if not status.trusted:
        problems.append("the signer's certificate does not chain to a trusted root")
    coverage = status.coverage.name if status.coverage else "UNKNOWN"
    whole = coverage == "ENTIRE_FILE"
    if not whole:
        modification = status.modification_level.name if status.modification_level else "?"
        problems.append(f"the document changed after this signature ({modification})")
    signed_at = status.signer_reported_dt
    return SignatureReport(
        signer=cert.subject.human_friendly, signed_at=signed_at.isoformat() if signed_at else None,
        intact=bool(status.intact and status.valid), trusted=bool(status.trusted),
        level=pades_level(signature, status), covers_whole_document=whole,
        signer_certificate_pem=_pem(cert), problems=problems,
    )


def _pem(cert: asn1_x509.Certificate | None) -> bytes:
    if cert is None:
        return b""
    armored: bytes = asn1_pem.armor("CERTIFICATE", cert.dump())
    return armored
