"""`sealgate serve --workers 2` for real: metrics summed over workers, a SIGKILLed worker
replaced mid-request with no lost, broken or doubled work, the audit chain intact."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.gateway_process import (
    SEALGATE,
    Deployment,
    GatewayProcess,
    child_pids,
    directory_sample,
    sample_value,
    worker_samples,
)
from tests.pdf_samples import one_page_pdf

pytestmark = [pytest.mark.interop, pytest.mark.slow]

DOCUMENT = one_page_pdf()
SIGNATURES = 'sealgate_signatures_total{format="pdf"}'
# Short claims, so that a retry after the killed worker's claim expires within the test.
SETTINGS = """
[idempotency]
lock_seconds = 3.0
wait_seconds = 2.0
"""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return Deployment.create(tmp_path_factory.mktemp("workers"), settings=SETTINGS)


@pytest.fixture(scope="module")
def gateway(deployment: Deployment) -> Iterator[GatewayProcess]:
    with deployment.serve(workers=2) as running:
        yield running


async def sign(http: aiohttp.ClientSession, gateway: GatewayProcess, deployment: Deployment,
               key: str | None = None) -> tuple[int, bytes, str]:
    headers = {"Authorization": f"Bearer {deployment.token}", "Content-Type": "application/pdf"}
    if key:
        headers["Idempotency-Key"] = key
    async with http.post(gateway.url(f"/v1/seals/{deployment.seal_id}/sign/pdf"),
                         data=DOCUMENT, headers=headers) as response:
        return response.status, await response.read(), response.headers.get("Sealgate-Receipt", "")


async def sign_until_done(http: aiohttp.ClientSession, gateway: GatewayProcess,
                          deployment: Deployment, key: str) -> tuple[bytes, str]:
    """What a careful client does: retry with the same key until it gets its document."""
    for _ in range(30):
        try:
            status, body, receipt = await sign(http, gateway, deployment, key)
        except aiohttp.ClientError:
            status = 0  # the connection died with the worker
        if status == 200:
            return body, receipt
        assert status in (0, 409, 503), status
        await asyncio.sleep(0.3)
    raise AssertionError(f"{key} was never signed")


async def half_sent_document(
    gateway: GatewayProcess, deployment: Deployment
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A sign/pdf request whose first 100 bytes of the document are sent, the rest not yet:
    the worker has the headers and waits for the body (the caller sends DOCUMENT[100:])."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write((f"POST /v1/seals/{deployment.seal_id}/sign/pdf HTTP/1.1\r\n"
                  f"Host: x\r\nAuthorization: Bearer {deployment.token}\r\n"
                  f"Content-Type: application/pdf\r\nContent-Length: {len(DOCUMENT)}\r\n"
                  "\r\n").encode() + DOCUMENT[:100])
    await writer.drain()
    await asyncio.sleep(0.5)
    return reader, writer


async def metrics_text(http: aiohttp.ClientSession, gateway: GatewayProcess) -> str:
    async with http.get(gateway.url("/metrics")) as response:
        assert response.status == 200
        return await response.text()


async def test_metrics_add_up_the_work_of_both_workers(
    gateway: GatewayProcess, deployment: Deployment
) -> None:
    """Concurrent sealings land on both workers, and /metrics reports their sum."""
    # A new connection per request: the master deals connections, not requests.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        before = sample_value(await metrics_text(http, gateway), SIGNATURES)
        sent = 0
        per_worker: dict[int, float] = {}
        for _ in range(4):  # rounds until both workers have sealed something
            answers = await asyncio.gather(*(sign(http, gateway, deployment) for _ in range(8)))
            assert [status for status, _, _ in answers] == [200] * 8
            sent += 8
            per_worker = worker_samples(gateway.metrics_dir, "sealgate_signatures_total")
            if len([pid for pid, count in per_worker.items() if count > 0]) == 2:
                break
        assert set(per_worker) >= gateway.worker_pids()
        assert len([count for count in per_worker.values() if count > 0]) == 2, per_worker
        text = await metrics_text(http, gateway)
    assert sample_value(text, SIGNATURES) == before + sent
    assert sum(per_worker.values()) == before + sent
    assert sample_value(text, "sealgate_hsm_up") == 1
    assert sample_value(text, "sealgate_storage_up") == 1
    assert f'sealgate_seal_valid_to_timestamp_seconds{{seal_id="{deployment.seal_id}"' in text


async def test_connections_are_dealt_to_the_workers_in_turn(
    gateway: GatewayProcess, deployment: Deployment
) -> None:
    """Ten clients with one keep-alive connection each: five land on each worker, where a
    kernel hashing connections over per-worker sockets often splits them 7/3 or worse."""
    before = worker_samples(gateway.metrics_dir, "sealgate_signatures_total")
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
                for _ in range(10)]
    try:
        for http in sessions:  # one after the other: connections arrive in a known order
            for _ in range(2):  # the second request reuses the connection
                status, _, _ = await sign(http, gateway, deployment)
                assert status == 200
    finally:
        for http in sessions:
            await http.close()
    after = worker_samples(gateway.metrics_dir, "sealgate_signatures_total")
    dealt = sorted(after.get(pid, 0) - before.get(pid, 0) for pid in gateway.worker_pids())
    assert dealt == [10, 10]


async def test_a_worker_killed_mid_request_is_replaced_and_nothing_is_half_done(
    gateway: GatewayProcess, deployment: Deployment
) -> None:
    """SIGKILL during a sealing: a new worker replaces it, every client gets its document by
    retrying with its key, and every audit event has its receipt in an intact chain."""
    first_seq = len(deployment.audit_events())
    workers = gateway.worker_pids()
    async with aiohttp.ClientSession() as http:
        requests = [asyncio.create_task(sign_until_done(http, gateway, deployment, f"doc-{i}"))
                    for i in range(12)]
        victim = await gateway.busy_worker()
        os.kill(victim, signal.SIGKILL)
        answers = await asyncio.gather(*requests)
        replaced = gateway.wait_for_workers(gone=frozenset({victim}))
        assert replaced != workers
        assert "was killed by SIGKILL" in gateway.log()
        status, _, after_kill = await sign(http, gateway, deployment)
        assert status == 200
        text = await metrics_text(http, gateway)
        # The dead worker's in-flight count left with it.
        assert sample_value(text, "sealgate_signing_in_flight") == 0

        events = deployment.audit_events()
        assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
        signed = [e for e in events[first_seq:] if e["action"] == "seal.signed"]
        for event in signed:
            receipt_id = event["details"]["sealing_receipt"]  # type: ignore[index]
            async with http.get(gateway.url(f"/v1/sealing-receipts/{receipt_id}"),
                                headers={"Authorization": f"Bearer {deployment.token}"}) as got:
                assert got.status == 200, await got.text()
                assert (await got.json())["audit_seq"] == event["seq"]
    returned = {receipt for _, receipt in answers}
    assert len(returned) == 12
    returned.add(after_kill)
    recorded = {e["details"]["sealing_receipt"] for e in signed}  # type: ignore[index]
    # Every committed sealing reached its client: one the killed worker committed but never
    # answered was handed to the retry, not sealed again (seals/once.py).
    assert recorded == returned
    verified = deployment.sealgate("audit", "verify")
    assert json.loads(verified.stdout)["intact"] is True


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
async def test_promtool_accepts_the_aggregated_exposition(
    gateway: GatewayProcess, deployment: Deployment, tmp_path: Path
) -> None:
    """The multiprocess /metrics output passes `promtool check metrics`."""
    async with aiohttp.ClientSession() as http:
        await sign(http, gateway, deployment)
        text = await metrics_text(http, gateway)
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


async def test_a_silent_worker_gets_no_connections_and_is_replaced(
    deployment: Deployment,
) -> None:
    """A worker whose event loop stops (SIGSTOP here) stops beating: within
    hung_worker_seconds every connection goes to the other, and after three times that a
    new worker takes its slot; the stopped one, let go, finishes and exits."""
    with deployment.serve(workers=2, name="hung",
                          env={"SEALGATE_SERVER__HUNG_WORKER_SECONDS": "2.0"}) as running:
        frozen = min(running.worker_pids())
        os.kill(frozen, signal.SIGSTOP)
        try:
            await asyncio.sleep(2.5)
            timeout = aiohttp.ClientTimeout(total=2)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                for _ in range(10):  # one fresh connection each
                    async with http.get(running.url("/healthz"),
                                        headers={"Connection": "close"}) as response:
                        assert response.status == 200
            deadline = asyncio.get_running_loop().time() + 15
            while len(running.serving_workers() - {frozen}) < 2:
                assert asyncio.get_running_loop().time() < deadline, running.log()
                await asyncio.sleep(0.1)
        finally:
            os.kill(frozen, signal.SIGCONT)
        deadline = asyncio.get_running_loop().time() + 15
        while frozen in running.worker_pids():
            assert asyncio.get_running_loop().time() < deadline, running.log()
            await asyncio.sleep(0.1)
        assert f"worker {frozen} has not answered" in running.log()


async def test_at_sigterm_a_request_still_uploading_is_answered(
    deployment: Deployment,
) -> None:
    """SIGTERM while a PDF is still arriving: the worker reads it whole, seals it and
    answers before it stops; a new connection meanwhile is refused at once."""
    running = deployment.serve(workers=1, name="drain")
    running.start()
    try:
        reader, writer = await half_sent_document(running, deployment)
        assert running.process is not None
        running.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(DOCUMENT[100:])
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"Connection: close" in head
        writer.close()
        assert running.process.wait(timeout=20) == 0
    finally:
        running.stop()


def test_a_master_whose_workers_cannot_start_gives_up(deployment: Deployment) -> None:
    """Storage that cannot be opened: every worker exits before it is ready, and the master
    stops trying and exits with status 1 instead of holding a port nobody answers on."""
    running = deployment.serve(workers=3, name="broken", env={
        "SEALGATE_STORAGE__SQLITE_PATH": "/proc/sealgate-cannot-write-here/sealgate.db"})
    with pytest.raises(AssertionError, match="sealgate serve exited"):
        running.start(timeout=60)
    assert running.process is None or running.process.returncode == 1
    assert "giving up" in running.log()


async def test_a_worker_out_of_descriptors_keeps_serving(deployment: Deployment) -> None:
    """More idle connections than the worker may open files: the ones it cannot take are
    lost, but it neither stops nor takes that for its master going away; once they close,
    it serves again."""
    with deployment.serve(workers=1, name="descriptors", open_files=160) as running:
        [worker] = running.worker_pids()
        idle = []
        for _ in range(220):
            with contextlib.suppress(OSError):
                idle.append(await asyncio.open_connection("127.0.0.1", running.port))
        await asyncio.sleep(1.0)
        assert running.worker_pids() == {worker}, running.log()
        for _, writer in idle:
            writer.close()
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as http, http.get(running.url("/healthz")) as answer:
            assert answer.status == 200
        assert running.worker_pids() == {worker}
        assert "without its descriptor" in running.log()


async def test_headers_trickled_in_are_cut_off_at_the_keepalive_time(
    deployment: Deployment,
) -> None:
    """A client that sends its request headers a line a second (to hold a connection for
    good) is disconnected once ``[server] keepalive_seconds`` have passed without a whole
    request, like an idle one."""
    with deployment.serve(workers=1, name="trickle",
                          env={"SEALGATE_SERVER__KEEPALIVE_SECONDS": "2"}) as running:
        _, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            for line in range(10):
                await asyncio.sleep(1.0)
                writer.write(f"X-Line-{line}: slow\r\n".encode())
                await writer.drain()
        assert 1.5 < time.monotonic() - started < 5
        writer.close()


async def test_a_client_gone_mid_body_is_counted_499_and_not_logged_as_an_error(
    deployment: Deployment,
) -> None:
    """A client that closes its connection halfway through a document is no server error:
    counted as 499 (the error-ratio alert reads 5xx), one line at INFO, no traceback."""
    with deployment.serve(workers=1, name="gone") as running:
        _, writer = await half_sent_document(running, deployment)
        writer.close()
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as http:
            text = await metrics_text(http, running)
        route = 'route="/v1/seals/{id}/sign/pdf"'
        assert sample_value(
            text, f'sealgate_http_requests_total{{method="POST",{route},status="499"}}') == 1
        assert "status=\"500\"" not in text
        assert "closed the connection while sending its body" in running.log()
        assert "Traceback" not in running.log()


async def test_methods_nobody_uses_share_one_metric_series(deployment: Deployment) -> None:
    """With aiohttp's pure-Python parser any token is a method; the request metrics name
    the methods of HTTP and count the rest as "other", so a client cannot add series."""
    with deployment.serve(workers=1, name="methods",
                          env={"AIOHTTP_NO_EXTENSIONS": "1"}) as running:
        async with aiohttp.ClientSession() as http:
            for n in range(5):
                async with http.request(f"X{n:04d}", running.url("/healthz")) as answer:
                    assert answer.status == 405
            text = await metrics_text(http, running)
    assert "X0000" not in text, [line for line in text.splitlines() if "X0000" in line]
    assert sample_value(
        text, 'sealgate_http_requests_total{method="other",route="unmatched",status="405"}') == 5


def test_a_metrics_directory_holding_other_files_is_refused_and_left_alone(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The master empties the metrics directory at start; one that holds anything but
    metric files (var/ named by mistake) is refused, and nothing in it is deleted."""
    shared = tmp_path / "not-only-metrics"
    shared.mkdir()
    (shared / "counter_1.db").write_bytes(b"")
    (shared / "sealgate.db").write_bytes(b"precious")
    done = subprocess.run(
        [str(SEALGATE), "serve", "--port", "0"], capture_output=True, text=True, timeout=60,
        env={**deployment.env, "SEALGATE_METRICS__MULTIPROCESS_DIR": str(shared)}, check=False)
    assert done.returncode != 0, done.stderr
    assert "metrics.multiprocess_dir" in done.stderr and "sealgate.db" in done.stderr
    assert sorted(p.name for p in shared.iterdir()) == ["counter_1.db", "sealgate.db"]


def test_a_pin_the_token_refuses_stops_the_gateway_after_one_try(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A real HSM locks its user PIN after a few wrong ones: with a wrong PIN, one worker
    tries it once, and the master stops (exit status 78) instead of starting the others
    or replacements that would try it again."""
    wrong = tmp_path / "wrong-pin"
    wrong.write_text("not-the-pin\n")
    metrics_dir = tmp_path / "metrics"
    done = subprocess.run(
        [str(SEALGATE), "serve", "--port", "0", "--workers", "3"], capture_output=True,
        text=True, timeout=60, check=False,
        env={**deployment.env, "SEALGATE_HSM__PIN__FILE": str(wrong),
             "SEALGATE_METRICS__MULTIPROCESS_DIR": str(metrics_dir)})
    assert done.returncode == 78, done.stderr
    assert "the HSM refused the PIN (PinIncorrect)" in done.stderr
    # The workers have exited: their counts are in the archives.
    assert directory_sample(metrics_dir, "sealgate_hsm_errors_total",
                            {"error": "PinIncorrect"}) == 1


# Workers only (`python -m gateway.server`): a slow HSM login (a network HSM answering
# slowly), or an HSM that is away while a file exists. SoftHSM does neither by itself.
SLOW_HSM = """
import os, sys, time
if sys.argv[:1] == ["-m"]:
    from gateway.hsm import token
    _open_once = token.TokenSession._open_once
    def _open_slowly(self):
        away = os.environ.get("TEST_HSM_AWAY_WHILE", "")
        if away and os.path.exists(away):
            import pkcs11.exceptions
            raise pkcs11.exceptions.DeviceRemoved()
        open(os.path.join(os.environ["TEST_LOGINS_DIR"], str(os.getpid())), "w").close()
        time.sleep(float(os.environ.get("TEST_LOGIN_SECONDS", "0")))
        return _open_once(self)
    token.TokenSession._open_once = _open_slowly
"""


def serve_with_slow_hsm(deployment: Deployment, tmp_path: Path, env: dict[str, str]
                        ) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """`sealgate serve --workers 3` whose workers log in through SLOW_HSM; returns the
    master, the directory where each login leaves its pid, and the log."""
    site, logins, log = tmp_path / "site", tmp_path / "logins", tmp_path / "serve.log"
    site.mkdir()
    logins.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_HSM)
    with log.open("ab") as out:
        master = subprocess.Popen(
            [str(SEALGATE), "serve", "--port", "0", "--workers", "3"], stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
            env={**deployment.env, "PYTHONPATH": str(site), "TEST_LOGINS_DIR": str(logins),
                 "SEALGATE_METRICS__MULTIPROCESS_DIR": str(tmp_path / "metrics"), **env})
    return master, logins, log


def until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_sigterm_while_the_first_worker_logs_in_stops_the_gateway(
    deployment: Deployment, tmp_path: Path
) -> None:
    """SIGTERM while the first worker is still logging in (before it is ready): the master
    starts no other worker and exits once that one has."""
    master, logins, log = serve_with_slow_hsm(deployment, tmp_path,
                                              {"TEST_LOGIN_SECONDS": "3"})
    try:
        assert until(lambda: any(logins.iterdir()), 60), log.read_text()
        master.send_signal(signal.SIGTERM)
        assert master.wait(timeout=20) == 0, log.read_text()
        assert len(list(logins.iterdir())) == 1
    finally:
        if master.poll() is None:
            os.killpg(master.pid, signal.SIGKILL)
            master.wait()


def test_a_pin_refused_after_the_hsm_comes_back_stops_the_gateway(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The HSM is away at start (the workers serve without it), and the PIN is wrong: when
    the HSM comes back, one worker tries the PIN, once; the others, which log in after it
    through the same lock, do not try it again, and the gateway stops with 78."""
    wrong, away = tmp_path / "wrong-pin", tmp_path / "hsm-away"
    wrong.write_text("not-the-pin\n")
    away.write_text("")
    master, _, log = serve_with_slow_hsm(deployment, tmp_path, {
        "SEALGATE_HSM__PIN__FILE": str(wrong), "TEST_HSM_AWAY_WHILE": str(away)})
    try:
        # Every worker has found the HSM away at its start, and serves without it.
        assert until(lambda: log.read_text().count("HSM unavailable") >= 3, 60), log.read_text()
        time.sleep(1.0)
        assert len(child_pids(master.pid)) == 3
        away.unlink()
        assert master.wait(timeout=30) == 78, log.read_text()
        assert "the HSM refused the PIN (PinIncorrect)" in log.read_text()
        assert directory_sample(tmp_path / "metrics", "sealgate_hsm_errors_total",
                                {"error": "PinIncorrect"}) == 1
    finally:
        if master.poll() is None:
            os.killpg(master.pid, signal.SIGKILL)
            master.wait()


async def test_connections_made_while_the_gateway_starts_go_to_every_worker(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A client pool that connects while the gateway starts (its connections wait in the
    backlog) is dealt to every worker: the master deals nothing until all are ready,
    where the first ready took every connection, and kept them."""
    master, _, log = serve_with_slow_hsm(deployment, tmp_path, {"TEST_LOGIN_SECONDS": "1"})
    try:
        assert until(lambda: "listening on" in log.read_text(), 60), log.read_text()
        port = int(log.read_text().split("listening on http://127.0.0.1:")[1].split()[0])
        connector = aiohttp.TCPConnector(limit=6)
        async with aiohttp.ClientSession(connector=connector) as http:
            for _ in range(3):  # the same six keep-alive connections each round
                answers = await asyncio.gather(*(
                    http.get(f"http://127.0.0.1:{port}/healthz") for _ in range(6)))
                assert [a.status for a in answers] == [200] * 6
                for answer in answers:
                    answer.release()
        served = worker_samples(tmp_path / "metrics", "sealgate_http_requests_total",
                                {"route": "/healthz"})
        assert len([n for n in served.values() if n > 0]) == 3, served
    finally:
        master.send_signal(signal.SIGTERM)
        master.wait(timeout=30)
