"""The storage protocol every backend plugin implements; the core knows no concrete backend.

State is a set of JSON records addressed by ``(kind, key)``, each with a version that grows by
one on every write, plus an append-only event log and binary blobs. Every change the gateway
makes goes through :meth:`Storage.commit`: a batch of record writes (each with the version it
expects) and audit events that is applied completely or not at all, so a filing transition,
its receipt and its audit event can never be half-written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

JSON = dict[str, Any]

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class Record:
    kind: str
    key: str
    version: int
    data: JSON


@dataclass(frozen=True)
class Write:
    """One record write inside a commit.

    ``expected_version`` is 0 for "must not exist yet" and the current version otherwise;
    ``data=None`` deletes the record.
    """

    kind: str
    key: str
    expected_version: int
    data: JSON | None


EventSealer = Callable[[int, str], JSON]
"""Given the next sequence number and the previous event's hash, returns the complete event
(with its own ``seq``, ``prev_hash`` and ``hash``). Backends call it inside the atomic step."""


@dataclass(frozen=True)
class CommitResult:
    records: Sequence[Record] = ()
    events: Sequence[JSON] = field(default_factory=tuple)


class StaleWrite(Exception):
    """A write's expected version did not match; nothing of the commit was applied."""

    def __init__(self, kind: str, key: str, expected: int, actual: int) -> None:
        super().__init__(f"{kind}/{key}: expected version {expected}, found {actual}")
        self.kind, self.key, self.expected, self.actual = kind, key, expected, actual


class BackendUnavailable(Exception):
    """The backend cannot be reached now; the caller may retry later."""


@runtime_checkable
class Storage(Protocol):
    """What the gateway needs from a storage backend. All methods are coroutines."""

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise BackendUnavailable when the backend cannot serve requests."""

    async def get(self, kind: str, key: str) -> Record | None: ...

    async def list(
        self, kind: str, *, where: Mapping[str, Any] | None = None, limit: int = 1000
    ) -> list[Record]:
        """Records of a kind whose top-level fields equal ``where``, oldest first."""

    async def commit(
        self, writes: Sequence[Write], events: Sequence[EventSealer] = ()
    ) -> CommitResult:
        """Apply all writes and append all events atomically, or raise StaleWrite."""

    async def events(
        self, *, since_seq: int = 0, limit: int = 1000
    ) -> list[JSON]:
        """Audit events with ``seq > since_seq``, oldest first."""

    async def last_event(self) -> JSON | None: ...

    async def put_blob(self, key: str, data: bytes) -> None: ...

    async def get_blob(self, key: str) -> bytes | None: ...

    async def take_token(
        self, bucket: str, *, rate: float, burst: int, now: float
    ) -> float:
        """Token bucket: 0 when a token was taken, else seconds until one is available."""

    async def put_expiring(self, key: str, value: JSON, ttl_seconds: float) -> bool:
        """Store ``value`` under ``key`` unless present; True when stored (idempotency, SAD)."""

    async def get_expiring(self, key: str) -> JSON | None: ...

    async def set_expiring(self, key: str, value: JSON, ttl_seconds: float) -> None: ...

    async def incr(self, key: str, amount: int = 1) -> int:
        """Atomic counter shared by every process using the backend."""


class StorageBackendFactory(Protocol):
    """What a storage plugin returns from ``sealgate_storage_backends``."""

    name: str

    def create(self, settings: Any) -> Storage: ...
