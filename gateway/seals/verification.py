"""What signatures prove, for anyone who asks (``POST /v1/verify``): PDFs and CMS with content.

The checks themselves are :mod:`gateway.signing.verify` (PDF) and
:mod:`gateway.signing.cms_verify` (CMS), run in a worker thread; this service adds which seal
made each signature, by the SHA-256 of the signer's certificate: the key whose certificate it
is, and the seal that holds that key now or held it before a rotation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway.errors import Overloaded
from gateway.keys.registry import KEY
from gateway.seals.registry import SEAL
from gateway.signing.cms_verify import verify_cms
from gateway.signing.verify import SignatureReport, trust_roots, validate_pdf_signatures
from gateway.storage import Storage

T = TypeVar("T")

# Every key and seal of one organisation fits in one listing many times over.
_LISTING_LIMIT = 1_000_000


class VerificationGate:
    """Where the anonymous verifications of one worker run: one thread of their own, and at
    most ``limit`` at a time, the rest refused with 503 and Retry-After.

    Anyone may post a document to verify, and its checks hold the GIL for as long as they
    take; on the default thread pool they also held up the spooling of documents to seal.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._slots.locked():
            raise Overloaded(f"{self._limit} verifications are in flight here; retry")
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)


class SignatureVerifier:
    """Verifies signed PDFs and CMS signatures against the configured trust roots."""

    def __init__(self, storage: Storage, roots_pem: Sequence[bytes],
                 gate: VerificationGate) -> None:
        self._storage = storage
        self._roots_pem = list(roots_pem)
        self._roots = trust_roots(self._roots_pem)
        self._gate = gate

    async def verify_pdf(self, document: bytes) -> dict[str, Any]:
        reports = await self._gate.run(validate_pdf_signatures, document, self._roots_pem)
        return await self._answer(reports)

    async def verify_cms(self, signature: bytes, content: bytes | None) -> dict[str, Any]:
        reports = await self._gate.run(verify_cms, signature, content, self._roots)
        return await self._answer(reports)

    async def _answer(self, reports: Sequence[SignatureReport]) -> dict[str, Any]:
        seals = await self._seals_by_certificate() if reports else {}
        signatures = []
        for report in reports:
            entry: dict[str, Any] = {
                "signer": report.signer, "signed_at": report.signed_at,
                "intact": report.intact, "trusted": report.trusted, "level": report.level,
                "kind": report.kind, "problems": report.problems,
            }
            seal_id = seals.get(_sha256(report.signer_certificate_pem))
            if seal_id is not None:
                entry["seal_id"] = seal_id
            signatures.append(entry)
        return {"valid": bool(reports) and all(r.valid for r in reports),
                "signatures": signatures}

    async def _seals_by_certificate(self) -> dict[str, str]:
        """Certificate SHA-256 (hex) → id of the seal whose key it certifies (or certified,
        before the key was rotated or its certificate renewed)."""
        key_certificates = {
            record.key: [(record.data.get("certificate") or {}).get("sha256"),
                         *(old.get("sha256")
                           for old in record.data.get("certificate_history") or [])]
            for record in await self._storage.list(KEY, limit=_LISTING_LIMIT)
        }
        found: dict[str, str] = {}
        for record in await self._storage.list(SEAL, limit=_LISTING_LIMIT):
            seal = record.data
            key_ids = [str(retired.get("key_id")) for retired in seal.get("key_history") or []]
            fingerprints = [retired.get("certificate_sha256")
                            for retired in seal.get("key_history") or []]
            for key_id in [*key_ids, str(seal.get("key_id"))]:
                fingerprints.extend(key_certificates.get(key_id, []))
            for fingerprint in fingerprints:
                if fingerprint:
                    found[fingerprint] = record.key
        return found


def _sha256(pem: bytes) -> str:
    if not pem:
        return ""
    return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()
