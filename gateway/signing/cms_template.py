"""Detached CAdES signed-data for one key, assembled from DER pieces encoded once per key.

Building the CMS structure with asn1crypto objects re-encodes the certificates and attributes
for every document and costs most of a seal's time (DOMAIN.md §6). Everything in a PAdES
baseline B-B signature except the document digest and the signature value depends only on
the key and its certificates, so :class:`CmsTemplate` encodes those parts once with
asn1crypto and joins them per document with plain DER framing. The result is the same
structure pyHanko builds: signed attributes content-type, message-digest and ESS
signing-certificate-v2, and no signing-time (PAdES puts the time in the signature dictionary).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from asn1crypto import algos, cms, core, x509
from pyhanko.sign.general import as_signing_certificate_v2

_SEQUENCE = 0x30
_SET = 0x31
_OCTET_STRING = 0x04
_CONTEXT_0 = 0xA0  # [0], constructed: signedAttrs and certificates (IMPLICIT), content


def der(tag: int, content: bytes) -> bytes:
    """One DER TLV with a definite length."""
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def _attribute(name: str, value: core.Asn1Value | str) -> bytes:
    attribute: bytes = cms.CMSAttribute({"type": name, "values": [value]}).dump()
    return attribute


@dataclass(frozen=True)
class CmsTemplate:
    """The per-key DER of a detached signed-data; see :meth:`for_key`."""

    hash_name: str
    max_signature_size: int
    signed_data_head: bytes  # version, digestAlgorithms, encapContentInfo, certificates
    signer_info_head: bytes  # version, sid, digestAlgorithm
    signature_algorithm: bytes
    static_attributes: tuple[bytes, ...]  # content-type, signing-certificate-v2
    message_digest_type: bytes

    @classmethod
    def for_key(
        cls,
        certificate: x509.Certificate,
        chain: Iterable[x509.Certificate],
        hash_name: str,
        signature_algorithm: algos.SignedDigestAlgorithm,
        max_signature_size: int,
    ) -> CmsTemplate:
        digest_algorithm = algos.DigestAlgorithm({"algorithm": hash_name}).dump()
        version = core.Integer(1).dump()
        certificates = b"".join(c.dump() for c in (certificate, *chain))
        sid = cms.IssuerAndSerialNumber(
            {
                "issuer": certificate.issuer,
                "serial_number": certificate.serial_number,
            }
        ).dump()
        return cls(
            hash_name=hash_name,
            max_signature_size=max_signature_size,
            signed_data_head=(
                version
                + der(_SET, digest_algorithm)
                + cms.EncapsulatedContentInfo({"content_type": "data"}).dump()
                + der(_CONTEXT_0, certificates)
            ),
            signer_info_head=version + sid + digest_algorithm,
            signature_algorithm=signature_algorithm.dump(),
            static_attributes=(
                _attribute("content_type", "data"),
                # The certificate is identified by its SHA-256 whatever the signing hash is,
                # as pyHanko does; RFC 5035 allows any hash here.
                _attribute("signing_certificate_v2", as_signing_certificate_v2(certificate)),
            ),
            message_digest_type=cms.CMSAttributeType("message_digest").dump(),
        )

    def signed_attributes(self, document_digest: bytes) -> bytes:
        """The DER ``SET OF Attribute`` whose digest the key signs (RFC 5652 §5.4)."""
        message_digest = der(
            _SEQUENCE,
            self.message_digest_type + der(_SET, der(_OCTET_STRING, document_digest)),
        )
        # DER orders the members of a SET OF by their encodings.
        return der(_SET, b"".join(sorted((*self.static_attributes, message_digest))))

    def digest_to_sign(self, signed_attributes: bytes) -> bytes:
        return hashlib.new(self.hash_name, signed_attributes).digest()

    def signed_data(self, signed_attributes: bytes, signature: bytes) -> bytes:
        """The DER ``ContentInfo`` of the detached signed-data with one signer."""
        signer_info = der(
            _SEQUENCE,
            self.signer_info_head
            # In SignerInfo the attributes are [0] IMPLICIT, so only the tag changes.
            + bytes((_CONTEXT_0,))
            + signed_attributes[1:]
            + self.signature_algorithm
            + der(_OCTET_STRING, signature),
        )
        signed_data = der(_SEQUENCE, self.signed_data_head + der(_SET, signer_info))
        return der(_SEQUENCE, cms.ContentType("signed_data").dump() + der(_CONTEXT_0, signed_data))

    @functools.cached_property
    def max_size(self) -> int:
        """Largest DER size :meth:`signed_data` can return for this key, in bytes."""
        digest = bytes(hashlib.new(self.hash_name).digest_size)
        return len(self.signed_data(self.signed_attributes(digest), bytes(self.max_signature_size)))
