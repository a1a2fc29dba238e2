"""The storage contract: what every backend must do, run against each one (see conftest.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import multiprocessing
import sqlite3
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.audit import AuditLog
from gateway.settings import Settings, load_settings
from gateway.storage import (
    GENESIS_HASH,
    JSON,
    BackendUnavailable,
    EventSealer,
    StaleWrite,
    Storage,
    Write,
    get_expiring_bytes,
    hold_lease,
    put_expiring_bytes,
)
from tests.contract.conftest import OpenStorage, create_storage
from tests.redis_server import RedisServer, free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

PROCESSES = 3


def chain_sealer(payload: Any) -> EventSealer:
    """A minimal sealer: the event hashes its own fields, ``prev_hash`` included."""

    def seal(seq: int, prev_hash: str) -> JSON:
        event: JSON = {"seq": seq, "prev_hash": prev_hash, "payload": payload}
        event["hash"] = body_hash(event)
        return event

    return seal


def body_hash(event: JSON) -> str:
    body = {k: v for k, v in event.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def assert_one_chain(events: list[JSON]) -> None:
    """Seqs run 1..n without gaps, each event names its predecessor, no event was altered."""
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    prev_hash = GENESIS_HASH
    for event in events:
        assert event["prev_hash"] == prev_hash
        assert event["hash"] == body_hash(event)
        prev_hash = event["hash"]


# -- records -------------------------------------------------------------------------------


async def test_created_record_reads_back_at_version_one(storage: Storage) -> None:
    """A record created with expected version 0 reads back with its data at version 1."""
    result = await storage.commit([Write("seal", "s1", 0, {"name": "公章", "n": 1})])
    record = await storage.get("seal", "s1")
    assert record is not None
    assert (record.version, record.data) == (1, {"name": "公章", "n": 1})
    assert list(result.records) == [record]


async def test_missing_record_is_none(storage: Storage) -> None:
    """get() of a record that was never written returns None."""
    assert await storage.get("seal", "nope") is None


async def test_list_returns_one_kind_oldest_first_up_to_limit(storage: Storage) -> None:
    """list() returns only the kind asked for, in creation order, at most ``limit``."""
    for key in ("c", "a", "b"):
        await storage.commit([Write("seal", key, 0, {"key": key})])
    await storage.commit([Write("filing", "f", 0, {})])
    await storage.commit([Write("seal", "c", 1, {"key": "c", "changed": True})])
    assert [r.key for r in await storage.list("seal")] == ["c", "a", "b"]
    assert [r.key for r in await storage.list("seal", limit=2)] == ["c", "a"]
    assert await storage.list("nothing") == []


async def test_list_filters_on_top_level_fields(storage: Storage) -> None:
    """where= compares top-level fields as Python would; None matches null or missing."""
    await storage.commit([
        Write("seal", "a", 0, {"status": "draft", "n": 1, "on": True}),
        Write("seal", "b", 0, {"status": "filed", "n": 2, "on": False, "note": None}),
        Write("seal", "c", 0, {"status": "draft", "n": 3, "nested": {"x": 1}, "note": "x"}),
    ])

    async def keys(**where: Any) -> list[str]:
        return [r.key for r in await storage.list("seal", where=where)]

    assert await keys(status="draft") == ["a", "c"]
    assert await keys(status="draft", n=3) == ["c"]
    assert await keys(n=2.0) == ["b"]
    assert await keys(on=True) == ["a"]
    assert await keys(note=None) == ["a", "b"]
    assert await keys(n="1") == []
    assert await keys(nested='{"x":1}') == []
    with pytest.raises(TypeError):
        await storage.list("seal", where={"nested": {"x": 1}})


async def test_update_with_current_version_increments_it(storage: Storage) -> None:
    """Writing with the current version replaces the data and adds one to the version."""
    await storage.commit([Write("seal", "s", 0, {"status": "draft"})])
    await storage.commit([Write("seal", "s", 1, {"status": "filed"})])
    record = await storage.get("seal", "s")
    assert record is not None
    assert (record.version, record.data) == (2, {"status": "filed"})


async def test_stale_write_raises_and_applies_nothing(storage: Storage) -> None:
    """One stale version fails the whole commit: no record written, no event appended."""
    await storage.commit([Write("seal", "s", 0, {"status": "draft"})])
    with pytest.raises(StaleWrite) as caught:
        await storage.commit(
            [Write("receipt", "r", 0, {"n": 1}), Write("seal", "s", 5, {"status": "filed"})],
            [chain_sealer("filed")],
        )
    assert (caught.value.kind, caught.value.key) == ("seal", "s")
    assert (caught.value.expected, caught.value.actual) == (5, 1)
    assert await storage.get("receipt", "r") is None
    record = await storage.get("seal", "s")
    assert record is not None
    assert record.data == {"status": "draft"}
    assert await storage.last_event() is None
    assert await storage.events() == []


async def test_creating_an_existing_record_is_stale(storage: Storage) -> None:
    """Expected version 0 means "must not exist"; an existing record makes it stale."""
    await storage.commit([Write("seal", "s", 0, {"v": 1})])
    with pytest.raises(StaleWrite) as caught:
        await storage.commit([Write("seal", "s", 0, {"v": 2})])
    assert caught.value.actual == 1


async def test_delete_removes_record_from_get_and_list(storage: Storage) -> None:
    """data=None with the current version deletes the record; it can be created anew."""
    await storage.commit([Write("seal", "a", 0, {}), Write("seal", "b", 0, {})])
    result = await storage.commit([Write("seal", "a", 1, None)])
    assert list(result.records) == []
    assert await storage.get("seal", "a") is None
    assert [r.key for r in await storage.list("seal")] == ["b"]
    await storage.commit([Write("seal", "a", 0, {"again": True})])
    assert [r.key for r in await storage.list("seal")] == ["b", "a"]
    record = await storage.get("seal", "a")
    assert record is not None
    assert record.version == 1


async def test_delete_with_stale_version_is_refused(storage: Storage) -> None:
    """A delete checks the expected version like any write."""
    await storage.commit([Write("seal", "a", 0, {})])
    with pytest.raises(StaleWrite):
        await storage.commit([Write("seal", "a", 2, None)])
    assert await storage.get("seal", "a") is not None


async def test_commit_applies_records_and_events_together(storage: Storage) -> None:
    """Creates, updates, deletes and events of one commit are all visible afterwards."""
    await storage.commit([Write("seal", "old", 0, {}), Write("seal", "kept", 0, {"n": 1})])
    result = await storage.commit(
        [Write("seal", "new", 0, {"n": 0}), Write("seal", "kept", 1, {"n": 2}),
         Write("seal", "old", 1, None)],
        [chain_sealer("one"), chain_sealer("two")],
    )
    assert [(r.key, r.version) for r in result.records] == [("new", 1), ("kept", 2)]
    assert [e["payload"] for e in result.events] == ["one", "two"]
    assert [r.key for r in await storage.list("seal")] == ["kept", "new"]
    assert await storage.events() == list(result.events)


async def test_one_of_concurrent_compare_and_set_wins(
    storage: Storage, open_storage: OpenStorage
) -> None:
    """Of many writers expecting the same version (two instances), exactly one succeeds."""
    other = await open_storage()
    await storage.commit([Write("seal", "s", 0, {"owner": None})])

    async def claim(backend: Storage, who: int) -> bool:
        try:
            await backend.commit([Write("seal", "s", 1, {"owner": who})], [chain_sealer(who)])
        except StaleWrite:
            return False
        return True

    outcomes = await asyncio.gather(
        *(claim(storage if i % 2 else other, i) for i in range(20))
    )
    assert outcomes.count(True) == 1
    record = await storage.get("seal", "s")
    assert record is not None
    assert record.version == 2
    assert record.data["owner"] == outcomes.index(True)
    assert [e["payload"] for e in await storage.events()] == [outcomes.index(True)]


async def test_writing_one_record_twice_in_a_commit_is_refused(storage: Storage) -> None:
    """A commit that names the same record twice is a ValueError and applies nothing."""
    with pytest.raises(ValueError):
        await storage.commit([Write("seal", "s", 0, {}), Write("seal", "s", 1, {})])
    assert await storage.get("seal", "s") is None


# -- events --------------------------------------------------------------------------------


async def test_events_start_at_one_and_chain(storage: Storage) -> None:
    """The first event gets seq 1 and the genesis hash; each next one names its predecessor."""
    for n in range(3):
        await storage.commit([], [chain_sealer(n)])
    result = await storage.commit([], [chain_sealer(3), chain_sealer(4)])
    events = await storage.events()
    assert_one_chain(events)
    assert len(events) == 5
    assert events[0]["prev_hash"] == GENESIS_HASH
    assert list(result.events) == events[3:]
    assert await storage.last_event() == events[-1]


async def test_events_page_by_seq(storage: Storage) -> None:
    """events() returns seq > since_seq, oldest first, at most ``limit``."""
    await storage.commit([], [chain_sealer(n) for n in range(7)])
    page = await storage.events(since_seq=2, limit=3)
    assert [e["seq"] for e in page] == [3, 4, 5]
    assert await storage.events(since_seq=7) == []


async def test_faulty_sealer_output_applies_nothing(storage: Storage) -> None:
    """A sealer that returns an event for the wrong seq fails the commit as a whole."""

    def wrong(seq: int, prev_hash: str) -> JSON:
        return chain_sealer("x")(seq + 1, prev_hash)

    with pytest.raises(ValueError):
        await storage.commit([Write("seal", "s", 0, {})], [chain_sealer("ok"), wrong])
    assert await storage.get("seal", "s") is None
    assert await storage.events() == []


async def test_concurrent_task_appends_form_one_chain(
    storage: Storage, open_storage: OpenStorage
) -> None:
    """Tasks appending at once through two instances leave a gap-free, fork-free chain."""
    other = await open_storage()
    await asyncio.gather(*(
        (storage if n % 2 else other).commit([], [chain_sealer(n)]) for n in range(60)
    ))
    events = await storage.events()
    assert_one_chain(events)
    assert sorted(e["payload"] for e in events) == list(range(60))


def _process_worker(
    settings: Settings, barrier: Path, index: int, appends: int, increments: int
) -> tuple[list[int], list[int]]:
    # Start together, so that the processes really contend instead of taking turns.
    (barrier / str(index)).touch()
    deadline = time.monotonic() + 30
    while len(list(barrier.iterdir())) < PROCESSES and time.monotonic() < deadline:
        time.sleep(0.005)
    return asyncio.run(_process_work(settings, index, appends, increments))


async def _process_work(
    settings: Settings, index: int, appends: int, increments: int
) -> tuple[list[int], list[int]]:
    backend = create_storage(settings)
    await backend.open()
    try:
        seqs = []
        for n in range(appends):
            result = await backend.commit([], [chain_sealer([index, n])])
            seqs += [e["seq"] for e in result.events]
        counts = [await backend.incr("shared") for _ in range(increments)]
        return seqs, counts
    finally:
        await backend.close()


async def run_processes(
    settings: Settings, tmp_path: Path, appends: int = 0, increments: int = 0
) -> list[tuple[list[int], list[int]]]:
    """Run ``PROCESSES`` spawned processes, each with its own backend instance on the state."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=PROCESSES, mp_context=context) as pool:
        futures = [
            pool.submit(_process_worker, settings, barrier, i, appends, increments)
            for i in range(PROCESSES)
        ]
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))


async def test_appends_from_several_processes_form_one_chain(
    storage: Storage, storage_settings: Settings, tmp_path: Path
) -> None:
    """Processes appending at once leave one chain; each got the seqs it was told it got."""
    await storage.commit([], [chain_sealer("before")])
    outcomes = await run_processes(storage_settings, tmp_path, appends=40)
    events = await storage.events()
    assert_one_chain(events)
    assert len(events) == 1 + PROCESSES * 40
    seqs = sorted(seq for got, _ in outcomes for seq in got)
    assert seqs == list(range(2, 2 + PROCESSES * 40))
    by_seq = {e["seq"]: e["payload"] for e in events}
    for index, (got, _) in enumerate(outcomes):
        assert [by_seq[seq] for seq in got] == [[index, n] for n in range(40)]


# -- blobs, expiring keys, token buckets, counters -----------------------------------------


async def test_blobs_round_trip_and_overwrite(storage: Storage) -> None:
    """Blobs keep every byte; a second put replaces the first; a missing blob is None."""
    data = bytes(range(256)) * 10
    await storage.put_blob("doc", data)
    assert await storage.get_blob("doc") == data
    await storage.put_blob("doc", b"")
    assert await storage.get_blob("doc") == b""
    assert await storage.get_blob("none") is None


async def test_put_expiring_stores_only_when_absent(storage: Storage) -> None:
    """put_expiring is True for a new key and False (value unchanged) while it is present."""
    assert await storage.put_expiring("idem:1", {"status": 202}, 30) is True
    assert await storage.put_expiring("idem:1", {"status": 500}, 30) is False
    assert await storage.get_expiring("idem:1") == {"status": 202}
    assert await storage.get_expiring("idem:2") is None


async def test_expiring_value_is_gone_after_ttl(storage: Storage) -> None:
    """After its TTL a value reads as None and the key can be put again."""
    assert await storage.put_expiring("sad", {"n": 1}, 0.3)
    await storage.set_expiring("other", {"n": 2}, 0.3)
    await asyncio.sleep(0.45)
    assert await storage.get_expiring("sad") is None
    assert await storage.get_expiring("other") is None
    assert await storage.put_expiring("sad", {"n": 3}, 30) is True
    assert await storage.get_expiring("sad") == {"n": 3}


async def test_set_expiring_overwrites(storage: Storage) -> None:
    """set_expiring replaces a present value and its TTL."""
    await storage.set_expiring("k", {"n": 1}, 0.3)
    await storage.set_expiring("k", {"n": 2}, 30)
    await asyncio.sleep(0.4)
    assert await storage.get_expiring("k") == {"n": 2}


async def test_replace_expiring_replaces_only_its_own_value(storage: Storage) -> None:
    """replace_expiring acts only while the value is there and its field matches: a claim
    is renewed by its attempt, not over another's, and not once it has expired."""
    await storage.set_expiring("claim", {"attempt": "a", "state": "running"}, 0.3)
    assert await storage.replace_expiring(
        "claim", {"attempt": "b", "state": "running"}, 30, if_field="attempt", equals="b"
    ) is False
    assert await storage.replace_expiring(
        "claim", {"attempt": "a", "state": "done"}, 30, if_field="attempt", equals="a"
    ) is True
    await asyncio.sleep(0.4)  # the new time to live holds
    assert await storage.get_expiring("claim") == {"attempt": "a", "state": "done"}
    await storage.set_expiring("brief", {"attempt": "a"}, 0.2)
    await asyncio.sleep(0.3)
    assert await storage.replace_expiring(
        "brief", {"attempt": "a"}, 30, if_field="attempt", equals="a") is False
    assert await storage.replace_expiring(
        "never", {"attempt": "a"}, 30, if_field="attempt", equals="a") is False
    assert await storage.get_expiring("brief") is None


async def test_expiring_bytes_round_trip_inline_and_in_chunks(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small values sit in their reference, larger ones in chunks; a lost chunk reads None."""
    from gateway import storage as storage_module

    monkeypatch.setattr(storage_module, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(storage_module, "INLINE_BYTES", 100)
    small = await put_expiring_bytes(storage, "bytes:small", b"tiny", 30)
    assert small["chunks"] == 0
    assert await get_expiring_bytes(storage, small) == b"tiny"
    data = bytes(range(256)) * 10
    large = await put_expiring_bytes(storage, "bytes:large", data, 30)
    assert large["chunks"] == 3
    assert await get_expiring_bytes(storage, large) == data
    await storage.set_expiring("bytes:large:1", {"data": ""}, 0.001)
    await asyncio.sleep(0.01)
    assert await get_expiring_bytes(storage, large) is None


async def test_a_lease_has_one_holder_until_it_lapses(storage: Storage) -> None:
    """The holder renews its lease; others are refused until it stops renewing."""
    assert await hold_lease(storage, "lease:job", "one", 1.0)
    assert not await hold_lease(storage, "lease:job", "two", 1.0)
    await asyncio.sleep(0.5)
    assert await hold_lease(storage, "lease:job", "one", 1.0)  # renewed: 1 s from now
    await asyncio.sleep(0.5)
    assert not await hold_lease(storage, "lease:job", "two", 1.0)  # past the first 1 s
    await asyncio.sleep(1.1)
    assert await hold_lease(storage, "lease:job", "two", 1.0)
    assert not await hold_lease(storage, "lease:job", "one", 1.0)


async def test_token_bucket_allows_burst_then_asks_to_wait(storage: Storage) -> None:
    """A full bucket gives ``burst`` tokens at once, then a positive wait of 1/rate."""
    taken = [await storage.take_tokens("client:a", rate=2.0, burst=3, now=1000.0)
             for _ in range(3)]
    assert taken == [(1, 0), (1, 0), (1, 0)]
    assert await storage.take_tokens("client:a", rate=2.0, burst=3, now=1000.0) \
        == (0, pytest.approx(0.5))
    assert await storage.take_tokens("client:b", rate=2.0, burst=3, now=1000.0) == (1, 0)


async def test_token_bucket_refills_at_rate(storage: Storage) -> None:
    """After the wait it named, the bucket has a token again, and never more than burst."""
    for _ in range(2):
        await storage.take_tokens("c", rate=4.0, burst=2, now=50.0)
    taken, wait = await storage.take_tokens("c", rate=4.0, burst=2, now=50.0)
    assert (taken, wait) == (0, pytest.approx(0.25))
    assert await storage.take_tokens("c", rate=4.0, burst=2, now=50.0 + wait) == (1, 0)
    later = 50.0 + wait + 100
    assert [await storage.take_tokens("c", rate=4.0, burst=2, now=later) for _ in range(2)] \
        == [(1, 0), (1, 0)]
    assert (await storage.take_tokens("c", rate=4.0, burst=2, now=later)).wait > 0


async def test_token_bucket_gives_several_tokens_up_to_what_it_holds(storage: Storage) -> None:
    """Asking for several takes that many, then what is left (whole tokens only), then none."""
    bucket = {"rate": 10.0, "burst": 25}
    assert await storage.take_tokens("lease", **bucket, now=7.0, want=10) == (10, 0)
    assert await storage.take_tokens("lease", **bucket, now=7.0, want=10) == (10, 0)
    assert await storage.take_tokens("lease", **bucket, now=7.0, want=10) == (5, 0)
    assert await storage.take_tokens("lease", **bucket, now=7.0, want=10) \
        == (0, pytest.approx(0.1))
    # 0.25 s later 2.5 tokens came back: two whole ones are given, the half stays.
    assert await storage.take_tokens("lease", **bucket, now=7.25, want=10) == (2, 0)
    assert await storage.take_tokens("lease", **bucket, now=7.25, want=10) \
        == (0, pytest.approx(0.05))


async def test_counters_count_from_concurrent_tasks(storage: Storage) -> None:
    """incr() from many tasks returns each value once and ends at the total."""
    values = await asyncio.gather(*(storage.incr("n") for _ in range(50)))
    assert sorted(values) == list(range(1, 51))
    assert await storage.incr("n", 10) == 60
    assert await storage.incr("other", 0) == 0


async def test_counters_are_atomic_across_processes(
    storage: Storage, storage_settings: Settings, tmp_path: Path
) -> None:
    """Processes incrementing at once see every value exactly once."""
    outcomes = await run_processes(storage_settings, tmp_path, increments=100)
    values = sorted(v for _, got in outcomes for v in got)
    assert values == list(range(1, PROCESSES * 100 + 1))
    assert await storage.incr("shared", 0) == PROCESSES * 100


# -- life cycle ----------------------------------------------------------------------------


async def test_state_survives_close_and_reopen(
    storage: Storage, open_storage: OpenStorage
) -> None:
    """Records, events, blobs, counters and expiring keys are there after a restart."""
    await storage.commit([Write("seal", "s", 0, {"n": 1})], [chain_sealer(1), chain_sealer(2)])
    await storage.put_blob("b", b"blob")
    await storage.incr("c", 7)
    await storage.put_expiring("idem", {"n": 1}, 60)
    await storage.close()

    reopened = await open_storage()
    record = await reopened.get("seal", "s")
    assert record is not None
    assert (record.version, record.data) == (1, {"n": 1})
    assert await reopened.get_blob("b") == b"blob"
    assert await reopened.incr("c", 0) == 7
    assert await reopened.get_expiring("idem") == {"n": 1}
    await reopened.commit([], [chain_sealer(3)])
    events = await reopened.events()
    assert_one_chain(events)
    assert [e["payload"] for e in events] == [1, 2, 3]


async def test_ping_answers_on_an_open_backend(storage: Storage) -> None:
    """ping() returns quietly while the backend can serve."""
    await storage.ping()


async def test_audit_log_on_backend_verifies_after_concurrent_appends(
    storage: Storage, open_storage: OpenStorage
) -> None:
    """The audit chain built on this backend by two concurrent writers verifies intact."""
    logs = [AuditLog(storage), AuditLog(await open_storage())]
    await asyncio.gather(*(
        logs[n % 2].append("client:test", "seal.sign", f"seal:{n % 3}", {"n": n})
        for n in range(40)
    ))
    result = await logs[0].verify()
    assert (result.intact, result.events, result.first_bad_seq) == (True, 40, None)


# -- backend-specific failure modes --------------------------------------------------------


def sqlite_settings(path: Path, **storage: Any) -> Settings:
    base = load_settings(environ={})
    return base.replace(storage=dataclasses.replace(
        base.storage, backend="sqlite", sqlite_path=str(path), **storage))


def redis_settings(url: str, timeout: float) -> Settings:
    base = load_settings(environ={})
    return base.replace(storage=dataclasses.replace(
        base.storage, backend="redis", redis_url=url, redis_prefix="outage:",
        timeout_seconds=timeout,
    ))


async def test_redis_outage_is_backend_unavailable_and_recovers(tmp_path: Path) -> None:
    """With Redis down calls fail fast with BackendUnavailable; on restart they work again."""
    timeout = 1.0
    with RedisServer(tmp_path / "redis") as server:
        backend = create_storage(redis_settings(server.url, timeout))
        await backend.open()
        try:
            await backend.commit([Write("seal", "s", 0, {"n": 1})], [chain_sealer(1)])
            server.stop()
            calls = (
                backend.ping, lambda: backend.get("seal", "s"), lambda: backend.incr("c"),
                lambda: backend.commit([], [chain_sealer(2)]),
            )
            for call in calls:
                started = time.monotonic()
                with pytest.raises(BackendUnavailable):
                    await call()
                assert time.monotonic() - started < timeout
            server.start()
            record = await backend.get("seal", "s")
            assert record is not None
            assert record.data == {"n": 1}
            await backend.commit([], [chain_sealer(3)])
            assert [e["payload"] for e in await backend.events()] == [1, 3]
        finally:
            await backend.close()


async def test_unresponsive_redis_times_out_within_timeout(tmp_path: Path) -> None:
    """A Redis that accepts but never answers costs a call at most timeout_seconds."""
    timeout = 0.5
    with RedisServer(tmp_path / "redis") as server:
        backend = create_storage(redis_settings(server.url, timeout))
        await backend.open()
        try:
            server.pause()
            started = time.monotonic()
            with pytest.raises(BackendUnavailable):
                await backend.commit([], [chain_sealer(1)])
            assert time.monotonic() - started < 2 * timeout
            server.resume()
            await backend.commit([], [chain_sealer(2)])
            assert [e["payload"] for e in await backend.events()] == [2]
        finally:
            await backend.close()


async def test_locked_sqlite_database_is_backend_unavailable(tmp_path: Path) -> None:
    """A writer that cannot get SQLite's write lock in time gets BackendUnavailable."""
    backend = create_storage(sqlite_settings(tmp_path / "locked.db", timeout_seconds=0.3))
    await backend.open()
    blocker = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(BackendUnavailable):
            await backend.commit([Write("seal", "s", 0, {})], [chain_sealer(1)])
        blocker.execute("ROLLBACK")
        await backend.commit([Write("seal", "s", 0, {})], [chain_sealer(1)])
        assert len(await backend.events()) == 1
    finally:
        blocker.close()
        await backend.close()


async def test_sqlite_token_bucket_waits_its_turn_behind_another_writer(tmp_path: Path) -> None:
    """With the write lock held elsewhere, a token is taken (on the backend's thread) as soon
    as the lock is free, not refused and not taken twice."""
    backend = create_storage(sqlite_settings(tmp_path / "bucket.db"))
    await backend.open()
    blocker = sqlite3.connect(tmp_path / "bucket.db", isolation_level=None,
                              check_same_thread=False)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        taking = asyncio.create_task(
            backend.take_tokens("client:busy", rate=1.0, burst=2, now=1000.0))
        await asyncio.sleep(0.2)
        assert not taking.done()
        blocker.execute("ROLLBACK")
        assert await taking == (1, 0)
        assert await backend.take_tokens("client:busy", rate=1.0, burst=2, now=1000.0) \
            == (1, 0)
        assert await backend.take_tokens("client:busy", rate=1.0, burst=2, now=1000.0) \
            == (0, pytest.approx(1.0))
    finally:
        blocker.close()
        await backend.close()


@pytest.mark.parametrize(("every", "bounded"), [(5, True), (10_000, False)])
async def test_sqlite_wal_stays_bounded_when_only_token_buckets_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every: int, bounded: bool
) -> None:
    """Token buckets written on the caller's connection never checkpoint there; the backend
    has its thread checkpoint every so many of them, or the WAL would only grow."""
    from plugins import sqlite_storage

    monkeypatch.setattr(sqlite_storage, "LOCAL_WRITES_PER_CHECKPOINT", every)
    monkeypatch.setattr(sqlite_storage, "CHECKPOINT_PAUSE_SECONDS", 0.05)
    backend = create_storage(sqlite_settings(tmp_path / "wal.db"))
    await backend.open()
    try:
        for n in range(300):
            await backend.take_tokens(f"client:{n}", rate=1.0, burst=1, now=1000.0)
            await asyncio.sleep(0)  # let a due checkpoint run between requests
        # A checkpoint that met a write in progress tries again a little later, and after the
        # last write it finds none. On a busy machine that may take a while.
        wal = (tmp_path / "wal.db-wal").stat().st_size
        for _ in range(60):
            if wal < 200_000:
                break
            await asyncio.sleep(0.05)
            wal = (tmp_path / "wal.db-wal").stat().st_size
    finally:
        await backend.close()
    # About one 4 KiB page a write: 300 writes without a checkpoint are over a megabyte.
    assert (wal < 200_000) is bounded, wal


async def test_sqlite_checkpoint_that_meets_a_reader_tries_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint due while another process reads reports busy; once the read is over, the
    WAL is started over without waiting for the next checkpoint to fall due."""
    from plugins import sqlite_storage

    monkeypatch.setattr(sqlite_storage, "LOCAL_WRITES_PER_CHECKPOINT", 5)
    monkeypatch.setattr(sqlite_storage, "CHECKPOINT_PAUSE_SECONDS", 0.05)
    path = tmp_path / "wal.db"
    backend = create_storage(sqlite_settings(path))
    await backend.open()
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM token_buckets").fetchall()
        for n in range(5):
            await backend.take_tokens(f"client:{n}", rate=1.0, burst=1, now=1000.0)
        await asyncio.sleep(0.1)
        assert (tmp_path / "wal.db-wal").stat().st_size > 0  # the reader holds it
        reader.execute("COMMIT")
        for _ in range(60):
            if (tmp_path / "wal.db-wal").stat().st_size == 0:
                break
            await asyncio.sleep(0.05)
        assert (tmp_path / "wal.db-wal").stat().st_size == 0
    finally:
        reader.close()
        await backend.close()


@pytest.mark.parametrize("condition", ["replica", "master-down", "out-of-memory",
                                       "no-replicas"])
async def test_redis_that_cannot_write_is_backend_unavailable_and_recovers(
    tmp_path: Path, condition: str
) -> None:
    """A replica after a failover, a replica that lost its master, a full Redis, and a
    master that may write only with replicas it has lost all refuse writes: each is an
    outage (503, readiness down), and writes work again once the condition ends."""
    with RedisServer(tmp_path / "redis") as server:
        backend = create_storage(redis_settings(server.url, 1.0))
        await backend.open()
        admin = aioredis.from_url(server.url)
        try:
            await backend.commit([Write("seal", "s", 0, {"n": 1})], [chain_sealer(1)])
            if condition == "out-of-memory":
                await admin.config_set("maxmemory", 1)
            elif condition == "no-replicas":
                await admin.config_set("min-replicas-to-write", 1)
            else:
                stale = "yes" if condition == "replica" else "no"
                await admin.config_set("replica-serve-stale-data", stale)
                await admin.replicaof("127.0.0.1", str(free_port()))  # a master that is not there
            calls = (
                backend.ping, lambda: backend.incr("c"),
                lambda: backend.commit([], [chain_sealer(2)]),
                lambda: backend.take_tokens("b", rate=1.0, burst=5, now=time.time()),
                lambda: backend.put_expiring("k", {"v": 1}, 60.0),
            )
            for call in calls:
                with pytest.raises(BackendUnavailable):
                    await call()
            if condition == "out-of-memory":
                await admin.config_set("maxmemory", 0)
            elif condition == "no-replicas":
                await admin.config_set("min-replicas-to-write", 0)
            else:
                await admin.replicaof("NO", "ONE")
            await backend.ping()
            await backend.commit([], [chain_sealer(3)])
            assert [e["payload"] for e in await backend.events()] == [1, 3]
        finally:
            await admin.aclose()
            await backend.close()


async def test_a_redis_listing_longer_than_the_timeout_completes(tmp_path: Path) -> None:
    """The timeout bounds each page of a listing, not the whole of it: every audit
    checkpoint of a long-lived log is one listing, and it only grows."""
    # A page takes about 30 ms here; the timeout leaves room for a loaded machine.
    count, timeout = 60_000, 0.5
    with RedisServer(tmp_path / "redis") as server:
        backend = create_storage(redis_settings(server.url, timeout))
        await backend.open()
        admin = aioredis.from_url(server.url)
        try:
            # Loaded in the layout the commit script writes, much faster than commits.
            pipe = admin.pipeline(transaction=False)
            for n in range(count):
                key = f"{n:012d}"
                pipe.hset(f"outage:rec:checkpoint:{key}", mapping={"v": 1, "d": '{"seq": 1}'})
                pipe.zadd("outage:idx:checkpoint", {key: n})
            await pipe.execute()
            assert await backend.get("checkpoint", f"{count - 1:012d}") is not None
            started = time.monotonic()
            listed = await backend.list("checkpoint", limit=1_000_000)
            elapsed = time.monotonic() - started
            assert len(listed) == count
            assert elapsed > timeout, "the listing was too quick to show anything"
        finally:
            await admin.aclose()
            await backend.close()
