"""The filing-authority adapter protocol: how a filing reaches an authority, and back.

An adapter is what a plugin returns from ``sealgate_filing_adapters``. The gateway calls
``submit`` once per application (and again, with the same application id, when a previous
attempt's outcome is unknown: adapters must make that idempotent), then asks ``decision``
until the authority has decided. Adapters for authorities that decide inside the gateway
(``reviews_locally``) never decide by themselves: reviewers do, through the API.

Withdrawal is optional (:class:`WithdrawingAdapter`): an adapter with a ``withdraw`` call
tells its authority when a reviewer withdraws an application. The gateway withdraws a filing
only once the authority has confirmed it; when the authority cannot be reached nothing
changes (503, retry), and when it had decided already its decision is applied and the
withdrawal refused (409). The filing is withdrawn inside the gateway only, the audit event
saying the authority was not told and why, when the adapter has no such call (or its plugin
is gone), when the authority answers something unusable (AuthorityAnswerUnusable), and when
the application can no longer be handed over (a material lost from storage).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

Outcome = Literal["approved", "rejected"]


MAX_VALID_DAYS = 3650
"""The longest validity a receipt may grant, whoever decides (ten years)."""


class AuthorityUnavailable(Exception):
    """The authority cannot be reached, answered with a server error, or cannot be used as
    configured (wrong credentials or address); try again later."""


class AuthorityAnswerUnusable(AuthorityUnavailable):
    """The authority was reached but answered what the gateway cannot act on (a decision it
    cannot apply, a status the protocol does not know, no withdrawal call where one should
    be). A later attempt may find it fixed, as for any unavailability; a withdrawal does not
    wait for that."""


class AuthorityRefused(Exception):
    """The authority refused the application itself (invalid, or a reference it does not
    know); retrying the same request will not help, and a refused submission is rejected."""


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    comment: str = ""
    valid_days: int | None = None
    """Validity the authority grants, in days from approval; None means the gateway default."""
    reference: str = ""
    """The authority's own number for the filing, printed on the receipt."""
    withdrawn: bool = False
    """A rejection because the application was withdrawn (see WithdrawingAdapter)."""


@runtime_checkable
class FilingAdapter(Protocol):
    name: str
    """Authority id as filings name it (``"authority"`` in ``POST /v1/filings``)."""
    display_name: str
    reviews_locally: bool

    async def submit(self, application: Mapping[str, Any]) -> str:
        """Hand the application to the authority; return the authority's reference.

        ``application`` has ``id`` (stable across retries), ``action``, ``seal``, ``applicant``,
        ``legal_representative`` (with the full ID number: the authority must check it) and
        ``materials`` (kind, content_type, sha256, size, and ``content_b64``).
        Raises AuthorityUnavailable (retry later) or AuthorityRefused.
        """

    async def decision(self, reference: str) -> Decision | None:
        """The authority's decision, or None while it is still reviewing."""

    async def close(self) -> None: ...


@runtime_checkable
class WithdrawingAdapter(FilingAdapter, Protocol):
    """A FilingAdapter that can also tell its authority an application is withdrawn."""

    async def withdraw(self, reference: str, reason: str) -> Decision | None:
        """Withdraw the application under ``reference``; None once the authority no longer
        reviews it (withdrawn now or before, or a reference it does not know), or the
        decision it had made before the withdrawal reached it.

        Idempotent. Afterwards ``decision(reference)`` answers a rejection with
        ``withdrawn`` set and a comment saying why, so that a gateway that lost the answer
        learns it by polling.
        Raises AuthorityUnavailable (retry later; AuthorityAnswerUnusable when the authority
        answered, but nothing the gateway can act on) or AuthorityRefused (the authority
        will not withdraw it and goes on reviewing).
        """
