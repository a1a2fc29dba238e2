"""A lean HTTP/1.1 client connection for the load generator.

The load generator runs on the same cores as the gateway it measures, so what it spends per
request is taken from the gateway's figures: aiohttp's client spent about 0.17 ms per
one-hash request, an eighth of the gateway's own time. This connection does only what the
benchmark needs: one keep-alive connection, one request at a time, each body's request
bytes built once, the answer framed by Content-Length or chunked encoding and handed over
chunk by chunk as it arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO

Sink = Callable[[bytes], None]

_HEAD_END = b"\r\n\r\n"
_FILE_CHUNK = 1 << 20
_REQUESTS_KEPT = 64


class HttpError(Exception):
    """The connection broke, or the answer was not HTTP/1.1 this client can read."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case


class Http1Connection:
    """POSTs to one URL path over one keep-alive connection, reopened when it was closed."""

    def __init__(self, host: str, port: int, path: str, headers: Mapping[str, str]) -> None:
        self.host, self.port = host, port
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}",
                 *(f"{name}: {value}" for name, value in headers.items())]
        self._head = "\r\n".join(lines).encode("latin-1") + b"\r\n"
        self._requests: dict[bytes, bytes] = {}  # body -> the whole request
        self._link: _Link | None = None
        self._transport: asyncio.Transport | None = None
        self._writable: asyncio.Future[None] | None = None
        self._answer: asyncio.Future[Answer] | None = None
        self._sink: Sink = _discard
        self._buffer = bytearray()
        self._status = 0
        self._headers: dict[str, str] = {}
        self._in_head = True
        self._left = 0  # body bytes still due (Content-Length), or of the current chunk
        self._chunked = False
        self._close_after = False

    async def post(self, body: bytes | BinaryIO, size: int | None, sink: Sink) -> Answer:
        """Send ``body`` (bytes, or a file of ``size`` bytes sent as it is read); feed the
        answer's body to ``sink`` and return its status and headers."""
        if self._transport is None or self._transport.is_closing():
            await self._connect()
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        self._answer = loop.create_future()
        self._sink = sink
        self._start_head()
        try:
            if isinstance(body, bytes):
                self._transport.write(self._request(body))
            else:
                await self._stream(body, size or 0)
            return await self._answer
        except BaseException:
            # An answer cut short leaves the connection in an unknown state.
            self.close()
            raise
        finally:
            self._answer = None
            self._sink = _discard

    def is_current(self, link: _Link) -> bool:
        return link is self._link

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._link, self._transport = None, None

    # -- from the current link ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            return  # nothing asked: a stray byte after a broken answer
        self._buffer += data
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            self._fail(HttpError(f"unreadable answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._link, self._transport = None, None
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if self._answer is not None and not self._answer.done() and not self._in_head \
                and not self._chunked and self._left < 0:
            self._finish()  # an answer framed by the end of the connection
        self._fail(HttpError(f"connection closed: {exc}" if exc else "connection closed"))

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # -- plumbing ----------------------------------------------------------------------------

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        link = _Link(self)
        transport, _ = await loop.create_connection(lambda: link, self.host, self.port)
        assert isinstance(transport, asyncio.Transport)
        self._link, self._transport = link, transport

    def _request(self, body: bytes) -> bytes:
        """The request for ``body``, built once for each of the few bodies a run sends."""
        request = self._requests.get(body)
        if request is None:
            request = self._head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
            if len(self._requests) >= _REQUESTS_KEPT:
                self._requests.clear()
            self._requests[body] = request
        return request

    async def _stream(self, file: BinaryIO, size: int) -> None:
        assert self._transport is not None
        self._transport.write(self._head + f"Content-Length: {size}\r\n\r\n".encode())
        loop = asyncio.get_running_loop()
        while chunk := await loop.run_in_executor(None, file.read, _FILE_CHUNK):
            if self._transport is None or self._answer is None or self._answer.done():
                return  # answered (or cut off) before the body was all sent
            self._transport.write(chunk)
            if self._writable is not None:
                await self._writable

    def _start_head(self) -> None:
        self._buffer.clear()
        self._in_head, self._chunked, self._close_after = True, False, False
        self._status, self._headers, self._left = 0, {}, 0

    def _parse(self) -> None:
        if self._in_head:
            end = self._buffer.find(_HEAD_END)
            if end < 0:
                return
            self._read_head(bytes(self._buffer[:end]))
            del self._buffer[: end + len(_HEAD_END)]
        if self._chunked:
            self._read_chunks()
        elif self._left >= 0:
            self._read_length()
        else:
            self._sink(bytes(self._buffer))  # framed by the end of the connection
            self._buffer.clear()

    def _read_head(self, head: bytes) -> None:
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, code = status_line.split(" ", 2)[:2]
        if not version.startswith("HTTP/1."):
            raise ValueError(f"not HTTP/1.x: {status_line!r}")
        self._status = int(code)
        for line in lines:
            name, _, value = line.partition(":")
            self._headers[name.strip().lower()] = value.strip()
        self._in_head = False
        self._close_after = self._headers.get("connection", "").lower() == "close"
        if "chunked" in self._headers.get("transfer-encoding", "").lower():
            self._chunked, self._left = True, -1  # -1: the next chunk's size line is due
        elif "content-length" in self._headers:
            self._left = int(self._headers["content-length"])
        else:
            self._left = -1

    def _read_length(self) -> None:
        if self._buffer:
            piece = bytes(self._buffer[: self._left])
            del self._buffer[: self._left]
            self._left -= len(piece)
            self._sink(piece)
        if self._left == 0:
            self._finish()

    def _read_chunks(self) -> None:
        while True:
            if self._left < 0:
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(self._buffer[:end]).split(b";")[0], 16)
                del self._buffer[: end + 2]
                if size == 0:
                    self._left = -2  # the (empty) trailer's end is due
                else:
                    self._left = size
            if self._left == -2:
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    return
                self._finish()
                return
            if len(self._buffer) < self._left + 2:
                if len(self._buffer) > self._left:
                    return  # the chunk is here, its CRLF not yet
                piece = bytes(self._buffer)
                self._buffer.clear()
                self._left -= len(piece)
                self._sink(piece)
                return
            self._sink(bytes(self._buffer[: self._left]))
            del self._buffer[: self._left + 2]
            self._left = -1

    def _finish(self) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(Answer(self._status, self._headers))
        if self._close_after:
            self.close()

    def _fail(self, exc: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)


class _Link(asyncio.Protocol):
    """One TCP connection's protocol: passes events on while it is its owner's current one
    (a closed connection's last events arrive after the next one may have opened)."""

    def __init__(self, owner: Http1Connection) -> None:
        self.owner = owner

    def data_received(self, data: bytes) -> None:
        if self.owner.is_current(self):
            self.owner.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.owner.is_current(self):
            self.owner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.owner.is_current(self):
            self.owner.pause_writing()

    def resume_writing(self) -> None:
        if self.owner.is_current(self):
            self.owner.resume_writing()


def _discard(_: bytes) -> None:
    pass
