"""The SQLite backend under concurrency: grouped commits and two writers on one file."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.audit import AuditLog
from gateway.storage import StaleWrite, Write
from plugins.sqlite_storage import IDLE_BUCKET_SECONDS, SqliteStorage


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    backend = SqliteStorage(tmp_path / "sealgate.db")
    await backend.open()
    yield backend
    await backend.close()


async def test_a_stale_write_fails_only_its_own_commit_in_a_group(
    storage: SqliteStorage,
) -> None:
    """Commits queued together land together, except the stale one, which changes nothing."""
    audit = AuditLog(storage)
    await storage.commit([Write("thing", "a", 0, {"n": 1})])
    commits = [
        audit.commit([Write("thing", f"b{i}", 0, {"n": i})],
                     [audit.event_sealer("test", "thing.created", f"thing/b{i}")])
        for i in range(20)
    ]
    commits.insert(7, audit.commit([Write("thing", "a", 0, {"n": 2})],
                                   [audit.event_sealer("test", "thing.changed", "thing/a")]))
    outcomes = await asyncio.gather(*commits, return_exceptions=True)

    assert [type(o) for o in outcomes].count(StaleWrite) == 1
    assert isinstance(outcomes[7], StaleWrite)
    record = await storage.get("thing", "a")
    assert record is not None and record.data == {"n": 1}
    events = await storage.events()
    assert [e["seq"] for e in events] == list(range(1, 21)), "no gap where the stale one was"
    assert (await audit.verify()).intact


async def test_two_writers_on_one_file_both_progress(tmp_path: Path) -> None:
    """Two backends (as two worker processes have) writing at once both get the lock in turn
    and extend one unbroken audit chain, well within the lock timeout."""
    first = SqliteStorage(tmp_path / "shared.db", timeout_seconds=2.0)
    second = SqliteStorage(tmp_path / "shared.db", timeout_seconds=2.0)
    await first.open()
    await second.open()
    try:
        async def writer(backend: SqliteStorage, name: str) -> None:
            audit = AuditLog(backend)
            for i in range(150):
                await audit.commit([Write(name, str(i), 0, {"i": i})],
                                   [audit.event_sealer(name, "thing.created", f"{name}/{i}")])

        await asyncio.gather(writer(first, "one"), writer(second, "two"))
        events = await first.events(limit=1000)
        assert [e["seq"] for e in events] == list(range(1, 301))
        assert {e["actor"] for e in events} == {"one", "two"}
        assert (await AuditLog(second).verify()).intact
    finally:
        await first.close()
        await second.close()


async def test_point_reads_see_what_was_just_committed(storage: SqliteStorage) -> None:
    """A get after a commit returns it, although gets read on their own connection."""
    for version in range(5):
        await storage.commit([Write("thing", "x", version, {"v": version})])
        record = await storage.get("thing", "x")
        assert record is not None and record.version == version + 1
        assert record.data == {"v": version}


async def test_token_buckets_idle_for_a_day_are_forgotten_at_the_next_checkpoint(
    storage: SqliteStorage,
) -> None:
    """A bucket untouched for a day has long refilled: its row goes, one in use stays, and
    a forgotten bucket is full again (as Redis's expired ones are)."""
    now = time.time()
    await storage.take_tokens("auth-failures/192.0.2.7", rate=0.2, burst=20,
                              now=now - 2 * IDLE_BUCKET_SECONDS, want=20)
    await storage.take_tokens("client/a", rate=100.0, burst=200, now=now, want=5)
    await storage._checkpoint()  # what LOCAL_WRITES_PER_CHECKPOINT local writes trigger

    def buckets() -> list[str]:
        rows = storage._conn().execute("SELECT bucket FROM token_buckets ORDER BY bucket")
        return [row[0] for row in rows]

    assert await storage._run(buckets) == ["client/a"]
    refilled = await storage.take_tokens("auth-failures/192.0.2.7", rate=0.2, burst=20,
                                         now=now, want=20)
    assert refilled.taken == 20


@pytest.mark.parametrize("existing", [False, True], ids=["new", "made-world-readable"])
async def test_the_database_files_are_readable_by_their_owner_only(
    tmp_path: Path, existing: bool
) -> None:
    """The database holds filing materials, names and token hashes: it and its WAL files
    are 0600, whatever the umask, and a file left world-readable is narrowed at open."""
    path = tmp_path / "sealgate.db"
    if existing:
        path.write_bytes(b"")
        path.chmod(0o644)
    previous = os.umask(0o022)
    try:
        backend = SqliteStorage(path)
        await backend.open()
        await backend.commit([Write("thing", "a", 0, {"n": 1})])
        files = sorted(tmp_path.glob("sealgate.db*"))
        assert [f.name for f in files] == ["sealgate.db", "sealgate.db-shm", "sealgate.db-wal"]
        assert {oct(f.stat().st_mode & 0o777) for f in files} == {oct(0o600)}
        await backend.close()
    finally:
        os.umask(previous)
