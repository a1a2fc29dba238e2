"""The process model: a master that accepts connections and deals them to N worker processes.

Each worker is a fresh interpreter (fork, then exec of ``python -m gateway.server``) that
reads its settings from a pipe and takes connections from the master over a Unix socket.

- Fresh interpreters, not bare forks: the command line has imported plugins, and with them
  prometheus_client, before ``serve`` could set ``PROMETHEUS_MULTIPROC_DIR``; prometheus_client
  fixes its value storage at import, so a forked worker would count in private memory that
  /metrics never sees. The master never touches PKCS#11; each worker loads the library and
  logs in itself (DOMAIN.md §5).
- The master accepts and hands each connection to the next ready worker in turn (the socket
  travels as SCM_RIGHTS over a SOCK_SEQPACKET pair), so that N workers hold N-th shares of
  the connections. Two other designs were measured and dropped: one shared listening
  socket (asyncio accepts greedily, so the first worker to wake took whole bursts while the
  others idled), and a SO_REUSEPORT socket per worker (the kernel hashes connections, so a
  client with a few keep-alive connections, a pool of 8 say, or a benchmark's 64, often
  lands mostly on one worker: a 37/63 split doubled the tail latency at half load).
  Connections are long-lived; the hand-over costs the master a few tens of microseconds each.

The master starts one worker first and the others once it is ready: a worker logs in to the
HSM before it says so, and one whose PIN the token refuses exits with EXIT_PIN_REFUSED,
which stops the master with that status. Workers log in one at a time through a lock file,
which also records a refusal: a wrong PIN is tried once per start of the gateway, whenever a
worker first logs in (a real HSM locks the PIN after a few wrong ones). A worker that dies
is replaced (a crashing one after a growing pause); its connections die with it, and its
counters and histograms are folded into the metrics archives (gateway/metrics_dir.py).
Workers beat once a second from their event loop; one silent for
``[server] hung_worker_seconds`` gets no more connections, and one silent three times as
long is sent SIGTERM and replaced.
If no worker ever becomes ready in ``MAX_FAILED_STARTS`` attempts, the master exits with
status 1. SIGTERM/SIGINT close the listening socket at once and stop the workers, which
finish the requests in flight (api/drain.py) first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import gc
import logging
import os
import pickle
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.errors import ConfigError
from gateway.log_setup import WORKER_FORMAT, configure_logging
from gateway.metrics_dir import LOCK_FILE, fold_dead_workers, is_metrics_file, make_lock_file
from gateway.settings import Settings

log = logging.getLogger("gateway.server")

RESTART_BACKOFF_SECONDS = 1.0
MAX_RESTART_BACKOFF_SECONDS = 30.0
# A worker that dies sooner than this after its start is crashing, not being killed: its
# replacement waits twice as long as the last one did, so a broken setup does not spin.
STABLE_WORKER_SECONDS = 10.0
LISTEN_BACKLOG = 1024
_READY = b"ready"
_BEAT = b"beat"
HEARTBEAT_SECONDS = 1.0
# A ready worker not heard from for ``[server] hung_worker_seconds`` gets no more connections
# (its event loop is stuck); one silent for REPLACE_AFTER_HUNG times as long is sent SIGTERM
# and a replacement started. Never SIGKILL: a worker killed inside SoftHSM's login rewrite
# empties the token file.
REPLACE_AFTER_HUNG = 3
# Workers that exit before ever becoming ready, with none ever ready: the set-up is broken
# (a bad setting, storage that cannot open), and the master gives up instead of holding a
# port nobody answers on.
MAX_FAILED_STARTS = 5
# A worker whose PIN the token refused exits with this (EX_CONFIG), and so does the master:
# restarting would try the wrong PIN again, and a real HSM locks it after a few. Until one
# worker has logged in, the others are not started, so one start tries the PIN once.
EXIT_PIN_REFUSED = 78
# At start, connections wait in the backlog until every worker is ready, or this long after
# the first one was (a worker that cannot start must not keep the others from serving).
STARTUP_GRACE_SECONDS = 10.0
GC_YOUNG_THRESHOLD = 20_000
_TICK_SECONDS = 0.2  # how often the master looks for dead workers and due restarts
_ACCEPTS_PER_TICK = 64  # then the master looks at its workers again


def prepare_metrics_dir(settings: Settings) -> None:
    """Empty the multiprocess directory, make its lock file anew and point
    prometheus_client at it.

    Workers inherit the variable; being fresh interpreters, they import prometheus_client
    after it is set, which is when prometheus_client chooses its value class.
    """
    directory = Path(settings.metrics.multiprocess_dir)
    directory.mkdir(parents=True, exist_ok=True)
    entries = list(directory.iterdir())
    # Only metric files are removed, and only from a directory that holds nothing else: a
    # setting that named var/ by mistake deleted the database, the CA and the audit key.
    metric_files = [e for e in entries if is_metrics_file(e.name)]
    others = sorted(e.name for e in entries if e not in metric_files and e.name != LOCK_FILE)
    if others:
        raise ConfigError(
            f"metrics.multiprocess_dir {directory} holds more than metric files "
            f"({', '.join(others[:5])}); give the metrics a directory of their own")
    for entry in metric_files:
        entry.unlink()
    try:
        make_lock_file(str(directory))
    except OSError as exc:
        raise ConfigError(
            f"metrics.multiprocess_dir {directory}: cannot make {LOCK_FILE} anew there "
            f"({exc.strerror}); remove it, or give the directory to the gateway's user"
        ) from None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"{host}:{port} is in use; choose another port with [server] "
                              "port or SEALGATE_SERVER__PORT") from None
        raise
    sock.listen(LISTEN_BACKLOG)
    return sock


def run_worker(settings: Settings, channel: socket.socket) -> None:
    """Body of one worker process: its event loop, app, HSM session and metrics, serving the
    connections the master sends over ``channel``."""
    from gateway.app import create_app
    from gateway.hsm import Hsm

    hsm = Hsm(settings.hsm, login_lock=login_lock_path(settings))
    app = create_app(settings, hsm=hsm)
    app.on_startup.append(_freeze_startup_heap)
    asyncio.run(_serve_connections(app, settings, channel))


async def _serve_connections(
    app: web.Application, settings: Settings, channel: socket.socket
) -> None:
    from gateway import metrics
    from gateway.api.context import SERVICES
    from gateway.api.drain import IN_FLIGHT
    from gateway.errors import SealGateError

    # aiohttp keeps an idle keep-alive connection for an hour by default: a client that
    # opens thousands and leaves them would hold as many descriptors of this worker. The same
    # timer closes a connection whose request headers have not all come by then (aiohttp
    # restarts it only when an answer is sent), so headers trickled in cannot hold one either.
    runner = web.AppRunner(app, access_log=None,
                           keepalive_timeout=settings.server.keepalive_seconds,
                           shutdown_timeout=settings.server.shutdown_timeout_seconds)
    await runner.setup()
    server = runner.server
    assert server is not None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    handovers: set[asyncio.Task[Any]] = set()

    def take() -> None:
        try:
            message, fds, _, _ = socket.recv_fds(channel, 16, 1)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("a connection could not be taken from the master: %s", exc)
            return
        if not message:  # end of the channel: the master is gone, no connection will come
            stop.set()
            return
        if not fds:
            # Sent, but not received: this worker is out of file descriptors (the kernel
            # dropped the descriptor). That client's connection is lost; the worker goes on.
            log.warning("a connection from the master arrived without its descriptor "
                        "(out of file descriptors?)")
            return
        connection = socket.socket(fileno=fds[0])
        task = loop.create_task(loop.connect_accepted_socket(server, connection))
        handovers.add(task)
        task.add_done_callback(handed_over)

    def handed_over(task: asyncio.Task[Any]) -> None:
        handovers.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            # The client hung up before the worker got its connection: nothing to serve.
            log.debug("a connection could not be taken over: %s", error)

    hsm = app[SERVICES].hsm
    token = hsm.token

    def pin_refused() -> bool:
        if token.pin_refused is None:
            return False
        log.error("the HSM refused the PIN (%s): fix [hsm] pin; the gateway stops, for a "
                  "real HSM locks the PIN after a few wrong ones", token.pin_refused)
        return True

    async def beat() -> None:
        # From the event loop itself: a loop that is stuck stops beating, and the master
        # stops dealing it connections.
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            with contextlib.suppress(OSError):  # master busy or gone: it notices otherwise
                channel.send(_BEAT)
            if pin_refused():  # at a later login (the HSM was away at start)
                stop.set()

    with contextlib.suppress(SealGateError):
        # Log in now: a PIN the token refuses ends the worker before it takes connections.
        await app[SERVICES].hsm.check()
    if pin_refused() or stop.is_set():  # refused, or SIGTERM came during the login
        await runner.cleanup()
        await hsm.close()
        sys.exit(EXIT_PIN_REFUSED if token.pin_refused else 0)
    channel.setblocking(False)
    loop.add_reader(channel.fileno(), take)
    metrics.WORKERS_UP.inc()
    channel.send(_READY)
    heart = loop.create_task(beat())
    try:
        await stop.wait()
    finally:
        loop.remove_reader(channel.fileno())
        metrics.WORKERS_UP.dec()
        timeout = settings.server.shutdown_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                await app[IN_FLIGHT].drained()
        except TimeoutError:
            log.warning("requests still in flight after %.0f s are cut short", timeout)
        heart.cancel()
        await runner.cleanup()
        await hsm.close()  # this process's (run_worker made it), not the services'
    if token.pin_refused is not None:
        sys.exit(EXIT_PIN_REFUSED)


async def _freeze_startup_heap(app: object) -> None:
    """Move start-up objects (modules, pyHanko and asn1crypto tables, caches) out of the
    collector's reach: they live as long as the worker, and scanning them made full
    collections pause a busy worker for 55–80 ms (2–4 ms once frozen).

    Then collect the youngest generation every 20,000 new containers instead of 700: a
    request allocates thousands (pyHanko's and asn1crypto's objects for a PDF), so the
    default ran a collection every request or two. Measured at half the peak rate, three
    runs each: 5 % less worker CPU per sealed PDF and a lower p99 in every pair; a few
    megabytes more of young objects per worker."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


def login_lock_path(settings: Settings) -> Path:
    """The file this gateway's workers log in to the HSM through (gateway/hsm/token.py)."""
    return Path(settings.var_dir) / "hsm-login.lock"


def serve(settings: Settings, workers: int) -> None:
    """Run ``workers`` worker processes on one port until SIGTERM or SIGINT."""
    prepare_metrics_dir(settings)
    # A PIN refused in an earlier run is tried again by this one (once, by one worker).
    lock = login_lock_path(settings)
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("")
    listener = bind_socket(settings.server.host, settings.server.port)
    # Port 0 asks for any free port: every worker must then use the one the master got.
    port = listener.getsockname()[1]
    settings = settings.replace(server=dataclasses.replace(settings.server, port=port))
    log.info("listening on http://%s:%d with %d worker(s)", settings.server.host, port, workers)
    master = _Master(settings, workers, listener)
    signal.signal(signal.SIGTERM, master.stop)
    signal.signal(signal.SIGINT, master.stop)
    sys.exit(master.run())


@dataclass
class _Worker:
    slot: int
    pid: int
    channel: socket.socket  # the master's end
    started: float
    ready: bool = False  # takes connections now
    served: bool = False  # said ready once
    heard: float = 0.0  # when it last said anything
    replaced: bool = False  # silent for too long: a replacement took its slot


class _Master:
    """Supervises the workers and deals them the connections it accepts."""

    def __init__(self, settings: Settings, workers: int, listener: socket.socket) -> None:
        self.settings = settings
        self.slots = workers
        self.listener = listener
        listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.workers: dict[int, _Worker] = {}  # by pid
        # Exited workers whose counters and histograms are still in files of their own.
        self.unfolded: set[int] = set()
        self.restart_at: dict[int, float] = {}  # slot -> when its replacement starts
        self.backoff = [RESTART_BACKOFF_SECONDS] * workers
        self.turn = 0
        self.accepting = False
        self.stopping = False
        self.ever_ready = False
        self.first_ready = 0.0  # when the first worker said ready
        self.started = False  # every worker was ready once, or the grace time passed
        self.failed_starts = 0
        self.exit_code = 0

    def run(self) -> int:
        self.spawn(0)  # the others once it is ready (see hear)
        while self.workers or (self.restart_at and not self.stopping):
            for key, _ in self.selector.select(timeout=_TICK_SECONDS):
                key.data()
            self.reap()
            self.fold_metrics()
            self.watch_silence()
            self.restart_due()
            if not self.started:
                self._accept_while(self._may_deal())  # the start's grace time may be up
        self.selector.close()
        self.listener.close()
        return self.exit_code

    def stop(self, _signum: int = 0, _frame: object = None) -> None:
        self.stopping = True
        self.restart_at.clear()
        self._accept_while(False)
        # Closed now, not after the workers: a client connecting during the drain is refused
        # at once (and goes elsewhere) instead of waiting in the backlog to be reset.
        self.listener.close()
        for pid in list(self.workers):
            _kill(pid, signal.SIGTERM)

    # -- workers -------------------------------------------------------------------------

    def spawn(self, slot: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = _start_worker(self.settings, theirs)
        finally:
            theirs.close()
        ours.setblocking(False)
        worker = _Worker(slot, pid, ours, time.monotonic(), heard=time.monotonic())
        self.workers[pid] = worker
        self.selector.register(ours, selectors.EVENT_READ, lambda: self.hear(worker))

    def hear(self, worker: _Worker) -> None:
        """The worker says it is ready, beats, or its end closed (it is exiting)."""
        try:
            message = worker.channel.recv(16)
        except BlockingIOError:
            return
        except OSError:
            message = b""
        if message in (_READY, _BEAT):
            worker.heard = time.monotonic()
            if message == _READY:
                if not self.ever_ready and not self.stopping:
                    self.first_ready = time.monotonic()
                    for slot in range(1, self.slots):
                        self.spawn(slot)
                worker.served = self.ever_ready = True
            if worker.served and not worker.ready and not worker.replaced:
                if message == _BEAT:
                    log.warning("worker %d answers again; it gets connections again",
                                worker.pid)
                worker.ready = True
        else:
            worker.ready = False
            self.selector.unregister(worker.channel)
        self._accept_while(self._may_deal())

    def watch_silence(self) -> None:
        """Stop dealing to a worker whose event loop has gone silent; replace it if it
        stays so (SIGTERM, then a new worker in its slot at once)."""
        now = time.monotonic()
        hung_after = self.settings.server.hung_worker_seconds
        for worker in list(self.workers.values()):
            silent = now - worker.heard
            if worker.ready and silent > hung_after:
                worker.ready = False
                log.error("worker %d has not answered for %.0f s; it gets no more connections",
                          worker.pid, silent)
                self._accept_while(self._may_deal())
            if (worker.served and not worker.replaced and not self.stopping
                    and silent > REPLACE_AFTER_HUNG * hung_after):
                worker.replaced = True
                log.error("worker %d has not answered for %.0f s; sent SIGTERM, and a new "
                          "worker takes its place", worker.pid, silent)
                _kill(worker.pid, signal.SIGTERM)
                self.spawn(worker.slot)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(worker.channel)
            worker.channel.close()
            _forget_worker_metrics(pid)
            self.unfolded.add(pid)
            self._accept_while(self._may_deal())
            if self.stopping or worker.replaced:
                continue
            if os.waitstatus_to_exitcode(status) == EXIT_PIN_REFUSED:
                log.error("worker %d: the HSM refused the PIN; stopping the gateway (exit "
                          "status %d: do not restart it until [hsm] pin is right)", pid,
                          EXIT_PIN_REFUSED)
                self.exit_code = EXIT_PIN_REFUSED
                self.stop()
                continue
            if not worker.served and not self.ever_ready:
                self.failed_starts += 1
                if self.failed_starts >= MAX_FAILED_STARTS:
                    log.error("worker %d %s, and no worker has started in %d attempts; "
                              "giving up (see the workers' log lines above)", pid,
                              _describe_exit(status), self.failed_starts)
                    self.exit_code = 1
                    self.stop()
                    continue
            slot = worker.slot
            if time.monotonic() - worker.started >= STABLE_WORKER_SECONDS:
                self.backoff[slot] = RESTART_BACKOFF_SECONDS
            log.warning("worker %d %s; starting a replacement in %.0f s", pid,
                        _describe_exit(status), self.backoff[slot])
            self.restart_at[slot] = time.monotonic() + self.backoff[slot]
            self.backoff[slot] = min(self.backoff[slot] * 2, MAX_RESTART_BACKOFF_SECONDS)

    def fold_metrics(self) -> None:
        """Fold the counters and histograms of exited workers into the archive files
        (gateway/metrics_dir.py), unless a scrape is reading them: then at the next tick.

        A fold that fails is logged and not tried again for these workers: their files
        stay, and scrapes go on counting them. Whatever the failure, the gateway serves on.
        """
        if not self.unfolded:
            return
        # A pid the system has given to a new worker meanwhile is that worker's now: it
        # counts on from the values in the file, which must stay.
        dead = self.unfolded - self.workers.keys()
        try:
            if not fold_dead_workers(self.settings.metrics.multiprocess_dir, dead):
                return
        except OSError as exc:  # a full or read-only file system, a lock it may not open
            log.warning("the metrics of exited workers %s stay in their own files: %s",
                        sorted(dead), exc)
        except Exception:  # a damaged file, or a bug: the metrics are not worth the gateway
            log.exception("the metrics of exited workers %s stay in their own files",
                          sorted(dead))
        self.unfolded.clear()

    def restart_due(self) -> None:
        now = time.monotonic()
        for slot, at in list(self.restart_at.items()):
            if at <= now and not self.stopping:
                del self.restart_at[slot]
                self.spawn(slot)

    def _may_deal(self) -> bool:
        """Whether connections may be dealt now. At start, only once every worker is ready
        (or STARTUP_GRACE_SECONDS after the first was): the others start only after the
        first, and a client's keep-alive connections taken before would all stay with it."""
        ready = sum(w.ready for w in self.workers.values())
        if self.stopping or not ready:
            return False
        if not self.started:
            self.started = ready >= self.slots or (
                time.monotonic() - self.first_ready > STARTUP_GRACE_SECONDS)
        return self.started

    # -- connections ---------------------------------------------------------------------

    def _accept_while(self, ready: bool) -> None:
        """Watch the listening socket only while a worker can take connections; until then
        they wait in the kernel's backlog."""
        if ready and not self.accepting:
            self.selector.register(self.listener, selectors.EVENT_READ, self.accept)
        elif not ready and self.accepting:
            self.selector.unregister(self.listener)
        self.accepting = ready

    def accept(self) -> None:
        for _ in range(_ACCEPTS_PER_TICK):
            try:
                connection, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, say: try again later
                log.warning("accept failed: %s", exc)
                return
            with connection:
                self.deal(connection)

    def deal(self, connection: socket.socket) -> None:
        """Hand ``connection`` to the next ready worker; the master's copy is closed after."""
        ready = [w for w in self.workers.values() if w.ready]
        for _ in ready:
            worker = ready[self.turn % len(ready)]
            self.turn += 1
            try:
                socket.send_fds(worker.channel, [b"c"], [connection.fileno()])
                return
            except BlockingIOError:
                continue  # this one is not keeping up: the next one
            except OSError:
                worker.ready = False  # exiting; reap() will replace it
        log.warning("no worker could take a connection; it is closed")


def _start_worker(settings: Settings, channel: socket.socket) -> int:
    """Fork and exec one worker; hand it the settings through a pipe and its end of the
    connection channel. Returns its pid."""
    settings_in, settings_out = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(settings_out)
            os.set_inheritable(settings_in, True)
            channel.set_inheritable(True)
            # Our own interpreter and module, argument list only: no shell is involved.
            os.execv(sys.executable, [sys.executable, "-m", "gateway.server",  # noqa: S606
                                      str(settings_in), str(channel.fileno())])
        finally:
            os._exit(127)  # exec failed; never return into the master's loop
    os.close(settings_in)
    with os.fdopen(settings_out, "wb") as pipe:
        pickle.dump(settings, pipe)
    return pid


def _worker_main(argv: list[str]) -> None:
    """Entry of an exec'd worker: ``python -m gateway.server SETTINGS_FD CHANNEL_FD``."""
    with os.fdopen(int(argv[0]), "rb") as pipe:
        # The master wrote these a moment ago through a pipe only the two of them hold.
        settings: Settings = pickle.load(pipe)  # noqa: S301
    configure_logging(settings.log.level, WORKER_FORMAT)
    run_worker(settings, socket.socket(fileno=int(argv[1])))


def _describe_exit(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _forget_worker_metrics(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters and histograms are folded later, see
    ``_Master.fold_metrics``)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]  # untyped upstream


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
