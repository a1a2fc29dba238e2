"""Signature activation data (SAD) of the CSC API: issued, looked up and spent in storage.

A SAD is 256 random bits handed out once; storage keeps only its SHA-256 (as it does for API
tokens), under an expiring key of the storage backend, so that every worker process and every
gateway instance on the same backend sees the same SADs. What a SAD allows is fixed when it is
issued: one credential (seal), one API client, ``numSignatures`` signatures in total, the
seal's key and certificate of that moment (the client puts that certificate into what it
signs, so a key rotated or a certificate renewed since makes the SAD useless) and, for SCAL 2,
only the hashes given at authorization.

A request spends signatures before it signs and gives them back when it then signs nothing
(the HSM or storage away before its commit, the key's usage budget used up), so that the same
authorization can be used again. The spent count sits in the SAD record with a revision, and
every change of it is a compare-and-set on that revision (``replace_expiring``): a change
made from a count that another request has changed meanwhile fails and is redone from the new
count, so concurrent requests in every worker and instance never spend more than
``numSignatures`` together, and a give-back never returns signatures another request took.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import CscRequestError
from gateway.storage import JSON, BackendUnavailable, Storage

log = logging.getLogger(__name__)

# An expired SAD is kept this much longer, so that its use is answered "SAD expired" rather
# than as an unknown SAD.
EXPIRED_GRACE_SECONDS = 600
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


@dataclass(frozen=True)
class Spending:
    """Signatures one request took from a SAD, to give back if it signs nothing."""

    activation: Activation
    count: int


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
            "spent": 0, "revision": "0",
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

    async def spend(self, activation: Activation, count: int) -> Spending:
        """Take ``count`` of the SAD's signatures, or refuse when fewer are left."""
        while True:
            data = await self._current(activation)
            spent = int(data["spent"])
            if spent + count > activation.num_signatures:
                left = max(0, activation.num_signatures - spent)
                raise CscRequestError(
                    f"Invalid parameter SAD: it authorizes {activation.num_signatures} "
                    f"signatures, {left} left, and {count} were requested")
            if await self._change(activation, data, spent + count):
                return Spending(activation, count)

    async def give_back(self, spending: Spending) -> None:
        """Return what a request took and did not sign with. Best effort: while storage is
        away the signatures stay spent (fewer than authorized, never more)."""
        try:
            while True:
                data = await self._current(spending.activation)
                spent = max(0, int(data["spent"]) - spending.count)
                if await self._change(spending.activation, data, spent):
                    return
        except CscRequestError:
            return  # expired meanwhile: nothing left to give back to
        except BackendUnavailable as exc:
            log.warning("SAD signatures not given back (storage unavailable): %s", exc)

    async def _current(self, activation: Activation) -> JSON:
        data = await self._storage.get_expiring(activation.storage_key)
        if data is None:  # only once the SAD itself is long gone
            raise CscRequestError("SAD expired")
        return data

    async def _change(self, activation: Activation, data: JSON, spent: int) -> bool:
        """Set the spent count, unless it was changed since ``data`` was read."""
        kept_for = activation.expires_at + EXPIRED_GRACE_SECONDS - self.clock()
        if kept_for <= 0:
            raise CscRequestError("SAD expired")
        revision = str(data["revision"])
        return await self._storage.replace_expiring(
            activation.storage_key, {**data, "spent": spent, "revision": str(int(revision) + 1)},
            kept_for, if_field="revision", equals=revision)


def _certificate_sha256(key: Mapping[str, Any]) -> str | None:
    sha256 = (key.get("certificate") or {}).get("sha256")
    return None if sha256 is None else str(sha256)


def _storage_key(sad: str) -> str:
    # "v2": SADs whose spent count is a revised field of their record. A worker of an
    # earlier version (spending through claim keys) does not find them, so the two ways of
    # counting never meet on one SAD while a deployment is being upgraded.
    return "csc-sad:v2:" + hashlib.sha256(sad.encode("utf-8")).hexdigest()
