"""Running the real `sealgate` command against a var directory of its own, as a user would."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import PROJECT_ROOT
from tests.redis_server import free_port

SEALGATE = str(Path(sys.executable).parent / "sealgate")


@dataclass(frozen=True)
class Installation:
    """A var directory prepared like `make run` does, and the environment that points at it."""

    var: Path
    env: dict[str, str]

    def run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SEALGATE, *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    @contextlib.contextmanager
    def serving(self, *args: str) -> Iterator[str]:
        """`sealgate serve` on a free port; yields its base URL once /readyz answers 200."""
        port = free_port()
        process = subprocess.Popen(
            [SEALGATE, "serve", "--port", str(port), *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, process)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def prepare(var: Path) -> Installation:
    """Token, dev CA, platform keys and the demo seal under ``var`` (`make token demo`)."""
    softhsm = var / "softhsm"
    subprocess.run(
        [str(PROJECT_ROOT / "softhsm" / "init-token.sh"), str(softhsm), "sealgate"], check=True
    )
    env = {
        **os.environ,
        "SEALGATE_VAR_DIR": str(var),
        "SEALGATE_HSM__PIN__FILE": str(softhsm / "user-pin"),
        "SEALGATE_HSM__SOFTHSM_CONF": str(softhsm / "softhsm2.conf"),
        "SEALGATE_STORAGE__SQLITE_PATH": str(var / "sealgate.db"),
        "SEALGATE_PKI__DEV_CA_DIR": str(var / "ca"),
        "SEALGATE_PKI__TRUST_ROOTS": f'["{var / "ca" / "ca.pem"}"]',
        "SEALGATE_METRICS__MULTIPROCESS_DIR": str(var / "metrics"),
        "SOFTHSM2_CONF": str(softhsm / "softhsm2.conf"),
    }
    installation = Installation(var, env)
    installation.run("init", "--demo")
    return installation


def wait_ready(base: str, process: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"sealgate serve exited: {process.stderr.read() if process.stderr else ''}"
            )
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{base} did not become ready in {timeout} s")
