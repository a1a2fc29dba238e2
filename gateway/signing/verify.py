"""Checking PDF signatures with pyHanko's validator: intact, trusted, level, later changes.

Every embedded signature is reported, document time-stamps included. The PAdES level is
what the signature proves, not what it carries: B-T needs a signature time-stamp that
validates, B-LT validation data in the DSS with which the signature and its time-stamp
validate (at the time-stamp's time, revocation data required, nothing fetched), and B-LTA a
valid document time-stamp in a later revision on top of that.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from asn1crypto import pem as asn1_pem
from asn1crypto import x509 as asn1_x509
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.diff_analysis import ModificationLevel
from pyhanko.sign.fields import SigSeedSubFilter, enumerate_sig_fields
from pyhanko.sign.validation import (
    DocumentSecurityStore,
    validate_pdf_signature,
    validate_pdf_timestamp,
)
from pyhanko.sign.validation.pdf_embedded import EmbeddedPdfSignature
from pyhanko.sign.validation.status import (
    DocumentTimestampStatus,
    PdfSignatureStatus,
    SignatureCoverageLevel,
)
from pyhanko_certvalidator import ValidationContext

from gateway.clock import isoformat
from gateway.errors import BadDocument
from gateway.signing.pdf_limits import check_object_streams, check_readable

SIGNATURE = "signature"
MAX_SIGNATURES = 50
_SUBFILTERS = frozenset(subfilter.value for subfilter in SigSeedSubFilter)
DOCUMENT_TIMESTAMP = "document_timestamp"


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
    kind: str = SIGNATURE
    # intact, trusted, and no change after signing that its document permissions forbid
    valid: bool = False


def pades_level(
    signature: EmbeddedPdfSignature,
    status: PdfSignatureStatus,
    roots: Sequence[asn1_x509.Certificate],
) -> str | None:
    """The PAdES baseline level (ETSI EN 319 142-1 §6) a validated signature reaches."""
    attributes = {attr["type"].native for attr in signature.signer_info["signed_attrs"]}
    if (
        signature.sig_object.get("/SubFilter") != "/ETSI.CAdES.detached"
        or not {"content_type", "message_digest", "signing_certificate_v2"} <= attributes
        or "signing_time" in attributes
        or "/M" not in signature.sig_object
    ):
        return None
    timestamp = status.timestamp_validity
    if timestamp is None or not (timestamp.intact and timestamp.valid and timestamp.trusted):
        return "B-B"
    if not _validates_from_dss(signature, roots, timestamp.timestamp):
        return "B-T"
    return "B-LTA" if _archive_timestamps(signature, roots) else "B-LT"


def _validates_from_dss(
    signature: EmbeddedPdfSignature, roots: Sequence[asn1_x509.Certificate], at: object
) -> bool:
    """Whether the DSS alone lets the signature and its time-stamp validate with revocation
    checks required: what B-LT promises a validator years from now."""
    try:
        dss = DocumentSecurityStore.read_dss(signature.reader)
        context = dss.as_validation_context(
            {
                "trust_roots": list(roots),
                "allow_fetching": False,
                "revocation_mode": "require",
                # Validated as of the time-stamp; the CRLs were issued after it, on purpose.
                "moment": at,
                "retroactive_revinfo": True,
            }
        )
    except Exception:  # a missing or malformed DSS (any type pyHanko raises): a lower level
        return False
    try:
        status = validate_pdf_signature(signature, context)
    except Exception:  # an unusable DSS is a lower level, not a failure of the check
        return False
    timestamp = status.timestamp_validity
    return bool(status.trusted and timestamp is not None and timestamp.trusted)


def _archive_timestamps(
    signature: EmbeddedPdfSignature, roots: Sequence[asn1_x509.Certificate]
) -> bool:
    """Whether a valid document time-stamp was added in a later revision."""
    context = ValidationContext(trust_roots=list(roots), allow_fetching=False)
    return any(
        later.sig_object_type == "/DocTimeStamp"
        and later.signed_revision > signature.signed_revision
        and _timestamp_holds(later, context)
        for later in signature.reader.embedded_signatures
    )


def _timestamp_holds(timestamp: EmbeddedPdfSignature, context: ValidationContext) -> bool:
    try:
        status = validate_pdf_timestamp(timestamp, context)
    except Exception:  # a broken time-stamp proves nothing
        return False
    return bool(status.intact and status.valid and status.trusted)


def trust_roots(pem_bundles: Sequence[bytes]) -> list[asn1_x509.Certificate]:
    roots = []
    for bundle in pem_bundles:
        for _, _, der in asn1_pem.unarmor(bundle, multiple=True):
            roots.append(asn1_x509.Certificate.load(der))
    return roots


def validate_pdf_signatures(
    document: bytes, roots_pem: Sequence[bytes]
) -> list[SignatureReport]:
    """Every signature of the PDF, each validated against the given trust roots; one whose
    dictionary or CMS cannot be read is reported as such, the others validated all the same.

    Blocking (pyHanko parses and hashes the whole file): call it from a worker thread.
    """
    check_readable(document)
    try:
        reader = PdfFileReader(io.BytesIO(document), strict=False)
        check_object_streams(reader)
        signatures, unreadable = _collect_signatures(reader)
    except BadDocument:
        raise
    except Exception as exc:  # pyHanko raises many types for damaged files
        raise BadDocument("the PDF cannot be read") from exc
    roots = trust_roots(roots_pem)
    context = ValidationContext(trust_roots=roots, allow_fetching=False)
    return [*(_report(sig, context, roots) for sig in signatures), *unreadable]


def _collect_signatures(
    reader: PdfFileReader,
) -> tuple[list[EmbeddedPdfSignature], list[SignatureReport]]:
    """The document's signatures in signing order, and a report for each that cannot be read.

    pyHanko's own collection fails the whole document on one signature it cannot read (a
    /Contents that is no CMS, a /ByteRange off the file), so a seal added later to such a
    document could not be verified at all. It also reads each field's signature in full,
    also when many fields name one signature dictionary: 20,000 references to one field
    (125 KB) took 2 s. Here each signature is read once, and no more than
    ``MAX_SIGNATURES`` of them.
    """
    readable: list[tuple[int, EmbeddedPdfSignature]] = []
    unreadable: list[SignatureReport] = []
    seen: set[object] = set()
    for name, sig_object, field_ref in enumerate_sig_fields(reader, filled_status=True):
        sig_field = field_ref.get_object()
        key = _signature_key(sig_field, sig_object)
        if key in seen:
            continue
        seen.add(key)
        try:
            if sig_object.get_object().get("/SubFilter") not in _SUBFILTERS:
                continue  # not a signature pyHanko validates (it skips these too)
            _count_one_more(len(readable) + len(unreadable))
            signature = EmbeddedPdfSignature(reader, sig_field, name)
            readable.append((signature.signed_revision, signature))
        except BadDocument:
            raise
        except Exception as exc:  # any part of a hostile signature dictionary
            unreadable.append(_unvalidated("unknown", SIGNATURE, f"cannot read field {name}", exc))
    readable.sort(key=lambda entry: entry[0])
    return [signature for _, signature in readable], unreadable


def _signature_key(sig_field: generic.DictionaryObject, sig_object: object) -> object:
    """What tells signatures apart: many fields may name one signature dictionary."""
    ref = sig_field.raw_get("/V")
    if isinstance(ref, generic.IndirectObject):
        return (ref.idnum, ref.generation)
    return id(sig_object)


def _count_one_more(found: int) -> None:
    if found >= MAX_SIGNATURES:
        # Anyone may post a PDF here, and each signature costs tens of milliseconds.
        raise BadDocument(f"the PDF has over {MAX_SIGNATURES} signatures; at most "
                          f"{MAX_SIGNATURES} are verified")


def _report(
    signature: EmbeddedPdfSignature,
    context: ValidationContext,
    roots: Sequence[asn1_x509.Certificate],
) -> SignatureReport:
    kind = DOCUMENT_TIMESTAMP if signature.sig_object_type == "/DocTimeStamp" else SIGNATURE
    try:
        cert = signature.signer_cert
        status: PdfSignatureStatus | DocumentTimestampStatus
        if kind == DOCUMENT_TIMESTAMP:
            status = validate_pdf_timestamp(signature, context)
        else:
            status = validate_pdf_signature(signature, context)
    except Exception as exc:  # a malformed signature is a finding, not a server error
        return _unvalidated(_subject(signature), kind, "cannot validate", exc)
    problems: list[str] = []
    if not (status.intact and status.valid):
        problems.append("the signed bytes were changed after signing")
    if not status.trusted:
        problems.append("the signer's certificate does not chain to a trusted root")
    whole = status.coverage == SignatureCoverageLevel.ENTIRE_FILE
    changes = status.modification_level
    # Validation data and time-stamps added later (B-LT, B-LTA) are not changes to the content.
    if not whole and changes != ModificationLevel.LTA_UPDATES:
        problems.append(
            f"the document changed after this signature ({changes.name if changes else '?'})"
        )
    if isinstance(status, PdfSignatureStatus):
        try:
            level = pades_level(signature, status, roots)
        except Exception:  # parts the level checks cannot read: no level, not a server error
            level = None
        timestamp = status.timestamp_validity
        trusted_time = timestamp.timestamp if timestamp is not None and timestamp.valid else None
        signed_at = trusted_time or status.signer_reported_dt
        valid = status.bottom_line
    else:
        level, signed_at = None, status.timestamp
        # docmdp_ok is None when nothing followed the time-stamp: nothing to object to.
        valid = bool(status.intact and status.valid and status.trusted
                     and status.docmdp_ok is not False)
    return SignatureReport(
        signer=cert.subject.human_friendly, signed_at=isoformat(signed_at) if signed_at else None,
        intact=bool(status.intact and status.valid), trusted=bool(status.trusted),
        level=level, covers_whole_document=whole, signer_certificate_pem=certificate_pem(cert),
        # Valid means no problem at all: a signature that holds over a document changed
        # after it (even only bytes appended) does not vouch for what is shown now.
        problems=problems, kind=kind, valid=bool(valid) and not problems,
    )


def _unvalidated(signer: str, kind: str, what: str, exc: Exception) -> SignatureReport:
    return SignatureReport(
        signer=signer, signed_at=None, intact=False, trusted=False, level=None,
        covers_whole_document=False, signer_certificate_pem=b"",
        problems=[f"{what}: {type(exc).__name__}"], kind=kind,
    )


def _subject(signature: EmbeddedPdfSignature) -> str:
    try:
        return str(signature.signer_cert.subject.human_friendly)
    except Exception:  # no or no readable signer certificate
        return "unknown"


def certificate_pem(cert: asn1_x509.Certificate | None) -> bytes:
    if cert is None:
        return b""
    armored: bytes = asn1_pem.armor("CERTIFICATE", cert.dump())
    return armored
