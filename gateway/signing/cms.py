"""Detached CAdES signatures over any content: the content's digest in, DER ``ContentInfo`` out.

The content never reaches this module whole: callers stream it through :class:`ContentDigest`
and hand over the digest, so a file of any size costs one chunk of memory. The CMS structure
is joined from the seal key's :class:`~gateway.signing.cms_template.CmsTemplate` (encoded once
per key) and differs from a PAdES signature in one signed attribute: CAdES baseline B-B
(ETSI EN 319 122-1 §5.2.1) requires ``signing-time``, which PAdES leaves to the PDF.

Signed attributes: content-type, message-digest, signing-certificate-v2, signing-time.
Levels above B-B add unsigned attributes (a signature time-stamp for B-T) after the HSM has
signed; :meth:`CmsSealer.sign` is where they are fetched and :meth:`PreparedCms.finish` where
they are written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import cms

from gateway.clock import utcnow
from gateway.errors import Conflict, ValidationFailed
from gateway.signing.cms_template import der
from gateway.signing.ltv import LongTermSigning, signature_timestamp_attribute
from gateway.signing.pdf import SignatureLevel
from gateway.signing.seal_key import SealKey

_SEQUENCE = 0x30
_SET = 0x31
_OCTET_STRING = 0x04
_CONTEXT_0 = 0xA0  # constructed [0]: signedAttrs (IMPLICIT), ContentInfo's content (EXPLICIT)
_CONTEXT_1 = 0xA1  # constructed [1]: unsignedAttrs (IMPLICIT)
# RFC 5652 §11.3: signing times from 1950 to 2049 are UTCTime, others GeneralizedTime.
_UTC_TIME_YEARS = range(1950, 2050)

# B-LT and B-LTA need validation data beside the signature (a PDF's DSS); a detached CMS
# has nowhere standard to carry them, so it stops at a signature time-stamp.
SUPPORTED_CMS_LEVELS = frozenset({SignatureLevel.B_B, SignatureLevel.B_T})


class ContentDigest:
    """Hashes streamed content with SHA-256 (for receipts) and the seal key's digest algorithm."""

    def __init__(self, hash_name: str) -> None:
        self._hashes = {name: hashlib.new(name) for name in {"sha256", hash_name}}
        self.size = 0

    def update(self, chunk: bytes) -> None:
        for each in self._hashes.values():
            each.update(chunk)
        self.size += len(chunk)

    def digest(self, hash_name: str) -> bytes:
        """The content's digest; Conflict when it was not hashed with ``hash_name``.

        That happens only when the seal's key changed while the content was arriving.
        """
        found = self._hashes.get(hash_name)
        if found is None:
            raise Conflict("the seal's key changed while the content was uploaded; send it again")
        return found.digest()

    @property
    def sha256_hex(self) -> str:
        return self._hashes["sha256"].hexdigest()


def check_level(level: SignatureLevel | str) -> SignatureLevel:
    """The level, parsed; 422 naming ``level`` unless detached CMS supports it."""
    parsed = SignatureLevel.parse(level)
    if parsed not in SUPPORTED_CMS_LEVELS:
        supported = ", ".join(sorted(SUPPORTED_CMS_LEVELS))
        raise ValidationFailed.one("level", f"{parsed} is not supported for CMS yet; "
                                            f"use {supported}")
    return parsed


def signing_time_attribute(when: dt.datetime) -> bytes:
    """The DER ``signing-time`` attribute, to the second."""
    when = when.astimezone(dt.UTC).replace(microsecond=0)
    kind = "utc_time" if when.year in _UTC_TIME_YEARS else "generalized_time"
    attribute: bytes = cms.CMSAttribute(
        {"type": "signing_time", "values": [cms.Time(name=kind, value=when)]}
    ).dump()
    return attribute


@dataclass(frozen=True)
class PreparedCms:
    """The signed attributes for one content digest and the digest the key has to sign."""

    signed_attributes: bytes
    digest_to_sign: bytes

    def finish(
        self, key: SealKey, signature: bytes, unsigned_attributes: Sequence[bytes] = ()
    ) -> bytes:
        """The DER ``ContentInfo``; ``unsigned_attributes`` are DER ``Attribute``s (B-T, ...)."""
        template = key.cms
        unsigned = b""
        if unsigned_attributes:
            # DER orders the members of a SET OF by their encodings.
            unsigned = der(_CONTEXT_1, b"".join(sorted(unsigned_attributes)))
        signer_info = der(
            _SEQUENCE,
            template.signer_info_head
            + bytes((_CONTEXT_0,))
            + self.signed_attributes[1:]  # [0] IMPLICIT: the SET keeps its length, not its tag
            + template.signature_algorithm
            + der(_OCTET_STRING, signature)
            + unsigned,
        )
        signed_data = der(_SEQUENCE, template.signed_data_head + der(_SET, signer_info))
        return der(
            _SEQUENCE, cms.ContentType("signed_data").dump() + der(_CONTEXT_0, signed_data)
        )


def prepare(key: SealKey, content_digest: bytes, signing_time: dt.datetime) -> PreparedCms:
    """Signed attributes over ``content_digest`` (made with ``key.hash_name``) at this time."""
    expected = hashlib.new(key.hash_name).digest_size
    if len(content_digest) != expected:
        raise ValueError(f"a {key.hash_name} digest has {expected} bytes, not "
                         f"{len(content_digest)}")
    template = key.cms
    message_digest = der(
        _SEQUENCE,
        template.message_digest_type + der(_SET, der(_OCTET_STRING, content_digest)),
    )
    attributes = (*template.static_attributes, message_digest,
                  signing_time_attribute(signing_time))
    signed_attributes = der(_SET, b"".join(sorted(attributes)))
    return PreparedCms(signed_attributes, template.digest_to_sign(signed_attributes))


class CmsSealer:
    """Makes detached CAdES signatures with any seal key.

    The CMS work is a few kilobytes of byte joining per signature (the certificates and
    fixed attributes are pre-encoded; about 50 µs measured here), so it runs on the event
    loop: a hop to a worker thread would cost more than it saves. ``long_term`` provides
    the signature time-stamp of level B-T.
    """

    def __init__(self, long_term: LongTermSigning | None = None) -> None:
        self._long_term = long_term

    async def sign(
        self, key: SealKey, content_digest: bytes, level: SignatureLevel | str = SignatureLevel.B_B,
        signing_time: dt.datetime | None = None,
    ) -> bytes:
        """The DER detached signature over content whose ``key.hash_name`` digest is given."""
        parsed = check_level(level)
        prepared = prepare(key, content_digest, signing_time or utcnow())
        signature = await key.sign_digest(prepared.digest_to_sign)
        if parsed is SignatureLevel.B_B:
            return prepared.finish(key, signature)
        if self._long_term is None:
            raise ValidationFailed.one("level", f"{parsed} needs a time-stamping authority, "
                                                "and none is configured")
        token = await self._long_term.signature_timestamp(signature, key.hash_name)
        return prepared.finish(key, signature, [signature_timestamp_attribute(token)])
