"""The token session against a real SoftHSM token shared with other processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

# Logs in to the token again and again until the stop file appears. SoftHSM rewrites the
# token's file on every login; it is never killed, so no write is left half done.
LOGIN_AGAIN_AND_AGAIN = """
import os, sys, pkcs11
from gateway.settings import HsmSettings
lib = pkcs11.lib(HsmSettings().module)
pin = open(sys.argv[1]).read().strip()
logins = 0
while not os.path.exists(sys.argv[2]):
    try:
        lib.get_token(token_label="sealgate").open(user_pin=pin, rw=True).close()
        logins += 1
    except pkcs11.exceptions.PKCS11Error:
        pass
print(logins)
"""

# Opens the session again and again, as a worker does when it starts or recovers: each
# failing call makes the next one re-initialise the library, log in and open a session.
OPEN_AGAIN_AND_AGAIN = """
import asyncio, sys
import pkcs11.exceptions
from gateway.errors import HsmUnavailable
from gateway.hsm.token import TokenSession
from gateway.settings import HsmSettings, SecretRef

def lost_session(session):
    raise pkcs11.exceptions.SessionHandleInvalid()

async def main():
    token = TokenSession(HsmSettings(
        pin=SecretRef(file=sys.argv[1]), softhsm_conf=sys.argv[2], retry_interval_seconds=0))
    token.start()
    failures = []
    for _ in range(int(sys.argv[3])):
        try:
            await token.run("probe", lambda session: session.token.label)
        except HsmUnavailable as exc:
            failures.append(repr(exc.__cause__))
        try:
            await token.run("probe", lost_session)
        except HsmUnavailable:
            pass
    await token.close()
    print(failures)

asyncio.run(main())
"""


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", script, *args]


def test_a_session_opens_while_another_process_logs_in_again_and_again(tmp_path: Path) -> None:
    """Workers starting together: a sibling's login must not make the token look absent.

    Without the retry on open, about one open in twenty failed here with NoSuchToken.
    """
    directory = tmp_path / "softhsm"
    subprocess.run([str(PROJECT_ROOT / "softhsm" / "init-token.sh"), str(directory)], check=True)
    env = {"SOFTHSM2_CONF": str(directory / "softhsm2.conf"), "PATH": "/usr/bin:/bin"}
    pin, stop = str(directory / "user-pin"), tmp_path / "stop"
    sibling = subprocess.Popen(python(LOGIN_AGAIN_AND_AGAIN, pin, str(stop)), env=env,
                               cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        opened = subprocess.run(
            python(OPEN_AGAIN_AND_AGAIN, pin, env["SOFTHSM2_CONF"], "300"), env=env,
            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=120)
    finally:
        stop.touch()
        logins, _ = sibling.communicate(timeout=30)
    assert int(logins) > 100, "the sibling hardly logged in: the test proved nothing"
    assert opened.stdout.strip() == "[]"
