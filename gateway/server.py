"""The process model: a master that supervises N worker processes on one port.

Each worker is a fresh interpreter (fork, then exec of ``python -m gateway.server``) that
reads its settings from a pipe and listens on the port itself with ``SO_REUSEPORT``.

- Fresh interpreters, not bare forks: the command line has imported plugins, and with them
  prometheus_client, before ``serve`` could set ``PROMETHEUS_MULTIPROC_DIR``; prometheus_client
  fixes its value storage at import, so a forked worker would count in private memory that
  /metrics never sees. The master never touches PKCS#11; each worker loads the library and
  logs in itself (DOMAIN.md §5).
- One listening socket per worker, not one shared socket: asyncio accepts greedily, so with
  a shared socket the first worker to wake takes a whole burst of connections while the
  others idle. With SO_REUSEPORT the kernel spreads connections over the workers' sockets.
  The master binds the port without listening, which reserves it and reports a port in use
  at start, while receiving no connections itself.

A worker that dies is replaced (a crashing one after a growing pause); SIGTERM/SIGINT stop
them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from gateway.settings import Settings

log = logging.getLogger("gateway.server")

RESTART_BACKOFF_SECONDS = 1.0
MAX_RESTART_BACKOFF_SECONDS = 30.0
# A worker that dies sooner than this after its start is crashing, not being killed: its
# replacement waits twice as long as the last one did, so a broken setup does not spin.
STABLE_WORKER_SECONDS = 10.0
LISTEN_BACKLOG = 1024


def prepare_metrics_dir(settings: Settings) -> None:
    """Empty the multiprocess directory and point prometheus_client at it.

    Workers inherit the variable; being fresh interpreters, they import prometheus_client
    after it is set, which is when prometheus_client chooses its value class.
    """
    directory = Path(settings.metrics.multiprocess_dir)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def bind_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A TCP socket on ``host:port`` that other sockets of this user may share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(LISTEN_BACKLOG)
    return sock


def run_worker(settings: Settings) -> None:
    """Body of one worker process: its own socket, event loop, app, HSM session and metrics."""
    from aiohttp import web

    from gateway.app import create_app

    sock = bind_socket(settings.server.host, settings.server.port)
    app = create_app(settings)
    app.on_startup.append(_freeze_startup_heap)
    web.run_app(
        app, sock=sock, print=None, access_log=None,
        shutdown_timeout=settings.server.shutdown_timeout_seconds, handle_signals=True,
    )


async def _freeze_startup_heap(app: object) -> None:
    """Move start-up objects (modules, pyHanko and asn1crypto tables, caches) out of the
    collector's reach: they live as long as the worker, and scanning them made full
    collections pause a busy worker for 55–80 ms (2–4 ms once frozen)."""
    gc.collect()
    gc.freeze()


def serve(settings: Settings, workers: int) -> None:
    """Run ``workers`` worker processes on one port until SIGTERM or SIGINT."""
    prepare_metrics_dir(settings)
    reservation = bind_socket(settings.server.host, settings.server.port, listen=False)
    # Port 0 asks for any free port: every worker must then use the one the master got.
    port = reservation.getsockname()[1]
    settings = settings.replace(server=dataclasses.replace(settings.server, port=port))
    log.info("listening on http://%s:%d with %d worker(s)", settings.server.host, port, workers)
    children: dict[int, int] = {}
    started: dict[int, float] = {}
    backoff = [RESTART_BACKOFF_SECONDS] * workers
    stopping = False

    def spawn(slot: int) -> None:
        pid = _start_worker(settings)
        children[pid] = slot
        started[slot] = time.monotonic()

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
        if stopping:
            continue
        if time.monotonic() - started[slot] >= STABLE_WORKER_SECONDS:
            backoff[slot] = RESTART_BACKOFF_SECONDS
        log.warning("worker %d %s; starting a replacement in %.0f s", pid,
                    _describe_exit(status), backoff[slot])
        time.sleep(backoff[slot])
        backoff[slot] = min(backoff[slot] * 2, MAX_RESTART_BACKOFF_SECONDS)
        # SIGTERM may have come during the pause: a worker started now would never be told
        # to stop, and the master would wait for it forever.
        if not stopping:
            spawn(slot)
    reservation.close()
    sys.exit(0)


def _start_worker(settings: Settings) -> int:
    """Fork and exec one worker; hand it the settings through a pipe. Returns its pid."""
    settings_in, settings_out = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(settings_out)
            os.set_inheritable(settings_in, True)
            # Our own interpreter and module, argument list only: no shell is involved.
            os.execv(sys.executable, [sys.executable, "-m", "gateway.server",  # noqa: S606
                                      str(settings_in)])
        finally:
            os._exit(127)  # exec failed; never return into the master's loop
    os.close(settings_in)
    with os.fdopen(settings_out, "wb") as pipe:
        pickle.dump(settings, pipe)
    return pid


def _worker_main(argv: list[str]) -> None:
    """Entry of an exec'd worker: ``python -m gateway.server SETTINGS_FD``."""
    with os.fdopen(int(argv[0]), "rb") as pipe:
        # The master wrote these a moment ago through a pipe only the two of them hold.
        settings: Settings = pickle.load(pipe)  # noqa: S301
    logging.basicConfig(level=settings.log.level,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    run_worker(settings)


def _describe_exit(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _forget_worker_metrics(pid: int) -> None:
    """Drop a dead worker's live gauges (counters and histograms keep counting its work)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]  # untyped upstream


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
