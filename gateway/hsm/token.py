"""The process's one PKCS#11 session, and the one thread token calls run on.

SoftHSM is initialised by python-pkcs11 with ``C_Initialize(NULL)`` and so runs without its
own locking: concurrent calls on several sessions crash it. Each process therefore loads the
library lazily (after any fork), keeps one logged-in session, and runs every call under one
lock: on a thread of its own, or, for a single signature with a local token, right on the
caller's thread when the lock is free (see :meth:`TokenSession.run`). When the token goes
away, calls fail with :class:`HsmUnavailable`; the next call after ``retry_interval_seconds``
re-initialises the library and logs in again, so the gateway recovers without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
import pkcs11.exceptions as p11e

from gateway import metrics
from gateway.errors import ConfigError, HsmError, HsmUnavailable
from gateway.serial_thread import SerialThread
from gateway.settings import HsmSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that mean "the token or session is gone", as opposed to "this request was wrong".
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    p11e.DeviceError,
    p11e.DeviceRemoved,
    p11e.DeviceMemory,
    p11e.GeneralError,
    p11e.ObjectHandleInvalid,
    p11e.SessionClosed,
    p11e.SessionHandleInvalid,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.UserNotLoggedIn,
)

# The token refused the PIN itself: trying again changes nothing, and a real HSM locks the
# user PIN after a few failures (then only its security officer can unlock it).
PIN_REFUSED: tuple[type[Exception], ...] = (
    p11e.PinIncorrect,
    p11e.PinInvalid,
    p11e.PinLenRange,
    p11e.PinExpired,
    p11e.PinLocked,
)


class _RefusedBefore(Exception):
    """Another process sharing the login lock was refused this PIN (its error's name)."""


_NOT_AGAIN: tuple[type[Exception], ...] = (*PIN_REFUSED, _RefusedBefore)

SWITCH_VALUES = ("auto", "on", "off")
_OPEN_ATTEMPTS = 5  # pauses of 50, 100, 150, 200 ms: half a second in all
_OPEN_PAUSE_SECONDS = 0.05


class TokenSession:
    """Owns the library handle, the session and the thread; knows nothing about keys."""

    def __init__(self, settings: HsmSettings, login_lock: Path | None = None) -> None:
        self._settings = settings
        self._login_lock = login_lock
        self._thread = SerialThread("hsm")
        # Held around every PKCS#11 call, on whichever thread makes it: calls never overlap.
        self._lock = threading.Lock()
        self._inline = softhsm_switch(settings, "inline_signing", settings.inline_signing)
        self._lib: Any = None
        self._session: Any = None
        self._pid = 0
        self._broken_since: float | None = None
        # A call ran past operation_timeout_seconds: the HSM counts as down (sealgate_hsm_up)
        # until a call completes again. The session is not closed: the call still holds it.
        self._timed_out = False
        # Set once the token refuses the PIN: no more logins until the process restarts.
        self._pin_refused: str | None = None
        self._on_reset: list[Callable[[], None]] = []

    # -- life cycle (called from the event loop) ---------------------------------------------

    def start(self) -> None:
        self._thread.start()

    async def close(self) -> None:
        if not self._thread.running:
            return
        try:
            await self._thread.call(self._close_locked)  # on its own thread, as every call
        finally:
            await self._thread.stop()

    def on_reset(self, callback: Callable[[], None]) -> None:
        """Register a callback run (under the token lock) whenever the session is replaced."""
        self._on_reset.append(callback)

    async def run(self, operation: str, fn: Callable[[Any], T], *, short: bool = False) -> T:
        """Run ``fn(session)`` on the HSM thread, timing it and translating failures.

        A ``short`` call (one signature: well under a millisecond of CPU) runs on the calling
        thread instead when inline signing is on, the session is open and no other call is
        running. With a local software token the signature is CPU work that takes a core
        either way; run here, it saves the two thread switches and the event loop's wake-up
        of the hop, which cost about a fifth of an RSA signature. The lock keeps calls from
        overlapping, which is all that SoftHSM without its own locking needs (DOMAIN.md §5).
        """
        if not self._thread.running:
            raise HsmUnavailable("the HSM layer is not started")
        started = time.perf_counter()
        try:
            if (short and self._inline and self._session is not None
                    and self._lock.acquire(blocking=False)):
                try:
                    return self._call(operation, fn)
                finally:
                    self._lock.release()
            async with asyncio.timeout(self._settings.operation_timeout_seconds):
                return await self._thread.call(lambda: self._call_locked(operation, fn))
        except TimeoutError:
            metrics.HSM_ERRORS.labels(operation, "timeout").inc()
            self._timed_out = True
            metrics.HSM_UP.set(0)
            raise HsmUnavailable(f"the HSM did not answer within "
                                 f"{self._settings.operation_timeout_seconds} s") from None
        finally:
            metrics.HSM_OPERATION_SECONDS.labels(operation).observe(time.perf_counter() - started)

    # -- under the token lock ----------------------------------------------------------------

    def _call_locked(self, operation: str, fn: Callable[[Any], T]) -> T:
        with self._lock:
            return self._call(operation, fn)

    def _close_locked(self) -> None:
        with self._lock:
            self._close_session()

    def _call(self, operation: str, fn: Callable[[Any], T]) -> T:
        session = self._ensure_session()
        try:
            result = fn(session)
            if self._timed_out:  # the HSM answers again
                self._timed_out = False
                metrics.HSM_UP.set(1)
            return result
        except OUTAGE_ERRORS as exc:
            self._mark_broken(operation, exc)
            raise HsmUnavailable("the HSM token cannot be reached") from exc
        except p11e.PKCS11Error as exc:
            metrics.HSM_ERRORS.labels(operation, type(exc).__name__).inc()
            raise HsmError(f"the HSM refused the {operation} operation") from exc

    @property
    def pin_refused(self) -> str | None:
        """Why the token refused the PIN (the PKCS#11 error's name), or None."""
        return self._pin_refused

    def _ensure_session(self) -> Any:
        if os.getpid() != self._pid:
            # A forked child must never use the parent's PKCS#11 state.
            self._lib, self._session, self._pid = None, None, os.getpid()
        if self._session is not None:
            return self._session
        if self._pin_refused is not None:
            raise HsmUnavailable(f"the HSM refused the PIN ({self._pin_refused}); correct "
                                 f"[hsm] pin and restart the gateway")
        if self._broken_since is not None:
            wait = self._settings.retry_interval_seconds - (time.monotonic() - self._broken_since)
            if wait > 0:
                raise HsmUnavailable("the HSM token cannot be reached; retrying shortly")
        try:
            with _login_turn(self._login_lock) as refused_before:
                if refused_before:
                    raise _RefusedBefore(refused_before)
                try:
                    self._session = self._open()
                except PIN_REFUSED as exc:
                    _say_refused(self._login_lock, type(exc).__name__)
                    metrics.HSM_ERRORS.labels("open", type(exc).__name__).inc()
                    raise
        except ConfigError:
            raise
        except _NOT_AGAIN as exc:
            self._pin_refused = str(exc) if isinstance(exc, _RefusedBefore) \
                else type(exc).__name__
            metrics.HSM_UP.set(0)
            log.error("the HSM refused the PIN (%s): no more logins until the gateway is "
                      "restarted with the right one", self._pin_refused)
            raise HsmUnavailable(f"the HSM refused the PIN ({self._pin_refused})") from exc
        except (p11e.PKCS11Error, RuntimeError, OSError) as exc:
            self._mark_broken("open", exc)
            raise HsmUnavailable("the HSM token cannot be reached") from exc
        if self._broken_since is not None:
            log.info("HSM session re-established")
        self._broken_since = None
        metrics.HSM_UP.set(1)
        for callback in self._on_reset:
            callback()
        return self._session

    def _open(self) -> Any:
        attempt = 1
        while True:
            try:
                return self._open_once()
            except (p11e.GeneralError, p11e.NoSuchToken):
                # SoftHSM rewrites the token's file on every login, and a process that reads
                # the token list during that write fails with a general error or does not see
                # the token at all. Workers starting (or recovering) together log in at the
                # same moment; a moment later the same call succeeds.
                if attempt == _OPEN_ATTEMPTS:
                    raise
                time.sleep(_OPEN_PAUSE_SECONDS * attempt)
                attempt += 1

    def _open_once(self) -> Any:
        if self._settings.softhsm_conf:
            os.environ["SOFTHSM2_CONF"] = self._settings.softhsm_conf
        pin = self._settings.pin.reveal()
        if self._lib is None:
            self._lib = pkcs11.lib(self._settings.module)
        else:
            self._lib.reinitialize()
        token = self._lib.get_token(token_label=self._settings.token_label)
        try:
            return token.open(user_pin=pin, rw=True)
        except p11e.UserAlreadyLoggedIn:
            # Login is per process: another session of this process is logged in already.
            return token.open(rw=True)

    def _mark_broken(self, operation: str, exc: BaseException) -> None:
        metrics.HSM_ERRORS.labels(operation, type(exc).__name__).inc()
        metrics.HSM_UP.set(0)
        if self._broken_since is None:
            log.warning("HSM unavailable during %s: %s", operation, type(exc).__name__)
        self._broken_since = time.monotonic()
        self._close_session()

    def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(p11e.PKCS11Error):
                session.close()


def softhsm_switch(settings: HsmSettings, name: str, value: str) -> bool:
    """Read an ``auto``/``on``/``off`` setting whose ``auto`` means "on when the module is
    SoftHSM": the switches that only pay off for a local software token."""
    if value not in SWITCH_VALUES:
        raise ConfigError(f"hsm.{name} must be one of {', '.join(SWITCH_VALUES)}, not {value!r}")
    if value == "auto":
        return "softhsm" in os.path.basename(settings.module).lower()
    return value == "on"



@contextlib.contextmanager
def _login_turn(path: Path | None) -> Iterator[str]:
    """This process's turn to log in, among those that share ``path`` (a gateway's workers):
    one at a time, which also spares SoftHSM's token file concurrent rewrites. Yields the
    name of the error a PIN was refused with before, by any of them, or "". Without a path
    (the command line, tests in one process), every login is its own turn."""
    if path is None:
        yield ""
        return
    with path.open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process ends
        lock.seek(0)
        yield lock.read().strip()


def _say_refused(path: Path | None, error: str) -> None:
    """Tell the others sharing ``path``: the PIN is not tried again until the master starts
    anew (it empties the file)."""
    if path is not None:
        path.write_text(error + "\n")
