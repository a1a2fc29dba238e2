"""The idempotency key a request runs under, handed from the API to the services.

The API's idempotency middleware (api/idempotency.py) claims a key and stores the answer;
the services below it must know the key to keep their own work to once per key when the
answer was lost (a worker killed after committing): the sealing service (seals/once.py) and
filing submission. A context variable carries it, so that no service signature changes for a
concern only keyed requests have.
"""

from __future__ import annotations

import hashlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass
class IdempotencyScope:
    """The idempotency key a request runs under, as the middleware claimed it."""

    key: str  # the middleware's record key: client and hashed Idempotency-Key
    fingerprint: str
    attempt: str
    ttl_seconds: float
    # Learnt by the service: the version of the signed_once record seen (0: none), where this
    # request's output was stored (so that the stored answer can point to it), and whether
    # the result was handed back from an earlier commit rather than done now.
    seen_version: int = 0
    output_ref: dict[str, Any] | None = None
    recovered: bool = False

    def request_id(self) -> str:
        """Names this keyed request (key and fingerprint) in a record, without revealing
        either: a service that commits it can tell its own retry apart."""
        return hashlib.sha256(f"{self.key}\n{self.fingerprint}".encode()).hexdigest()


CURRENT_SCOPE: ContextVar[IdempotencyScope | None] = ContextVar(
    "sealgate_idempotency_scope", default=None)
