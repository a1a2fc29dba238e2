"""Calls into filing-authority adapters, as the filing service makes them: each bounded in
time, each answer checked before the gateway acts on it. A plugin that hangs, raises what the
adapter contract does not allow, or answers something unusable amounts to an authority that
is unavailable: the filing stays as it was and is tried again later. An unusable answer is
AuthorityAnswerUnusable, since the authority was reached: a withdrawal does not wait for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from gateway.filing.adapters import (
    MAX_VALID_DAYS,
    AuthorityAnswerUnusable,
    AuthorityRefused,
    AuthorityUnavailable,
    Decision,
    FilingAdapter,
    WithdrawingAdapter,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long one call into an authority adapter may take before it counts as unavailable. A
# bound on plugins that hang, not a tuning knob: the http adapter's own retries
# ([filing.http] timeout_seconds × max_attempts, plus backoff) end well inside it.
ADAPTER_TIMEOUT_SECONDS = 60.0


async def _bounded(adapter: FilingAdapter, about: str, call: Callable[[], Awaitable[T]]) -> T:
    """An adapter call that ends within ADAPTER_TIMEOUT_SECONDS, and whose exceptions other
    than the two of the adapter contract become AuthorityUnavailable."""
    try:
        async with asyncio.timeout(ADAPTER_TIMEOUT_SECONDS):
            return await call()
    except (AuthorityUnavailable, AuthorityRefused):
        raise
    except Exception as exc:
        raise _adapter_failed(adapter, about, exc) from exc


async def submit(adapter: FilingAdapter, application: Mapping[str, Any]) -> str:
    """``adapter.submit``, bounded in time, its answer checked: whatever a plugin does wrong
    leaves the filing ``submitted`` for the poller to try again."""
    reference: object = await _bounded(adapter, f"application {application.get('id')}",
                                       lambda: adapter.submit(application))
    if not isinstance(reference, str) or not reference.strip():
        log.error("authority %s answered application %s with no reference: %r",
                  adapter.name, application.get("id"), reference)
        raise AuthorityAnswerUnusable(f"authority {adapter.name} sent no reference")
    return reference


async def decision(adapter: FilingAdapter, reference: str) -> Decision | None:
    """``adapter.decision``, bounded in time, its answer checked as :func:`submit`'s: a
    decision the gateway cannot apply as given leaves the filing under review."""
    answer: object = await _bounded(adapter, reference, lambda: adapter.decision(reference))
    return _usable(adapter, reference, answer)


async def withdraw(adapter: WithdrawingAdapter, reference: str, reason: str) -> Decision | None:
    """``adapter.withdraw``, bounded in time, a decision it answers checked as
    :func:`decision`'s."""
    answer: object = await _bounded(adapter, reference,
                                    lambda: adapter.withdraw(reference, reason))
    return _usable(adapter, reference, answer)


def _usable(adapter: FilingAdapter, reference: str, decision: object) -> Decision | None:
    """An adapter's answer of "a decision or None" as a Decision the gateway may apply;
    AuthorityAnswerUnusable when it is neither."""
    if decision is None:
        return None
    fault = _decision_fault(decision)
    if fault or not isinstance(decision, Decision):
        # Not the decision itself: its comment may quote personal numbers.
        log.error("authority %s sent an unusable decision on %s (%s)",
                  adapter.name, reference, fault)
        raise AuthorityAnswerUnusable(
            f"authority {adapter.name} sent an unusable decision: {fault}")
    return decision


def _adapter_failed(adapter: FilingAdapter, about: str, exc: Exception) -> AuthorityUnavailable:
    """A timeout, or an exception no adapter should raise (a plugin's bug), as the
    unavailability it amounts to: the filing is tried again later."""
    if isinstance(exc, TimeoutError):
        return AuthorityUnavailable(
            f"authority {adapter.name} did not answer within {ADAPTER_TIMEOUT_SECONDS:g} s")
    log.error("authority %s failed on %s", adapter.name, about, exc_info=exc)
    return AuthorityUnavailable(f"authority {adapter.name} failed: {type(exc).__name__}")


def _decision_fault(decision: object) -> str:
    """What makes an adapter's answer no Decision the gateway may apply; "" when none."""
    if not isinstance(decision, Decision):
        return f"a {type(decision).__name__}, not a Decision"
    if decision.outcome not in ("approved", "rejected"):
        return f"outcome {decision.outcome!r} is neither approved nor rejected"
    days = decision.valid_days
    if days is not None and (
        not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_VALID_DAYS
    ):
        return f"valid_days {days!r} is not a whole number of days, 1 to {MAX_VALID_DAYS}"
    if not isinstance(decision.comment, str) or not isinstance(decision.reference, str):
        return "comment and reference must be strings"
    if not isinstance(decision.withdrawn, bool) or (
            decision.withdrawn and decision.outcome != "rejected"):
        return f"withdrawn {decision.withdrawn!r} is no rejection's flag"
    return ""
