"""Withdrawing a filing: the authority is told first, and its word decides what happens."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.filing.adapters import Decision, WithdrawingAdapter
from gateway.filing.materials import material_blob_key
from gateway.hsm import Hsm
from gateway.pki.devca import DevCA
from gateway.settings import Settings
from plugins.authority_simulator import Faults
from plugins.sqlite_storage import SqliteStorage
from tests.api.test_filing import Filing, UnrulyAuthority, UnrulyPlugin, filing_world
from tests.api.test_sign_pdf import assert_problem

REVIEWING_FOR_GOOD = 3600.0


@pytest.fixture
async def filing(settings: Settings, hsm: Hsm, dev_ca: DevCA, tmp_path: Path
                 ) -> AsyncIterator[Filing]:
    """A filing world with an adapter that cannot withdraw installed beside the simulator."""
    async with filing_world(settings, hsm, dev_ca, tmp_path,
                            (UnrulyPlugin(UnrulyAuthority()),)) as world:
        yield world


async def under_review(filing: Filing, authority: str = "sim") -> dict[str, Any]:
    """A new seal's filing that the authority goes on reviewing."""
    filing.simulator.state.review_delay_seconds = REVIEWING_FOR_GOOD
    seal = await filing.seal()
    submitted = await filing.file(seal["id"], "new", authority=authority)
    assert submitted["status"] == "under_review"
    return submitted


async def not_handed_over(filing: Filing) -> dict[str, Any]:
    """A new seal's filing still ``submitted``: the authority was away when it was submitted
    (and goes on reviewing what it gets)."""
    filing.simulator.state.review_delay_seconds = REVIEWING_FOR_GOOD
    filing.simulator.state.faults = Faults("error500")
    seal = await filing.seal()
    submitted = await filing.file(seal["id"], "new", authority="sim")
    assert submitted["status"] == "submitted"
    filing.simulator.state.faults = None
    return submitted


async def withdraw(filing: Filing, filing_id: str, reason: str = "filed by mistake") -> Any:
    return await filing.world.http.post(f"/v1/filings/{filing_id}/withdraw",
                                        headers=filing.reviewer, json={"reason": reason})


async def last_event(filing: Filing) -> dict[str, Any]:
    event = await filing.world.services.storage.last_event()
    assert event is not None
    return event


async def test_a_withdrawal_reaches_the_authority(filing: Filing) -> None:
    """The authority withdraws the application before the gateway rejects the filing; the
    audit event says the authority was told, and polling later changes nothing."""
    submitted = await under_review(filing)
    response = await withdraw(filing, submitted["id"])
    assert response.status == 200, await response.text()
    assert (await response.json())["decision"]["comment"] == "withdrawn: filed by mistake"
    held = filing.simulator.state.filings[submitted["reference"]]
    assert held.withdrawal == "filed by mistake"
    event = await last_event(filing)
    assert event["action"] == "filing.rejected"
    assert event["details"]["withdrawn"] is True
    assert event["details"]["authority_told"] is True
    filing.simulator.state.review_delay_seconds = 0.0
    assert await filing.world.services.filings.process_pending() == 0
    seal = await filing.world.services.seals.record(submitted["seal_id"])
    assert seal.data["status"] == "draft"


async def test_the_authority_s_earlier_decision_stands(filing: Filing) -> None:
    """An authority that decided before the withdrawal reached it: its decision is applied
    (receipt and all, audited as the authority's) and the withdrawal refused with 409."""
    submitted = await under_review(filing)
    filing.simulator.state.review_delay_seconds = 0.0
    refused = await withdraw(filing, submitted["id"], "too late")
    body = await assert_problem(refused, 409, "conflict")
    assert "approved" in body["detail"]
    shown = await filing.world.services.filings.get(submitted["id"])
    assert shown["status"] == "approved" and shown["receipt_number"]
    event = await last_event(filing)
    assert (event["action"], event["actor"]) == ("filing.approved", "authority:sim")


async def test_a_withdrawal_the_authority_cannot_hear_changes_nothing(filing: Filing) -> None:
    """While the authority cannot be reached the withdrawal is refused with 503 and nothing
    is written; once it is back the withdrawal goes through."""
    submitted = await under_review(filing)
    before = await last_event(filing)
    filing.simulator.state.faults = Faults("error500")
    refused = await withdraw(filing, submitted["id"])
    await assert_problem(refused, 503, "authority-unavailable")
    assert (await filing.world.services.filings.get(submitted["id"]))["status"] == \
        "under_review"
    assert await last_event(filing) == before
    filing.simulator.state.faults = None
    assert (await withdraw(filing, submitted["id"])).status == 200


async def test_a_filing_not_yet_handed_over_is_handed_over_and_withdrawn(
    filing: Filing,
) -> None:
    """A filing still ``submitted`` (the authority was away, or its answer lost) is handed
    over first, so that an application the authority holds is withdrawn there too."""
    submitted = await not_handed_over(filing)
    response = await withdraw(filing, submitted["id"])
    assert response.status == 200, await response.text()
    held = filing.simulator.state.filings_for(submitted["id"])
    assert [f.withdrawal for f in held] == ["filed by mistake"]


@pytest.mark.parametrize("damage", ["lost", "damaged"])
async def test_a_filing_that_can_no_longer_be_handed_over_is_withdrawn_in_the_gateway(
    filing: Filing, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    """A submitted filing one of whose materials can no longer be read (gone from storage,
    or its bytes damaged) never reaches the authority, and the poller leaves it to a person:
    the withdrawal rejects it in the gateway, its audit event saying why the authority was
    not told."""
    submitted = await not_handed_over(filing)
    storage = filing.world.services.storage
    blob = material_blob_key(submitted["id"], submitted["materials"]["legal_rep_id"]["sha256"])
    if damage == "lost":
        assert isinstance(storage, SqliteStorage)  # no Storage call deletes a blob
        with sqlite3.connect(storage.path) as db:
            db.execute("DELETE FROM blobs WHERE key = ?", (blob,))
    else:
        await storage.put_blob(blob, b"damaged")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert await filing.world.services.filings.process_pending() == 0
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "is missing from storage, damaged" in caplog.records[0].getMessage()
    response = await withdraw(filing, submitted["id"])
    assert response.status == 200, await response.text()
    assert (await response.json())["decision"]["withdrawn"] is True
    details = (await last_event(filing))["details"]
    assert details["authority_told"] is False
    assert "cannot be handed over: material" in details["not_told_because"]
    assert filing.simulator.state.filings_for(submitted["id"]) == []


async def test_a_decision_the_gateway_cannot_apply_does_not_hold_the_withdrawal(
    filing: Filing,
) -> None:
    """An authority that decided what the gateway cannot apply (a validity past ten years)
    was reached all the same: the withdrawal is not refused as unreachable but rejects the
    filing in the gateway, its audit event saying what the authority answered."""
    submitted = await under_review(filing)
    filing.simulator.state.valid_days = 5000
    filing.simulator.state.review_delay_seconds = 0.0
    assert await filing.world.services.filings.process_pending() == 0
    response = await withdraw(filing, submitted["id"])
    assert response.status == 200, await response.text()
    shown = await response.json()
    assert shown["status"] == "rejected" and shown["decision"]["withdrawn"] is True
    details = (await last_event(filing))["details"]
    assert details["authority_told"] is False
    assert "5000" in details["not_told_because"]


async def test_a_withdrawal_confirmed_but_not_recorded_is_learnt_by_polling(
    filing: Filing,
) -> None:
    """A gateway that stopped after the authority confirmed the withdrawal, before its own
    commit: the poller finds the filing withdrawn at the authority and rejects it."""
    submitted = await under_review(filing)
    adapter = filing.world.services.filings.adapters["sim"]
    assert isinstance(adapter, WithdrawingAdapter)
    assert await adapter.withdraw(submitted["reference"], "filed by mistake") is None
    assert await filing.world.services.filings.process_pending() == 1
    shown = await filing.world.services.filings.get(submitted["id"])
    assert shown["status"] == "rejected"
    assert shown["decision"]["comment"] == "withdrawn: filed by mistake"
    assert shown["decision"]["withdrawn"] is True
    event = await last_event(filing)
    assert event["actor"] == "authority:sim" and event["details"]["withdrawn"] is True


async def test_a_withdrawal_whose_rejection_the_poller_commits_first_is_the_reviewer_s(
    filing: Filing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker's poller learns of the withdrawal the moment the authority has
    confirmed it, and commits the rejection first: the withdrawal still answers 200, and
    the audit log goes on with who withdrew the filing."""
    submitted = await under_review(filing)
    service = filing.world.services.filings
    adapter = service.adapters["sim"]
    assert isinstance(adapter, WithdrawingAdapter)
    confirm = adapter.withdraw

    async def confirmed_then_polled(reference: str, reason: str) -> Decision | None:
        confirmed = await confirm(reference, reason)
        assert await service.process_pending() == 1
        return confirmed

    monkeypatch.setattr(adapter, "withdraw", confirmed_then_polled)
    before = await last_event(filing)
    response = await withdraw(filing, submitted["id"])
    assert response.status == 200, await response.text()
    shown = await response.json()
    assert shown["status"] == "rejected" and shown["decision"]["withdrawn"] is True
    events = await filing.world.services.storage.events(since_seq=before["seq"])
    assert [e["action"] for e in events] == ["filing.rejected", "filing.withdrawn"]
    polled, withdrawn = events
    assert polled["actor"] == "authority:sim" and polled["details"]["withdrawn"] is True
    assert withdrawn["actor"].startswith("reviewer-")
    assert withdrawn["target"] == f"filing/{submitted['id']}"
    assert withdrawn["details"]["authority_told"] is True
    assert (await filing.world.services.audit.verify()).intact


async def test_an_authority_that_cannot_withdraw_is_not_told(filing: Filing) -> None:
    """An adapter without ``withdraw``: the filing is withdrawn in the gateway only, and
    the audit event says the authority was not told."""
    submitted = await under_review(filing, "unruly")
    response = await withdraw(filing, submitted["id"])
    assert response.status == 200, await response.text()
    details = (await last_event(filing))["details"]
    assert details["authority_told"] is False
    assert "no withdrawal call" in details["not_told_because"]


async def test_a_locally_reviewed_filing_is_withdrawn_in_the_gateway(filing: Filing) -> None:
    """The local authority is the gateway itself: nothing to tell, the withdrawal audited."""
    submitted = await under_review(filing, "local")
    response = await withdraw(filing, submitted["id"])
    assert response.status == 200, await response.text()
    details = (await last_event(filing))["details"]
    assert details["withdrawn"] is True and "authority_told" not in details
