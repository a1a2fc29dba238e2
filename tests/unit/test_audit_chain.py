"""The audit chain on SQLite, checkpoints signed in SoftHSM: it verifies, tampering shows."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.audit import (
    CHECKPOINT_KIND,
    AuditLog,
    CheckpointSigner,
    checkpoint_payload,
    event_hash,
    export_jsonl,
    verify,
)
from gateway.errors import ConfigError
from gateway.hsm import Hsm, KeyAlgorithm
from gateway.settings import Settings
from gateway.storage import StaleWrite, Write
from plugins.sqlite_storage import SqliteStorage
from tests.conftest import new_key_id

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def make_signer(hsm: Hsm, algorithm: KeyAlgorithm) -> CheckpointSigner:
    key_id = new_key_id()
    public_der = await hsm.generate_key(algorithm, "audit-test", key_id)
    return CheckpointSigner(hsm, key_id, algorithm, public_der)


@pytest.fixture(scope="session")
async def signer(hsm: Hsm) -> CheckpointSigner:
    """An EC P-256 audit key in the test token."""
    return await make_signer(hsm, KeyAlgorithm.EC_P256)


@pytest.fixture
def db_path(settings: Settings) -> Path:
    return Path(settings.storage.sqlite_path)


@pytest.fixture
async def storage(db_path: Path) -> AsyncIterator[SqliteStorage]:
    backend = SqliteStorage(db_path)
    await backend.open()
    yield backend
    await backend.close()


@pytest.fixture
async def log(storage: SqliteStorage, signer: CheckpointSigner) -> AuditLog:
    return AuditLog(storage, signer, checkpoint_every=3)


async def append_events(log: AuditLog, count: int) -> list[dict[str, object]]:
    return [
        await log.append("client:alice", "seal.sign", f"seal/s{n}", {"n": n, "doc": "3f9a"})
        for n in range(1, count + 1)
    ]


def tamper(path: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    """Change the SQLite file behind the backend's back, as someone with file access could."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for sql, args in statements:
            db.execute(sql, args)
    finally:
        db.close()


def stored_event(path: Path, seq: int) -> dict[str, object]:
    db = sqlite3.connect(path)
    try:
        (data,) = db.execute("SELECT data FROM events WHERE seq = ?", (seq,)).fetchone()
    finally:
        db.close()
    event: dict[str, object] = json.loads(data)
    return event


# -- the chain -----------------------------------------------------------------------------


async def test_appended_events_form_a_verifiable_chain(log: AuditLog) -> None:
    """Appended events carry every field, chain by hash, and verify intact."""
    events = await append_events(log, 2)
    assert set(events[0]) == {"seq", "time", "actor", "action", "target", "details",
                              "prev_hash", "hash"}
    assert [e["seq"] for e in events] == [1, 2]
    assert events[0]["prev_hash"] == "0" * 64
    assert events[1]["prev_hash"] == events[0]["hash"]
    assert str(events[0]["time"]).endswith("Z")
    result = await log.verify()
    assert (result.intact, result.events, result.checkpoints, result.first_bad_seq) == \
        (True, 2, 0, None)


async def test_event_hash_is_sha256_of_sorted_compact_json_without_hash(log: AuditLog) -> None:
    """Anyone can recompute an event's hash: SHA-256 over sorted, compact UTF-8 JSON."""
    event = await log.append("client:张三", "seal.sign", "seal/s1", {"名称": "公章", "n": 1.5})
    body = {k: v for k, v in event.items() if k != "hash"}
    expected = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    assert event["hash"] == expected == event_hash(event)


async def test_event_time_is_given_or_now_in_utc(log: AuditLog) -> None:
    """An explicit time is written in UTC with a Z; a naive time is refused."""
    moment = datetime(2024, 5, 1, 16, 0, 0, tzinfo=timezone(timedelta(hours=8)))
    event = await log.append("a", "b", "c", time=moment)
    assert event["time"] == "2024-05-01T08:00:00Z"
    with pytest.raises(ValueError):
        log.event_sealer("a", "b", "c", time=datetime(2024, 5, 1))


async def test_details_that_json_cannot_hold_are_refused_before_commit(log: AuditLog) -> None:
    """NaN or objects in details fail when the event is made, and nothing is stored."""
    with pytest.raises(ValueError):
        log.event_sealer("a", "b", "c", {"x": float("nan")})
    with pytest.raises(TypeError):
        log.event_sealer("a", "b", "c", {"x": object()})
    assert await log.storage.last_event() is None


async def test_event_commits_with_records_or_not_at_all(log: AuditLog) -> None:
    """An event committed with record writes is stored with them, or not when they are stale."""
    await log.commit([Write("seal", "s", 0, {"status": "draft"})],
                     [log.event_sealer("alice", "seal.created", "seal/s")])
    with pytest.raises(StaleWrite):
        await log.commit([Write("seal", "s", 0, {"status": "again"})],
                         [log.event_sealer("alice", "seal.created", "seal/s")])
    events = await log.storage.events()
    assert [e["action"] for e in events] == ["seal.created"]
    assert (await log.verify()).intact


# -- tampering -----------------------------------------------------------------------------


async def test_one_edited_byte_fails_at_that_seq(log: AuditLog, db_path: Path) -> None:
    """Changing one byte of one stored event makes verify fail at exactly that seq."""
    await append_events(log, 5)
    data = json.dumps(stored_event(db_path, 2), ensure_ascii=False)
    edited = data.replace("client:alice", "client:alicf")
    assert len(edited) == len(data) and edited != data
    tamper(db_path, ("UPDATE events SET data = ? WHERE seq = 2", (edited,)))
    result = await log.verify()
    assert (result.intact, result.first_bad_seq) == (False, 2)
    assert result.problem == "event 2 was modified"


async def test_deleted_event_is_caught_as_a_gap(log: AuditLog, db_path: Path) -> None:
    """Removing an event leaves a hole in the seqs that verify reports."""
    await append_events(log, 5)
    tamper(db_path, ("DELETE FROM events WHERE seq = 4", ()))
    result = await log.verify()
    assert (result.intact, result.first_bad_seq) == (False, 4)


async def test_inserted_event_is_caught(log: AuditLog, db_path: Path) -> None:
    """A well-formed event slipped in after seq 3 breaks the chain at the event it displaced."""
    await append_events(log, 5)
    previous = stored_event(db_path, 3)
    forged: dict[str, object] = {
        "seq": 4, "time": previous["time"], "actor": "client:mallory", "action": "seal.sign",
        "target": "seal/s9", "details": {}, "prev_hash": previous["hash"],
    }
    forged["hash"] = event_hash(forged)
    tamper(
        db_path,
        *[("UPDATE events SET seq = seq + 1 WHERE seq = ?", (seq,)) for seq in (5, 4)],
        ("INSERT INTO events (seq, hash, data) VALUES (4, ?, ?)",
         (forged["hash"], json.dumps(forged))),
    )
    result = await log.verify()
    assert (result.intact, result.first_bad_seq) == (False, 5)
    assert result.problem == "expected event 5, found event 4"


async def test_swapped_events_are_caught(log: AuditLog, db_path: Path) -> None:
    """Two events exchanged in place are out of order at the first of them."""
    await append_events(log, 5)
    second, third = stored_event(db_path, 2), stored_event(db_path, 3)
    tamper(
        db_path,
        ("UPDATE events SET data = ?, hash = ? WHERE seq = 2",
         (json.dumps(third), third["hash"])),
        ("UPDATE events SET data = ?, hash = ? WHERE seq = 3",
         (json.dumps(second), second["hash"])),
    )
    result = await log.verify()
    assert (result.intact, result.first_bad_seq) == (False, 2)


async def test_rewritten_chain_is_caught_by_checkpoint(log: AuditLog, db_path: Path) -> None:
    """Rehashing every event after an edit fools the chain, but not the signed checkpoint."""
    await append_events(log, 5)
    prev_hash = stored_event(db_path, 1)["hash"]
    statements = []
    for seq in range(2, 6):
        event = stored_event(db_path, seq)
        event["details"] = {"n": 0} if seq == 2 else event["details"]
        event["prev_hash"] = prev_hash
        event["hash"] = prev_hash = event_hash(event)
        statements.append(("UPDATE events SET data = ?, hash = ? WHERE seq = ?",
                           (json.dumps(event), event["hash"], seq)))
    tamper(db_path, *statements)
    result = await log.verify()
    assert (result.intact, result.first_bad_seq) == (False, 3)
    assert result.problem == "event 3 is not the event checkpoint 3 signed"


async def test_removed_tail_is_caught_by_checkpoint(log: AuditLog, db_path: Path) -> None:
    """Deleting the newest events shows when a checkpoint signed one of them."""
    await append_events(log, 7)
    tamper(db_path, ("DELETE FROM events WHERE seq >= 5", ()))
    result = await log.verify()
    assert (result.intact, result.first_bad_seq) == (False, 5)


# -- checkpoints ---------------------------------------------------------------------------


async def test_checkpoints_are_signed_every_n_events(
    log: AuditLog, storage: SqliteStorage, signer: CheckpointSigner
) -> None:
    """With checkpoint_every=3, seqs 3 and 6 get checkpoints whose ECDSA signatures verify."""
    events = await append_events(log, 7)
    records = await storage.list(CHECKPOINT_KIND)
    assert [r.data["seq"] for r in records] == [3, 6]
    for record in records:
        checkpoint = record.data
        assert checkpoint["hash"] == events[checkpoint["seq"] - 1]["hash"]
        assert (checkpoint["key_id"], checkpoint["algorithm"]) == \
            (signer.key_id.hex(), "ecdsa-sha256")
        public = signer.public_key
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(
            base64.b64decode(checkpoint["signature"]),
            checkpoint_payload(checkpoint["seq"], checkpoint["hash"], checkpoint["time"],
                               checkpoint["key_id"], checkpoint["algorithm"]),
            ec.ECDSA(hashes.SHA256()),
        )
    result = await log.verify()
    assert (result.intact, result.events, result.checkpoints) == (True, 7, 2)


async def test_on_demand_rsa_checkpoint_verifies_offline(
    storage: SqliteStorage, hsm: Hsm
) -> None:
    """checkpoint() signs the head now (here with RSA); verify() needs only the public key."""
    rsa_signer = await make_signer(hsm, KeyAlgorithm.RSA_2048)
    log = AuditLog(storage, rsa_signer)
    assert await log.checkpoint() is None
    await append_events(log, 2)
    checkpoint = await log.checkpoint()
    assert checkpoint is not None
    assert (checkpoint["seq"], checkpoint["algorithm"]) == (2, "pkcs1v15-sha256")
    assert await log.checkpoint() == checkpoint
    assert len(await storage.list(CHECKPOINT_KIND)) == 1
    result = await verify(storage, {rsa_signer.key_id.hex(): rsa_signer.public_key})
    assert (result.intact, result.checkpoints) == (True, 1)


async def test_forged_checkpoint_signature_is_caught(
    log: AuditLog, storage: SqliteStorage
) -> None:
    """A checkpoint whose signature was altered makes verify fail at its seq."""
    await append_events(log, 4)
    record = await storage.get(CHECKPOINT_KIND, f"{3:012d}")
    assert record is not None
    signature = bytearray(base64.b64decode(record.data["signature"]))
    signature[-1] ^= 0x01
    forged = {**record.data, "signature": base64.b64encode(bytes(signature)).decode()}
    await storage.commit([Write(CHECKPOINT_KIND, record.key, record.version, forged)])
    result = await log.verify()
    assert (result.intact, result.first_bad_seq) == (False, 3)
    assert result.problem == "checkpoint 3: the signature does not verify"


async def test_checkpoint_by_an_untrusted_key_is_caught(
    log: AuditLog, storage: SqliteStorage, hsm: Hsm
) -> None:
    """Checkpoints count only when signed by a key the verifier was given."""
    await append_events(log, 3)
    other = await make_signer(hsm, KeyAlgorithm.EC_P256)
    result = await verify(storage, {other.key_id.hex(): other.public_key})
    assert (result.intact, result.first_bad_seq) == (False, 3)
    assert "not trusted" in str(result.problem)


async def test_failed_checkpoint_does_not_fail_the_append(
    storage: SqliteStorage, hsm: Hsm, signer: CheckpointSigner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When the HSM cannot sign, the committed event stands and a warning is logged."""
    missing = CheckpointSigner(hsm, new_key_id(), KeyAlgorithm.EC_P256, signer.public_key)
    log = AuditLog(storage, missing, checkpoint_every=1)
    with caplog.at_level(logging.WARNING, logger="gateway.audit.chain"):
        event = await log.append("a", "b", "c")
    assert event["seq"] == 1
    assert await storage.list(CHECKPOINT_KIND) == []
    assert "checkpoint at seq 1 not written" in caplog.text


async def test_checkpoint_without_a_key_is_a_config_error(storage: SqliteStorage) -> None:
    """An AuditLog made without a signer cannot sign checkpoints on demand."""
    log = AuditLog(storage)
    await log.append("a", "b", "c")
    with pytest.raises(ConfigError):
        await log.checkpoint()


# -- concurrency and export ----------------------------------------------------------------


async def test_concurrent_appends_stay_intact(
    storage: SqliteStorage, db_path: Path, signer: CheckpointSigner
) -> None:
    """Appends racing through two connections leave an intact chain and every checkpoint."""
    second = SqliteStorage(db_path)
    await second.open()
    try:
        logs = [AuditLog(storage, signer, checkpoint_every=10),
                AuditLog(second, signer, checkpoint_every=10)]
        await asyncio.gather(*(
            logs[n % 2].append(f"client:{n % 5}", "seal.sign", f"seal/{n}", {"n": n})
            for n in range(50)
        ))
        result = await logs[0].verify()
        assert (result.intact, result.events, result.checkpoints) == (True, 50, 5)
    finally:
        await second.close()


async def test_export_writes_one_canonical_event_per_line(log: AuditLog) -> None:
    """export_jsonl writes events after since_seq as JSON Lines and says how many."""
    events = await append_events(log, 4)
    out = io.StringIO()
    assert await export_jsonl(log.storage, out, since_seq=1) == 3
    lines = out.getvalue().splitlines()
    assert [json.loads(line) for line in lines] == events[1:]
    assert lines[0] == json.dumps(events[1], sort_keys=True, separators=(",", ":"),
                                  ensure_ascii=False)


async def test_time_zone_of_events_is_utc(log: AuditLog) -> None:
    """Events made without a time carry the current UTC time."""
    before = datetime.now(UTC).replace(microsecond=0)
    event = await log.append("a", "b", "c")
    stamp = datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00"))
    assert before <= stamp <= datetime.now(UTC)
