"""Tests that need a small file system of their own to fill: such a test runs again in a new
user and mount namespace (``unshare -rm``), where it may mount a tmpfs no other process
sees, and is skipped where the system does not permit such namespaces.

    def test_something_on_a_full_disk(request, tmp_path):
        if not in_private_namespace(request):
            rerun_in_private_namespace(request, tmp_path)
            return
        with mounted_tmpfs(tmp_path / "metrics", "1m") as directory:
            fill(directory)
            ...
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

# Set, to the test's node id, in the test run inside the namespace.
_INSIDE = "SEALGATE_TEST_IN_PRIVATE_NAMESPACE"


def in_private_namespace(request: pytest.FixtureRequest) -> bool:
    """Whether this run of the requesting test is the one in its own namespace."""
    return os.environ.get(_INSIDE) == request.node.nodeid


def rerun_in_private_namespace(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Run the requesting test again, in a pytest of its own inside a new user and mount
    namespace; fail with that run's output if the test fails there."""
    if not _may_mount_in_a_namespace():
        pytest.skip("unshare -rm (an unprivileged user namespace) is not available here")
    done = subprocess.run(
        ["unshare", "-rm", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         # Inside, the user is root: pytest's own temp directory would be root's.
         "--basetemp", str(tmp_path / "inside"), request.node.nodeid],
        cwd=PROJECT_ROOT, env={**os.environ, _INSIDE: request.node.nodeid},
        capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, (
        f"exit status {done.returncode}:\n{done.stdout[-8000:]}\n{done.stderr[-2000:]}")


@functools.cache
def _may_mount_in_a_namespace() -> bool:
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as directory:
        probe = subprocess.run(
            ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", directory],
            capture_output=True, check=False)
    return probe.returncode == 0


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's notation: 256k, 4m) on ``directory``, made if needed;
    only inside the namespace."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                   check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "--lazy", str(directory)], check=True)


def fill(directory: Path) -> None:
    """Take every free block of the file system ``directory`` is on (file ``filler``)."""
    descriptor = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with contextlib.suppress(OSError):  # ENOSPC: full
            while True:
                os.write(descriptor, b"x" * 4096)
    finally:
        os.close(descriptor)
