"""The `local` filing authority: reviewers inside the gateway approve or reject filings.

Submission hands nothing to the outside: the application waits ``under_review`` until a client
with the ``reviewer`` role decides through ``POST /v1/filings/{id}/review``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.filing.adapters import Decision
from gateway.hookspecs import hookimpl


class LocalAuthority:
    name = "local"
    display_name = "SealGate local filing review"
    reviews_locally = True

    async def submit(self, application: Mapping[str, Any]) -> str:
        # The application id is the reference: resubmitting is naturally idempotent.
        return f"local-{application['id']}"

    async def decision(self, reference: str) -> Decision | None:
        return None

    async def close(self) -> None:
        return None


@hookimpl
def sealgate_filing_adapters() -> list[LocalAuthority]:
    return [LocalAuthority()]
