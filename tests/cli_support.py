"""Running `sealgate` commands with settings passed as SEALGATE_* variables.

For a whole deployment (settings file, `serve`, workers) use tests.gateway_process.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import PROJECT_ROOT
from tests.gateway_process import SEALGATE


@dataclass(frozen=True)
class Installation:
    """A var directory prepared like `make run` does, and the environment that points at it."""

    var: Path
    env: dict[str, str]

    def run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SEALGATE), *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )


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
