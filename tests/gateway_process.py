"""Real gateways for interop tests: a deployment in a temp directory, `sealgate` run against
it, and `sealgate serve` processes started, inspected, killed and stopped.

    deployment = Deployment.create(tmp_path)                 # token, settings, init --demo
    deployment.sealgate("audit", "verify")                   # any CLI command
    with deployment.serve(workers=2) as gateway:             # master + 2 workers, free port
        gateway.url("/readyz"); gateway.worker_pids()
        worker_samples(gateway.metrics_dir, "sealgate_signatures_total")

Everything runs as separate processes, as an operator would run it; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from gateway.metrics import worker_files_registry
from tests.redis_server import free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SEALGATE = Path(sys.executable).with_name("sealgate")
_TOKEN = re.compile(r"\bsg_[A-Za-z0-9_-]+")
_DB_FILE = re.compile(r"^[a-z_]+_(\d+)\.db$")


@dataclass
class Deployment:
    """A SoftHSM token, a settings file and a var directory, set up by `sealgate init --demo`."""

    directory: Path
    config: Path
    env: dict[str, str]
    seal_id: str = ""
    token: str = ""

    @classmethod
    def create(cls, directory: Path, *, redis_url: str = "", redis_prefix: str = "sealgate:",
               settings: str = "") -> Deployment:
        """Make the token with softhsm/init-token.sh and the demo seal with `sealgate init`.

        ``redis_url`` selects the Redis backend; ``settings`` is extra TOML appended as is.
        """
        token_dir = directory / "softhsm"
        subprocess.run([str(PROJECT_ROOT / "softhsm" / "init-token.sh"), str(token_dir),
                        "sealgate"], check=True)
        var = directory / "var"
        backend = "redis" if redis_url else "sqlite"
        config = directory / "sealgate.toml"
        config.write_text(f"""\
var_dir = "{var}"

[hsm]
pin = {{ file = "{token_dir / 'user-pin'}" }}
softhsm_conf = "{token_dir / 'softhsm2.conf'}"

[storage]
backend = "{backend}"
sqlite_path = "{var / 'sealgate.db'}"
redis_url = "{redis_url or 'redis://127.0.0.1:6379/0'}"
redis_prefix = "{redis_prefix}"

[pki]
trust_roots = ["{var / 'ca' / 'ca.pem'}"]
dev_ca_dir = "{var / 'ca'}"

[metrics]
multiprocess_dir = "{var / 'metrics'}"
refresh_seconds = 1.0

[filing]
poll_interval_seconds = 60.0
{settings}
""")
        # Only this deployment's settings: nothing from the environment of the test run.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SEALGATE_", "PROMETHEUS_MULTIPROC"))}
        env.update(SEALGATE_CONFIG=str(config), SOFTHSM2_CONF=str(token_dir / "softhsm2.conf"))
        deployment = cls(directory, config, env)
        deployment.sealgate("init", "--demo")
        demo = json.loads((var / "demo.json").read_text())
        deployment.seal_id = str(demo["seal_id"])
        deployment.token = (var / "demo-token").read_text().strip()
        return deployment

    @property
    def var(self) -> Path:
        return self.directory / "var"

    def sealgate(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one `sealgate` command against this deployment."""
        done = subprocess.run([str(SEALGATE), *args], env=self.env, capture_output=True,
                              text=True, timeout=120, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"sealgate {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    def create_client(self, name: str, role: str, *seals: str) -> str:
        """A new API client made with the CLI; returns its token."""
        grants = [arg for seal in seals for arg in ("--seal", seal)]
        done = self.sealgate("clients", "create", name, "--role", role, *grants)
        found = _TOKEN.search(done.stderr)
        assert found, done.stderr
        return found.group(0)

    def audit_events(self) -> list[dict[str, object]]:
        """Every audit event, read by `sealgate audit export`."""
        done = self.sealgate("audit", "export")
        # JSON Lines end at "\n" only: U+2028 or U+0085 may stand raw inside a value.
        return [json.loads(line) for line in done.stdout.split("\n") if line.strip()]

    def serve(self, workers: int = 1, name: str = "gateway",
              env: dict[str, str] | None = None, open_files: int | None = None
              ) -> GatewayProcess:
        """A `sealgate serve` on a free port, with its own metrics directory and log;
        ``env`` adds variables (``SEALGATE_<SECTION>__<KEY>`` settings) for this one, and
        ``open_files`` limits the descriptors of its processes."""
        return GatewayProcess(self, workers, self.directory / f"{name}-metrics",
                              self.directory / f"{name}.log", env=env or {},
                              open_files=open_files)


@dataclass
class GatewayProcess:
    """`sealgate serve --workers N` in its own process group; a context manager."""

    deployment: Deployment
    workers: int
    metrics_dir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    open_files: int | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 60.0) -> None:
        """Start the master and wait until every worker is up and /readyz answers 200."""
        env = {**self.deployment.env, **self.env,
               "SEALGATE_METRICS__MULTIPROCESS_DIR": str(self.metrics_dir)}
        with self.log_path.open("ab") as log:
            limit = self.open_files
            self.process = subprocess.Popen(
                [str(SEALGATE), "serve", "--workers", str(self.workers), "--port",
                 str(self.port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=None if limit is None else (
                    lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))),
            )
        deadline = time.monotonic() + timeout
        while not (len(self.serving_workers()) == self.workers and self.ready()):
            if self.process.poll() is not None:
                raise AssertionError(f"sealgate serve exited:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"sealgate serve did not get ready:\n{self.log()}")
            time.sleep(0.1)

    def ready(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", "/readyz")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def serving_workers(self) -> set[int]:
        """Live workers that take connections (each publishes sealgate_workers_up = 1 once
        its app is up): only they are dealt connections by the master."""
        up = worker_samples(self.metrics_dir, "sealgate_workers_up")
        return {pid for pid in self.worker_pids() if up.get(pid) == 1}

    async def busy_worker(self) -> int:
        """A worker with a signing operation in flight right now."""
        for _ in range(1000):
            busy = [pid for pid, value in
                    worker_samples(self.metrics_dir, "sealgate_signing_in_flight").items()
                    if value > 0 and pid in self.worker_pids()]
            if busy:
                return busy[0]
            await asyncio.sleep(0.01)
        raise AssertionError("no worker was ever seen signing")

    def worker_pids(self) -> set[int]:
        """Pids of the master's live children, read from /proc."""
        if self.process is None:
            return set()
        return child_pids(self.process.pid)

    def wait_for_workers(self, gone: frozenset[int] = frozenset(),
                         timeout: float = 30.0) -> set[int]:
        """Wait until all workers run again and none of the ``gone`` pids is among them."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.serving_workers()
            if len(pids) == self.workers and not pids & gone:
                return pids
            if time.monotonic() > deadline:
                raise AssertionError(f"workers not replaced in time: {pids}\n{self.log()}")
            time.sleep(0.1)

    def wait_for_folds(self, timeout: float = 30.0) -> set[int]:
        """Wait until only live workers have counter and histogram files of their own (the
        master has folded the dead ones' into the archives); returns those workers."""
        deadline = time.monotonic() + timeout
        while True:
            live = self.worker_pids()
            own_files = counting_pids(self.metrics_dir)
            if own_files <= live:
                return own_files
            if time.monotonic() > deadline:
                raise AssertionError(f"files of dead workers {own_files - live} were not "
                                     f"folded\n{self.log()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the master (it stops its workers); SIGKILL to the group if it hangs."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def __enter__(self) -> GatewayProcess:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def child_pids(parent: int) -> set[int]:
    """Pids of the live (not zombie) children of ``parent``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in parentheses may hold spaces; the fields after it do not.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent and state != "Z":
            found.add(int(entry.name))
    return found


def counting_pids(metrics_dir: Path) -> set[int]:
    """The pids that have a counter or histogram file of their own in ``metrics_dir``."""
    return {int(match.group(1)) for path in metrics_dir.glob("*.db")
            if path.name.startswith(("counter_", "histogram_"))
            and (match := _DB_FILE.match(path.name))}


def worker_samples(metrics_dir: Path, sample: str, labels: dict[str, str] | None = None,
                   ) -> dict[int, float]:
    """The value of one sample in each worker's own metric files (pid -> value)."""
    files: dict[int, list[Path]] = defaultdict(list)
    for path in metrics_dir.glob("*.db"):
        match = _DB_FILE.match(path.name)
        if match:
            files[int(match.group(1))].append(path)
    values: dict[int, float] = {}
    for pid, paths in files.items():
        with tempfile.TemporaryDirectory() as one_worker:
            for path in paths:
                # The master deletes a dead worker's live gauge files at any moment.
                with contextlib.suppress(FileNotFoundError):
                    shutil.copy(path, one_worker)
            values[pid] = directory_sample(Path(one_worker), sample, labels)
    return values


def directory_sample(metrics_dir: Path, sample: str, labels: dict[str, str] | None = None,
                     ) -> float:
    """The value of one sample over every file in ``metrics_dir``, the archives of exited
    workers' counts included (what a scrape shows), summed over other labels."""
    return sum(
        s.value for metric in worker_files_registry(str(metrics_dir)).collect()
        for s in metric.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in (labels or {}).items())
    )


def sample_value(exposition: str, sample: str) -> float:
    """The value of one line of a Prometheus text exposition (0 when absent)."""
    for line in exposition.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
