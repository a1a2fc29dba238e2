"""The shared storage backend: every gateway instance on every machine uses one Redis.

Key layout, all under ``settings.storage.redis_prefix`` (P):

    P rec:<kind>:<key>   hash   v (version), d (record JSON), u (time of the last write)
    P idx:<kind>         zset   record key -> creation number (list() order, oldest first)
    P created            string creation-number counter
    P events             zset   seq -> event JSON (the audit chain)
    P events:head        hash   seq, hash of the last event
    P blob:<key>         string raw bytes
    P exp:<key>          string JSON, with a TTL
    P ctr:<key>          string counter
    P bucket:<name>      hash   tokens, ts

A commit is optimistic: it reads the versions it expects and the chain head, calls the
(Python) event sealers, and hands everything to one Lua script that re-checks versions and
head and applies all of it, or nothing. When another writer moved the head in between, the
commit seals again on the new head; a changed version is a StaleWrite. Redis runs a script
atomically, so the chain never forks, whatever number of processes append.

Each call is bounded by ``timeout_seconds``; connection failures and timeouts become
BackendUnavailable. Commands are not retried inside the client, because a retried commit or
INCRBY whose first attempt did reach Redis would apply twice; the connection pool replaces
broken connections, so calls succeed again as soon as Redis is back. For Redis Cluster,
a prefix with a hash tag (``{sealgate}:``) keeps every key in one slot. Run Redis with
``appendonly yes`` so that acknowledged audit events survive a Redis restart.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from gateway.hookspecs import hookimpl
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

# KEYS: events, events:head, created, then (record, index) for each write.
# ARGV: expected head seq ('' when the commit appends nothing), now, number of writes, then
#       (expected version, record JSON or '' to delete, record key) for each write, then
#       (seq, event JSON, event hash) for each event.
_COMMIT_SCRIPT = """
local writes = tonumber(ARGV[3])
if ARGV[1] ~= '' and (redis.call('HGET', KEYS[2], 'seq') or '0') ~= ARGV[1] then
  return {'moved'}
end
for i = 1, writes do
  local actual = tonumber(redis.call('HGET', KEYS[2 + 2 * i], 'v') or '0')
  if actual ~= tonumber(ARGV[1 + 3 * i]) then
    return {'stale', i, actual}
  end
end
for i = 1, writes do
  local record, index = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local expected, data, key = tonumber(ARGV[1 + 3 * i]), ARGV[2 + 3 * i], ARGV[3 + 3 * i]
  if data == '' then
    redis.call('DEL', record)
    redis.call('ZREM', index, key)
  else
    redis.call('HSET', record, 'v', expected + 1, 'd', data, 'u', ARGV[2])
    if expected == 0 then
      redis.call('ZADD', index, redis.call('INCR', KEYS[3]), key)
    end
  end
end
local e = 4 + 3 * writes
if e <= #ARGV then
  while e <= #ARGV do
    redis.call('ZADD', KEYS[1], ARGV[e], ARGV[e + 1])
    e = e + 3
  end
  redis.call('HSET', KEYS[2], 'seq', ARGV[e - 3], 'hash', ARGV[e - 1])
end
return {'ok'}
"""

# KEYS: the bucket. ARGV: rate, burst, now, want. Returns the tokens taken and the wait in
# seconds, the wait as a string because Redis truncates Lua numbers to integers in replies.
_BUCKET_SCRIPT = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, ts = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local taken = math.min(want, math.floor(tokens))
tokens = tokens - taken
local wait = 0
if taken == 0 then wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'ts', string.format('%.17g', math.max(now, ts)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {taken, string.format('%.17g', wait)}
"""

# Replace an expiring value only while its field ARGV[1] still holds ARGV[2] (and keep the
# new time to live): an idempotency claim is renewed and settled only by its own attempt.
_REPLACE_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local ok, value = pcall(cjson.decode, current)
if not ok or type(value) ~= 'table' or value[ARGV[1]] ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1
"""

# Replies that mean "Redis cannot serve writes now", not "this command is wrong". redis-py
# raises its own class for most of them, and then strips the code word from the message
# (a replica's READONLY, MASTERDOWN during a failover, OOM past maxmemory); the others are
# recognised by the code word that still starts the message.
_OUTAGE_ERRORS = (ReadOnlyError, ClusterDownError, TryAgainError, OutOfMemoryError)
_OUTAGE_REPLIES = ("LOADING", "READONLY", "MASTERDOWN", "MISCONF", "CLUSTERDOWN", "TRYAGAIN",
                   "NOREPLICAS", "BUSY")
_SCALARS = (str, int, float, bool, type(None))
_LIST_CHUNK = 256
# The client runs without decode_responses (blobs are bytes), so members come back as bytes.
_Members = builtins.list[bytes]


class RedisStorage:
    """The Storage protocol on Redis; see the module docstring for keys and atomicity."""

    name = "redis"

    def __init__(self, url: str, prefix: str = "sealgate:", timeout_seconds: float = 2.0) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_seconds = timeout_seconds
        self._client: aioredis.Redis | None = None
        self._commit_script: Any = None
        self._token_script: Any = None
        self._replace_script: Any = None
        self._append_turn = asyncio.Lock()

    # -- life cycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the client and check that Redis answers (BackendUnavailable when not).

        The client stays usable after a failed check: it connects once Redis is reachable.
        """
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self.url,
                socket_timeout=self.timeout_seconds,
                socket_connect_timeout=self.timeout_seconds,
                retry=Retry(NoBackoff(), 0),
            )
            self._commit_script = self._client.register_script(_COMMIT_SCRIPT)
            self._token_script = self._client.register_script(_BUCKET_SCRIPT)
            self._replace_script = self._client.register_script(_REPLACE_SCRIPT)
        await self.ping()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def ping(self) -> None:
        """A write, not PING: a replica (after a failover, say) answers PING and every read
        but refuses writes, and an instance that cannot write is not ready."""
        async with self._available() as client:
            await client.set(f"{self.prefix}ping", b"1", px=_milliseconds(self.timeout_seconds))

    # -- records and events ------------------------------------------------------------------

    async def get(self, kind: str, key: str) -> Record | None:
        async with self._available() as client:
            version, data = await client.hmget(self._record_key(kind, key), ["v", "d"])
        if version is None or data is None:
            return None
        return Record(kind, key, int(version), json.loads(data))

    async def list(
        self, kind: str, *, where: Mapping[str, Any] | None = None, limit: int = 1000
    ) -> list[Record]:
        where = dict(where or {})
        if limit < 1:
            return []
        for field, value in where.items():
            if not isinstance(value, _SCALARS):
                raise TypeError(f"where['{field}'] must be a scalar, not {type(value).__name__}")
        index = self._key(f"idx:{kind}")
        chunk = min(limit, _LIST_CHUNK) if not where else _LIST_CHUNK
        found: builtins.list[Record] = []
        start = 0
        while len(found) < limit:
            # Each page has the timeout to itself: a long listing (every audit checkpoint,
            # for one) is many quick answers, and must not fail because there are many.
            async with self._available() as client:
                members = cast(_Members, await client.zrange(index, start, start + chunk - 1))
                keys = [member.decode() for member in members]
                if not keys:
                    break
                start += chunk
                pipe = client.pipeline(transaction=False)
                for key in keys:
                    pipe.hmget(self._record_key(kind, key), ["v", "d"])
                rows = await pipe.execute()
            for key, (version, raw) in zip(keys, rows, strict=True):
                if version is None:
                    continue  # deleted between reading the index and the record
                data = json.loads(raw)
                if all(data.get(f) == v for f, v in where.items()):
                    found.append(Record(kind, key, int(version), data))
        return found[:limit]

    async def commit(
        self, writes: Sequence[Write], events: Sequence[EventSealer] = ()
    ) -> CommitResult:
        check_writes(writes)
        if not writes and not events:
            return CommitResult()
        keys = [self._key("events"), self._key("events:head"), self._key("created")]
        for write in writes:
            keys += [self._record_key(write.kind, write.key), self._key(f"idx:{write.kind}")]
        now = repr(time.time())
        # Tasks of this process that append take turns, so that they do not make each other
        # seal again and again; other processes still race, and the script settles that.
        turn = self._append_turn if events else contextlib.nullcontext()
        async with self._available() as client, turn:
            while True:
                pipe = client.pipeline(transaction=False)
                pipe.hmget(keys[1], ["seq", "hash"])
                for write in writes:
                    pipe.hget(self._record_key(write.kind, write.key), "v")
                head, *versions = await pipe.execute()
                for write, version in zip(writes, versions, strict=True):
                    actual = int(version or 0)
                    if actual != write.expected_version:
                        raise StaleWrite(write.kind, write.key, write.expected_version, actual)
                head_seq = int(head[0] or 0)
                prev_hash = head[1].decode() if head[1] else GENESIS_HASH
                sealed = []
                for offset, sealer in enumerate(events, start=1):
                    event = seal_event(sealer, head_seq + offset, prev_hash)
                    prev_hash = event["hash"]
                    sealed.append(event)
                resolved = resolve_writes(writes, sealed)
                args: builtins.list[Any] = [str(head_seq) if events else "", now, len(writes)]
                for write in resolved:
                    data = "" if write.data is None else _dumps(write.data)
                    args += [write.expected_version, data, write.key]
                for event in sealed:
                    args += [event["seq"], _dumps(event), event["hash"]]
                outcome = await self._commit_script(keys=keys, args=args)
                if outcome[0] == b"ok":
                    break
                if outcome[0] == b"stale":
                    write = writes[int(outcome[1]) - 1]
                    raise StaleWrite(write.kind, write.key, write.expected_version,
                                     int(outcome[2]))
                # b"moved": another writer appended since the head was read; seal again.
        records = tuple(
            Record(w.kind, w.key, w.expected_version + 1, w.data)  # type: ignore[arg-type]
            for w in resolved if w.data is not None
        )
        return CommitResult(records, tuple(sealed))

    async def events(self, *, since_seq: int = 0, limit: int = 1000) -> builtins.list[JSON]:
        async with self._available() as client:
            raw = cast(_Members, await client.zrange(
                self._key("events"), f"({since_seq}", "+inf", byscore=True, offset=0, num=limit
            ))
        return [json.loads(item) for item in raw]

    async def last_event(self) -> JSON | None:
        async with self._available() as client:
            raw = cast(_Members, await client.zrange(self._key("events"), -1, -1))
        return json.loads(raw[0]) if raw else None

    # -- blobs, expiring keys, counters, token buckets ---------------------------------------

    async def put_blob(self, key: str, data: bytes) -> None:
        async with self._available() as client:
            await client.set(self._key(f"blob:{key}"), data)

    async def get_blob(self, key: str) -> bytes | None:
        async with self._available() as client:
            value = await client.get(self._key(f"blob:{key}"))
        return cast(bytes | None, value)

    async def put_expiring(self, key: str, value: JSON, ttl_seconds: float) -> bool:
        async with self._available() as client:
            stored = await client.set(
                self._key(f"exp:{key}"), _dumps(value), nx=True, px=_milliseconds(ttl_seconds)
            )
        return bool(stored)

    async def get_expiring(self, key: str) -> JSON | None:
        async with self._available() as client:
            raw = await client.get(self._key(f"exp:{key}"))
        return json.loads(raw) if raw is not None else None

    async def set_expiring(self, key: str, value: JSON, ttl_seconds: float) -> None:
        async with self._available() as client:
            await client.set(self._key(f"exp:{key}"), _dumps(value), px=_milliseconds(ttl_seconds))

    async def replace_expiring(
        self, key: str, value: JSON, ttl_seconds: float, *, if_field: str, equals: str
    ) -> bool:
        async with self._available():
            replaced = await self._replace_script(
                keys=[self._key(f"exp:{key}")],
                args=[if_field, equals, _dumps(value), _milliseconds(ttl_seconds)],
            )
        return bool(replaced)

    async def incr(self, key: str, amount: int = 1) -> int:
        async with self._available() as client:
            value: int = await client.incrby(self._key(f"ctr:{key}"), amount)
        return value

    async def take_tokens(
        self, bucket: str, *, rate: float, burst: int, now: float, want: int = 1
    ) -> Tokens:
        if rate <= 0 or burst < 1 or want < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1, and want >= 1")
        async with self._available():
            taken, wait = await self._token_script(
                keys=[self._key(f"bucket:{bucket}")],
                args=[repr(rate), burst, repr(now), want],
            )
        return Tokens(int(taken), float(wait))

    # -- plumbing ----------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self.prefix + name

    def _record_key(self, kind: str, key: str) -> str:
        # A colon in the kind would let two (kind, key) pairs share one Redis key.
        if ":" in kind:
            raise ValueError(f"a record kind may not contain ':' ({kind!r})")
        return self._key(f"rec:{kind}:{key}")

    @contextlib.asynccontextmanager
    async def _available(self) -> AsyncIterator[aioredis.Redis]:
        """Bound the block by the timeout and turn every kind of outage into one exception."""
        if self._client is None:
            raise BackendUnavailable("the Redis backend is not open")
        try:
            async with asyncio.timeout(self.timeout_seconds):
                yield self._client
        except TimeoutError:
            raise BackendUnavailable(
                f"Redis did not answer within {self.timeout_seconds} s"
            ) from None
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise BackendUnavailable("Redis cannot be reached") from exc
        except ResponseError as exc:
            if isinstance(exc, _OUTAGE_ERRORS) or str(exc).startswith(_OUTAGE_REPLIES):
                raise BackendUnavailable(f"Redis cannot serve now: {exc}") from exc
            raise


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


@dataclass(frozen=True)
class RedisBackendFactory:
    """Creates the Redis backend at ``settings.storage.redis_url``."""

    name: str = "redis"

    def create(self, settings: Settings) -> RedisStorage:
        storage = settings.storage
        return RedisStorage(storage.redis_url, storage.redis_prefix, storage.timeout_seconds)


@hookimpl
def sealgate_storage_backends(settings: Settings) -> list[RedisBackendFactory]:
    return [RedisBackendFactory()]
