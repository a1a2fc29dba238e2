"""The load generator: a separate process that drives one scenario over keep-alive HTTP.

Run as ``python -m benchmarks.loadgen`` with a JSON :class:`Spec` on stdin; it prints one
JSON result on stdout. Two modes:

- closed loop: ``concurrency`` clients, each sending its next request when the last one is
  answered (throughput at that concurrency);
- open loop: requests sent on a fixed schedule at ``rate`` per second whatever the answers
  do, latency counted from the scheduled moment so that a stalled server cannot hide its
  queueing (no coordinated omission); at most ``max_outstanding`` in flight, the rest counted
  as dropped.

Each client (closed loop) or each of ``max_outstanding`` slots (open loop) has one keep-alive
connection of its own (benchmarks/http1.py), and the open loop takes the connection idle the
longest: the gateway deals connections, not requests, to its workers, so a pool that
reused its few most recent connections would send nearly all requests to one worker.

Every run is bounded twice, by ``max_requests`` and by ``duration`` seconds (plus a per-request
timeout), and only ever talks to the loopback address it is given.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from benchmarks.http1 import Http1Connection, HttpError

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@dataclass
class Spec:
    url: str
    headers: dict[str, str]
    bodies: list[str]  # files, sent in turn
    concurrency: int = 1
    max_requests: int = 1000
    duration: float = 5.0
    warmup_seconds: float = 1.0
    rate: float | None = None  # open loop when set
    max_outstanding: int = 256
    stream_body: bool = False  # send the file as it is read (large documents)
    request_timeout: float = 60.0
    samples_dir: str | None = None
    sample_every: int = 200  # keep the first good answer, then every n-th
    max_samples: int = 3
    expect_prefix: str = ""  # hex; a good answer starts with these bytes


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    first_problem: str = ""
    bytes_in: int = 0
    attempted: int = 0
    ok: int = 0
    dropped: int = 0
    # Open loop: how late this process sent requests against its schedule (its own lag is
    # in the latencies too, so it must stay small for them to be the server's).
    send_lag: list[float] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    # Samples kept or being written. A request claims its turn when it is sent, so that
    # clients sending at the same moment cannot all take the same one.
    sampling: int = 0
    next_sample: int = 0  # the count of good answers from which the next may be kept

    def claim_sample(self, every: int, limit: int) -> bool:
        if self.sampling >= limit or self.ok < self.next_sample:
            return False
        self.sampling += 1
        self.next_sample = self.ok + every
        return True

    def release_sample(self) -> None:
        """The claimed answer is no sample (cut off, or not good): the next request tries."""
        self.sampling -= 1
        self.next_sample = self.ok

    def problem(self, kind: str, detail: str) -> None:
        self.failures[kind] += 1
        if not self.first_problem:
            self.first_problem = detail[:500]


class Driver:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.payloads = [] if spec.stream_body else [Path(p).read_bytes() for p in spec.bodies]
        self.prefix = bytes.fromhex(spec.expect_prefix)
        self.sent = 0
        self.warmed = 0  # good answers to warm-up requests

    async def one(
        self, connection: Http1Connection, tally: Tally | None, started: float | None = None
    ) -> None:
        """Send the next request on ``connection``; record it in ``tally`` (None: warm-up)."""
        index = self.sent % len(self.spec.bodies)
        self.sent += 1
        if tally is not None:
            tally.attempted += 1
        begin = time.perf_counter() if started is None else started
        try:
            async with asyncio.timeout(self.spec.request_timeout):
                if self.spec.stream_body:
                    fh = await asyncio.get_running_loop().run_in_executor(
                        None, Path(self.spec.bodies[index]).open, "rb")
                    with fh:
                        status, length, good, sample = await self._exchange(
                            connection, fh, index, tally)
                else:
                    status, length, good, sample = await self._exchange(
                        connection, self.payloads[index], index, tally)
        except (HttpError, TimeoutError, OSError) as exc:
            if tally is not None:
                tally.problem(type(exc).__name__, f"{type(exc).__name__}: {exc}")
            return
        elapsed = time.perf_counter() - begin
        if tally is None:
            self.warmed += good
            return
        tally.statuses[status] += 1
        tally.bytes_in += length
        if good:
            tally.ok += 1
            tally.latencies.append(elapsed)
            if sample:
                tally.samples.append(sample)

    async def _exchange(
        self, connection: Http1Connection, body: bytes | BinaryIO, index: int,
        tally: Tally | None,
    ) -> tuple[int, int, bool, dict[str, Any] | None]:
        keep = (
            tally is not None and self.spec.samples_dir is not None
            and tally.claim_sample(self.spec.sample_every, self.spec.max_samples)
        )
        digest = hashlib.sha256()
        head = bytearray()
        length = 0
        out = None
        if keep:
            assert self.spec.samples_dir is not None
            out = (Path(self.spec.samples_dir) / f"sample-{index}-{self.sent}.bin").open("wb")

        def received(chunk: bytes) -> None:
            nonlocal length
            if len(head) < 64:
                head.extend(chunk[: 64 - len(head)])
            length += len(chunk)
            if out is not None:
                out.write(chunk)
                digest.update(chunk)

        size = None if isinstance(body, bytes) else os.fstat(body.fileno()).st_size
        try:
            answer = await connection.post(body, size, received)
        except BaseException:
            if out is not None:
                os.unlink(out.name)  # a cut-off answer is no sample
                assert tally is not None
                tally.release_sample()
            raise
        finally:
            if out is not None:
                out.close()
        status = answer.status
        good = status == 200 and head.startswith(self.prefix)
        if status != 200 and tally is not None:
            tally.problem(f"http-{status}", f"HTTP {status}: {bytes(head)!r}")
        elif status == 200 and not good and tally is not None:
            tally.problem("unexpected-body", f"answer starts with {bytes(head[:16])!r}")
        sample = None
        if out is not None:
            if good:
                sample = {"path": out.name, "body_index": index, "bytes": length,
                          "sha256": digest.hexdigest(), "headers": answer.headers}
            else:
                os.unlink(out.name)  # not a good answer: nothing to keep
                assert tally is not None
                tally.release_sample()
        return status, length, good, sample


async def warm_up(driver: Driver, spec: Spec, connections: list[Http1Connection]) -> None:
    """Uncounted requests first, in the closed loop's way: connections opened, the server's
    per-seal caches filled. The server's CPU for them is in its figures, so their number
    goes into the result (``warmup_ok``)."""
    warm_until = time.perf_counter() + spec.warmup_seconds
    budget = spec.max_requests

    async def warm(connection: Http1Connection) -> None:
        nonlocal budget
        while budget > 0 and time.perf_counter() < warm_until:
            budget -= 1
            await driver.one(connection, None)

    await asyncio.gather(*(warm(connection) for connection in connections))


async def closed_loop(
    driver: Driver, spec: Spec, connections: list[Http1Connection]
) -> tuple[Tally, float]:
    await warm_up(driver, spec, connections)
    tally = Tally()
    begin = time.perf_counter()
    deadline = begin + spec.duration
    budget = spec.max_requests

    async def client(connection: Http1Connection) -> None:
        nonlocal budget
        while budget > 0 and time.perf_counter() < deadline:
            budget -= 1
            await driver.one(connection, tally)

    await asyncio.gather(*(client(connection) for connection in connections))
    return tally, time.perf_counter() - begin


async def open_loop(
    driver: Driver, spec: Spec, connections: list[Http1Connection]
) -> tuple[Tally, float]:
    """Requests on a fixed schedule; the warm-up is the same schedule, uncounted, so that
    the server warms up at the load it is then measured at (and every connection is open)."""
    assert spec.rate is not None and spec.rate > 0
    idle = collections.deque(connections)  # oldest idle first: every connection takes turns
    await scheduled(driver, spec, idle, None, int(spec.warmup_seconds * spec.rate))
    tally = Tally()
    total = min(spec.max_requests, int(spec.duration * spec.rate))
    elapsed = await scheduled(driver, spec, idle, tally, total)
    return tally, elapsed


async def scheduled(driver: Driver, spec: Spec, idle: collections.deque[Http1Connection],
                    tally: Tally | None, total: int) -> float:
    """Send ``total`` requests at ``spec.rate`` on the longest-idle connections, whatever
    the answers do; return the seconds it took until the last answer."""
    assert spec.rate is not None
    interval = 1.0 / spec.rate
    pending: set[asyncio.Task[None]] = set()

    async def send(connection: Http1Connection, due: float) -> None:
        try:
            await driver.one(connection, tally, started=due)
        finally:
            idle.append(connection)

    begin = time.perf_counter()
    for n in range(total):
        due = begin + n * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if tally is not None:
            tally.send_lag.append(time.perf_counter() - due)
        if not idle:
            if tally is not None:
                tally.dropped += 1
            continue
        task = asyncio.create_task(send(idle.popleft(), due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending, timeout=spec.request_timeout)
    return time.perf_counter() - begin


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, in the unit of ``values``."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def run(spec: Spec) -> dict[str, Any]:
    host = urlsplit(spec.url).hostname or ""
    if host not in LOOPBACK:
        raise SystemExit(f"the load generator only talks to loopback, not {host}")
    parts = urlsplit(spec.url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    port = parts.port or 80
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    connections = [Http1Connection(host, port, path, spec.headers)
                   for _ in range(spec.max_outstanding if spec.rate else spec.concurrency)]
    try:
        driver = Driver(spec)
        tally, elapsed = await (open_loop if spec.rate else closed_loop)(
            driver, spec, connections)
    finally:
        for connection in connections:
            connection.close()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    ms = [v * 1000 for v in tally.latencies]
    return {
        "mode": "open" if spec.rate else "closed",
        "concurrency": spec.concurrency,
        "rate": spec.rate,
        "requests": tally.attempted,
        "ok": tally.ok,
        "dropped": tally.dropped,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "failures": dict(tally.failures),
        "first_problem": tally.first_problem,
        "elapsed_seconds": round(elapsed, 4),
        "throughput_per_second": round(tally.ok / elapsed, 2) if elapsed > 0 else 0.0,
        "latency_ms": {
            "p50": _round(percentile(ms, 50)), "p90": _round(percentile(ms, 90)),
            "p99": _round(percentile(ms, 99)), "max": _round(max(ms) if ms else None),
            "mean": _round(sum(ms) / len(ms) if ms else None),
        },
        "send_lag_ms": {
            "p50": _round(percentile([v * 1000 for v in tally.send_lag], 50)),
            "p99": _round(percentile([v * 1000 for v in tally.send_lag], 99)),
        } if spec.rate else None,
        "bytes_in": tally.bytes_in,
        "warmup_ok": driver.warmed,
        "client_cpu_seconds": round(cpu, 3),
        "samples": tally.samples,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def main() -> None:
    spec = Spec(**json.loads(sys.stdin.read()))
    print(json.dumps(asyncio.run(run(spec))))


if __name__ == "__main__":
    main()
