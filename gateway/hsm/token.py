"""The process's one PKCS#11 session, and the one thread every token call runs on.

SoftHSM is initialised by python-pkcs11 with ``C_Initialize(NULL)`` and so runs without its
own locking: concurrent calls on several sessions crash it. Each process therefore loads the
library lazily (after any fork), keeps one logged-in session, and funnels every call through a
single worker thread. When the token goes away, calls fail with :class:`HsmUnavailable`; the
next call after ``retry_interval_seconds`` re-initialises the library and logs in again, so
the gateway recovers without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pkcs11
import pkcs11.exceptions as p11e

from gateway import metrics
from gateway.errors import ConfigError, HsmError, HsmUnavailable
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


class TokenSession:
    """Owns the library handle, the session and the thread; knows nothing about keys."""

    def __init__(self, settings: HsmSettings) -> None:
        self._settings = settings
        self._executor: ThreadPoolExecutor | None = None
        self._lib: Any = None
        self._session: Any = None
        self._pid = 0
        self._broken_since: float | None = None
        self._on_reset: list[Callable[[], None]] = []

    # -- life cycle (called from the event loop) ---------------------------------------------

    def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hsm")

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close_session)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    def on_reset(self, callback: Callable[[], None]) -> None:
        """Register a callback run (on the HSM thread) whenever the session is replaced."""
        self._on_reset.append(callback)

    async def run(self, operation: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(session)`` on the HSM thread, timing it and translating failures."""
        if self._executor is None:
            raise HsmUnavailable("the HSM layer is not started")
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._executor, self._call, operation, fn),
                timeout=self._settings.operation_timeout_seconds,
            )
        except TimeoutError:
            metrics.HSM_ERRORS.labels(operation, "timeout").inc()
            raise HsmUnavailable(f"the HSM did not answer within "
                                 f"{self._settings.operation_timeout_seconds} s") from None
        finally:
            metrics.HSM_OPERATION_SECONDS.labels(operation).observe(time.perf_counter() - started)

    # -- on the HSM thread -------------------------------------------------------------------

    def _call(self, operation: str, fn: Callable[[Any], T]) -> T:
        session = self._ensure_session()
        try:
            return fn(session)
        except OUTAGE_ERRORS as exc:
            self._mark_broken(operation, exc)
            raise HsmUnavailable("the HSM token cannot be reached") from exc
        except p11e.PKCS11Error as exc:
            metrics.HSM_ERRORS.labels(operation, type(exc).__name__).inc()
            raise HsmError(f"the HSM refused the {operation} operation") from exc

    def _ensure_session(self) -> Any:
        if os.getpid() != self._pid:
            # A forked child must never use the parent's PKCS#11 state.
            self._lib, self._session, self._pid = None, None, os.getpid()
        if self._session is not None:
            return self._session
        if self._broken_since is not None:
            wait = self._settings.retry_interval_seconds - (time.monotonic() - self._broken_since)
            if wait > 0:
                raise HsmUnavailable("the HSM token cannot be reached; retrying shortly")
        try:
            self._session = self._open()
        except ConfigError:
            raise
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
