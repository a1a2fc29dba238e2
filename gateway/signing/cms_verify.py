"""Checking CMS (CAdES) signatures over given content: intact, trusted, time-stamped, level.

Each signer info is checked the way RFC 5652 §5.6 describes: the message-digest attribute
against the content's digest, the content-type attribute against the encapsulated type, and
the signature over the DER of the signed attributes with the public key of the certificate
the signer identifier names. The certificate must chain to a trust root (pyhanko-certvalidator
builds the path, nothing is fetched). A signature time-stamp (unsigned attribute, B-T) is
checked the same way, plus its imprint against the signature value and its TSA certificate
for the time-stamping purpose.

Blocking: call :func:`verify_cms` from a worker thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import algos, cms, core, tsp, x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pyhanko_certvalidator import CertificateValidator, ValidationContext
from pyhanko_certvalidator.errors import PathError, ValidationError

from gateway.clock import isoformat
from gateway.errors import ValidationFailed
from gateway.signing.verify import SIGNATURE, SignatureReport, certificate_pem

_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512(),
}
_SET = 0x31
# What an anonymous caller may make POST /v1/verify read: far above any real signature (a
# B-LT CMS with its chain and time-stamp is tens of kilobytes), far below hours of CPU.
MAX_CMS_BYTES = 1024 * 1024
MAX_SIGNERS = 16
MAX_CERTIFICATES = 50
_TST_INFO = cms.ContentType("tst_info").dotted


@dataclass(frozen=True)
class _SignerCheck:
    """One signer info checked against its content."""

    certificate: x509.Certificate | None
    intact: bool
    trusted: bool
    problems: list[str]


def load_signed_data(signature: bytes, field: str = "cms") -> cms.SignedData:
    """The SignedData of a DER ContentInfo; 422 naming ``field`` when it is not one, or when
    it has more signers or certificates than anyone's signature needs.

    Only the outer structure is parsed here: converting the whole of it to Python values
    (``.native``) took 1.5 s for one signer with a time-stamp token, and anyone may post one.
    """
    if len(signature) > MAX_CMS_BYTES:
        raise ValidationFailed.one(field, f"must be at most {MAX_CMS_BYTES} bytes")
    try:
        info = cms.ContentInfo.load(signature, strict=True)
        if info["content_type"].native != "signed_data":
            raise ValueError("not signed-data")
        signed_data: cms.SignedData = info["content"]
        signers = len(signed_data["signer_infos"])
        certificates = signed_data["certificates"]
        count = 0 if isinstance(certificates, core.Void) else len(certificates)
        signed_data["encap_content_info"]["content_type"].dotted  # noqa: B018 -- parse now
    except (ValueError, TypeError, KeyError) as exc:
        raise ValidationFailed.one(field, "is not a DER CMS SignedData") from exc
    if signers > MAX_SIGNERS or count > MAX_CERTIFICATES:
        raise ValidationFailed.one(field, f"has {signers} signers and {count} certificates; at "
                                          f"most {MAX_SIGNERS} and {MAX_CERTIFICATES} are read")
    return signed_data


def verify_cms(
    signature: bytes, content: bytes | None, roots: Sequence[x509.Certificate]
) -> list[SignatureReport]:
    """Every signer of ``signature`` (DER ContentInfo) over ``content``.

    ``content`` may be None when the signature encapsulates it (attached CMS).
    """
    signed_data = load_signed_data(signature)
    # The octets of eContent: for a content type asn1crypto knows (a time-stamp token's
    # TSTInfo, say) .native would be the parsed structure, and the digest is over the octets.
    encapsulated = signed_data["encap_content_info"]["content"]
    if content is None:
        if isinstance(encapsulated, core.Void):
            raise ValidationFailed.one("content", "is required: the signature is detached")
        content = encapsulated.contents
    certificates = _certificates(signed_data)
    content_type = signed_data["encap_content_info"]["content_type"].dotted
    reports = []
    for signer_info in signed_data["signer_infos"]:
        try:
            check = _check_signer(signer_info, content, content_type, certificates, roots,
                                  set())
        except (ValueError, TypeError, KeyError) as exc:  # a part asn1crypto cannot parse
            reports.append(SignatureReport(
                signer="unknown", signed_at=None, intact=False, trusted=False, level=None,
                covers_whole_document=False, signer_certificate_pem=b"",
                problems=[f"cannot validate: {type(exc).__name__}"], kind=SIGNATURE))
            continue
        problems = list(check.problems)
        timestamp_time, stamped = _signature_timestamp(signer_info, roots, problems)
        attributes = _attributes(signer_info, "signed_attrs")
        signing_time = attributes.get("signing_time")
        signed_at = timestamp_time or (signing_time["values"][0].native if signing_time else None)
        level = _cades_level(attributes, stamped)
        reports.append(SignatureReport(
            signer=check.certificate.subject.human_friendly if check.certificate else "unknown",
            signed_at=isoformat(signed_at) if signed_at else None,
            intact=check.intact, trusted=check.trusted, level=level,
            covers_whole_document=check.intact,
            signer_certificate_pem=certificate_pem(check.certificate),
            problems=problems, kind=SIGNATURE,
            valid=check.intact and check.trusted and not problems,
        ))
    return reports


def _cades_level(attributes: dict[str, cms.CMSAttribute], stamped: bool) -> str | None:
    """CAdES baseline (ETSI EN 319 122-1 §5.2): B-B needs the signing certificate reference
    and the signing time among the signed attributes; B-T a valid signature time-stamp."""
    if not ({"content_type", "message_digest", "signing_time"} <= attributes.keys()
            and attributes.keys() & {"signing_certificate", "signing_certificate_v2"}):
        return None
    return "B-T" if stamped else "B-B"


def _check_signer(
    signer_info: cms.SignerInfo,
    content: bytes,
    content_type: str,
    certificates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    extended_key_usage: set[str],
) -> _SignerCheck:
    problems: list[str] = []
    certificate = _signer_certificate(signer_info["sid"], certificates)
    if certificate is None:
        return _SignerCheck(None, False, False, ["the signer's certificate is not in the CMS"])
    digest_name = signer_info["digest_algorithm"]["algorithm"].native
    if digest_name not in _HASHES:
        return _SignerCheck(certificate, False, False, [f"unsupported digest {digest_name}"])
    attributes = _attributes(signer_info, "signed_attrs")
    if attributes:
        digest = hashlib.new(digest_name, content).digest()
        message_digest = attributes.get("message_digest")
        declared_type = attributes.get("content_type")
        intact = message_digest is not None and message_digest["values"][0].native == digest
        if not intact:
            problems.append("the content does not match the signed message digest")
        if declared_type is None or declared_type["values"][0].dotted != content_type:
            intact = False
            problems.append("the content-type attribute does not match the content")
        # The signature covers the attributes as a SET OF, not as the [0] they travel in.
        signed_bytes = bytes((_SET,)) + signer_info["signed_attrs"].dump()[1:]
    else:
        intact, signed_bytes = True, content
    if not _signature_holds(certificate, signer_info, digest_name, signed_bytes):
        intact = False
        problems.append("the signature value does not verify with the signer's certificate")
    trusted = _trusted(certificate, certificates, roots, extended_key_usage)
    if not trusted:
        problems.append("the signer's certificate does not chain to a trusted root")
    return _SignerCheck(certificate, intact, trusted, problems)


def _signature_timestamp(
    signer_info: cms.SignerInfo, roots: Sequence[x509.Certificate], problems: list[str]
) -> tuple[dt.datetime | None, bool]:
    """The time of a valid signature time-stamp (and True), or (None, False)."""
    attribute = _attributes(signer_info, "unsigned_attrs").get("signature_time_stamp_token")
    if attribute is None:
        return None, False
    token: cms.ContentInfo = attribute["values"][0]
    try:
        signed_data = token["content"]
        tst_bytes = signed_data["encap_content_info"]["content"].contents
        info = tsp.TSTInfo.load(tst_bytes)
        imprint = info["message_imprint"]
        hash_name = imprint["hash_algorithm"]["algorithm"].native
        expected = hashlib.new(hash_name, signer_info["signature"].native).digest()
        certificates = _certificates(signed_data)
        check = _check_signer(signed_data["signer_infos"][0], tst_bytes, _TST_INFO,
                              certificates, roots, {"time_stamping"})
    except (ValueError, TypeError, KeyError, IndexError):
        problems.append("the signature time-stamp cannot be read")
        return None, False
    if imprint["hashed_message"].native != expected:
        problems.append("the signature time-stamp is for another signature value")
        return None, False
    if not (check.intact and check.trusted):
        problems.extend(f"signature time-stamp: {p}" for p in check.problems)
        return None, False
    gen_time: dt.datetime = info["gen_time"].native
    return gen_time, True


def _signature_holds(
    certificate: x509.Certificate, signer_info: cms.SignerInfo, digest_name: str, data: bytes
) -> bool:
    algorithm: algos.SignedDigestAlgorithm = signer_info["signature_algorithm"]
    signature: bytes = signer_info["signature"].native
    try:
        public_key = serialization.load_der_public_key(certificate.public_key.dump())
        kind = algorithm.signature_algo
        if kind == "rsassa_pss":
            params = algorithm["parameters"]
            pss_hash = _HASHES[params["hash_algorithm"]["algorithm"].native]
            if not isinstance(public_key, rsa.RSAPublicKey):
                return False
            public_key.verify(signature, data, padding.PSS(
                padding.MGF1(pss_hash), params["salt_length"].native), pss_hash)
        elif kind == "rsassa_pkcs1v15":
            if not isinstance(public_key, rsa.RSAPublicKey):
                return False
            public_key.verify(signature, data, padding.PKCS1v15(), _HASHES[digest_name])
        elif kind == "ecdsa":
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                return False
            public_key.verify(signature, data, ec.ECDSA(_HASHES[digest_name]))
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, KeyError, ValueError):
        return False
    return True


def _trusted(
    certificate: x509.Certificate,
    certificates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    extended_key_usage: set[str],
) -> bool:
    context = ValidationContext(trust_roots=list(roots), allow_fetching=False)
    validator = CertificateValidator(
        certificate, intermediate_certs=list(certificates), validation_context=context
    )
    try:
        # Only an async API exists; this module runs in a worker thread with no loop.
        usage = validator.async_validate_usage(  # type: ignore[no-untyped-call]
            set(), extended_key_usage or None
        )
        asyncio.run(usage)
    except (PathError, ValidationError):  # no path to a root, or an invalid one
        return False
    return True


def _signer_certificate(
    sid: cms.SignerIdentifier, certificates: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    if sid.name == "issuer_and_serial_number":
        wanted = sid.chosen
        for certificate in certificates:
            if (certificate.issuer == wanted["issuer"]
                    and certificate.serial_number == wanted["serial_number"].native):
                return certificate
    else:
        key_id = sid.chosen.native
        for certificate in certificates:
            if certificate.key_identifier == key_id:
                return certificate
    return None


def _certificates(signed_data: cms.SignedData) -> list[x509.Certificate]:
    found = signed_data["certificates"]
    if isinstance(found, core.Void):
        return []
    return [c.chosen for c in found if c.name == "certificate"]


def _attributes(signer_info: cms.SignerInfo, which: str) -> dict[str, cms.CMSAttribute]:
    attributes = signer_info[which]
    if isinstance(attributes, core.Void):
        return {}
    return {a["type"].native: a for a in attributes}
