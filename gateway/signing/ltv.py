"""Long-term PAdES: signature time-stamps (B-T), the DSS (B-LT), document time-stamps (B-LTA).

A B-B seal (:mod:`gateway.signing.pdf`) becomes B-T when its signer info carries a time-stamp
token over the signature value as an unsigned attribute; B-LT when the document's security
store (DSS) holds every certificate and CRL a validator needs for the seal's chain and the
TSA's chain, so nothing has to be fetched later; B-LTA when a document time-stamp then seals
the whole file, DSS included (ETSI EN 319 142-1 §5.3–5.5, §6).

Where time-stamps and CRLs come from is not this module's business: it takes a
:class:`TimeStamps` and a :class:`RevocationSource`. As in the rest of :mod:`gateway.signing`,
PDF and CMS work runs in the executor it is given and only the waits run on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

from asn1crypto import cms, crl, x509
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign.fields import SigFieldSpec
from pyhanko.sign.signers.cms_embedder import PdfCMSEmbedder, SigIOSetup, SigObjSetup
from pyhanko.sign.signers.pdf_byterange import DocumentTimestamp, PreparedByteRangeDigest
from pyhanko.sign.validation import DocumentSecurityStore

from gateway.signing.cms_template import der

# id-aa-signatureTimeStampToken (RFC 3161 Appendix A), as it sits in an Attribute.
_SIGNATURE_TIMESTAMP_OID = cms.CMSAttributeType("signature_time_stamp_token").dump()
# A length that grows past a DER length-octet boundary adds up to two bytes to each of the
# four structures enclosing the signer info (SET, SignedData, [0], ContentInfo).
_ENCLOSING_GROWTH = 4 * 2


class TimeStamps(Protocol):
    """An RFC 3161 time-stamp authority, in-process or remote."""

    async def timestamp(self, digest: bytes, hash_name: str) -> cms.ContentInfo:
        """A token whose message imprint is ``digest``, computed with ``hash_name``."""
        ...

    async def max_token_size(self, hash_name: str) -> int:
        """An upper bound of the DER size of :meth:`timestamp`'s tokens."""
        ...


class RevocationSource(Protocol):
    """Revocation data (CRLs) for certificates, as the gateway can obtain it now."""

    async def crls(self, certificates: Sequence[x509.Certificate]) -> list[crl.CertificateList]:
        """Current CRLs covering every certificate of ``certificates`` that is not a root."""
        ...


def signature_timestamp_attribute(token: cms.ContentInfo | bytes) -> bytes:
    """The DER ``Attribute`` id-aa-signatureTimeStampToken holding ``token``, for a signer
    info's unsigned attributes (CAdES/PAdES B-T)."""
    data = token if isinstance(token, bytes) else token.dump()
    return der(0x30, _SIGNATURE_TIMESTAMP_OID + der(0x31, data))


def unsigned_timestamp_size(token_size: int) -> int:
    """Bytes a signature time-stamp of ``token_size`` adds to a CMS signed-data at most."""
    return len(der(0xA1, signature_timestamp_attribute(bytes(token_size)))) + _ENCLOSING_GROWTH


def add_signature_timestamp(signed_data: bytes, token: cms.ContentInfo) -> bytes:
    """``signed_data`` (DER ContentInfo) with ``token`` added to its first signer's unsigned
    attributes as a signature time-stamp (CAdES/PAdES B-T); every other byte is kept.

    asn1crypto re-encodes only what changed, so certificates and signed attributes are
    written back exactly as they were signed.
    """
    info = cms.ContentInfo.load(signed_data)
    signer = info["content"]["signer_infos"][0]
    signer["unsigned_attrs"] = cms.CMSAttributes(
        [{"type": "signature_time_stamp_token", "values": [token]}]
    )
    data: bytes = info.dump()
    return data


def signature_value(signed_data: bytes) -> bytes:
    """The signature value of the first signer of a DER ContentInfo (what B-T time-stamps)."""
    value: bytes = cms.ContentInfo.load(signed_data)["content"]["signer_infos"][0][
        "signature"
    ].native
    return value


def token_certificates(token: cms.ContentInfo) -> list[x509.Certificate]:
    """The certificates a time-stamp token carries (the TSA's, when the query asked for them)."""
    certificates = token["content"]["certificates"]
    if certificates.native is None:
        return []
    return [c.chosen for c in certificates if c.name == "certificate"]


def add_validation_data(
    document: bytes,
    certificates: Sequence[x509.Certificate],
    crls: Sequence[crl.CertificateList],
) -> bytes:
    """``document`` with an incremental update that puts the certificates and CRLs in its DSS."""
    output = io.BytesIO(document)
    DocumentSecurityStore.add_dss(
        output, sig_contents=None, certs=certificates, crls=crls, force_write=True, strict=False
    )
    return output.getvalue()


@dataclass(frozen=True)
class PreparedDocumentTimestamp:
    """A document with an empty document time-stamp field, and the digest to time-stamp."""

    byte_range: PreparedByteRangeDigest
    output: io.BytesIO

    @property
    def digest(self) -> bytes:
        return self.byte_range.document_digest

    def finish(self, token: cms.ContentInfo) -> bytes:
        self.byte_range.fill_with_cms(self.output, token)
        return self.output.getvalue()


def prepare_document_timestamp(
    document: bytes, hash_name: str, token_size: int
) -> PreparedDocumentTimestamp:
    """Add an invisible ``/DocTimeStamp`` field sized for ``token_size`` and digest the file."""
    writer = IncrementalPdfFileWriter(io.BytesIO(document), strict=False)
    field_name = f"Timestamp-{uuid.uuid4().hex[:12]}"
    embedder: Any = PdfCMSEmbedder(new_field_spec=SigFieldSpec(sig_field_name=field_name))
    steps = embedder.write_cms(field_name=field_name, writer=writer, existing_fields_only=False)
    next(steps)
    # Written in hex, so twice the DER size. (pyHanko's placeholder classes are unannotated.)
    placeholder = DocumentTimestamp(bytes_reserved=2 * token_size)  # type: ignore[no-untyped-call]
    steps.send(SigObjSetup(sig_placeholder=placeholder))
    output = io.BytesIO()
    byte_range, _ = steps.send(SigIOSetup(md_algorithm=hash_name, output=output))
    return PreparedDocumentTimestamp(byte_range, output)


class LongTermSigning:
    """Adds what B-T, B-LT and B-LTA need to a signature, from one TSA and one CRL source."""

    def __init__(self, timestamps: TimeStamps, revocation: RevocationSource) -> None:
        self.timestamps = timestamps
        self.revocation = revocation

    async def signature_timestamp_size(self, hash_name: str) -> int:
        """Bytes a signature time-stamp adds to the CMS signed-data at most."""
        return unsigned_timestamp_size(await self.timestamps.max_token_size(hash_name))

    async def signature_timestamp(self, signature: bytes, hash_name: str) -> cms.ContentInfo:
        """A token over the signature value (ETSI EN 319 122-1 §5.3: signature-time-stamp)."""
        return await self.timestamps.timestamp(
            hashlib.new(hash_name, signature).digest(), hash_name
        )

    async def add_validation_data(
        self,
        document: bytes,
        chains: Sequence[Sequence[x509.Certificate]],
        executor: Executor | None = None,
    ) -> bytes:
        """``document`` with a DSS holding every certificate of ``chains`` and their CRLs."""
        certificates = _unique(c for chain in chains for c in chain)
        crls = await self.revocation.crls(certificates)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            executor, add_validation_data, document, certificates, crls
        )

    async def add_document_timestamp(
        self, document: bytes, hash_name: str, executor: Executor | None = None
    ) -> bytes:
        """``document`` sealed whole by a document time-stamp (the B-LTA step)."""
        loop = asyncio.get_running_loop()
        size = await self.timestamps.max_token_size(hash_name)
        prepared = await loop.run_in_executor(
            executor, prepare_document_timestamp, document, hash_name, size
        )
        token = await self.timestamps.timestamp(prepared.digest, hash_name)
        return await loop.run_in_executor(executor, prepared.finish, token)


def _unique(certificates: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    seen: dict[bytes, x509.Certificate] = {}
    for certificate in certificates:
        seen.setdefault(certificate.sha256, certificate)
    return list(seen.values())
