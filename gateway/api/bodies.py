"""Reading request bodies within the configured size limit, and JSON bodies with clear errors.

Documents above ``SPOOL_BYTES`` are not held in memory: :func:`read_or_spool` writes them to
an unnamed temporary file under ``<var_dir>/spool`` as they arrive, hashing them on the way
(in a worker thread), so that a 100 MB PDF costs the worker about its own small buffers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import web

from gateway.api.body_budget import BODY_ALLOWANCE
from gateway.api.context import SETTINGS
from gateway.errors import (
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    ValidationFailed,
)

CHUNK = 256 * 1024
SPOOL_BYTES = 8 * 1024 * 1024
_HEAD_BYTES = 1024  # where format checks look (a PDF header may sit anywhere in the first KiB)
# The whole body, when a middleware read it already (idempotency fingerprints it): it is in
# memory anyway, so spooling it to disk would only add a copy.
BUFFERED_BODY = web.RequestKey("buffered_body", bytes)


def body_limit(request: web.Request) -> int:
    return request.app[SETTINGS].server.max_body_bytes


def check_declared_size(request: web.Request, limit: int | None = None) -> int:
    """413 from the Content-Length header alone, before a byte of the body is read. An
    endpoint's own ``limit`` only lowers ``[server] max_body_bytes``, never raises it."""
    limit = body_limit(request) if limit is None else min(limit, body_limit(request))
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"the body has {request.content_length} bytes; the limit is {limit} bytes"
        )
    return limit


class ClientClosed(ConnectionResetError):
    """The client closed its connection before its body had arrived whole: there is no one
    to answer, and nothing went wrong here (counted as 499, not as a server error)."""


async def next_chunk(request: web.Request) -> bytes:
    """The next piece of the body (b"" at its end); 408 when none came for
    ``[server] body_idle_seconds``: a client that stops sending its body would hold a
    connection, a signing slot and a spool file for good."""
    idle = request.app[SETTINGS].server.body_idle_seconds
    try:
        async with asyncio.timeout(idle):
            return await request.content.read(CHUNK)
    except TimeoutError:
        raise RequestTimeout(f"no part of the body arrived for {idle:g} s") from None
    except ConnectionResetError:
        raise ClientClosed("the client closed the connection while sending its body") from None


async def read_limited(request: web.Request, limit: int | None = None) -> bytes:
    """The whole body, refusing (413) as soon as it passes the limit, even when chunked."""
    limit = check_declared_size(request, limit)
    buffered = _buffered(request, limit)
    if buffered is not None:
        return buffered
    parts, _ = await _read_in_memory(request, limit)
    return b"".join(parts)


def _buffered(request: web.Request, limit: int) -> bytes | None:
    """The body a middleware has read already (in memory and in the budget once), if any."""
    buffered = request.get(BUFFERED_BODY)
    if buffered is not None and len(buffered) > limit:
        raise PayloadTooLarge(f"the body is larger than the limit of {limit} bytes")
    return buffered


async def _read_in_memory(
    request: web.Request, limit: int, stop_above: int | None = None
) -> tuple[list[bytes], bool]:
    """Chunks of the body up to ``limit`` (413 past it), stopping early once more than
    ``stop_above`` bytes are in; the flag says whether the whole body was read.

    The bytes are taken from the worker's memory budget (api/body_budget.py): all those
    declared before reading, when they are, or else chunk by chunk."""
    allowance = request[BODY_ALLOWANCE]
    taken = request.content_length or 0
    allowance.take_memory(taken)
    parts: list[bytes] = []
    size = 0
    while chunk := await next_chunk(request):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than the limit of {limit} bytes")
        if size > taken:
            allowance.take_memory(size - taken)
            taken = size
        parts.append(chunk)
        if stop_above is not None and size > stop_above:
            return parts, False
    return parts, True


@dataclass
class SpooledBody:
    """A request body in an unnamed temporary file (gone from the disk once closed)."""

    file: BinaryIO
    size: int
    sha256: hashlib._Hash  # of the whole body
    head: bytes  # its first bytes, for format checks

    def add(self, chunk: bytes) -> None:
        """On a worker thread: hash and write one chunk."""
        self.sha256.update(chunk)
        self.file.write(chunk)
        self.size += len(chunk)
        if len(self.head) < _HEAD_BYTES:
            self.head += chunk[: _HEAD_BYTES - len(self.head)]

    def close(self) -> None:
        self.file.close()


async def read_or_spool(
    request: web.Request, limit: int | None = None, spool_above: int | None = None
) -> bytes | SpooledBody:
    """The body in memory, or spooled to disk once it is (or is declared) over ``spool_above``
    (default ``SPOOL_BYTES``).

    Same limit and 413 as :func:`read_limited`; the caller closes a returned spool.
    """
    limit = check_declared_size(request, limit)
    buffered = _buffered(request, limit)
    if buffered is not None:
        return buffered
    spool_above = SPOOL_BYTES if spool_above is None else spool_above
    declared = request.content_length
    parts: list[bytes] = []
    if declared is None or declared <= spool_above:
        parts, whole = await _read_in_memory(request, limit, stop_above=spool_above)
        if whole:
            return b"".join(parts)
    allowance = request[BODY_ALLOWANCE]
    in_memory = sum(map(len, parts))
    allowance.take_spool(declared if declared is not None else in_memory)
    loop = asyncio.get_running_loop()
    spool = await loop.run_in_executor(None, _new_spool, _spool_directory(request))
    try:
        for part in parts:
            await loop.run_in_executor(None, spool.add, part)
        del parts
        allowance.give_back_memory(in_memory)  # those bytes are in the spool file now
        while chunk := await next_chunk(request):
            if spool.size + len(chunk) > limit:
                raise PayloadTooLarge(f"the body is larger than the limit of {limit} bytes")
            if declared is None:
                allowance.take_spool(len(chunk))
            await loop.run_in_executor(None, spool.add, chunk)
        await loop.run_in_executor(None, spool.file.flush)
    except BaseException:
        spool.close()
        raise
    return spool


def _spool_directory(request: web.Request) -> Path:
    return Path(request.app[SETTINGS].var_dir) / "spool"


def _new_spool(directory: Path) -> SpooledBody:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Unnamed (O_TMPFILE where the file system allows): nothing is left behind by a crash.
    # The spool outlives this function: SpooledBody.close (or the response) closes it.
    file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115
    return SpooledBody(file, 0, hashlib.sha256(), b"")


def media_type(request: web.Request) -> str:
    return request.content_type.lower() if request.headers.get("Content-Type") else ""


class UnreadableJson(ValueError):
    """A request body that json.loads cannot turn into a value."""


def parse_json(raw: bytes) -> Any:
    """``json.loads`` for a request body; UnreadableJson for anything it cannot read.

    Besides broken syntax and bad UTF-8 (ValueErrors), that is nesting deeper than the
    decoder's recursion limit and integers longer than Python converts: well-formed JSON
    that must still be a client's 4xx, not a server error.
    """
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise UnreadableJson(str(exc)) from None


async def json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object: 415 for another media type, 400 for broken JSON."""
    if media_type(request) not in ("application/json", ""):
        raise UnsupportedMediaType(f"send application/json, not {request.content_type}")
    raw = await read_limited(request)
    try:
        value = parse_json(raw or b"null")
    except UnreadableJson as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValidationFailed.one("body", "must be a JSON object")
    return value


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data, ensure_ascii=False),
        content_type="application/json", charset="utf-8",
    )
