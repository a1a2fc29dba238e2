"""The load generator against a real aiohttp server: how many answers it keeps as samples
when many clients send at once, and that a bad answer is never one of them."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from benchmarks.loadgen import Spec, run

GOOD = b"%PDF-sealed"


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    answers = itertools.count()

    async def sign(request: web.Request) -> web.Response:
        await request.read()
        # Every fifth answer is a failure the samples must not include.
        if next(answers) % 5 == 4:
            return web.Response(status=503, text="overloaded")
        return web.Response(body=GOOD + b" document")

    app = web.Application()
    app.router.add_post("/sign", sign)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/sign"
    await runner.cleanup()


def spec(url: str, tmp_path: Path, **overrides: object) -> Spec:
    body = tmp_path / "body.bin"
    body.write_bytes(b"document")
    samples = tmp_path / "samples"
    samples.mkdir(exist_ok=True)
    settings: dict[str, object] = {
        "url": url, "headers": {}, "bodies": [str(body)], "concurrency": 16,
        "max_requests": 200, "duration": 30.0, "warmup_seconds": 0.0,
        "samples_dir": str(samples), "sample_every": 10, "max_samples": 3,
        "expect_prefix": GOOD.hex(),
    }
    return Spec(**{**settings, **overrides})  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", [{}, {"rate": 500.0, "max_outstanding": 16}])
async def test_clients_sending_together_keep_at_most_max_samples_good_answers(
    base_url: str, tmp_path: Path, mode: dict[str, object]
) -> None:
    result = await run(spec(base_url, tmp_path, **mode))

    # Not exact counts: the open loop drops a request if this machine stalls the test long
    # enough for all 16 connections to be busy.
    assert result["statuses"]["503"] > 0 and result["ok"] > 30
    assert len(result["samples"]) == 3
    kept = sorted((tmp_path / "samples").iterdir())
    assert sorted(Path(s["path"]) for s in result["samples"]) == kept
    assert all(path.read_bytes().startswith(GOOD) for path in kept)
