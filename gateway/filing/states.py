"""The seal and filing state machines, as data and pure functions (DOMAIN.md §2).

A seal's status changes only through filings: each filing action is allowed from some seal
statuses, may move the seal while the authority reviews it, and decides the seal's status
when approved. A filing itself moves ``draft → submitted → under_review → approved |
rejected``; a rejected filing stays rejected and the filer makes a new draft.

``expired`` is not a stored status: a seal whose validity end has passed is still ``active``
(or ``suspended``) in storage and is *shown* as expired
(:func:`gateway.seals.policy.effective_status`).
Storing it would need a job to flip it at the right instant and would race with renewals;
deriving it from the clock cannot be stale.

Nothing here reads storage or the clock implicitly: callers pass the current status, whether
the seal is expired, and ``now``, so every rule is testable as a table.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.errors import InvalidTransition


class SealStatus(enum.StrEnum):
    """What storage records about a seal's legal life."""

    DRAFT = "draft"
    PENDING_FILING = "pending_filing"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    LOST = "lost"
    CANCELLED = "cancelled"


EXPIRED = "expired"
"""Shown instead of ``active`` once the validity end has passed; never stored."""


class FilingStatus(enum.StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    UNDER_REVIEW = "under_review"
    APPROVED = "approved"
    REJECTED = "rejected"


class FilingAction(enum.StrEnum):
    NEW = "new"
    RENEW = "renew"
    CHANGE = "change"
    SUSPEND = "suspend"
    RESUME = "resume"
    REPORT_LOSS = "report_loss"
    CANCEL = "cancel"


@dataclass(frozen=True)
class ActionRule:
    """What one filing action needs and does to the seal it is filed for."""

    action: FilingAction
    allowed_from: frozenset[SealStatus]
    """Seal statuses from which a filing with this action may be created and submitted."""
    allowed_when_expired: bool
    """Whether the action may be filed once the seal's validity end has passed."""
    on_approval: SealStatus
    """The seal's status once the authority approves."""
    while_pending: SealStatus | None = None
    """The seal's status from submission until the decision; None keeps its status."""
    stops_signing_while_pending: bool = False
    """Whether the seal must refuse to sign from submission on, before any decision."""
    why: str = ""


_S = SealStatus
_ACTIVE_OR_SUSPENDED = frozenset({_S.ACTIVE, _S.SUSPENDED})

ACTION_RULES: Mapping[FilingAction, ActionRule] = MappingProxyType(
    {
        rule.action: rule
        for rule in (
            ActionRule(
                FilingAction.NEW,
                frozenset({_S.DRAFT}),
                allowed_when_expired=False,
                while_pending=_S.PENDING_FILING,
                on_approval=_S.ACTIVE,
                why="a seal is filed once, right after it is made (Art. 17); pending_filing "
                "marks that the authority has it, and a rejection returns it to draft",
            ),
            ActionRule(
                FilingAction.RENEW,
                frozenset({_S.ACTIVE}),
                allowed_when_expired=True,
                on_approval=_S.ACTIVE,
                why="renewal extends the validity of a seal in use, including one whose "
                "validity has just run out, which is the case renewal exists for",
            ),
            ActionRule(
                FilingAction.CHANGE,
                frozenset({_S.ACTIVE}),
                allowed_when_expired=False,
                on_approval=_S.ACTIVE,
                why="changing the filed details of a seal in force; an expired seal is renewed "
                "first, so that one receipt never both extends and alters a seal",
            ),
            ActionRule(
                FilingAction.SUSPEND,
                frozenset({_S.ACTIVE}),
                allowed_when_expired=False,
                on_approval=_S.SUSPENDED,
                why="suspension (停用) stops a seal in force; an expired seal already signs "
                "nothing, so there is nothing to suspend",
            ),
            ActionRule(
                FilingAction.RESUME,
                frozenset({_S.SUSPENDED}),
                allowed_when_expired=True,
                on_approval=_S.ACTIVE,
                why="restoring (恢复) undoes a suspension; allowed after expiry too, since "
                "renewal starts from active and this is the way back there",
            ),
            ActionRule(
                FilingAction.REPORT_LOSS,
                _ACTIVE_OR_SUSPENDED,
                allowed_when_expired=True,
                on_approval=_S.LOST,
                stops_signing_while_pending=True,
                why="a lost seal no longer meets Art. 13 (sole control of the key) from the "
                "moment it is reported, so it stops signing before the authority decides; "
                "expiry does not matter because the key still exists",
            ),
            ActionRule(
                FilingAction.CANCEL,
                _ACTIVE_OR_SUSPENDED | {_S.LOST},
                allowed_when_expired=True,
                on_approval=_S.CANCELLED,
                why="cancellation (注销) ends a seal for good, e.g. when its organisation is "
                "renamed, dissolved or merged (Art. 18); possible from every filed state, "
                "and the only way out of lost",
            ),
        )
    }
)

FILING_TRANSITIONS: Mapping[FilingStatus, frozenset[FilingStatus]] = MappingProxyType(
    {
        FilingStatus.DRAFT: frozenset({FilingStatus.SUBMITTED}),
        FilingStatus.SUBMITTED: frozenset({FilingStatus.UNDER_REVIEW}),
        FilingStatus.UNDER_REVIEW: frozenset({FilingStatus.APPROVED, FilingStatus.REJECTED}),
        # Decisions are final; a rejected application is answered with a new draft, so that the
        # record of what was rejected, and why, never changes.
        FilingStatus.APPROVED: frozenset(),
        FilingStatus.REJECTED: frozenset(),
    }
)


def _seal_edges() -> frozenset[tuple[SealStatus, SealStatus]]:
    edges: set[tuple[SealStatus, SealStatus]] = set()
    for rule in ACTION_RULES.values():
        for start in rule.allowed_from:
            reviewed = rule.while_pending or start
            if reviewed != start:
                edges.add((start, reviewed))
                edges.add((reviewed, start))  # rejected
            edges.add((reviewed, rule.on_approval))
    return frozenset(edges)


SEAL_TRANSITIONS: frozenset[tuple[SealStatus, SealStatus]] = _seal_edges()
"""Every (from, to) seal status change the filing rules can make, self-loops included."""


def _names(values: Iterable[object]) -> str:
    items = [str(v) for v in values]
    return ", ".join(items) if items else "nothing"


def allowed_actions(status: SealStatus | str, *, expired: bool = False) -> list[FilingAction]:
    """The actions a seal in ``status`` may file, in declaration order."""
    status = SealStatus(status)
    return [
        rule.action
        for rule in ACTION_RULES.values()
        if status in rule.allowed_from and (rule.allowed_when_expired or not expired)
    ]


def check_action(
    status: SealStatus | str, action: FilingAction | str, *, expired: bool = False
) -> ActionRule:
    """Return the rule for filing ``action`` on a seal in ``status``, or raise InvalidTransition.

    Called when a filing is created and again when it is submitted, since the seal may have
    moved in between.
    """
    status, action = SealStatus(status), FilingAction(action)
    rule = ACTION_RULES[action]
    if status in rule.allowed_from and (rule.allowed_when_expired or not expired):
        return rule
    allowed = _names(allowed_actions(status, expired=expired))
    if status in rule.allowed_from:
        raise InvalidTransition(
            f"an expired seal cannot file '{action}'; a seal in status '{status}' whose "
            f"validity has ended may file: {allowed}"
        )
    raise InvalidTransition(
        f"a seal in status '{status}' cannot file '{action}'; it may file: {allowed}"
    )


def seal_status_while_pending(status: SealStatus | str, action: FilingAction | str) -> SealStatus:
    """The seal's status from the filing's submission until its decision."""
    status = SealStatus(status)
    return ACTION_RULES[FilingAction(action)].while_pending or status


def seal_status_on_approval(status: SealStatus | str, action: FilingAction | str) -> SealStatus:
    """The seal's status after the authority approves ``action``; ``status`` is its status now.

    Raises InvalidTransition when the seal has meanwhile left the statuses the action starts
    from (e.g. a renewal approved after a loss report was approved), so that an old decision
    can never revive a seal. Expiry is not checked again: the authority has decided.
    """
    status, action = SealStatus(status), FilingAction(action)
    rule = ACTION_RULES[action]
    expected = {rule.while_pending} if rule.while_pending else set(rule.allowed_from)
    if status not in expected:
        raise InvalidTransition(
            f"a '{action}' filing cannot be applied to a seal now in status '{status}'; "
            f"it applies to a seal in status {_names(sorted(expected))}"
        )
    return rule.on_approval


def seal_status_on_rejection(
    status: SealStatus | str, status_before_submission: SealStatus | str,
    action: FilingAction | str,
) -> SealStatus:
    """The seal's status after a rejection; ``status`` is its status now.

    A rejection undoes only what its own filing did: a seal still in the action's pending
    status goes back to where it was before submission, and any other seal stays as it is.
    Other filings for the same seal may have been decided meanwhile (a suspension still
    under review when a cancellation was approved), and rejecting the older one must not
    bring back the status the newer one ended.
    """
    status = SealStatus(status)
    pending = ACTION_RULES[FilingAction(action)].while_pending
    return SealStatus(status_before_submission) if status == pending else status


def check_filing_transition(current: FilingStatus | str, target: FilingStatus | str) -> None:
    """Raise InvalidTransition unless a filing may move from ``current`` to ``target``."""
    current, target = FilingStatus(current), FilingStatus(target)
    allowed = FILING_TRANSITIONS[current]
    if target in allowed:
        return
    if not allowed:
        raise InvalidTransition(
            f"a filing in status '{current}' is final; it cannot move to '{target}'"
        )
    order = [s for s in FilingStatus if s in allowed]
    raise InvalidTransition(
        f"a filing in status '{current}' cannot move to '{target}'; it may move to: {_names(order)}"
    )


def is_expired(valid_to: dt.datetime | None, now: dt.datetime) -> bool:
    """Whether the validity period ending at ``valid_to`` has passed at ``now``.

    Validity is half-open, ``[valid_from, valid_to)``, as :func:`gateway.seals.policy.may_sign`
    applies it, so that a renewal starting at the old end leaves neither gap nor overlap and
    a seal never counts as expired here while it may still sign there (or the reverse).

    Both must be timezone-aware: comparing a naive time with an aware one is a bug that
    would otherwise surface only as a wrong answer eight hours a day.
    """
    if now.tzinfo is None or (valid_to is not None and valid_to.tzinfo is None):
        raise ValueError("validity times must be timezone-aware")
    return valid_to is not None and now >= valid_to


__all__ = [
    "ACTION_RULES",
    "EXPIRED",
    "FILING_TRANSITIONS",
    "SEAL_TRANSITIONS",
    "ActionRule",
    "FilingAction",
    "FilingStatus",
    "SealStatus",
    "allowed_actions",
    "check_action",
    "check_filing_transition",
    "is_expired",
    "seal_status_on_approval",
    "seal_status_on_rejection",
    "seal_status_while_pending",
]
