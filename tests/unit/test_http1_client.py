"""The load generator's HTTP/1.1 connection against a real aiohttp server: each framing of an
answer, a streamed upload, and a connection the server closes."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from benchmarks.http1 import Http1Connection, HttpError

BIG = bytes(range(256)) * 8192  # 2 MiB


async def echo_length(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(body=hashlib.sha256(body).hexdigest().encode(),
                        headers={"X-Length": str(len(body))})


async def chunked(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for part in (b"first,", BIG, b",last"):
        await response.write(part)
    await response.write_eof()
    return response


async def closing(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=413, text="too large", headers={"Connection": "close"})


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, int]]:
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/length", echo_length)
    app.router.add_post("/chunked", chunked)
    app.router.add_post("/closing", closing)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield "127.0.0.1", port
    await runner.cleanup()


async def test_answers_with_a_length_come_back_whole_over_one_connection(
    server: tuple[str, int]
) -> None:
    connection = Http1Connection(*server, "/length", {"Content-Type": "application/json"})
    try:
        for body in (b"{}", BIG, b"{}"):
            parts: list[bytes] = []
            answer = await connection.post(body, None, parts.append)
            assert answer.status == 200
            assert answer.headers["x-length"] == str(len(body))
            assert b"".join(parts) == hashlib.sha256(body).hexdigest().encode()
    finally:
        connection.close()


async def test_chunked_answers_and_streamed_uploads(
    server: tuple[str, int], tmp_path: Path
) -> None:
    upload = tmp_path / "upload.bin"
    upload.write_bytes(BIG)
    streaming = Http1Connection(*server, "/length", {})
    chunking = Http1Connection(*server, "/chunked", {})
    try:
        parts: list[bytes] = []
        with upload.open("rb") as fh:
            answer = await streaming.post(fh, len(BIG), parts.append)
        assert answer.headers["x-length"] == str(len(BIG))
        assert b"".join(parts) == hashlib.sha256(BIG).hexdigest().encode()
        for _ in range(2):
            parts = []
            answer = await chunking.post(b"x", None, parts.append)
            assert answer.status == 200
            assert b"".join(parts) == b"first," + BIG + b",last"
    finally:
        streaming.close()
        chunking.close()


async def test_a_connection_the_server_closes_is_opened_again(server: tuple[str, int]) -> None:
    connection = Http1Connection(*server, "/closing", {})
    try:
        for _ in range(3):
            parts: list[bytes] = []
            answer = await connection.post(b"body", None, parts.append)
            assert (answer.status, b"".join(parts)) == (413, b"too large")
    finally:
        connection.close()


async def test_a_server_that_is_gone_is_an_error_not_a_hang(server: tuple[str, int]) -> None:
    host, port = server
    connection = Http1Connection(host, port, "/length", {})
    await connection.post(b"{}", None, lambda _: None)
    connection.close()
    nobody = Http1Connection(host, 1, "/length", {})
    with pytest.raises((OSError, HttpError)):
        await nobody.post(b"{}", None, lambda _: None)
