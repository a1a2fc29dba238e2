"""Applying a seal: the signing hot path shared by every format.

grant check → ``may_sign`` → format-specific signing (the HSM layer for the key, a thread for
document CPU work) → one atomic commit of the sealing receipt and its audit event.
A request under an idempotency key signs at most once per key (seals/once.py).
What does not change per document — the seal's key material and its image — is cached per
process, keyed so that a new certificate or image can never hit a stale entry.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from gateway import metrics
from gateway.audit import AuditLog
from gateway.auth import ApiClient
from gateway.clock import isoformat, utcnow
from gateway.errors import (
    Forbidden,
    NotFound,
    Overloaded,
    SealGateError,
    StorageUnavailable,
    ValidationFailed,
)
from gateway.hsm import Hsm, KeyAlgorithm
from gateway.idempotency_scope import CURRENT_SCOPE, IdempotencyScope
from gateway.kept import Kept
from gateway.keys.registry import certificate_chain, reserve_signatures
from gateway.seals.once import Outcome, SignedOnce
from gateway.seals.registry import SealRegistry
from gateway.settings import Settings
from gateway.signing import PdfSealer, PdfSealOptions, SealKey, SignatureLevel
from gateway.signing.cms import CmsSealer, ContentDigest, check_level
from gateway.signing.digests import (
    batch_fingerprint,
    signature_algorithm_oid,
    signature_scheme,
)
from gateway.signing.ltv import LongTermSigning
from gateway.storage import BackendUnavailable, StaleWrite, Storage, Write

SEALING_RECEIPT = "sealing_receipt"
T = TypeVar("T")


@dataclass(frozen=True)
class SealingResult:
    output: bytes
    receipt_id: str

    @classmethod
    def from_outcome(cls, outcome: Outcome) -> SealingResult:
        return cls(outcome.output, outcome.receipt_id)


@dataclass(frozen=True)
class DigestSignatures:
    """Signatures over a batch of digests, in their order, and what a verifier needs."""

    signatures: list[bytes]
    signature_algorithm: str  # OID
    certificate_chain: tuple[bytes, ...]  # DER, leaf first
    receipt_id: str

    def output(self) -> bytes:
        """Everything but the receipt id, as the bytes an idempotent retry gets back."""
        return json.dumps({
            "signatures": [_b64(s) for s in self.signatures],
            "signature_algorithm": self.signature_algorithm,
            "certificate_chain": [_b64(c) for c in self.certificate_chain],
        }).encode()

    @classmethod
    def from_outcome(cls, outcome: Outcome) -> DigestSignatures:
        data = json.loads(outcome.output)
        return cls(
            [base64.b64decode(s) for s in data["signatures"]], data["signature_algorithm"],
            tuple(base64.b64decode(c) for c in data["certificate_chain"]), outcome.receipt_id,
        )


@dataclass(frozen=True)
class SealContext:
    """Everything one signing request needs about its seal, resolved and checked."""

    seal: Mapping[str, Any]
    key: Mapping[str, Any]
    seal_key: SealKey


class SealingService:
    def __init__(
        self, settings: Settings, storage: Storage, hsm: Hsm, seals: SealRegistry,
        audit: AuditLog, *, long_term: LongTermSigning | None = None,
    ) -> None:
        self._storage = storage
        self._hsm = hsm
        self._seals = seals
        self._audit = audit
        self._once = SignedOnce(storage)
        # One thread per process for document CPU work: pyHanko holds the GIL, so more
        # threads add no parallelism, only contention with the event loop (every syscall it
        # makes would wait up to a switch interval for the GIL). Processes scale it.
        self._documents = ThreadPoolExecutor(max_workers=1, thread_name_prefix="documents")
        self._pdf = PdfSealer(executor=self._documents, long_term=long_term)
        self._cms = CmsSealer(long_term)
        self._keys: Kept[str, SealKey] = Kept()  # by key id, made from its chain PEM
        self._images: Kept[str, bytes] = Kept()  # by seal id, for its image's SHA-256
        self._slots = asyncio.BoundedSemaphore(settings.server.max_in_flight)
        self._max_in_flight = settings.server.max_in_flight

    async def context(
        self, client: ApiClient, seal_id: str, fmt: str, signatures: int = 1
    ) -> SealContext:
        """Grant check (for this format), ``may_sign``, the key's usage budget for
        ``signatures`` signatures, and the seal's cached key material."""
        seal, key = await self._seals.signing_material(client, seal_id, utcnow())
        if not client.may_sign_format(seal_id, fmt):
            if seal_id not in client.seals:
                raise Forbidden("this client holds no grant for the seal")
            raise Forbidden(f"the grant for this seal does not cover {fmt} signatures")
        await reserve_signatures(self._storage, key, signatures)
        return SealContext(seal, key, self._seal_key(key))

    async def seal_pdf(
        self, client: ApiClient, seal_id: str, document: bytes, options: PdfSealOptions
    ) -> SealingResult:
        async def run() -> SealingResult:
            ctx = await self.context(client, seal_id, "pdf", 0)
            image = await self._image(ctx.seal) if options.visible else b""
            sealed = await self._pdf.seal(document, ctx.seal_key, image, options,
                                          self._reserve_one(ctx))
            receipt_id = await self.record(
                client, ctx, "pdf", hashlib.sha256(document).hexdigest(),
                hashlib.sha256(sealed).hexdigest(), {"level": str(options.level)},
                output=sealed,
            )
            return SealingResult(sealed, receipt_id)

        metrics.DOCUMENT_BYTES.labels("pdf").observe(len(document))
        return await self.measured("pdf", run, SealingResult.from_outcome)

    async def seal_pdf_file(
        self, client: ApiClient, seal_id: str, file: BinaryIO, size: int,
        sha256: hashlib._Hash, options: PdfSealOptions,
    ) -> str:
        """Seal a document spooled to ``file`` (``size`` bytes, ``sha256`` of them fed
        already) in place; return the receipt id. The file then holds the sealed document."""

        async def run() -> str:
            ctx = await self.context(client, seal_id, "pdf", 0)
            image = await self._image(ctx.seal) if options.visible else b""
            await self._pdf.seal_file(file, ctx.seal_key, image, options, self._reserve_one(ctx))
            # The seal only appends, so the digest after continues the one before.
            after = await asyncio.get_running_loop().run_in_executor(
                None, _digest_from, sha256.copy(), file, size)
            return await self.record(
                client, ctx, "pdf", sha256.hexdigest(), after, {"level": str(options.level)})

        metrics.DOCUMENT_BYTES.labels("pdf").observe(size)
        return await self.measured("pdf", run)

    async def sign_cms(
        self, client: ApiClient, seal_id: str, content: AsyncIterable[bytes],
        level: SignatureLevel | str = SignatureLevel.B_B,
    ) -> SealingResult:
        """Detached CAdES over content hashed while it streams in; the content is never kept."""
        parsed = check_level(level)
        try:
            # Refuse before reading what may be a large body (no signature reserved yet);
            # the key also picks the digest algorithm.
            hash_name = (await self.context(client, seal_id, "cms", 0)).seal_key.hash_name
        except SealGateError as exc:
            metrics.SIGNING_ERRORS.labels("cms", exc.type_slug).inc()
            raise
        except BackendUnavailable:
            metrics.SIGNING_ERRORS.labels("cms", StorageUnavailable.type_slug).inc()
            raise
        digest = ContentDigest(hash_name)
        # Hashed on the event loop between reads: a 256 KiB chunk takes about 0.15 ms, less
        # than a hop to a worker thread, and the content is never held whole.
        async for chunk in content:
            digest.update(chunk)
        if not digest.size:
            raise ValidationFailed.one("body", "is empty; send the content to sign")
        metrics.DOCUMENT_BYTES.labels("cms").observe(digest.size)

        async def run() -> SealingResult:
            # Checked again: the seal may have been suspended while the content arrived.
            ctx = await self.context(client, seal_id, "cms")
            key = ctx.seal_key
            signature = await self._cms.sign(key, digest.digest(key.hash_name), parsed)
            receipt_id = await self.record(
                client, ctx, "cms", digest.sha256_hex, hashlib.sha256(signature).hexdigest(),
                {"level": str(parsed), "content_bytes": digest.size}, output=signature,
            )
            return SealingResult(signature, receipt_id)

        return await self.measured("cms", run, SealingResult.from_outcome)

    async def sign_hashes(
        self, client: ApiClient, seal_id: str, hash_name: str, digests: Sequence[bytes]
    ) -> DigestSignatures:
        """Sign a batch of pre-computed digests (``sign/hash``)."""

        async def run() -> DigestSignatures:
            ctx = await self.context(client, seal_id, "hash", len(digests))
            return await self.sign_digests(client, ctx, "hash", hash_name, digests)

        return await self.measured("hash", run, DigestSignatures.from_outcome)

    async def sign_digests(
        self, client: ApiClient, ctx: SealContext, fmt: str, hash_name: str,
        digests: Sequence[bytes],
    ) -> DigestSignatures:
        """Sign digests in one HSM hop and commit the batch's receipt; run inside measured()."""
        signed = await self.digest_signatures(ctx, hash_name, digests)
        return await self.record_digests(client, ctx, fmt, hash_name, digests, signed)

    async def digest_signatures(
        self, ctx: SealContext, hash_name: str, digests: Sequence[bytes]
    ) -> DigestSignatures:
        """The signatures over digests, made in one HSM hop; no receipt yet (its id is "")."""
        key = ctx.seal_key
        signatures = await self._hsm.sign_digests(
            key.key_id, key.algorithm, digests, hash_name, signature_scheme(key.algorithm))
        oid = signature_algorithm_oid(key.algorithm, hash_name)
        return DigestSignatures(signatures, oid, key.chain_der, receipt_id="")

    async def record_digests(
        self, client: ApiClient, ctx: SealContext, fmt: str, hash_name: str,
        digests: Sequence[bytes], signed: DigestSignatures,
    ) -> DigestSignatures:
        """Commit the receipt of a batch :meth:`digest_signatures` signed; ``signed`` with
        its id. The receipt's before/after digests are SHA-256 over the length-prefixed
        digests and signatures; the digests themselves are listed in hex."""
        receipt_id = await self.record(
            client, ctx, fmt, hashlib.sha256(batch_fingerprint(digests)).hexdigest(),
            hashlib.sha256(batch_fingerprint(signed.signatures)).hexdigest(),
            {"hash_algorithm": hash_name, "signature_algorithm": signed.signature_algorithm,
             "count": len(digests)},
            [d.hex() for d in digests], output=signed.output,
        )
        return dataclasses.replace(signed, receipt_id=receipt_id)

    async def measured(
        self, fmt: str, run: Callable[[], Awaitable[T]],
        recover: Callable[[Outcome], T] | None = None,
    ) -> T:
        """Bound the operations in flight, time them, and count outcomes by reason.

        Under an idempotency key, ``recover`` turns the sealing committed under that key
        before (by a worker that died before answering) into this request's result, and
        ``run`` is not called: what was signed once is not signed again.
        """
        scope = CURRENT_SCOPE.get()
        started = time.perf_counter()
        try:
            if scope is not None and recover is not None:
                previous = await self._once.previous(scope)
                if previous is not None:
                    return _recovered(scope, recover, previous)
            async with self._slot():
                result = await run()
        except StaleWrite:
            # A duplicate committed under the same key first (see seals/once.py).
            if scope is None or recover is None:
                raise
            previous = await self._once.previous(scope)
            if previous is None:
                raise
            return _recovered(scope, recover, previous)
        except SealGateError as exc:
            metrics.SIGNING_ERRORS.labels(fmt, exc.type_slug).inc()
            raise
        except BackendUnavailable:
            # Becomes the 503 only in the problem middleware; counted here, or the error
            # ratio alert would not see a storage outage at all.
            metrics.SIGNING_ERRORS.labels(fmt, StorageUnavailable.type_slug).inc()
            raise
        except Exception:
            # A bug: the client gets 500 internal-error, and the error ratio alert sees it.
            metrics.SIGNING_ERRORS.labels(fmt, SealGateError.type_slug).inc()
            raise
        metrics.SIGNATURES.labels(fmt).inc()
        metrics.SIGNING_SECONDS.labels(fmt).observe(time.perf_counter() - started)
        return result

    async def record(
        self, client: ApiClient, ctx: SealContext, fmt: str, digest_before: str,
        digest_after: str, details: Mapping[str, Any] | None = None,
        digests: Sequence[str] = (), *, output: bytes | Callable[[], bytes] | None = None,
    ) -> str:
        """Commit the sealing receipt and its audit event together; return the receipt id.

        ``output`` is what the client gets back (or a function making it, called only when
        needed), kept for an idempotent retry under the request's key (seals/once.py); a
        spooled document, which is never under a key, has none.
        """
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

        writes = [Write(SEALING_RECEIPT, receipt_id, 0, with_sequence)]
        scope = CURRENT_SCOPE.get()
        if scope is not None and output is not None:
            kept = output() if callable(output) else output
            writes.append(await self._once.write(scope, receipt_id, kept))
        await self._audit.commit(
            writes,
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

    def _reserve_one(self, ctx: SealContext) -> Callable[[], Awaitable[None]]:
        """The key's usage budget for one signature, taken once the document is prepared:
        a document that cannot be sealed (unreadable, encrypted, a page it lacks) is refused
        without using up any of it."""
        return functools.partial(reserve_signatures, self._storage, ctx.key, 1)

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
        """The key's signing material, made again whenever its stored chain changes (a
        renewed certificate, or the same one with an intermediate added); one per key."""
        key_id, chain_pem = str(key["id"]), key.get("certificate_chain_pem")
        found = self._keys.get(key_id, chain_pem)
        if found is None:
            chain = certificate_chain(dict(key))
            found = self._keys.keep(key_id, chain_pem, SealKey.create(
                self._hsm, uuid.UUID(key_id).bytes, KeyAlgorithm(key["algorithm"]), chain[0],
                tuple(chain[1:])))
        return found

    async def _image(self, seal: Mapping[str, Any]) -> bytes:
        seal_id, digest = str(seal["id"]), seal["image_sha256"]
        found = self._images.get(seal_id, digest)
        if found is None:
            found = self._images.keep(seal_id, digest, await self._seals.image(seal_id))
        return found


def _recovered(
    scope: IdempotencyScope, recover: Callable[[Outcome], T], previous: Outcome
) -> T:
    scope.recovered = True
    metrics.IDEMPOTENT_REQUESTS.labels("recovered").inc()
    return recover(previous)


def _digest_from(digest: hashlib._Hash, file: BinaryIO, offset: int) -> str:
    """``digest`` continued with the bytes of ``file`` from ``offset`` on, in hex."""
    file.seek(offset)
    while chunk := file.read(1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
