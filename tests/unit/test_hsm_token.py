"""The token session against a real SoftHSM token shared with other processes."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import subprocess
from pathlib import Path
from typing import Any

import pkcs11.exceptions

from gateway.errors import HsmUnavailable
from gateway.hsm.token import TokenSession
from gateway.settings import HsmSettings, SecretRef
from tests.conftest import PROJECT_ROOT

ROUNDS = 60


def _lost_session(session: Any) -> None:
    raise pkcs11.exceptions.SessionHandleInvalid()


async def _open_in_rounds(settings: HsmSettings, barrier: Any) -> list[str]:
    """Opens the session once a round, at the moment the other process does: as workers
    starting (or recovering) together do. Each open re-initialises the library and logs in."""
    token = TokenSession(settings)
    token.start()
    failures = []
    try:
        for _ in range(ROUNDS):
            barrier.wait(30)
            try:
                await token.run("probe", lambda session: session.token.label)
            except HsmUnavailable as exc:
                failures.append(repr(exc.__cause__))
            with contextlib.suppress(HsmUnavailable):
                await token.run("probe", _lost_session)  # the next round opens anew
    finally:
        await token.close()
    return failures


def _worker(settings: HsmSettings, barrier: Any, results: Any) -> None:
    results.put(asyncio.run(_open_in_rounds(settings, barrier)))


def test_sessions_open_while_other_processes_log_in_at_the_same_moment(tmp_path: Path) -> None:
    """SoftHSM rewrites the token's file on every login; a process listing tokens meanwhile
    did not see the token (NoSuchToken): one to four opens in 120 here. Opening tries again."""
    directory = tmp_path / "softhsm"
    subprocess.run([str(PROJECT_ROOT / "softhsm" / "init-token.sh"), str(directory)], check=True)
    settings = HsmSettings(pin=SecretRef(file=str(directory / "user-pin")),
                           softhsm_conf=str(directory / "softhsm2.conf"),
                           retry_interval_seconds=0)
    spawn = multiprocessing.get_context("spawn")  # fresh processes: no PKCS#11 state inherited
    barrier, results = spawn.Barrier(2), spawn.Queue()
    workers = [spawn.Process(target=_worker, args=(settings, barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        failures = [results.get(timeout=120) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=30)
    assert failures == [[], []]
