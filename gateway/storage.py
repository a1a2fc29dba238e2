"""The storage protocol every backend plugin implements; the core knows no concrete backend.

State is a set of JSON records addressed by ``(kind, key)``, each with a version that grows by
one on every write, plus an append-only event log and binary blobs. Every change the gateway
makes goes through :meth:`Storage.commit`: a batch of record writes (each with the version it
expects) and audit events that is applied completely or not at all, so a filing transition,
its receipt and its audit event can never be half-written.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

JSON = dict[str, Any]

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class Record:
    """One stored record. ``kind`` is a short name without ``:`` (backends build keys from it)."""

    kind: str
    key: str
    version: int
    data: JSON


class Tokens(NamedTuple):
    """What :meth:`Storage.take_tokens` took: ``taken`` tokens, or none and the ``wait``."""

    taken: int
    wait: float


WriteData = dict[str, Any] | None | Callable[[Sequence[dict[str, Any]]], dict[str, Any]]


@dataclass(frozen=True)
class Write:
    """One record write inside a commit.

    ``expected_version`` is 0 for "must not exist yet" and the current version otherwise;
    ``data=None`` deletes the record. ``data`` may also be a function of the events the same
    commit appends, for a record that must name its own audit event (a sealing receipt
    carries the ``seq`` of the event that records it); backends call it after sealing.
    """

    kind: str
    key: str
    expected_version: int
    data: WriteData


def resolve_writes(writes: Sequence[Write], events: Sequence[dict[str, Any]]) -> tuple[Write, ...]:
    """The writes with every event-dependent ``data`` computed from the sealed events."""
    return tuple(
        Write(w.kind, w.key, w.expected_version, w.data(events)) if callable(w.data) else w
        for w in writes
    )


def check_writes(writes: Sequence[Write]) -> None:
    """Raise ValueError when a commit would write one record twice (its outcome is unclear)."""
    seen: set[tuple[str, str]] = set()
    for write in writes:
        if (write.kind, write.key) in seen:
            raise ValueError(f"{write.kind}/{write.key} is written twice in one commit")
        seen.add((write.kind, write.key))


EventSealer = Callable[[int, str], JSON]
"""Given the next sequence number and the previous event's hash, returns the complete event
(with its own ``seq``, ``prev_hash`` and ``hash``). Backends call it inside the atomic step;
an optimistic backend calls it again when it retries, so it must be a pure function of its
arguments (capture the event's time before committing, not inside the sealer)."""


def seal_event(sealer: EventSealer, seq: int, prev_hash: str) -> JSON:
    """Call ``sealer`` and check that the event it returns fits where it will be appended.

    Backends use this so that a faulty sealer raises ValueError (and the commit applies
    nothing) instead of storing an event that breaks the chain.
    """
    event = sealer(seq, prev_hash)
    if event.get("seq") != seq or event.get("prev_hash") != prev_hash:
        raise ValueError(f"the sealer returned an event that does not follow seq {seq - 1}")
    if not isinstance(event.get("hash"), str) or not event["hash"]:
        raise ValueError("the sealer returned an event without its hash")
    return event


@dataclass(frozen=True)
class CommitResult:
    """The records as written (deleted ones are left out) and the events as appended."""

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
        """Records of a kind whose top-level fields equal ``where``, oldest first.

        ``where`` values are scalars (str, int, float, bool, None) compared as Python compares
        them; ``None`` matches a field that is null or missing.
        """

    async def commit(
        self, writes: Sequence[Write], events: Sequence[EventSealer] = ()
    ) -> CommitResult:
        """Apply all writes and append all events atomically, or raise StaleWrite.

        Each record may appear once among ``writes`` (ValueError otherwise).
        """

    async def events(
        self, *, since_seq: int = 0, limit: int = 1000
    ) -> builtins.list[JSON]:
        """Audit events with ``seq > since_seq``, oldest first."""

    async def last_event(self) -> JSON | None: ...

    async def put_blob(self, key: str, data: bytes) -> None: ...

    async def get_blob(self, key: str) -> bytes | None: ...

    async def take_tokens(
        self, bucket: str, *, rate: float, burst: int, now: float, want: int = 1
    ) -> Tokens:
        """Token bucket: take up to ``want`` whole tokens; when not even one is there, take
        none and say how many seconds until one is."""

    async def put_expiring(self, key: str, value: JSON, ttl_seconds: float) -> bool:
        """Store ``value`` under ``key`` unless present; True when stored (idempotency, SAD)."""

    async def get_expiring(self, key: str) -> JSON | None: ...

    async def set_expiring(self, key: str, value: JSON, ttl_seconds: float) -> None: ...

    async def replace_expiring(
        self, key: str, value: JSON, ttl_seconds: float, *, if_field: str, equals: str
    ) -> bool:
        """Replace the value under ``key`` only while it is there and its ``if_field`` is
        ``equals``; True when replaced. An idempotency claim is renewed and settled only by
        the attempt that holds it, never over a later claimant's."""

    async def incr(self, key: str, amount: int = 1) -> int:
        """Atomic counter shared by every process using the backend."""


class StorageBackendFactory(Protocol):
    """What a storage plugin returns from ``sealgate_storage_backends``."""

    name: str

    def create(self, settings: Any) -> Storage: ...


INLINE_BYTES = 16 * 1024
CHUNK_BYTES = 1024 * 1024


async def put_expiring_bytes(
    storage: Storage, prefix: str, data: bytes, ttl_seconds: float
) -> JSON:
    """Store ``data`` under expiring keys starting with ``prefix``; return a small reference
    for :func:`get_expiring_bytes`. Small values sit in the reference itself; larger ones in
    chunks, written before the reference exists, so a reference never points to nothing."""
    ref: JSON = {"sha256": hashlib.sha256(data).hexdigest(), "chunks": 0, "prefix": prefix}
    if len(data) <= INLINE_BYTES:
        ref["data"] = _b64(data)
        return ref
    chunks = [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
    for index, chunk in enumerate(chunks):
        await storage.set_expiring(f"{prefix}:{index}", {"data": _b64(chunk)}, ttl_seconds)
    ref["chunks"] = len(chunks)
    return ref


async def get_expiring_bytes(storage: Storage, ref: Mapping[str, Any]) -> bytes | None:
    """The bytes behind a reference from :func:`put_expiring_bytes`; None once any part of
    them has expired (or does not match its digest)."""
    if ref.get("chunks"):
        parts = []
        for index in range(int(ref["chunks"])):
            chunk = await storage.get_expiring(f"{ref['prefix']}:{index}")
            if chunk is None:
                return None
            parts.append(base64.b64decode(chunk["data"]))
        data = b"".join(parts)
    else:
        data = base64.b64decode(ref.get("data", ""))
    return data if hashlib.sha256(data).hexdigest() == ref.get("sha256") else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def hold_lease(storage: Storage, key: str, holder: str, ttl_seconds: float) -> bool:
    """Take or renew the lease ``key`` for ``holder``; False while another holder has it.

    For work that one process of a deployment should do at a time (the filing poller). A lease
    lapses ``ttl_seconds`` after its holder last renewed it, so a dead holder's work is taken
    over. Not a lock: in a rare race (the lease lapses between the read and the renewal) two
    holders may both run for one round, so the work guarded must be safe to repeat.
    """
    value: JSON = {"holder": holder}
    if await storage.put_expiring(key, value, ttl_seconds):
        return True
    current = await storage.get_expiring(key)
    if current is None or current.get("holder") != holder:
        return False
    await storage.set_expiring(key, value, ttl_seconds)
    return True
