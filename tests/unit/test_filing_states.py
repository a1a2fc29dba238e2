"""The seal and filing state machines: which action is allowed when, and where each leads."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.clock import isoformat
from gateway.errors import InvalidTransition
from gateway.filing.states import (
    ACTION_RULES,
    EXPIRED,
    FILING_TRANSITIONS,
    SEAL_TRANSITIONS,
    FilingAction,
    FilingStatus,
    SealStatus,
    allowed_actions,
    check_action,
    check_filing_transition,
    is_expired,
    seal_status_on_approval,
    seal_status_on_rejection,
    seal_status_while_pending,
)
from gateway.seals.policy import effective_status

A, S = FilingAction, SealStatus
UTC = dt.UTC

# The whole table, written out: (seal status, expired) -> actions it may file.
ALLOWED = {
    (S.DRAFT, False): [A.NEW],
    (S.PENDING_FILING, False): [],
    (S.ACTIVE, False): [A.RENEW, A.CHANGE, A.SUSPEND, A.REPORT_LOSS, A.CANCEL],
    (S.ACTIVE, True): [A.RENEW, A.REPORT_LOSS, A.CANCEL],
    (S.SUSPENDED, False): [A.RESUME, A.REPORT_LOSS, A.CANCEL],
    (S.SUSPENDED, True): [A.RESUME, A.REPORT_LOSS, A.CANCEL],
    (S.LOST, False): [A.CANCEL],
    (S.LOST, True): [A.CANCEL],
    (S.CANCELLED, False): [],
    (S.CANCELLED, True): [],
}

ON_APPROVAL = {
    A.NEW: S.ACTIVE,
    A.RENEW: S.ACTIVE,
    A.CHANGE: S.ACTIVE,
    A.SUSPEND: S.SUSPENDED,
    A.RESUME: S.ACTIVE,
    A.REPORT_LOSS: S.LOST,
    A.CANCEL: S.CANCELLED,
}


def test_enumerations_are_exactly_the_documented_values() -> None:
    """Status and action values are the strings of DOMAIN.md §2 and API.md; no 'expired'."""
    assert [s.value for s in SealStatus] == [
        "draft",
        "pending_filing",
        "active",
        "suspended",
        "lost",
        "cancelled",
    ]
    assert [s.value for s in FilingStatus] == [
        "draft",
        "submitted",
        "under_review",
        "approved",
        "rejected",
    ]
    assert [a.value for a in FilingAction] == [
        "new",
        "renew",
        "change",
        "suspend",
        "resume",
        "report_loss",
        "cancel",
    ]
    assert EXPIRED not in set(SealStatus)


@pytest.mark.parametrize(("status", "expired"), list(ALLOWED))
def test_allowed_actions_match_the_table(status: SealStatus, expired: bool) -> None:
    """Each seal status (expired or not) may file exactly the actions of the table."""
    assert allowed_actions(status, expired=expired) == ALLOWED[status, expired]


@pytest.mark.parametrize(("status", "expired"), list(ALLOWED))
@pytest.mark.parametrize("action", list(FilingAction))
def test_check_action_agrees_with_allowed_actions(
    status: SealStatus, expired: bool, action: FilingAction
) -> None:
    """check_action passes for allowed actions and raises InvalidTransition otherwise."""
    if action in ALLOWED[status, expired]:
        assert check_action(status, action, expired=expired).action is action
    else:
        with pytest.raises(InvalidTransition):
            check_action(status, action, expired=expired)


def test_refusal_names_the_current_status_and_what_is_allowed() -> None:
    """Filing renew for a suspended seal says it is suspended and lists what it may file."""
    with pytest.raises(InvalidTransition) as exc:
        check_action("suspended", "renew")
    assert exc.value.detail == (
        "a seal in status 'suspended' cannot file 'renew'; it may file: resume, report_loss, cancel"
    )
    assert exc.value.status == 409


def test_refusal_for_expired_seal_says_expiry_is_the_reason() -> None:
    """Changing an expired active seal fails because of expiry, and renew is offered."""
    with pytest.raises(InvalidTransition) as exc:
        check_action(S.ACTIVE, A.CHANGE, expired=True)
    assert exc.value.detail.startswith("an expired seal cannot file 'change'")
    assert "renew" in exc.value.detail


def test_refusal_for_terminal_seal_says_nothing_is_allowed() -> None:
    """A cancelled seal may file nothing, and the message says so."""
    with pytest.raises(InvalidTransition, match="it may file: nothing"):
        check_action(S.CANCELLED, A.RESUME)


@pytest.mark.parametrize("action", list(FilingAction))
def test_approval_results(action: FilingAction) -> None:
    """Approving each action leaves the seal in the documented status."""
    rule = ACTION_RULES[action]
    assert rule.on_approval is ON_APPROVAL[action]
    start = rule.while_pending or next(iter(rule.allowed_from))
    assert seal_status_on_approval(start, action) is ON_APPROVAL[action]


def test_new_filing_moves_draft_to_pending_and_back_on_rejection() -> None:
    """Submitting 'new' makes the seal pending_filing; approval activates, rejection drafts."""
    assert seal_status_while_pending(S.DRAFT, A.NEW) is S.PENDING_FILING
    assert seal_status_on_approval(S.PENDING_FILING, A.NEW) is S.ACTIVE
    assert seal_status_on_rejection(S.PENDING_FILING, S.DRAFT, A.NEW) is S.DRAFT


@pytest.mark.parametrize("action", [a for a in FilingAction if a is not A.NEW])
def test_other_actions_keep_the_seal_status_while_pending(action: FilingAction) -> None:
    """Only 'new' moves the seal at submission; the others wait for the decision."""
    for status in ACTION_RULES[action].allowed_from:
        assert seal_status_while_pending(status, action) is status
        assert seal_status_on_rejection(status, status, action) is status


@pytest.mark.parametrize("action", list(FilingAction))
def test_a_rejection_leaves_a_seal_another_filing_moved_where_it_is(
    action: FilingAction,
) -> None:
    """Rejecting an older filing never undoes a newer one's decision (a cancelled seal stays
    cancelled when a suspension filed before the cancellation is rejected)."""
    for before in ACTION_RULES[action].allowed_from:
        for now in (S.SUSPENDED, S.LOST, S.CANCELLED):
            assert seal_status_on_rejection(now, before, action) is now


def test_only_report_loss_stops_signing_before_the_decision() -> None:
    """A reported loss stops signing at once; every other action waits for approval."""
    assert {a for a, r in ACTION_RULES.items() if r.stops_signing_while_pending} == {A.REPORT_LOSS}


def test_new_approval_requires_the_seal_to_still_be_pending() -> None:
    """Approving 'new' for a seal that is not pending_filing is refused."""
    with pytest.raises(InvalidTransition, match="status 'draft'"):
        seal_status_on_approval(S.DRAFT, A.NEW)


def test_stale_approval_cannot_revive_a_lost_seal() -> None:
    """A renewal approved after the seal was reported lost is refused, not applied."""
    with pytest.raises(InvalidTransition) as exc:
        seal_status_on_approval(S.LOST, A.RENEW)
    assert "now in status 'lost'" in exc.value.detail
    assert "active" in exc.value.detail


def test_seal_transitions_are_those_of_the_domain_diagram() -> None:
    """The status changes the rules can make are DOMAIN.md §2's, plus two documented edges."""
    diagram = {
        (S.DRAFT, S.PENDING_FILING),
        (S.PENDING_FILING, S.ACTIVE),
        (S.ACTIVE, S.SUSPENDED),
        (S.SUSPENDED, S.ACTIVE),
        (S.ACTIVE, S.LOST),
        (S.LOST, S.CANCELLED),
        (S.ACTIVE, S.CANCELLED),
        (S.SUSPENDED, S.CANCELLED),
    }
    renewals = {(S.ACTIVE, S.ACTIVE)}
    # A rejected 'new' filing returns the seal to draft, and a key can be lost while its
    # seal is suspended.
    additions = {(S.PENDING_FILING, S.DRAFT), (S.SUSPENDED, S.LOST)}
    assert diagram | renewals | additions == SEAL_TRANSITIONS


def test_cancelled_is_terminal() -> None:
    """No transition leaves cancelled."""
    assert not [edge for edge in SEAL_TRANSITIONS if edge[0] is S.CANCELLED]


def test_every_rule_says_why() -> None:
    """Each action rule carries its reason, so the table documents itself."""
    assert all(rule.why for rule in ACTION_RULES.values())


# -- filing status ------------------------------------------------------------------------

FILING_PATHS = [
    (FilingStatus.DRAFT, FilingStatus.SUBMITTED),
    (FilingStatus.SUBMITTED, FilingStatus.UNDER_REVIEW),
    (FilingStatus.UNDER_REVIEW, FilingStatus.APPROVED),
    (FilingStatus.UNDER_REVIEW, FilingStatus.REJECTED),
]


@pytest.mark.parametrize("current", list(FilingStatus))
@pytest.mark.parametrize("target", list(FilingStatus))
def test_filing_transitions_are_exactly_the_documented_ones(
    current: FilingStatus, target: FilingStatus
) -> None:
    """draft → submitted → under_review → approved | rejected, and nothing else."""
    if (current, target) in FILING_PATHS:
        check_filing_transition(current, target)
    else:
        with pytest.raises(InvalidTransition):
            check_filing_transition(current, target)


def test_filing_transition_table_matches_paths() -> None:
    """The exported table holds the same edges as the documented paths."""
    edges = {(c, t) for c, targets in FILING_TRANSITIONS.items() for t in targets}
    assert edges == set(FILING_PATHS)


def test_filing_refusal_names_current_and_allowed() -> None:
    """Approving a draft says it is a draft and may only be submitted."""
    with pytest.raises(InvalidTransition) as exc:
        check_filing_transition("draft", "approved")
    assert exc.value.detail == (
        "a filing in status 'draft' cannot move to 'approved'; it may move to: submitted"
    )


def test_filing_refusal_from_a_decision_says_it_is_final() -> None:
    """A rejected filing cannot be resubmitted; the message says the decision is final."""
    with pytest.raises(InvalidTransition) as exc:
        check_filing_transition(FilingStatus.REJECTED, FilingStatus.SUBMITTED)
    assert exc.value.detail == (
        "a filing in status 'rejected' is final; it cannot move to 'submitted'"
    )


def test_unknown_status_is_a_value_error() -> None:
    """A status string that is not one of the enumeration is a programming error."""
    with pytest.raises(ValueError, match="expired"):
        allowed_actions("expired")


# -- expiry -------------------------------------------------------------------------------

VALID_TO = dt.datetime(2026, 1, 1, tzinfo=UTC)


def test_expiry_starts_at_the_validity_end() -> None:
    """Validity is half-open: one microsecond before the end is valid, the end itself is not."""
    assert not is_expired(VALID_TO, VALID_TO - dt.timedelta(microseconds=1))
    assert is_expired(VALID_TO, VALID_TO)
    assert not is_expired(None, VALID_TO)


def test_expiry_compares_instants_across_time_zones() -> None:
    """08:00 in Beijing on 1 January is midnight UTC, the end of a UTC-midnight validity."""
    beijing = dt.timezone(dt.timedelta(hours=8))
    assert not is_expired(VALID_TO, dt.datetime(2026, 1, 1, 7, 59, 59, tzinfo=beijing))
    assert is_expired(VALID_TO, dt.datetime(2026, 1, 1, 8, 0, tzinfo=beijing))


def test_expiry_refuses_naive_times() -> None:
    """A naive datetime is a bug, reported rather than guessed at."""
    with pytest.raises(ValueError, match="timezone-aware"):
        is_expired(VALID_TO, dt.datetime(2026, 1, 2))
    with pytest.raises(ValueError, match="timezone-aware"):
        is_expired(dt.datetime(2026, 1, 1), dt.datetime.now(UTC))


def test_displayed_status_shows_expired_only_for_active_seals() -> None:
    """An active seal past its end shows 'expired'; a suspended one stays 'suspended'."""
    later = VALID_TO + dt.timedelta(days=1)
    def shown(status: str, valid_to: dt.datetime | None, now: dt.datetime) -> str:
        seal = {"status": status, "valid_to": isoformat(valid_to) if valid_to else None}
        return effective_status(seal, now)

    assert shown(S.ACTIVE, VALID_TO, later) == EXPIRED
    assert shown(S.ACTIVE, VALID_TO, VALID_TO - dt.timedelta(seconds=1)) == "active"
    assert shown(S.SUSPENDED, VALID_TO, later) == "suspended"
    assert shown(S.DRAFT, None, later) == "draft"
