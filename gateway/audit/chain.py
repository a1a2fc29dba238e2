"""The tamper-evident audit log: hash-chained events on any Storage, checkpoints, verification.

Every event carries the hash of the one before it, and its own hash covers all of its fields,
so changing, removing, inserting or reordering a stored event breaks the chain at that event.
Someone able to write to the storage could still rewrite the whole chain from some event on;
that is what checkpoints are for: every ``checkpoint_every`` events (and on demand) the head is
signed by an audit key inside the HSM, and :func:`verify` checks each signature and that the
signed hash is still the hash of the event at that seq. Events after the last checkpoint are
protected by the chain alone, and a removed tail is noticed only up to the last checkpoint.
Checkpoints live in the same storage, so a writer who rewrites events can also delete the
checkpoints that would expose it; copies kept outside the storage are what catch that.

Personal data never goes into an event unmasked: callers put masked values into ``details``
(``"1101**********1234"``, not an ID number), because the log is exported to SIEMs and kept
long after the filing it describes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from gateway.audit.checkpoints import (
    CHECKPOINT_KIND,
    CheckpointSigner,
    KeyMaterial,
    PublicKey,
    checkpoint_problem,
    load_public_key,
)
from gateway.clock import isoformat, utcnow
from gateway.errors import ConfigError, SealGateError
from gateway.storage import (
    GENESIS_HASH,
    JSON,
    BackendUnavailable,
    CommitResult,
    EventSealer,
    StaleWrite,
    Storage,
    Write,
)

log = logging.getLogger(__name__)

EVENT_FIELDS = ("seq", "time", "actor", "action", "target", "details", "prev_hash", "hash")
# Storage.list has no cursor; with one checkpoint per hundred events this bound is far above
# any real number of checkpoints.
_ALL_CHECKPOINTS = 1_000_000
_PAGE = 1000


def canonical_json(value: Any) -> bytes:
    """The bytes an event hash covers: sorted keys, no whitespace, UTF-8, no NaN.

    This is deliberately not the receipts' RFC 8785 (JCS) code: audit/ sits below signing/
    and may not import it, and these hashes are only ever recomputed by this module, so all
    they need is a form that is deterministic. It matches JCS except for the spelling of some
    floats and the order of keys outside the Basic Multilingual Plane.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def event_hash(event: Mapping[str, Any]) -> str:
    """SHA-256 (hex) over the canonical JSON of the event without its ``hash`` member."""
    body = {name: value for name, value in event.items() if name != "hash"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    """What :func:`verify` found; ``problem`` says in words what is wrong at first_bad_seq."""

    intact: bool
    events: int
    checkpoints: int
    first_bad_seq: int | None
    problem: str | None = None


class TextSink(Protocol):
    def write(self, text: str, /) -> Any: ...


class AuditLog:
    """Appends events to the chain in ``storage`` and signs checkpoints with ``signer``.

    ``trusted_keys`` (key id hex -> public key) adds keys that signed earlier checkpoints,
    e.g. before the audit key was rotated; the signer's own key is always trusted.
    """

    def __init__(
        self,
        storage: Storage,
        signer: CheckpointSigner | None = None,
        *,
        checkpoint_every: int = 100,
        trusted_keys: Mapping[str, KeyMaterial] | None = None,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self.storage = storage
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self.trusted_keys = {k: load_public_key(v) for k, v in (trusted_keys or {}).items()}
        if signer is not None:
            self.trusted_keys[signer.key_id_hex] = signer.public_key

    def set_signer(self, signer: CheckpointSigner | None) -> None:
        """Attach the checkpoint signer once its key is known (the key registry itself
        writes audit events, so the log exists before the audit key can be looked up)."""
        self.signer = signer
        if signer is not None:
            self.trusted_keys[signer.key_id_hex] = signer.public_key

    def event_sealer(
        self,
        actor: str,
        action: str,
        target: str,
        details: Mapping[str, Any] | None = None,
        time: datetime | None = None,
    ) -> EventSealer:
        """An event for :meth:`Storage.commit`; its time is taken now, not when it is sealed."""
        if time is not None and time.tzinfo is None:
            raise ValueError("audit times must be timezone-aware")
        stamp = isoformat(time or utcnow())
        # A JSON round trip copies the details and turns them into what storage gives back
        # (tuples become lists), so the hash is the same before and after storing; values JSON
        # cannot hold fail here, in the caller, not inside the backend's transaction.
        frozen = json.loads(canonical_json(dict(details or {})))

        def seal(seq: int, prev_hash: str) -> JSON:
            event: JSON = {
                "seq": seq, "time": stamp, "actor": actor, "action": action,
                "target": target, "details": frozen, "prev_hash": prev_hash,
            }
            event["hash"] = event_hash(event)
            return event

        return seal

    async def append(
        self,
        actor: str,
        action: str,
        target: str,
        details: Mapping[str, Any] | None = None,
        time: datetime | None = None,
    ) -> JSON:
        """Append one event on its own; returns it with its seq and hash."""
        result = await self.commit((), [self.event_sealer(actor, action, target, details, time)])
        return result.events[0]

    async def commit(
        self, writes: Sequence[Write], events: Sequence[EventSealer] = ()
    ) -> CommitResult:
        """:meth:`Storage.commit`, then the checkpoints that the new events make due.

        Commits that carry audit events go through here rather than straight to the
        storage; only then is the head signed when an event lands on a multiple of
        ``checkpoint_every``.
        """
        result = await self.storage.commit(writes, events)
        if self.signer is not None:
            for event in result.events:
                if event["seq"] % self.checkpoint_every == 0:
                    await self._checkpoint_after_commit(event)
        return result

    async def checkpoint(self) -> JSON | None:
        """Sign the current head now; None while the log is empty."""
        head = await self.storage.last_event()
        return None if head is None else await self._store_checkpoint(head)

    async def verify(self) -> VerifyResult:
        """:func:`verify` with the keys this log trusts."""
        return await verify(self.storage, self.trusted_keys)

    async def _checkpoint_after_commit(self, event: JSON) -> None:
        try:
            await self._store_checkpoint(event)
        except (SealGateError, BackendUnavailable) as exc:
            # The events are committed already; failing the caller now would suggest they
            # were not. A missed checkpoint is made good by the next one.
            log.warning("audit checkpoint at seq %s not written: %s", event["seq"], exc)

    async def _store_checkpoint(self, event: JSON) -> JSON:
        if self.signer is None:
            raise ConfigError("no audit key is configured to sign checkpoints")
        seq = int(event["seq"])
        checkpoint = await self.signer.sign(seq, event["hash"], isoformat(utcnow()))
        key = f"{seq:012d}"
        try:
            await self.storage.commit([Write(CHECKPOINT_KIND, key, 0, checkpoint)])
        except StaleWrite:
            # Another process signed this head first; one checkpoint per seq is enough.
            existing = await self.storage.get(CHECKPOINT_KIND, key)
            return existing.data if existing else checkpoint
        return checkpoint


async def verify(
    storage: Storage, trusted_keys: Mapping[str, KeyMaterial] | None = None
) -> VerifyResult:
    """Check the whole chain and every checkpoint; report the earliest seq that fails."""
    keys: dict[str, PublicKey] = {
        key_id: load_public_key(material) for key_id, material in (trusted_keys or {}).items()
    }
    problems: list[tuple[int, str]] = []
    signed_hashes: dict[int, set[str]] = {}
    records = await storage.list(CHECKPOINT_KIND, limit=_ALL_CHECKPOINTS)
    for record in records:
        problem = checkpoint_problem(record.data, keys)
        if problem is None:
            signed_hashes.setdefault(int(record.data["seq"]), set()).add(record.data["hash"])
        else:
            problems.append((_checkpoint_seq(record.key, record.data), problem))

    count, last_seq, prev_hash = 0, 0, GENESIS_HASH
    broken = False
    while not broken:
        batch = await storage.events(since_seq=last_seq, limit=_PAGE)
        for event in batch:
            count += 1
            seq = last_seq + 1
            problem = _event_problem(event, seq, prev_hash)
            if problem is None and signed_hashes.get(seq, set()) - {event["hash"]}:
                problem = f"event {seq} is not the event checkpoint {seq} signed"
            if problem is not None:
                # Nothing after a break can be placed in the chain, so reading stops here.
                problems.append((seq, problem))
                broken = True
                break
            last_seq, prev_hash = seq, event["hash"]
        if len(batch) < _PAGE:
            break
    if not broken:
        beyond = [seq for seq in signed_hashes if seq > last_seq]
        if beyond:
            problems.append((last_seq + 1, f"events from {last_seq + 1} on are missing "
                                           f"(checkpoint {min(beyond)} signed them)"))

    first = min(problems, default=None)
    return VerifyResult(
        intact=first is None,
        events=count,
        checkpoints=len(records),
        first_bad_seq=first[0] if first else None,
        problem=first[1] if first else None,
    )


def _event_problem(event: Any, seq: int, prev_hash: str) -> str | None:
    if not isinstance(event, dict) or set(event) != set(EVENT_FIELDS):
        return f"event {seq} is malformed"
    if event["seq"] != seq:
        return f"expected event {seq}, found event {event['seq']}"
    try:
        recomputed = event_hash(event)
    except (TypeError, ValueError):
        return f"event {seq} is malformed"
    if recomputed != event["hash"]:
        return f"event {seq} was modified"
    if event["prev_hash"] != prev_hash:
        return f"event {seq} does not follow event {seq - 1}"
    return None


def _checkpoint_seq(key: str, data: Mapping[str, Any]) -> int:
    """Where a bad checkpoint is reported: its seq, else the seq in its key, else the start."""
    candidates: list[Any] = [data.get("seq"), key]
    for candidate in candidates:
        try:
            return int(candidate)
        except (TypeError, ValueError):
            continue
    return 1


async def export_jsonl(storage: Storage, fh: TextSink, since_seq: int = 0) -> int:
    """Write events after ``since_seq`` as JSON Lines (one canonical event per line) for a SIEM.

    Returns how many events were written; a SIEM resumes with the last seq it received.
    """
    written = 0
    while True:
        batch = await storage.events(since_seq=since_seq, limit=_PAGE)
        for event in batch:
            fh.write(canonical_json(event).decode() + "\n")
        written += len(batch)
        if len(batch) < _PAGE:
            return written
        since_seq = batch[-1]["seq"]
