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


async def _probe_with_wrong_pin(settings: HsmSettings) -> tuple[list[str], float]:
    from prometheus_client import REGISTRY

    token = TokenSession(settings)
    token.start()
    answers = []
    try:
        for _ in range(4):
            try:
                await token.run("probe", lambda session: session.token.label)
                answers.append("ok")
            except HsmUnavailable as exc:
                answers.append(str(exc))
            await asyncio.sleep(0.05)  # past the retry interval
    finally:
        await token.close()
    logins = REGISTRY.get_sample_value(
        "sealgate_hsm_errors_total", {"operation": "open", "error": "PinIncorrect"}) or 0.0
    return answers, logins


def _wrong_pin_worker(settings: HsmSettings, results: Any) -> None:
    results.put(asyncio.run(_probe_with_wrong_pin(settings)))


def test_a_refused_pin_is_tried_once_not_until_the_hsm_locks_it(tmp_path: Path) -> None:
    """A wrong PIN is a configuration error: logging in again only brings a real HSM closer
    to locking the PIN. One login, then every call says why, until a restart."""
    directory = tmp_path / "softhsm"
    subprocess.run([str(PROJECT_ROOT / "softhsm" / "init-token.sh"), str(directory)], check=True)
    wrong = tmp_path / "wrong-pin"
    wrong.write_text("not-the-pin\n")
    settings = HsmSettings(pin=SecretRef(file=str(wrong)),
                           softhsm_conf=str(directory / "softhsm2.conf"),
                           retry_interval_seconds=0.01)
    spawn = multiprocessing.get_context("spawn")  # no PKCS#11 login of this process shared
    results = spawn.Queue()
    worker = spawn.Process(target=_wrong_pin_worker, args=(settings, results))
    worker.start()
    try:
        answers, logins = results.get(timeout=120)
    finally:
        worker.join(timeout=30)
    assert logins == 1
    assert len(answers) == 4
    assert all("refused the PIN (PinIncorrect)" in answer for answer in answers), answers
    assert "restart" in answers[-1]
