"""The benchmark's own world: a var dir with its token, seals and client, and the gateway process.

Nothing under the developer's ``var/`` is touched: ``var/bench/`` gets a fresh SoftHSM token
(made by the same script as ``make token``), ``sealgate init --demo`` (RSA-2048 seal, filed
and active, and its signer client), and one more seal on an EC P-256 key for hash batches,
granted to the same client. The gateway then runs as ``sealgate serve --workers N`` in a child
process on a free loopback port, and its workers (children of the pre-fork master) are found
through ``/proc`` so that their CPU time and peak RSS can be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VAR = PROJECT_ROOT / "var" / "bench"
TOKEN_LABEL = "sealgate"  # noqa: S105  # a PKCS#11 token label, not a secret
EC_SEAL_NAME = "财务专用章"
# `sealgate …` with this interpreter, whether or not the venv's script is on PATH.
SEALGATE = [sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main())"]
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class SealMaterial:
    """One seal as the benchmark needs it: ids for the API, key and chain for the baselines."""

    seal_id: str
    key_id: str
    algorithm: str
    chain_pem: str


@dataclass(frozen=True)
class Material:
    """What the benchmark's var dir holds once prepared."""

    var_dir: str
    config_file: str
    port: int
    token: str
    rsa: SealMaterial
    ec: SealMaterial
    seal_png: str
    ca_pem: str
    module: str
    pin_file: str
    softhsm_conf: str
    token_label: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("token")
        return data


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(var: Path, port: int, workers: int) -> Path:
    """A settings file that points every path of the gateway into ``var``.

    The body limit is raised for the 100 MB document and the in-flight bound so that no
    concurrency level of the benchmark is answered with 503.
    """
    config = var / "sealgate.toml"
    config.write_text(f"""\
var_dir = "{var}"

[server]
host = "127.0.0.1"
port = {port}
workers = {workers}
max_body_bytes = {512 * 1024 * 1024}
max_in_flight = 1024

[hsm]
token_label = "{TOKEN_LABEL}"
pin = {{ file = "{var}/softhsm/user-pin" }}
softhsm_conf = "{var}/softhsm/softhsm2.conf"

[storage]
backend = "sqlite"
sqlite_path = "{var}/sealgate.db"

[pki]
trust_roots = ["{var}/ca/ca.pem"]
dev_ca_dir = "{var}/ca"
public_base_url = "http://127.0.0.1:{port}"

[metrics]
multiprocess_dir = "{var}/metrics"

[log]
level = "WARNING"
""" + _limits_section())
    return config


def _limits_section() -> str:
    """Per-client rate limit far above any rate here, where the gateway has one.

    Raised rather than turned off, so that the token bucket every request takes from in
    production is part of what is measured.
    """
    from gateway.settings import Settings

    if "limits" not in {f.name for f in dataclasses.fields(Settings)}:
        return ""
    return "\n[limits]\nrequests_per_second = 1000000.0\nburst = 1000000\n"


def gateway_env(config: Path, var: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALGATE_")}
    env["SEALGATE_CONFIG"] = str(config)
    env["SOFTHSM2_CONF"] = str(var / "softhsm" / "softhsm2.conf")
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    return env


def prepare(var: Path, workers: int) -> Material:
    """Build ``var`` from nothing: token, ``sealgate init --demo``, the EC seal."""
    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True)
    port = free_port()
    config = write_config(var, port, workers)
    env = gateway_env(config, var)
    log = var / "setup.log"
    with log.open("wb") as out:
        for command in (
            [str(PROJECT_ROOT / "softhsm" / "init-token.sh"), str(var / "softhsm"), TOKEN_LABEL],
            [*SEALGATE, "init", "--demo"],
        ):
            done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  cwd=PROJECT_ROOT, timeout=300)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed; see {log}")
    # The EC seal is made by the gateway's own services, in a process of its own so that this
    # one never loads PKCS#11 (the load generator and baselines are started from here).
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_add_ec_seal, args=(str(config), str(var)))
    child.start()
    child.join(300)
    if child.exitcode != 0:
        raise RuntimeError("creating the EC P-256 seal failed")
    state = json.loads((var / "bench.json").read_text())
    return Material(
        var_dir=str(var), config_file=str(config), port=port,
        token=(var / "demo-token").read_text().strip(),
        rsa=SealMaterial(**state["rsa"]), ec=SealMaterial(**state["ec"]),
        seal_png=str(var / "seal.png"), ca_pem=str(var / "ca" / "ca.pem"),
        module="/usr/lib/softhsm/libsofthsm2.so", pin_file=str(var / "softhsm" / "user-pin"),
        softhsm_conf=str(var / "softhsm" / "softhsm2.conf"), token_label=TOKEN_LABEL,
    )


def _add_ec_seal(config: str, var: str) -> None:
    os.environ["SEALGATE_CONFIG"] = config
    asyncio.run(_add_ec_seal_async(Path(config), Path(var)))


async def _add_ec_seal_async(config: Path, var: Path) -> None:
    from gateway.cli.common import OPERATOR
    from gateway.cli.setup import (
        DEMO_APPLICANT,
        DEMO_CLIENT,
        DEMO_LEGAL_REPRESENTATIVE,
        DEMO_ORGANIZATION,
    )
    from gateway.pki.certs import chain_to_pem
    from gateway.pki.devca import DevCA
    from gateway.services import close_services, open_services
    from gateway.settings import load_settings

    settings = load_settings(config)
    demo = json.loads((var / "demo.json").read_text())
    ca = DevCA.open_or_create(Path(settings.pki.dev_ca_dir))
    services = await open_services(settings)
    try:
        key = await services.keys.create("bench-ec-seal", "ec-p256", OPERATOR.name)
        cert = ca.issue(services.keys.public_key_der(key),
                        DEMO_ORGANIZATION["name"] + " " + EC_SEAL_NAME, DEMO_ORGANIZATION["name"])
        pem = chain_to_pem([cert, ca.certificate])
        await services.keys.import_certificate(key["id"], pem.encode(), OPERATOR.name)
        seal = await services.seals.create(
            {"name": EC_SEAL_NAME, "type": "02", "organization": DEMO_ORGANIZATION,
             "key_id": key["id"]},
            OPERATOR.name,
        )
        await services.filings.file_and_approve_locally(
            seal["id"], DEMO_APPLICANT, DEMO_LEGAL_REPRESENTATIVE, OPERATOR.name)
        client = await services.clients.find_by_name(DEMO_CLIENT)
        assert client is not None, "sealgate init --demo creates the demo client"
        await services.clients.grant(client.id, seal["id"], OPERATOR.name)
        rsa_key = await services.keys.get(demo["key_id"])
        (var / "seal.png").write_bytes(await services.seals.image(demo["seal_id"]))
        state = {
            "rsa": {"seal_id": demo["seal_id"], "key_id": demo["key_id"],
                    "algorithm": rsa_key["algorithm"],
                    "chain_pem": rsa_key["certificate_chain_pem"]},
            "ec": {"seal_id": seal["id"], "key_id": key["id"], "algorithm": "ec-p256",
                   "chain_pem": pem},
        }
        (var / "bench.json").write_text(json.dumps(state, indent=2))
    finally:
        await close_services(services)


# -- the gateway process ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessSample:
    """CPU seconds and memory of one process at one moment."""

    cpu_seconds: float
    rss_bytes: int
    peak_rss_bytes: int


def sample_process(pid: int) -> ProcessSample | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    # Fields after the command name, which may hold spaces and parentheses.
    fields = stat.rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    memory = {}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            memory[name] = int(value.split()[0]) * 1024
    return ProcessSample(cpu, memory.get("VmRSS", 0), memory.get("VmHWM", 0))


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs, value 5); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # up to steal; guest time is already inside user time
    return total - idle, total


def children_of(parent: int) -> list[int]:
    """Pids whose parent is ``parent``, by scanning /proc (no CONFIG_PROC_CHILDREN needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.append(int(entry.name))
    return sorted(found)


def load_average() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


class Gateway:
    """``sealgate serve --workers N`` as a child process, on loopback only."""

    def __init__(self, material: Material, workers: int) -> None:
        self.material = material
        self.workers = workers
        self.base_url = f"http://127.0.0.1:{material.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log = Path(material.var_dir) / "gateway.log"

    def start(self, timeout: float = 60.0) -> None:
        var = Path(self.material.var_dir)
        with self._log.open("ab") as out:
            self._process = subprocess.Popen(
                [*SEALGATE, "serve", "--workers", str(self.workers)],
                env=gateway_env(Path(self.material.config_file), var), cwd=PROJECT_ROOT,
                stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the gateway exited at start; see {self._log}")
            if len(self.worker_pids()) == self.workers and self._all_ready():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the gateway did not become ready in {timeout:g} s; see {self._log}")

    def _all_ready(self, answers: int = 8 * 4) -> bool:
        """Ready on fresh connections many times in a row, so that every worker (the master
        deals each new connection to the next one) has opened its HSM session."""
        return all(self._ready() for _ in range(answers))

    def _ready(self) -> bool:
        try:
            # S310: the URL is the loopback http address built above, never user input.
            with urllib.request.urlopen(  # noqa: S310
                    self.base_url + "/readyz", timeout=5) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def worker_pids(self) -> list[int]:
        """Children of the pre-fork master: its workers."""
        return children_of(self.pid) if self._process is not None else []

    def samples(self) -> dict[int, ProcessSample]:
        return {pid: s for pid in self.worker_pids() if (s := sample_process(pid)) is not None}

    def reset_peaks(self) -> bool:
        return all([reset_peak_rss(pid) for pid in self.worker_pids()])

    def stop(self, timeout: float = 20.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        workers = children_of(process.pid)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in [*workers, process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait(5)
