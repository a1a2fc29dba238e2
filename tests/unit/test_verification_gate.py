"""The per-worker gate of anonymous verifications: a thread of its own, and a bound."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.errors import Overloaded
from gateway.seals.verification import VerificationGate


async def test_past_its_limit_the_gate_refuses_at_once_and_takes_work_again_after() -> None:
    gate = VerificationGate(1)
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(10)
        return threading.current_thread().name

    first = asyncio.create_task(gate.run(slow))
    await asyncio.to_thread(started.wait, 10)
    with pytest.raises(Overloaded) as refused:
        await gate.run(str, "second")
    assert refused.value.status == 503
    release.set()
    assert (await first).startswith("verify")  # not the default pool
    assert await gate.run(str, "third") == "third"
