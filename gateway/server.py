"""The process model: a pre-fork master that owns the socket and N worker processes.

The master binds the listening socket, prepares the Prometheus multiprocess directory, and
forks workers; it never touches PKCS#11, so each worker loads the library and logs in after
the fork (DOMAIN.md §5). A worker that dies is replaced; SIGTERM/SIGINT stop them all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from gateway.settings import Settings

log = logging.getLogger("gateway.server")

RESTART_BACKOFF_SECONDS = 1.0


def prepare_metrics_dir(settings: Settings) -> None:
    """Empty the multiprocess directory and point prometheus_client at it.

    Must run before anything imports prometheus_client: its value class is chosen at import.
    """
    directory = Path(settings.metrics.multiprocess_dir)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def run_worker(settings: Settings, sock: socket.socket) -> None:
    """Body of one worker process: its own event loop, app, HSM session and metrics file."""
    from aiohttp import web

    from gateway.app import create_app

    web.run_app(
        create_app(settings), sock=sock, print=None, access_log=None,
        shutdown_timeout=settings.server.shutdown_timeout_seconds, handle_signals=True,
    )


def serve(settings: Settings, workers: int) -> None:
    """Run ``workers`` worker processes on one socket until SIGTERM or SIGINT."""
    prepare_metrics_dir(settings)
    sock = bind_socket(settings.server.host, settings.server.port)
    log.info("listening on http://%s:%d with %d worker(s)", settings.server.host,
             settings.server.port, workers)
    children: dict[int, int] = {}
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                run_worker(settings, sock)
            finally:
                os._exit(0)
        children[pid] = slot

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            _kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for slot in range(workers):
        spawn(slot)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        slot = children.pop(pid)
        _forget_worker_metrics(pid)
        if not stopping:
            log.warning("worker %d exited (status %d); starting a replacement", pid, status)
            time.sleep(RESTART_BACKOFF_SECONDS)
            spawn(slot)
    sock.close()
    sys.exit(0)


def _forget_worker_metrics(pid: int) -> None:
    """Drop a dead worker's live gauges (counters and histograms keep counting its work)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]  # untyped upstream


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
