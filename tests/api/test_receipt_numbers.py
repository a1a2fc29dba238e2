"""Receipt numbers on every storage backend: issued without gaps, never twice, across races."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import gateway.filing.service
from gateway.clock import utcnow
from gateway.filing.adapters import Decision
from gateway.filing.receipts import RECEIPT, ClaimedNumber, claim_receipt_number, receipt_number
from gateway.hsm import Hsm
from gateway.pki.devca import DevCA
from gateway.settings import Settings
from gateway.storage import Record, StaleWrite, Storage, Write
from tests.api.test_filing import Filing, filing_world
from tests.conftest import on_redis


@pytest.fixture(params=["sqlite", "redis"])
async def filing(request: pytest.FixtureRequest, settings: Settings, hsm: Hsm, dev_ca: DevCA,
                 tmp_path: Path) -> AsyncIterator[Filing]:
    """A filing world on each storage backend."""
    if request.param == "redis":
        settings = on_redis(settings, request.getfixturevalue("redis_server").url)
    async with filing_world(settings, hsm, dev_ca, tmp_path) as world:
        yield world


async def under_review(filing: Filing) -> Record:
    """A new seal's filing with the local authority, as a decider reads it."""
    seal = await filing.seal()
    submitted = await filing.file(seal["id"], "new")
    record = await filing.world.services.storage.get("filing", submitted["id"])
    assert record is not None and record.data["status"] == "under_review"
    return record


def sequence(filings: Sequence[dict[str, Any]]) -> list[int]:
    """The daily sequence numbers of the filings' receipts, in order."""
    return [int(str(f["receipt_number"])[-6:]) for f in filings]


@pytest.mark.parametrize("other", [Decision("approved"), Decision("rejected", "withdrawn: x")],
                         ids=["approval", "withdrawal"])
async def test_a_decision_that_loses_its_race_issues_no_number(
    filing: Filing, other: Decision
) -> None:
    """An approval and another decision on one filing, both read before either wrote: one
    is kept, the other fails changing nothing, and the next approval gets the number after
    the last one issued."""
    services = filing.world.services
    raced = await under_review(filing)
    outcomes = await asyncio.gather(
        services.filings._decide(raced, Decision("approved"), "reviewer-1"),
        services.filings._decide(raced, other, "reviewer-2"),
        return_exceptions=True)
    assert sum(isinstance(o, StaleWrite) for o in outcomes) == 1, outcomes
    issued = [o for o in outcomes if isinstance(o, dict) and o["status"] == "approved"]
    following = await filing.approve((await under_review(filing)).key)
    assert sequence([*issued, following]) == list(range(1, len(issued) + 2))


async def test_approvals_decided_at_once_get_consecutive_numbers(filing: Filing) -> None:
    """Approvals of different filings committed at once each get a number of their own,
    with none skipped."""
    services = filing.world.services
    pending = [await under_review(filing) for _ in range(4)]
    decided = await asyncio.gather(*(
        services.filings.review(record.key, {"decision": "approve"}, f"reviewer-{n}")
        for n, record in enumerate(pending)))
    assert sorted(sequence(decided)) == [1, 2, 3, 4]
    receipts = [await services.storage.get("receipt", f["receipt_number"]) for f in decided]
    assert [r.data["application_id"] for r in receipts if r] == [r.key for r in pending]


async def test_numbering_goes_on_after_the_counter_of_an_earlier_release(
    filing: Filing,
) -> None:
    """A deployment that numbered receipts with the storage counter before an upgrade goes
    on after the last number that counter gave out that day."""
    services = filing.world.services
    await services.storage.incr(f"receipt-seq:{utcnow():%Y%m%d}", 41)
    first = await filing.approve((await under_review(filing)).key)
    second = await filing.approve((await under_review(filing)).key)
    assert sequence([first, second]) == [42, 43]


async def test_a_number_a_worker_of_the_earlier_release_took_meanwhile_is_passed_over(
    filing: Filing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During a rolling upgrade a worker of the earlier release takes the number an approval
    has just claimed from the storage counter, and stores its receipt first: the approval
    claims the next number instead of failing with 409."""
    taken: list[str] = []

    async def claimed_then_taken_by_an_older_worker(
        storage: Storage, day: dt.datetime
    ) -> ClaimedNumber:
        claimed = await claim_receipt_number(storage, day)
        if not taken:
            # What the earlier release did: count, then store the receipt under the count.
            number = receipt_number(day, await storage.incr(f"receipt-seq:{day:%Y%m%d}", 1))
            await storage.commit([Write(RECEIPT, number, 0, {"number": number})])
            taken.append(number)
        return claimed

    monkeypatch.setattr(gateway.filing.service, "claim_receipt_number",
                        claimed_then_taken_by_an_older_worker)
    approved = await filing.approve((await under_review(filing)).key)
    assert sequence([{"receipt_number": n} for n in taken]) == [1]
    assert sequence([approved]) == [2]
