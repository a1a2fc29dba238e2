"""Signature activation data (SAD) of the CSC API: issued, looked up and spent in storage.

A SAD is 256 random bits handed out once; storage keeps only its SHA-256 (as it does for API
tokens), under an expiring key of the storage backend, so that every worker process and every
gateway instance on the same backend sees the same SADs. What a SAD allows is fixed when it is
issued: one credential (seal), one API client, ``numSignatures`` signatures in total, the
seal's key and certificate of that moment (the client puts that certificate into what it
signs, so a key rotated or a certificate renewed since makes the SAD useless) and, for SCAL 2,
only the hashes given at authorization.

Spending has to be atomic across processes, and the storage protocol offers "store unless
present" (``put_expiring``) but no compare-and-set of expiring values. The spent count is
therefore a chain of claims: a use that starts when ``N`` signatures are spent claims the key
``…:spent:N`` and writes there the count it leaves. When another request claimed that key
first, the claim tells where the count went and the use retries from there. No two uses can
start from the same count, so together they never exceed ``numSignatures``, and the chain has
at most ``numSignatures`` links. Claims outlive the SAD record, so an expired claim can never
let a live SAD be spent twice.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import CscRequestError
from gateway.storage import Storage

# An expired SAD is kept this much longer, so that its use is answered "SAD expired" rather
# than as an unknown SAD; claims are kept a little longer still.
EXPIRED_GRACE_SECONDS = 600
CLAIM_MARGIN_SECONDS = 60
MAX_SAD_LENGTH = 256


@dataclass(frozen=True)
class Activation:
    """What one SAD allows, as stored when it was issued."""

    storage_key: str
    credential_id: str
    client_id: str
    num_signatures: int
    hashes: frozenset[str] | None  # hex digests, SCAL 2; None when not bound to hashes
    expires_at: float  # Unix time
    key_id: str
    certificate_sha256: str | None

    def allows(self, digest: bytes) -> bool:
        return self.hashes is None or digest.hex() in self.hashes

    def signs_with(self, key: Mapping[str, Any]) -> bool:
        """Whether ``key`` (a key record) is the key and certificate the SAD was issued for."""
        return (str(key["id"]) == self.key_id
                and _certificate_sha256(key) == self.certificate_sha256)


class SadStore:
    """Issues SADs, finds them again, and spends their signatures; ``clock`` is Unix time."""

    def __init__(
        self, storage: Storage, ttl_seconds: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._storage = storage
        self.ttl_seconds = ttl_seconds
        self.clock = clock

    async def issue(
        self, credential_id: str, client_id: str, key: Mapping[str, Any], num_signatures: int,
        hashes: Sequence[bytes] | None,
    ) -> str:
        """A new SAD for these signatures by ``key`` (the seal's key record now); the caller
        has checked the client may use them."""
        sad = secrets.token_urlsafe(32)
        record = {
            "credential_id": credential_id, "client_id": client_id,
            "key_id": str(key["id"]), "certificate_sha256": _certificate_sha256(key),
            "num_signatures": num_signatures,
            "hashes": None if hashes is None else sorted({h.hex() for h in hashes}),
            "expires_at": self.clock() + self.ttl_seconds,
        }
        stored = await self._storage.put_expiring(
            _storage_key(sad), record, self.ttl_seconds + EXPIRED_GRACE_SECONDS)
        # 256 random bits do not collide; a failed store means the backend misbehaves.
        assert stored, "a fresh SAD was already stored"
        return sad

    async def find(self, sad: str) -> Activation:
        """The activation behind ``sad``; CscRequestError when it is unknown or expired."""
        if not sad or len(sad) > MAX_SAD_LENGTH:
            raise CscRequestError("Invalid parameter SAD")
        key = _storage_key(sad)
        data = await self._storage.get_expiring(key)
        if data is None:
            raise CscRequestError("Invalid parameter SAD")
        if float(data["expires_at"]) <= self.clock():
            raise CscRequestError("SAD expired")
        hashes = data.get("hashes")
        return Activation(
            storage_key=key, credential_id=str(data["credential_id"]),
            client_id=str(data["client_id"]), num_signatures=int(data["num_signatures"]),
            hashes=None if hashes is None else frozenset(str(h) for h in hashes),
            expires_at=float(data["expires_at"]), key_id=str(data.get("key_id")),
            certificate_sha256=data.get("certificate_sha256"),
        )

    async def spend(self, activation: Activation, count: int) -> None:
        """Take ``count`` of the SAD's signatures, or refuse when fewer are left."""
        claim_ttl = self.ttl_seconds + EXPIRED_GRACE_SECONDS + CLAIM_MARGIN_SECONDS
        spent = 0
        while True:
            if spent + count > activation.num_signatures:
                left = max(0, activation.num_signatures - spent)
                raise CscRequestError(
                    f"Invalid parameter SAD: it authorizes {activation.num_signatures} "
                    f"signatures, {left} left, and {count} were requested")
            claim = f"{activation.storage_key}:spent:{spent}"
            if await self._storage.put_expiring(claim, {"to": spent + count}, claim_ttl):
                return
            taken = await self._storage.get_expiring(claim)
            if taken is None:  # only once the SAD itself is long gone
                raise CscRequestError("SAD expired")
            spent = int(taken["to"])


def _certificate_sha256(key: Mapping[str, Any]) -> str | None:
    sha256 = (key.get("certificate") or {}).get("sha256")
    return None if sha256 is None else str(sha256)


def _storage_key(sad: str) -> str:
    return "csc-sad:" + hashlib.sha256(sad.encode("utf-8")).hexdigest()
