"""PKCS#10 certificate signing requests whose signature is made by the key inside the HSM."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from asn1crypto import algos, csr, keys, pem
from asn1crypto import x509 as asn1_x509

from gateway.errors import ValidationFailed
from gateway.hsm import Hsm, KeyAlgorithm, SignatureScheme

# API subject field → X.509 attribute name as asn1crypto spells it.
SUBJECT_FIELDS = {
    "common_name": "common_name",
    "organization": "organization_name",
    "organizational_unit": "organizational_unit_name",
    "country": "country_name",
    "state": "state_or_province_name",
    "locality": "locality_name",
    "serial_number": "serial_number",
}


# Upper bounds from RFC 5280 Appendix A (ub-common-name and the rest), in characters.
UPPER_BOUNDS = {
    "common_name": 64, "organization": 64, "organizational_unit": 64, "country": 2,
    "state": 128, "locality": 128, "serial_number": 64,
}

# X.520 makes these PrintableString whatever else is UTF8String; asn1crypto writes them as
# Latin-1 without checking, so anything past ASCII's printable set is refused here first.
PRINTABLE_FIELDS = ("country", "serial_number")
PRINTABLE = r"^[A-Za-z0-9 '()+,\-./:=?]*$"
_PRINTABLE = re.compile(PRINTABLE)


def subject_name(subject: Mapping[str, object]) -> asn1_x509.Name:
    unknown = sorted(set(subject) - set(SUBJECT_FIELDS))
    if unknown:
        raise ValidationFailed.one(f"subject.{unknown[0]}", "is not a supported subject field")
    for field, value in subject.items():
        if not isinstance(value, str):
            raise ValidationFailed.one(f"subject.{field}", "must be a string")
        if len(value) > UPPER_BOUNDS[field]:
            raise ValidationFailed.one(
                f"subject.{field}", f"must be at most {UPPER_BOUNDS[field]} characters")
    if not str(subject.get("common_name", "")).strip():
        raise ValidationFailed.one("subject.common_name", "is required")
    for field in PRINTABLE_FIELDS:
        if not _PRINTABLE.fullmatch(str(subject.get(field, ""))):
            raise ValidationFailed.one(f"subject.{field}", "may hold only ASCII letters, digits, "
                                                           "spaces and ' ( ) + , - . / : = ?")
    country = str(subject.get("country", ""))
    if country and (len(country) != 2 or not country.isalpha()):
        raise ValidationFailed.one("subject.country", "must be a two-letter country code")
    return asn1_x509.Name.build(
        {SUBJECT_FIELDS[k]: str(v) for k, v in subject.items() if str(v).strip()},
        use_printable=False,
    )


async def build_csr(
    hsm: Hsm, key_id: bytes, algorithm: KeyAlgorithm, public_key_der: bytes,
    subject: Mapping[str, object],
) -> bytes:
    """A PEM CSR for the subject, signed with SHA-256/384 by the HSM key."""
    info = csr.CertificationRequestInfo({
        "version": "v1",
        "subject": subject_name(subject),
        "subject_pk_info": keys.PublicKeyInfo.load(public_key_der),
        "attributes": [],
    })
    hash_name = algorithm.default_hash
    digest = hashlib.new(hash_name, info.dump()).digest()
    scheme = SignatureScheme.default_for(algorithm)
    signature = await hsm.sign_digest(key_id, algorithm, digest, hash_name, scheme)
    sig_alg = f"{hash_name}_{'rsa' if algorithm.is_rsa else 'ecdsa'}"
    request = csr.CertificationRequest({
        "certification_request_info": info,
        "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": sig_alg}),
        "signature": signature,
    })
    pem_bytes: bytes = pem.armor("CERTIFICATE REQUEST", request.dump())
    return pem_bytes
