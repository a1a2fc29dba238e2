"""One thread that runs an event loop's blocking calls in order, and hands back the answers.

For a resource that must be used from a single thread (a PKCS#11 session, a sqlite3
connection), at thousands of calls per second. ``loop.run_in_executor`` on a one-thread
``ThreadPoolExecutor`` does the same at a higher price per call (its work item, lock and
future chaining); here a call is a plain queue entry and a loop future settled from the
thread, and while more calls wait, up to ``MAX_ANSWERS_PER_WAKEUP`` answers share one wake-up
of the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

MAX_ANSWERS_PER_WAKEUP = 16


@dataclass(slots=True)
class _Call:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    fn: Callable[[], Any]


_Answer = tuple[_Call, Any, BaseException | None]


class SerialThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()

    async def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the thread, after every call queued before it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put(_Call(loop, future, fn))
        return await future

    async def stop(self) -> None:
        """Finish the queued calls, then end the thread."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._calls.put(None)
            await asyncio.get_running_loop().run_in_executor(None, thread.join)

    def _serve(self) -> None:
        answers: list[_Answer] = []
        while True:
            if not answers:
                call = self._calls.get()
            else:
                try:
                    call = self._calls.get_nowait()
                except queue.Empty:
                    _flush(answers)
                    continue
            if call is None:
                _flush(answers)
                return
            try:
                answers.append((call, call.fn(), None))
            except Exception as exc:  # handed to the caller's future
                answers.append((call, None, exc))
            if len(answers) >= MAX_ANSWERS_PER_WAKEUP:
                _flush(answers)


def _flush(answers: list[_Answer]) -> None:
    """Hand collected answers to their loops, one wake-up per loop; empties ``answers``."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
    for answer in answers:
        by_loop.setdefault(answer[0].loop, []).append(answer)
    answers.clear()
    for loop, batch in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
            loop.call_soon_threadsafe(_settle, batch)


def _settle(batch: list[_Answer]) -> None:
    for call, result, error in batch:
        if call.future.done():  # timed out or cancelled meanwhile
            continue
        if error is not None:
            call.future.set_exception(error)
        else:
            call.future.set_result(result)
