"""Applying a seal: the signing hot path shared by every format.

grant check → ``may_sign`` → format-specific signing (HSM thread for the key, worker threads
for document CPU work) → one atomic commit of the sealing receipt and its audit event.
What does not change per document — the seal's key material and its image — is cached per
process, keyed so that a new certificate or image can never hit a stale entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway import metrics
from gateway.audit import AuditLog
from gateway.auth import ApiClient
from gateway.clock import isoformat, utcnow
from gateway.errors import NotFound, Overloaded, SealGateError
from gateway.hsm import Hsm, KeyAlgorithm
from gateway.keys.registry import certificate_chain
from gateway.seals.registry import SealRegistry
from gateway.settings import Settings
from gateway.signing import PdfSealer, PdfSealOptions, SealKey
from gateway.storage import Storage, Write

SEALING_RECEIPT = "sealing_receipt"
T = TypeVar("T")


@dataclass(frozen=True)
class SealingResult:
    output: bytes
    receipt_id: str


@dataclass(frozen=True)
class SealContext:
    """Everything one signing request needs about its seal, resolved and checked."""

    seal: Mapping[str, Any]
    key: Mapping[str, Any]
    seal_key: SealKey


class SealingService:
    def __init__(
        self, settings: Settings, storage: Storage, hsm: Hsm, seals: SealRegistry,
        audit: AuditLog,
    ) -> None:
        self._storage = storage
        self._hsm = hsm
        self._seals = seals
        self._audit = audit
        self._pdf = PdfSealer()
        self._keys: dict[tuple[str, str], SealKey] = {}
        self._images: dict[tuple[str, str], bytes] = {}
        self._slots = asyncio.BoundedSemaphore(settings.server.max_in_flight)
        self._max_in_flight = settings.server.max_in_flight

    async def context(self, client: ApiClient, seal_id: str) -> SealContext:
        """Grant check, ``may_sign``, and the seal's cached key material."""
        seal, key = await self._seals.signing_material(client, seal_id, utcnow())
        return SealContext(seal, key, self._seal_key(key))

    async def seal_pdf(
        self, client: ApiClient, seal_id: str, document: bytes, options: PdfSealOptions
    ) -> SealingResult:
        async def run() -> SealingResult:
            ctx = await self.context(client, seal_id)
            image = await self._image(ctx.seal) if options.visible else b""
            sealed = await self._pdf.seal(document, ctx.seal_key, image, options)
            receipt_id = await self.record(
                client, ctx, "pdf", hashlib.sha256(document).hexdigest(),
                hashlib.sha256(sealed).hexdigest(), {"level": str(options.level)},
            )
            return SealingResult(sealed, receipt_id)

        metrics.DOCUMENT_BYTES.labels("pdf").observe(len(document))
        return await self.measured("pdf", run)

    async def measured(self, fmt: str, run: Callable[[], Awaitable[T]]) -> T:
        """Bound the operations in flight, time them, and count outcomes by reason."""
        started = time.perf_counter()
        try:
            async with self._slot():
                result = await run()
        except SealGateError as exc:
            metrics.SIGNING_ERRORS.labels(fmt, exc.type_slug).inc()
            raise
        metrics.SIGNATURES.labels(fmt).inc()
        metrics.SIGNING_SECONDS.labels(fmt).observe(time.perf_counter() - started)
        return result

    async def record(
        self, client: ApiClient, ctx: SealContext, fmt: str, digest_before: str,
        digest_after: str, details: Mapping[str, Any] | None = None,
        digests: Sequence[str] = (),
    ) -> str:
        """Commit the sealing receipt and its audit event together; return the receipt id."""
        receipt_id = str(uuid.uuid4())
        certificate = ctx.key.get("certificate") or {}
        receipt = {
            "id": receipt_id, "format": fmt, "seal_id": ctx.seal["id"],
            "seal_name": ctx.seal["name"], "key_id": ctx.key["id"],
            "certificate_sha256": certificate.get("sha256"),
            "document_sha256_before": digest_before, "document_sha256_after": digest_after,
            "signed_at": isoformat(utcnow()), "client": client.name, **(details or {}),
        }
        if digests:
            receipt["digests_sha256"] = list(digests)

        def with_sequence(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
            return {**receipt, "audit_seq": events[0]["seq"]}

        await self._audit.commit(
            [Write(SEALING_RECEIPT, receipt_id, 0, with_sequence)],
            [self._audit.event_sealer(
                client.name, "seal.signed", f"seal/{ctx.seal['id']}",
                {"format": fmt, "sealing_receipt": receipt_id, "document_sha256": digest_before,
                 "client_id": client.id},
            )],
        )
        return receipt_id

    async def sealing_receipt(self, receipt_id: str) -> dict[str, Any]:
        record = await self._storage.get(SEALING_RECEIPT, receipt_id)
        if record is None:
            raise NotFound(f"no sealing receipt with id {receipt_id}")
        return record.data

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        # Refuse at once instead of queueing without bound: a client that sees 503 with
        # Retry-After can back off, a queue only grows latency for everyone.
        if self._slots.locked():
            raise Overloaded(f"{self._max_in_flight} signing operations are in flight; retry")
        async with self._slots:
            metrics.SIGNING_IN_FLIGHT.inc()
            try:
                yield
            finally:
                metrics.SIGNING_IN_FLIGHT.dec()

    def _seal_key(self, key: Mapping[str, Any]) -> SealKey:
        certificate = key.get("certificate") or {}
        cache_key = (str(key["id"]), str(certificate.get("sha256")))
        found = self._keys.get(cache_key)
        if found is None:
            chain = certificate_chain(dict(key))
            found = SealKey.create(self._hsm, uuid.UUID(str(key["id"])).bytes,
                                   KeyAlgorithm(key["algorithm"]), chain[0], tuple(chain[1:]))
            self._keys[cache_key] = found
        return found

    async def _image(self, seal: Mapping[str, Any]) -> bytes:
        cache_key = (str(seal["id"]), str(seal["image_sha256"]))
        found = self._images.get(cache_key)
        if found is None:
            found = await self._seals.image(str(seal["id"]))
            self._images[cache_key] = found
        return found
