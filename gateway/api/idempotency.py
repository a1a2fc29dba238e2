"""Idempotency-Key on the POSTs that sign or submit: one run per key, its answer replayed.

One mechanism for every such route (``IDEMPOTENT_ROUTES``): a middleware that runs after
authentication and the rate limit, so that keys belong to the authenticated client (two
clients may use the same key without meeting). A request that carries ``Idempotency-Key``

1. is fingerprinted: SHA-256 over method, path with query string, client id and body;
2. claims the record ``idempotency:<client id>:<sha256(key)>`` with ``Storage.put_expiring``
   as *running* for ``lock_seconds``, renewed while the handler runs, so that the claim of a
   killed worker expires by itself and a retry can go ahead;
3. runs the handler. A 2xx answer is stored for ``ttl_seconds``: status, the headers the
   handler set (Content-Type, Sealgate-Receipt, ...) and the body. Small bodies sit in the
   record; larger ones (sealed PDFs) in expiring chunks keyed by the record and the attempt,
   written before the record that points to them (``storage.put_expiring_bytes``); an output
   the sealing service stored with its commit already is pointed to, not stored twice. Not
   in blobs: blobs never expire, and the gateway keeps no documents (DESIGN.md "State").
   Any other outcome (4xx, 5xx, an exception)
   is not stored and the claim is released: nothing was done, so a retry with the same key
   runs again and may succeed once the cause is gone.

A request whose key is claimed already gets, when the claim holds

- another fingerprint: 409 ``idempotency-key-reused``;
- a stored answer: that answer, byte for byte, plus ``Idempotent-Replayed: true``;
- a request still running (a concurrent duplicate, on any worker or instance): it polls for
  up to ``wait_seconds`` and then replays the answer; if the first request is still running
  by then, 409 ``idempotency-key-in-progress`` with ``Retry-After``. It never runs the handler.

The body of a keyed request is read whole before the handler runs, to fingerprint it and
hand it back, so a keyed ``sign/cms`` holds its content in memory where an unkeyed one
streams it, and a keyed ``sign/pdf`` is sealed in memory where an unkeyed large one is
spooled to disk. That is why a keyed body may have at most ``idempotency.max_body_bytes``
(16 MiB by default, against 64 MiB for any body): with ``max_in_flight`` requests per worker
all keyed, memory stays bounded, and so does what a TTL of stored answers holds. A larger
keyed body gets 413 before anything is claimed, and the same document sent without the key
is streamed as usual.

A worker killed after its sealing commit but before it stored the answer leaves only its
claim; once that expires, a retry runs the handler again, and the sealing service hands back
the sealing committed under the key instead of sealing a second time (seals/once.py): the
middleware sets the request's :class:`IdempotencyScope` for that.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import uuid
from dataclasses import dataclass

from aiohttp import StreamReader, web
from multidict import CIMultiDict

from gateway import metrics
from gateway.api import problems
from gateway.api.bodies import BUFFERED_BODY, body_limit, read_limited
from gateway.api.context import CLIENT, SETTINGS, Handler, request_id, services
from gateway.errors import (
    IdempotencyConflict,
    IdempotencyInProgress,
    PayloadTooLarge,
    ValidationFailed,
)
from gateway.idempotency_scope import CURRENT_SCOPE, IdempotencyScope
from gateway.seals.once import answer_lost
from gateway.settings import IdempotencySettings
from gateway.storage import (
    JSON,
    BackendUnavailable,
    Storage,
    get_expiring_bytes,
    put_expiring_bytes,
)

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"

IDEMPOTENT_ROUTES = frozenset({
    ("POST", "/v1/seals/{id}/sign/pdf"),
    ("POST", "/v1/seals/{id}/sign/cms"),
    ("POST", "/v1/seals/{id}/sign/hash"),
    ("POST", "/csc/v1/signatures/signHash"),
    ("POST", "/tsa"),
    ("POST", "/v1/filings/{id}/submit"),
})
"""(method, route template) of every request that honours ``Idempotency-Key``."""

IN_PROGRESS_RETRY_SECONDS = 1

KEY_FORMAT = re.compile(r"^[\x21-\x7e]{1,255}$")
# Headers of one transmission rather than of the answer: every response gets its own.
_TRANSPORT_HEADERS = frozenset(
    {"content-length", "date", "server", "transfer-encoding", "connection", "x-request-id"}
)
_FIRST_POLL_SECONDS = 0.05
_MAX_POLL_SECONDS = 0.5
# Chunks outlive their record a little, so that a record never points to expired chunks.
_CHUNK_TTL_MARGIN_SECONDS = 60.0


def record_key(client_id: str, key: str) -> str:
    """Where the claim and the answer for ``key`` of one client are stored."""
    return f"idempotency:{client_id}:{hashlib.sha256(key.encode()).hexdigest()}"


def fingerprint(method: str, path_qs: str, client_id: str, body: bytes) -> str:
    """SHA-256 of what makes two requests "the same"; parts are length-prefixed so that no
    two different requests run together into the same bytes."""
    digest = hashlib.sha256()
    for part in (method.encode(), path_qs.encode(), client_id.encode()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    digest.update(body)
    return digest.hexdigest()


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run an idempotent request once per key; replay, refuse or wait for the others."""
    key = request.headers.get(HEADER)
    caller = request.get(CLIENT)
    resource = request.match_info.route.resource
    template = resource.canonical if resource is not None else ""
    # Anonymous requests (an open /tsa) have no client to scope a key to; they are cheap to
    # repeat, so they simply run.
    if key is None or caller is None or (request.method, template) not in IDEMPOTENT_ROUTES:
        return await handler(request)
    if not KEY_FORMAT.match(key):
        raise ValidationFailed.one(HEADER, "must be 1 to 255 visible ASCII characters")
    settings = request.app[SETTINGS].idempotency
    body = await _read_keyed(request, settings.max_body_bytes)
    _put_back(request, body)
    scope = IdempotencyScope(
        record_key(caller.id, key), fingerprint(request.method, request.raw_path, caller.id, body),
        uuid.uuid4().hex, settings.ttl_seconds,
    )
    return await Attempt(services(request).storage, settings, scope).answer(request, handler)


@dataclass
class Attempt:
    """One request's go at a key: claim it, or wait for and replay the claimant's answer."""

    storage: Storage
    settings: IdempotencySettings
    scope: IdempotencyScope

    @property
    def key(self) -> str:
        return self.scope.key

    @property
    def fingerprint(self) -> str:
        return self.scope.fingerprint

    async def answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.wait_seconds
        pause = _FIRST_POLL_SECONDS
        while True:
            if await self.storage.put_expiring(self.key, self._running(),
                                               self.settings.lock_seconds):
                metrics.IDEMPOTENT_REQUESTS.labels("executed").inc()
                return await self._execute(request, handler)
            found = await self.storage.get_expiring(self.key)
            # None or released: the claim ended between the two calls; claim again.
            if found is not None and found.get("state") != "released":
                if found.get("fingerprint") != self.fingerprint:
                    metrics.IDEMPOTENT_REQUESTS.labels("reused").inc()
                    raise IdempotencyConflict(
                        f"this {HEADER} was used for a different request (method, path, query "
                        "or body); send a new request with a new key"
                    )
                if found.get("state") == "done":
                    metrics.IDEMPOTENT_REQUESTS.labels("replayed").inc()
                    return await self._replay(found)
            remaining = deadline - loop.time()
            if remaining <= 0:
                metrics.IDEMPOTENT_REQUESTS.labels("in_progress").inc()
                return _in_progress(request)
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, _MAX_POLL_SECONDS)

    # -- the claimant ------------------------------------------------------------------------

    async def _execute(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        stop = asyncio.Event()
        renewal = asyncio.create_task(self._renew(stop))
        scoped = CURRENT_SCOPE.set(self.scope)
        try:
            response = await handler(request)
        except BaseException:
            await _finish(stop, renewal)
            await self._release()
            raise
        finally:
            CURRENT_SCOPE.reset(scoped)
        await _finish(stop, renewal)
        if self.scope.recovered:
            response.headers[REPLAYED_HEADER] = "true"
        answer = _storable(response)
        if answer is None:
            await self._release()
            return response
        try:
            await self._store(*answer)
        except BackendUnavailable as exc:
            # The work is done and committed: hand the answer out rather than fail it. The
            # claim expires by itself after lock_seconds.
            log.warning("idempotent answer not stored (storage unavailable): %s", exc)
        return response

    async def _renew(self, stop: asyncio.Event) -> None:
        """Keep the claim alive while the handler runs (a slow PDF must not lose it)."""
        interval = self.settings.lock_seconds / 3
        while True:
            try:
                await asyncio.wait_for(stop.wait(), interval)
                return
            except TimeoutError:
                pass
            try:
                if not await self._replace(self._running(), self.settings.lock_seconds):
                    # The claim lapsed (storage was away longer than lock_seconds) and
                    # another attempt holds the key now: its record is not ours to touch.
                    log.warning("idempotency claim lapsed while its request ran")
                    return
            except BackendUnavailable as exc:
                log.info("idempotency claim not renewed: %s", exc)

    async def _release(self) -> None:
        # No delete for expiring keys in the protocol: a claim that expires at once is one.
        try:
            await self._replace({"state": "released", "attempt": self.scope.attempt}, 0.001)
        except BackendUnavailable as exc:
            log.info("idempotency claim not released (it expires by itself): %s", exc)

    async def _store(self, status: int, headers: list[list[str]], body: bytes) -> None:
        output = self.scope.output_ref
        if output is None or output["sha256"] != hashlib.sha256(body).hexdigest():
            # Not the sealed output stored with the commit (a JSON answer, say): store it.
            output = await put_expiring_bytes(
                self.storage, f"{self.key}:body:{self.scope.attempt}", body,
                self.settings.ttl_seconds + _CHUNK_TTL_MARGIN_SECONDS)
        record: JSON = {
            "state": "done", "fingerprint": self.fingerprint, "attempt": self.scope.attempt,
            "status": status, "headers": headers, "body": output,
        }
        ttl = self.settings.ttl_seconds
        if not (await self._replace(record, ttl)
                or await self.storage.put_expiring(self.key, record, ttl)):
            log.warning("idempotent answer not stored: another attempt holds the key now")

    async def _replace(self, value: JSON, ttl_seconds: float) -> bool:
        """Write the key only while this attempt's claim is what it holds."""
        return await self.storage.replace_expiring(
            self.key, value, ttl_seconds, if_field="attempt", equals=self.scope.attempt)

    # -- everyone else -----------------------------------------------------------------------

    async def _replay(self, record: JSON) -> web.Response:
        ref = record.get("body")
        # Not a reference: an answer stored by an earlier version, in another layout.
        body = await get_expiring_bytes(self.storage, ref) if isinstance(ref, dict) else None
        if body is None:
            raise answer_lost()
        headers = CIMultiDict((str(name), str(value)) for name, value in record["headers"])
        headers[REPLAYED_HEADER] = "true"
        return web.Response(status=int(record["status"]), body=body, headers=headers)

    def _running(self) -> JSON:
        return {"state": "running", "fingerprint": self.fingerprint,
                "attempt": self.scope.attempt}


def _storable(response: web.StreamResponse) -> tuple[int, list[list[str]], bytes] | None:
    """Status, headers and body of a 2xx answer held in memory; None for anything else."""
    if not isinstance(response, web.Response) or not 200 <= response.status < 300:
        return None
    body = response.body if response.body is not None else b""
    if not isinstance(body, bytes | bytearray):
        return None  # a streamed payload cannot be replayed
    headers = [[name, value] for name, value in response.headers.items()
               if name.lower() not in _TRANSPORT_HEADERS and name != REPLAYED_HEADER]
    return response.status, headers, bytes(body)


async def _finish(stop: asyncio.Event, renewal: asyncio.Task[None]) -> None:
    # Let a renewal in flight complete instead of cancelling it, so that it can never land
    # after (and overwrite) the stored answer or the release.
    stop.set()
    await renewal


def _in_progress(request: web.Request) -> web.Response:
    error = IdempotencyInProgress(
        f"the first request with this {HEADER} is still running; retry shortly",
        retry_after=IN_PROGRESS_RETRY_SECONDS,
    )
    response = problems.from_error(error, request_id(request))
    response.headers["Retry-After"] = str(math.ceil(error.retry_after))
    return response


async def _read_keyed(request: web.Request, keyed_limit: int) -> bytes:
    """The whole body of a keyed request, or 413 naming the keyed limit when it is the one
    passed: the client can send the document without a key and have it streamed."""
    any_body_limit = body_limit(request)
    limit = min(keyed_limit, any_body_limit)
    try:
        return await read_limited(request, limit)
    except PayloadTooLarge:
        if limit == any_body_limit:
            raise
        raise PayloadTooLarge(
            f"a request with {HEADER} may carry at most {limit} bytes, because its body is "
            f"held in memory and its answer kept for replay; send a larger document without "
            f"the key") from None


def _put_back(request: web.Request, body: bytes) -> None:
    """Give the handler the body again: it was read here to fingerprint it.

    Handlers stream bodies with their own size limit (bodies.read_limited), so the request
    gets a fresh reader holding the same bytes. aiohttp has no public way to replace a body:
    this sets the reader behind ``request.content`` and drops the cached property. The
    reader's limit is above the body size, so it never asks the connection to pause reading.
    """
    reader = StreamReader(request.protocol, limit=2 * len(body) + 1,
                          loop=asyncio.get_running_loop())
    if body:
        reader.feed_data(body)
    reader.feed_eof()
    request._payload = reader
    request._cache.pop("content", None)
    request[BUFFERED_BODY] = body
