"""`sealgate serve` folds the counters and histograms of dead workers into archive files:
their counts stay in /metrics, their files go, and no scrape sees a total go down."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway_process import Deployment, GatewayProcess, counting_pids, sample_value
from tests.interop.test_workers import metrics_text, sign
from tests.private_mounts import (
    fill,
    in_private_namespace,
    mounted_tmpfs,
    rerun_in_private_namespace,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

SIGNATURES = 'sealgate_signatures_total{format="pdf"}'
SIGNING_COUNT = 'sealgate_signing_seconds_count{format="pdf"}'
# The kinds of files a worker keeps, one each: counter, histogram and three live gauges.
FILES_PER_WORKER = 5
ARCHIVES = {"counter_archive.db", "histogram_archive.db"}
# What the master logs when it could not fold the files of exited workers.
FOLD_FAILED = "stay in their own files"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return Deployment.create(tmp_path_factory.mktemp("folding"))


@pytest.fixture(scope="module")
def gateway(deployment: Deployment) -> Iterator[GatewayProcess]:
    with deployment.serve(workers=2) as running:
        yield running


def kill_workers(gateway: GatewayProcess, victims: set[int]) -> None:
    """SIGKILL ``victims``; return once replacements serve and the dead are folded."""
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    gateway.wait_for_workers(gone=frozenset(victims))
    gateway.wait_for_folds()


async def test_a_killed_workers_counts_stay_in_metrics_after_its_files_are_gone(
    gateway: GatewayProcess, deployment: Deployment
) -> None:
    """The signatures a SIGKILLed worker counted, and its signing-time observations, are
    still in /metrics once the master has deleted its files."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(4):  # a new connection each: both workers sign
            status, _, _ = await sign(http, gateway, deployment)
            assert status == 200
        before = await metrics_text(http, gateway)
        victims = counting_pids(gateway.metrics_dir) & gateway.worker_pids()
        assert len(victims) == 2
        kill_workers(gateway, victims)
        after = await metrics_text(http, gateway)
    assert not counting_pids(gateway.metrics_dir) & victims
    assert {p.name for p in gateway.metrics_dir.iterdir()} >= ARCHIVES
    assert sample_value(before, SIGNATURES) == 4
    assert sample_value(after, SIGNATURES) == 4
    assert sample_value(before, SIGNING_COUNT) == 4
    assert sample_value(after, SIGNING_COUNT) == 4
    assert "sealgate_signatures_total" in (gateway.metrics_dir / "counter_archive.db"
                                           ).read_bytes().decode(errors="replace")


Totals = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def counting_samples(exposition: str) -> Totals:
    """Every sample of the counters and histograms in a text exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(exposition)
            if family.type in ("counter", "histogram") for s in family.samples}


async def scrape_until(gateway: GatewayProcess, stop: asyncio.Event) -> tuple[int, list[str]]:
    """Scrape in a loop until ``stop``; returns the scrapes answered and every total that
    was lower than in an earlier scrape, or gone from it."""
    seen: Totals = {}
    drops: list[str] = []
    answered = 0
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while not stop.is_set():
            try:
                now = counting_samples(await metrics_text(http, gateway))
            except (aiohttp.ClientError, TimeoutError):
                continue  # the worker answering was killed
            answered += 1
            drops += [f"{key}: {value} -> {now.get(key)}" for key, value in seen.items()
                      if now.get(key, -1.0) < value]
            seen = now
    return answered, drops


async def test_scrapes_while_workers_die_never_see_a_total_go_down_and_files_stay_few(
    deployment: Deployment,
) -> None:
    """Two clients scrape /metrics in a loop while both workers are SIGKILLed at once,
    four times over: no scrape sees any counter or histogram total lower than an earlier
    one, and the directory holds the live workers' files and the archives only."""
    with deployment.serve(workers=2, name="hammered") as running:
        stop = asyncio.Event()
        scrapers = [asyncio.create_task(scrape_until(running, stop)) for _ in range(2)]
        for _ in range(4):
            await asyncio.to_thread(kill_workers, running, running.worker_pids())
            names = {p.name for p in running.metrics_dir.glob("*.db")}
            assert len(names) <= 2 * FILES_PER_WORKER + len(ARCHIVES), sorted(names)
            assert counting_pids(running.metrics_dir) <= running.worker_pids()
        stop.set()
        results = await asyncio.gather(*scrapers)
    assert [drops for _, drops in results] == [[], []]
    assert all(answered > 0 for answered, _ in results)


def wait_for_log(gateway: GatewayProcess, text: str, timeout: float = 30.0) -> None:
    """Wait until the gateway's log holds ``text``, or its master has exited."""
    assert gateway.process is not None
    deadline = time.monotonic() + timeout
    while text not in gateway.log() and gateway.process.poll() is None:
        assert time.monotonic() < deadline, f"{text!r} was never logged\n{gateway.log()}"
        time.sleep(0.1)


async def test_the_master_serves_on_when_a_fold_finds_the_disk_full(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """With the metrics directory on a full tmpfs, a worker is killed: writing the archive
    fails, the master logs it, leaves the files, and the other worker goes on answering
    (the archive was written through an mmap, and the master died of SIGBUS)."""
    if not in_private_namespace(request):
        rerun_in_private_namespace(request, tmp_path)
        return
    deployment = Deployment.create(tmp_path)
    with (mounted_tmpfs(tmp_path / "gateway-metrics", "4m") as metrics,
          deployment.serve(workers=2) as gateway):
        assert gateway.metrics_dir == metrics
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)) as http:
            for _ in range(4):
                status, _, _ = await sign(http, gateway, deployment)
                assert status == 200
        fill(metrics)
        victim = min(gateway.worker_pids())
        os.kill(victim, signal.SIGKILL)
        wait_for_log(gateway, FOLD_FAILED)
        assert gateway.process is not None
        assert gateway.process.poll() is None, gateway.log()
        assert "No space left on device" in gateway.log()
        assert victim in counting_pids(metrics)
        assert gateway.ready()


def damage(path: Path) -> None:
    """Make the first entry of a metric file claim more bytes than the file uses: its
    reader raises RuntimeError (the worker writing it goes on at the places it knows)."""
    with path.open("r+b") as file:
        file.seek(8)
        file.write((2**31 - 1).to_bytes(4, sys.byteorder))


async def test_the_master_serves_on_when_a_dead_workers_file_cannot_be_read(
    deployment: Deployment,
) -> None:
    """A killed worker's counter file is damaged: its fold fails, the master logs it with
    the error and goes on dealing connections (the error ended the master's loop, and the
    gateway with it)."""
    with deployment.serve(workers=2, name="damaged") as running:
        victim = min(running.worker_pids())
        damage(running.metrics_dir / f"counter_{victim}.db")
        os.kill(victim, signal.SIGKILL)
        wait_for_log(running, FOLD_FAILED)
        assert running.process is not None
        assert running.process.poll() is None, running.log()
        assert "Read beyond file size" in running.log()
        assert victim in counting_pids(running.metrics_dir)
        assert running.ready()
