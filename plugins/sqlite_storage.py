"""The embedded storage backend: one SQLite file in WAL mode, shared safely by worker processes.

Each backend instance owns one connection and one thread, because a sqlite3 connection must not
be used from several threads; every write and every larger read hops to that thread and back.
Writers serialise on SQLite's write lock (``BEGIN IMMEDIATE``), which is what makes an audit
append fork-free across processes: the head of the chain is read and extended while the lock
is held. A writer that cannot get the lock within ``timeout_seconds`` gets BackendUnavailable.
The wait is this module's own, a retry every ``BUSY_PAUSE_SECONDS``, not SQLite's busy
handler: that one sleeps 1, 2, 5, 10 … 100 ms between tries, so with two worker processes
writing, the one that lost the lock once kept losing it to the other, for up to seconds.
An operation that gets SQLITE_BUSY has changed nothing, so trying it again is safe.

Commits are grouped: while one transaction is being written (its ``fsync`` under
``synchronous = FULL`` is most of a commit's time), the commits that arrive meanwhile queue
up and are written together in the next transaction, each inside its own savepoint so that a
stale write fails only its own commit. Every caller still returns only once its data is
durable; under load the ``fsync`` is simply shared. Token-bucket updates commit without an
``fsync`` (``synchronous = NORMAL``): losing the last few of them in a power cut only returns
a few tokens to a bucket, and the next durable commit makes them durable too (WAL order).

Single-record reads (:meth:`get`, :meth:`get_expiring`), several per signing request, do not
hop to that thread: they run on the caller's thread on a connection of their own. A WAL
reader never waits for a writer and sees every transaction committed before it began, so
such a read takes a few microseconds where the hop alone costs tens. Should that connection
ever be busy (WAL recovery after a crash), the read falls back to the thread. The token
bucket, a small write each time a worker takes tokens, is tried there too: when the write
lock is free at that moment it is taken and released within tens of microseconds, without
an ``fsync``; when another writer holds it, the update goes to the thread, which waits its
turn.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from gateway.hookspecs import hookimpl
from gateway.serial_thread import SerialThread
from gateway.settings import Settings
from gateway.storage import (
    GENESIS_HASH,
    JSON,
    BackendUnavailable,
    CommitResult,
    EventSealer,
    Record,
    StaleWrite,
    Tokens,
    Write,
    check_writes,
    resolve_writes,
    seal_event,
)

T = TypeVar("T")

SCHEMA_VERSION = 2  # 2: token_buckets_by_time (every statement above is idempotent)
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    updated REAL NOT NULL,
    UNIQUE (kind, key)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (key TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS expiring (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS expiring_by_time ON expiring (expires_at);
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS token_buckets (
    bucket TEXT PRIMARY KEY,
    tokens REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS token_buckets_by_time ON token_buckets (updated);
"""

log = logging.getLogger(__name__)

# Primary result codes that mean "the database cannot serve now" rather than "this statement
# is wrong": BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL.
_OUTAGE_CODES = {5, 6, 8, 10, 13, 14, 15}
_BUSY = 5
BUSY_PAUSE_SECONDS = 0.0005
LOCAL_WRITES_PER_CHECKPOINT = 500
IDLE_BUCKET_SECONDS = 86400.0
# A checkpoint that met a reader or writer tries again after 0.5, 1 and 1.5 s: each try
# copies what it can and syncs the database file, a few milliseconds in which commits wait.
CHECKPOINT_PAUSE_SECONDS = 0.5
CHECKPOINT_ATTEMPTS = 4
_SCALARS = (str, int, float, bool, type(None))


class SqliteStorage:
    """The Storage protocol on a SQLite file; see the module docstring for the concurrency."""

    name = "sqlite"

    def __init__(self, path: str | Path, timeout_seconds: float = 2.0) -> None:
        self.path = Path(path)
        self.timeout_seconds = timeout_seconds
        self._thread = SerialThread("sqlite")
        self._db: sqlite3.Connection | None = None
        self._queued: list[_QueuedCommit] = []
        self._writer: asyncio.Task[None] | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_thread = 0
        self._local_writes = 0
        self._checkpointing: asyncio.Task[None] | None = None

    # -- life cycle --------------------------------------------------------------------------

    async def open(self) -> None:
        self._thread.start()
        await self._run(self._connect)
        if self._reader is None:
            # After _connect: the schema exists. Owned by the thread that opens the backend.
            reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
            # Never wait on the caller's thread (an event loop): busy work goes to the thread.
            reader.execute("PRAGMA busy_timeout = 0")
            # Its only writes are token buckets (see the module docstring); checkpoints, which
            # may take a while, are left to the thread's connection.
            reader.execute("PRAGMA synchronous = NORMAL")
            reader.execute("PRAGMA wal_autocheckpoint = 0")
            self._reader, self._reader_thread = reader, threading.get_ident()

    async def close(self) -> None:
        if not self._thread.running:
            return
        reader, self._reader = self._reader, None
        if reader is not None and threading.get_ident() == self._reader_thread:
            reader.close()  # from another thread sqlite3 refuses; the collector closes it
        if self._checkpointing is not None:
            # A checkpoint waiting for its next try is dropped: the last connection to close
            # checkpoints the WAL anyway.
            self._checkpointing.cancel()
            await asyncio.gather(self._checkpointing, return_exceptions=True)
        try:
            await self._run(self._disconnect)
        finally:
            await self._thread.stop()

    async def ping(self) -> None:
        """Take the write lock and let it go: a WAL reader is served while every write fails
        (another process holding the lock, a read-only file), and such a backend is not
        ready. Within ``timeout_seconds``, as any write."""
        def probe() -> None:
            with _write_transaction(self._conn()) as db:
                db.execute("SELECT max(seq) FROM events").fetchall()

        await self._run(probe)

    # -- records and events ------------------------------------------------------------------

    async def get(self, kind: str, key: str) -> Record | None:
        row = await self._read_one(
            "SELECT version, data FROM records WHERE kind = ? AND key = ?", (kind, key)
        )
        return Record(kind, key, row[0], json.loads(row[1])) if row else None

    async def list(
        self, kind: str, *, where: Mapping[str, Any] | None = None, limit: int = 1000
    ) -> list[Record]:
        sql = ["SELECT key, version, data FROM records WHERE kind = ?"]
        args: list[Any] = [kind]
        for field, value in (where or {}).items():
            if not isinstance(value, _SCALARS):
                raise TypeError(f"where['{field}'] must be a scalar, not {type(value).__name__}")
            if '"' in field or "\\" in field:
                raise ValueError(f"where field names cannot hold quotes ({field!r})")
            path = f'$."{field}"'
            if value is None:
                sql.append("AND json_extract(data, ?) IS NULL")
                args.append(path)
            elif isinstance(value, str):
                # json_extract also yields text for nested objects; only JSON strings match.
                sql.append("AND json_type(data, ?) = 'text' AND json_extract(data, ?) = ?")
                args += [path, path, value]
            else:
                sql.append("AND json_extract(data, ?) = ?")
                args += [path, value]
        sql.append("ORDER BY id LIMIT ?")
        args.append(limit)

        def read() -> list[Record]:
            rows = self._conn().execute(" ".join(sql), args).fetchall()
            return [Record(kind, key, version, json.loads(data)) for key, version, data in rows]

        return await self._run(read)

    async def commit(
        self, writes: Sequence[Write], events: Sequence[EventSealer] = ()
    ) -> CommitResult:
        check_writes(writes)
        if not self._thread.running:
            raise BackendUnavailable("the SQLite backend is not open")
        done: asyncio.Future[CommitResult] = asyncio.get_running_loop().create_future()
        self._queued.append(_QueuedCommit(tuple(writes), tuple(events), done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued())
        return await done

    async def _write_queued(self) -> None:
        """Write queued commits, a group per transaction, until none is left."""
        while self._queued:
            group, self._queued = self._queued, []
            try:
                outcomes = await self._run(self._commit_group, group)
            except BaseException as exc:
                # The transaction as a whole failed (lock timeout, I/O error): nothing of
                # the group was written, and every caller learns it.
                for queued in group:
                    if not queued.done.done():
                        queued.done.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for queued, outcome in zip(group, outcomes, strict=True):
                if queued.done.done():
                    continue
                if isinstance(outcome, BaseException):
                    queued.done.set_exception(outcome)
                else:
                    queued.done.set_result(outcome)

    async def events(self, *, since_seq: int = 0, limit: int = 1000) -> builtins.list[JSON]:
        def read() -> builtins.list[JSON]:
            rows = self._conn().execute(
                "SELECT data FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (since_seq, limit)
            ).fetchall()
            return [json.loads(data) for (data,) in rows]

        return await self._run(read)

    async def last_event(self) -> JSON | None:
        def read() -> JSON | None:
            row = self._conn().execute(
                "SELECT data FROM events ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            return json.loads(row[0]) if row else None

        return await self._run(read)

    # -- blobs, expiring keys, counters, token buckets ---------------------------------------

    async def put_blob(self, key: str, data: bytes) -> None:
        await self._execute(
            "INSERT INTO blobs (key, data) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET data = excluded.data",
            (key, data),
        )

    async def get_blob(self, key: str) -> bytes | None:
        rows = await self._execute("SELECT data FROM blobs WHERE key = ?", (key,))
        return bytes(rows[0][0]) if rows else None

    async def put_expiring(self, key: str, value: JSON, ttl_seconds: float) -> bool:
        now = time.time()

        def put() -> bool:
            with self._transaction() as db:
                _purge_expired(db, now)
                rows = db.execute(
                    "INSERT INTO expiring (key, value, expires_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (key) DO NOTHING RETURNING 1",
                    (key, _dumps(value), now + ttl_seconds),
                ).fetchall()
                return bool(rows)

        return await self._run(put)

    async def get_expiring(self, key: str) -> JSON | None:
        row = await self._read_one(
            "SELECT value FROM expiring WHERE key = ? AND expires_at > ?", (key, time.time())
        )
        return json.loads(row[0]) if row else None

    async def set_expiring(self, key: str, value: JSON, ttl_seconds: float) -> None:
        now = time.time()

        def write() -> None:
            with self._transaction() as db:
                _purge_expired(db, now)
                db.execute(
                    "INSERT INTO expiring (key, value, expires_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                    "expires_at = excluded.expires_at",
                    (key, _dumps(value), now + ttl_seconds),
                )

        await self._run(write)

    async def replace_expiring(
        self, key: str, value: JSON, ttl_seconds: float, *, if_field: str, equals: str
    ) -> bool:
        now = time.time()

        def replace() -> bool:
            with self._transaction() as db:
                row = db.execute("SELECT value FROM expiring WHERE key = ? AND expires_at > ?",
                                 (key, now)).fetchone()
                if row is None or json.loads(row[0]).get(if_field) != equals:
                    return False
                db.execute("UPDATE expiring SET value = ?, expires_at = ? WHERE key = ?",
                           (_dumps(value), now + ttl_seconds, key))
                return True

        return await self._run(replace)

    async def incr(self, key: str, amount: int = 1) -> int:
        rows = await self._execute(
            "INSERT INTO counters (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value RETURNING value",
            (key, amount),
        )
        value: int = rows[0][0]
        return value

    async def take_tokens(
        self, bucket: str, *, rate: float, burst: int, now: float, want: int = 1
    ) -> Tokens:
        if rate <= 0 or burst < 1 or want < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1, and want >= 1")

        def take(db: sqlite3.Connection) -> Tokens:
            row = db.execute(
                "SELECT tokens, updated FROM token_buckets WHERE bucket = ?", (bucket,)
            ).fetchone()
            tokens, updated = row if row else (float(burst), now)
            # Clocks of several processes disagree a little; never refill backwards.
            tokens = min(float(burst), tokens + max(0.0, now - updated) * rate)
            taken = min(want, int(tokens))
            tokens -= taken
            db.execute(
                "INSERT INTO token_buckets (bucket, tokens, updated) VALUES (?, ?, ?) "
                "ON CONFLICT (bucket) DO UPDATE SET tokens = excluded.tokens, "
                "updated = excluded.updated",
                (bucket, tokens, max(now, updated)),
            )
            return Tokens(taken, 0.0 if taken else (1 - tokens) / rate)

        local = self._local_connection()
        if local is not None:
            try:
                with _write_transaction(local) as db:
                    tokens = take(db)
                self._count_local_write()
                return tokens
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in _OUTAGE_CODES:
                    raise
                # Busy: another writer holds the lock; the thread waits for it instead.

        def take_on_thread() -> Tokens:
            with self._transaction(durable=False) as db:
                return take(db)

        return await self._run(take_on_thread)

    # -- on the database thread --------------------------------------------------------------

    def _connect(self) -> None:
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _private(self.path)
        db = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=True)
        try:
            db.execute("PRAGMA busy_timeout = 0")  # waits are _translated's, see above
            db.execute("PRAGMA journal_mode = WAL")
            # FULL: an acknowledged audit event or receipt must survive a power cut too.
            db.execute("PRAGMA synchronous = FULL")
            self._db = db
            with self._transaction():
                if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._db = None
            db.close()
            raise

    def _disconnect(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise BackendUnavailable("the SQLite backend is not open")
        return self._db

    @contextmanager
    def _transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction on the thread's connection (see :func:`_write_transaction`).

        ``durable=False`` commits without waiting for the disk (see the module docstring).
        """
        db = self._conn()
        if not durable:
            db.execute("PRAGMA synchronous = NORMAL")
        try:
            with _write_transaction(db):
                yield db
        finally:
            if not durable:
                db.execute("PRAGMA synchronous = FULL")

    def _commit_group(
        self, group: builtins.list[_QueuedCommit]
    ) -> builtins.list[CommitResult | Exception]:
        """One transaction for the whole group; each commit in a savepoint of its own."""
        now = time.time()
        outcomes: builtins.list[CommitResult | Exception] = []
        with self._transaction() as db:
            for queued in group:
                db.execute("SAVEPOINT one_commit")
                try:
                    outcomes.append(self._commit(db, queued.writes, queued.sealers, now))
                except sqlite3.DatabaseError as exc:
                    if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _OUTAGE_CODES:
                        raise  # the database itself is failing: the whole group fails
                    db.execute("ROLLBACK TO one_commit")
                    outcomes.append(exc)
                except Exception as exc:  # StaleWrite, or an event that cannot be sealed
                    db.execute("ROLLBACK TO one_commit")
                    outcomes.append(exc)
                db.execute("RELEASE one_commit")
        return outcomes

    def _commit(
        self, db: sqlite3.Connection, writes: tuple[Write, ...],
        sealers: tuple[EventSealer, ...], now: float,
    ) -> CommitResult:
        """Check and apply one commit inside the open transaction."""
        for write in writes:
            row = db.execute(
                "SELECT version FROM records WHERE kind = ? AND key = ?",
                (write.kind, write.key),
            ).fetchone()
            actual = row[0] if row else 0
            if actual != write.expected_version:
                raise StaleWrite(write.kind, write.key, write.expected_version, actual)
        appended = []
        if sealers:
            head = db.execute(
                "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq, prev_hash = head if head else (0, GENESIS_HASH)
            for sealer in sealers:
                seq += 1
                event = seal_event(sealer, seq, prev_hash)
                db.execute(
                    "INSERT INTO events (seq, hash, data) VALUES (?, ?, ?)",
                    (seq, event["hash"], _dumps(event)),
                )
                prev_hash = event["hash"]
                appended.append(event)
        records = []
        for write in resolve_writes(writes, appended):
            data = write.data
            assert not callable(data)
            if data is None:
                db.execute(
                    "DELETE FROM records WHERE kind = ? AND key = ?", (write.kind, write.key)
                )
                continue
            version = write.expected_version + 1
            db.execute(
                "INSERT INTO records (kind, key, version, data, updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, key) DO UPDATE SET "
                "version = excluded.version, data = excluded.data, "
                "updated = excluded.updated",
                (write.kind, write.key, version, _dumps(data), now),
            )
            records.append(Record(write.kind, write.key, version, data))
        return CommitResult(tuple(records), tuple(appended))

    # -- plumbing ----------------------------------------------------------------------------

    def _count_local_write(self) -> None:
        """The caller's-thread connection never checkpoints (that may take milliseconds);
        after ``LOCAL_WRITES_PER_CHECKPOINT`` of its writes, the thread does, so that the WAL
        stays bounded even when token buckets are all that is written. One checkpoint at a
        time: while it runs, more writes only add to the next one's count."""
        self._local_writes += 1
        if self._local_writes >= LOCAL_WRITES_PER_CHECKPOINT and self._checkpointing is None:
            self._local_writes = 0
            self._checkpointing = asyncio.get_running_loop().create_task(self._checkpoint())

    def _purge_idle_buckets(self) -> None:
        """Forget token buckets untouched for ``IDLE_BUCKET_SECONDS``: by then every bucket
        of a sane limit has refilled, and a missing bucket is a full one. Redis expires its
        buckets the same way; here each client and failing address ever seen kept a row."""
        with self._transaction(durable=False) as db:
            db.execute("DELETE FROM token_buckets WHERE updated < ?",
                       (time.time() - IDLE_BUCKET_SECONDS,))

    async def _checkpoint(self) -> None:
        """Idle token buckets are purged first (:meth:`_purge_idle_buckets`).

        TRUNCATE, because with writes from two connections interleaving, a passive
        checkpoint copied the frames back but the WAL was never started over. It reports busy
        (without raising) while a read or write is in progress, as it was for every one of a
        burst of writes; it is tried again a little later, or the WAL would keep the burst's
        size until the next checkpoint is due."""
        try:
            await self._run(self._purge_idle_buckets)
            for attempt in range(1, CHECKPOINT_ATTEMPTS + 1):
                busy, _, _ = await self._run(lambda: self._conn().execute(
                    "PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
                if not busy:
                    return
                await asyncio.sleep(CHECKPOINT_PAUSE_SECONDS * attempt)
            log.info("WAL checkpoint kept finding the database in use; the next one is due "
                     "in %d writes", LOCAL_WRITES_PER_CHECKPOINT)
        except (BackendUnavailable, sqlite3.Error) as exc:
            log.info("WAL checkpoint skipped: %s", exc)
        finally:
            self._checkpointing = None

    def _local_connection(self) -> sqlite3.Connection | None:
        """The caller's-thread connection, when the caller is the thread that owns it."""
        reader = self._reader
        return reader if threading.get_ident() == self._reader_thread else None

    async def _read_one(self, sql: str, args: Sequence[Any]) -> Any:
        """The first row of a point query, read on this thread when the reader can serve."""
        reader = self._local_connection()
        if reader is not None:
            try:
                return reader.execute(sql, args).fetchone()
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in _OUTAGE_CODES:
                    raise
        return await self._run(lambda: self._conn().execute(sql, args).fetchone())

    async def _execute(self, sql: str, args: Sequence[Any]) -> builtins.list[Any]:
        """One statement in autocommit mode; all rows are fetched so the statement ends."""
        return await self._run(lambda: self._conn().execute(sql, args).fetchall())

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._thread.running:
            raise BackendUnavailable("the SQLite backend is not open")
        return await self._thread.call(
            partial(_translated, fn, *args, timeout=self.timeout_seconds))


def _translated(fn: Callable[..., T], *args: Any, timeout: float) -> T:
    """``fn(*args)``, tried again while the database is busy, for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn(*args)
        except sqlite3.DatabaseError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code == _BUSY and time.monotonic() < deadline:
                time.sleep(BUSY_PAUSE_SECONDS)
                continue
            if code in _OUTAGE_CODES:
                raise BackendUnavailable(f"SQLite: {exc.sqlite_errorname}") from exc
            raise


@contextmanager
def _write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that holds SQLite's write lock from its first statement."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _purge_expired(db: sqlite3.Connection, now: float) -> None:
    # Done by the writers of expiring keys, which hold the write lock anyway, so that dead
    # idempotency keys do not pile up and no separate sweeper is needed.
    db.execute("DELETE FROM expiring WHERE expires_at <= ?", (now,))


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class _QueuedCommit:
    writes: tuple[Write, ...]
    sealers: tuple[EventSealer, ...]
    done: asyncio.Future[CommitResult]


@dataclass(frozen=True)
class SqliteBackendFactory:
    """Creates the SQLite backend at ``settings.storage.sqlite_path``."""

    name: str = "sqlite"

    def create(self, settings: Settings) -> SqliteStorage:
        return SqliteStorage(settings.storage.sqlite_path, settings.storage.timeout_seconds)


@hookimpl
def sealgate_storage_backends(settings: Settings) -> list[SqliteBackendFactory]:
    return [SqliteBackendFactory()]


def _private(path: Path) -> None:
    """The database readable by its owner only: it holds filing materials, names, masked
    identifiers and the token hashes. SQLite gives its -wal and -shm files the database
    file's mode. A file made world-readable before is narrowed as well."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if file.exists() and file.stat().st_mode & 0o077:
            file.chmod(0o600)
