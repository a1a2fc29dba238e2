"""Sign once per idempotency key, even when a worker dies between sealing and answering.

The API's idempotency middleware claims a key, runs the handler and then stores its answer.
Between the sealing commit and the stored answer lies a window: a worker killed there has
sealed a document that no client received, and once its claim expires the client's retry
would seal the document again. To close the window, the middleware gives a keyed request an
``IdempotencyScope`` (gateway/idempotency_scope.py), and the sealing service

1. before signing, looks up the ``signed_once`` record of the key: when the same request
   (same fingerprint) committed a sealing already, that sealing's output and receipt are
   handed back instead of signing again;
2. when committing, stores the output under expiring keys first, then writes the
   ``signed_once`` record in the same atomic commit as the sealing receipt and its audit
   event. The record's expected version makes a second commit for one key impossible: a
   duplicate that got that far (its claim lost by a worker paused past ``lock_seconds``)
   fails its commit, and the first outcome is returned; its own signature is neither
   delivered nor recorded.

A ``signed_once`` record outlives its ``expires_at`` (records do not expire); past it, the key
may be used afresh, as the idempotency answer itself has expired by then.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.clock import utcnow
from gateway.errors import IdempotencyAnswerLost
from gateway.idempotency_scope import IdempotencyScope
from gateway.storage import Storage, Write, get_expiring_bytes, put_expiring_bytes

SIGNED_ONCE = "signed_once"
# Outputs outlive their record's expires_at a little, so that a live record never points to
# expired bytes.
_OUTPUT_TTL_MARGIN_SECONDS = 60.0


@dataclass(frozen=True)
class Outcome:
    """A committed sealing as a keyed retry gets it back."""

    receipt_id: str
    output: bytes


class SignedOnce:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    async def previous(self, scope: IdempotencyScope) -> Outcome | None:
        """The outcome this request already committed under its key, if any."""
        record = await self._storage.get(SIGNED_ONCE, scope.key)
        scope.seen_version = 0 if record is None else record.version
        if record is None:
            return None
        data = record.data
        if data["fingerprint"] != scope.fingerprint or data["expires_at"] <= _now():
            # Another request's (the middleware refuses those with 409 before this point,
            # unless the key expired in between) or a forgotten one: sign afresh.
            return None
        output = await get_expiring_bytes(self._storage, data["output"])
        if output is None:
            raise answer_lost()
        return Outcome(str(data["receipt_id"]), output)

    async def write(self, scope: IdempotencyScope, receipt_id: str, output: bytes) -> Write:
        """Store ``output``; return the record write that belongs in the sealing commit."""
        ttl = scope.ttl_seconds + _OUTPUT_TTL_MARGIN_SECONDS
        scope.output_ref = await put_expiring_bytes(
            self._storage, f"{scope.key}:output:{scope.attempt}", output, ttl)
        return Write(SIGNED_ONCE, scope.key, scope.seen_version, {
            "fingerprint": scope.fingerprint, "receipt_id": receipt_id,
            "output": scope.output_ref, "expires_at": _now() + scope.ttl_seconds,
        })


def answer_lost() -> IdempotencyAnswerLost:
    return IdempotencyAnswerLost(
        "the answer stored for this Idempotency-Key is no longer complete; send the request "
        "with a new key"
    )


def _now() -> float:
    return utcnow().timestamp()
