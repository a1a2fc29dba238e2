"""Receipts as users fetch and check them: signed JSON, the signed PDF, and verification.

The PDF is rendered on first request and kept as a blob: it carries the receipt JSON (with
its JWS) as an embedded file, a QR code with the number and the digest of the signed content,
and the platform's PAdES signature, so one file proves everything offline.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import json
import uuid
import zlib
from typing import Any

from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.embed import EmbeddedFileObject, FileSpec, embed_file
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader

from gateway.errors import BadDocument, Conflict
from gateway.filing.receipt_pdf import render_receipt_pdf
from gateway.filing.receipts import load_receipt, verify_receipt
from gateway.hsm import Hsm, KeyAlgorithm
from gateway.kept import Kept
from gateway.keys.platform import Check, PlatformSigner, unsigned
from gateway.seals.registry import image_blob_key
from gateway.seals.verification import VerificationGate
from gateway.signing import PdfSealer, PdfSealOptions, SealKey
from gateway.signing.jcs import canonicalize
from gateway.signing.verify import validate_pdf_signatures
from gateway.storage import Storage

EMBEDDED_NAME = "receipt.json"
MAX_EMBEDDED_RECEIPT_BYTES = 256 * 1024


def pdf_blob_key(number: str) -> str:
    return f"receipt-pdf/{number}"


class ReceiptService:
    def __init__(self, storage: Storage, hsm: Hsm, platform: PlatformSigner,
                 trust_roots_pem: list[bytes], gate: VerificationGate) -> None:
        self._storage = storage
        self._gate = gate
        self._hsm = hsm
        self._platform = platform
        self._trust_roots_pem = trust_roots_pem
        self._sealer = PdfSealer()
        # Made again whenever the platform key is (its certificate renewed).
        self._seal_key: Kept[str, SealKey] = Kept()

    async def get(self, number: str) -> dict[str, Any]:
        return await load_receipt(self._storage, number)

    async def pdf(self, number: str) -> bytes:
        cached = await self._storage.get_blob(pdf_blob_key(number))
        if cached is not None:
            return cached
        receipt = await self.get(number)
        seal_png = await self._storage.get_blob(image_blob_key(str(receipt["seal"]["id"])))
        try:
            unsigned = await asyncio.to_thread(_render_with_attachment, receipt, seal_png)
        except ValueError as exc:  # a receipt that lacks what the rendering shows
            raise Conflict(f"receipt {number} cannot be rendered as a PDF: {exc}") from None
        signed = await self._sealer.seal(
            unsigned, await self._platform_seal_key(), b"",
            PdfSealOptions(visible=False, reason="备案回执 Filing receipt",
                           location="SealGate"),
        )
        await self._storage.put_blob(pdf_blob_key(number), signed)
        return signed

    async def verify_json(self, receipt: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
        checks = await verify_receipt(self._storage, self._platform, receipt, now)
        return _result(checks, receipt)

    async def verify_pdf(self, document: bytes, now: dt.datetime) -> dict[str, Any]:
        signatures = await self._gate.run(
            validate_pdf_signatures, document, self._trust_roots_pem)
        platform_pem = await self._platform.certificate_pem()
        # Problems include a change after signing: an incremental update leaves the
        # platform's signature intact while the page shows something else.
        ok = bool(signatures) and all(s.intact and s.trusted and not s.problems
                                      for s in signatures)
        signed_by_platform = any(s.signer_certificate_pem in platform_pem for s in signatures)
        checks = [Check("pdf_signature", ok and signed_by_platform,
                        "the PDF is PAdES-signed by the platform and unchanged" if ok
                        and signed_by_platform else "the PDF signature is missing, broken, "
                        "untrusted or not the platform's, or the PDF changed after it")]
        receipt = await self._gate.run(_embedded_receipt, document)
        if receipt is None:
            checks.append(Check("embedded_receipt", False, "the PDF carries no receipt.json"))
            return _result(checks, None)
        checks.extend(await verify_receipt(self._storage, self._platform, receipt, now))
        return _result(checks, receipt)

    async def _platform_seal_key(self) -> SealKey:
        key = await self._platform.key()
        found = self._seal_key.get(key.key_id, key)
        if found is None:
            found = self._seal_key.keep(key.key_id, key, SealKey.create(
                self._hsm, uuid.UUID(key.key_id).bytes, KeyAlgorithm(key.algorithm),
                key.chain[0], tuple(key.chain[1:])))
        return found


def _result(checks: list[Check], receipt: dict[str, Any] | None) -> dict[str, Any]:
    by_name = {c.name: c.ok for c in checks}
    authentic = by_name.get("signature", False) and by_name.get("certificate", False) \
        and by_name.get("pdf_signature", True)
    if not authentic:
        status = "invalid"
    elif all(c.ok for c in checks):
        status = "current"
    else:
        status = "authentic_not_current"
    return {"valid": status == "current", "status": status,
            "receipt_number": receipt.get("number") if receipt else None,
            "checks": [c.as_dict() for c in checks]}


def _render_with_attachment(receipt: dict[str, Any], seal_png: bytes | None) -> bytes:
    content_digest = hashlib.sha256(canonicalize(unsigned(receipt))).hexdigest()
    pdf = render_receipt_pdf({**receipt, "content_digest": content_digest,
                              **({"seal_image_png": seal_png} if seal_png else {})})
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
    data = json.dumps(receipt, ensure_ascii=False, indent=2).encode("utf-8")
    embed_file(writer, FileSpec(
        file_spec_string=EMBEDDED_NAME, file_name=EMBEDDED_NAME,
        embedded_data=EmbeddedFileObject.from_file_data(writer, data,
                                                        mime_type="application/json"),
        description="The signed filing receipt (JSON with detached JWS)",
    ))
    out = io.BytesIO()
    writer.write(out)  # type: ignore[no-untyped-call]  # pyHanko's writer is unannotated
    return out.getvalue()


def _bounded_data(stream: generic.StreamObject) -> bytes:
    """The stream's data, decoded only up to ``MAX_EMBEDDED_RECEIPT_BYTES``: anyone may post
    a receipt PDF, and a few hundred kilobytes of Flate can inflate to gigabytes."""
    filters = stream.get("/Filter")
    if filters is None:
        data = stream.encoded_data
    elif filters in ("/FlateDecode", ["/FlateDecode"]) and "/DecodeParms" not in stream:
        inflater = zlib.decompressobj()
        data = inflater.decompress(stream.encoded_data, MAX_EMBEDDED_RECEIPT_BYTES + 1)
    else:
        raise BadDocument("the embedded receipt.json is encoded in a way receipts never are")
    if len(data) > MAX_EMBEDDED_RECEIPT_BYTES:
        raise BadDocument(f"the embedded receipt.json is larger than "
                          f"{MAX_EMBEDDED_RECEIPT_BYTES} bytes; no receipt is")
    return bytes(data)


def _embedded_receipt(document: bytes) -> dict[str, Any] | None:
    try:
        reader = PdfFileReader(io.BytesIO(document), strict=False)
        names = reader.root["/Names"]["/EmbeddedFiles"]["/Names"]
        for i in range(0, len(names), 2):
            if str(names[i]) == EMBEDDED_NAME:
                spec = names[i + 1].get_object()
                stream = spec["/EF"]["/F"].get_object()
                value = json.loads(_bounded_data(stream))
                return value if isinstance(value, dict) else None
    except (KeyError, ValueError, TypeError, IndexError):
        return None
    except BadDocument:
        raise
    except Exception as exc:  # pyHanko raises many types for damaged files
        raise BadDocument("the receipt PDF cannot be read") from exc
    return None
