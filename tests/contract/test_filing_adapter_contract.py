"""The filing-adapter contract suite: what every adapter does, run once per adapter factory.

Each entry of :data:`FILING_ADAPTER_FACTORIES` is an async context manager that takes the
pytest request (so it can use any fixture) and yields an :class:`AuthorityUnderTest`: the
adapter, wired to its authority, plus what the suite may do to that authority. Adding an
adapter to the suite is one entry there. What an authority cannot do is left ``None``/empty
and the tests that need it are skipped; adapters that ``reviews_locally`` skip every test of
decisions made by the authority, and adapters without ``withdraw`` the tests of withdrawals.

A third-party plugin runs the suite against itself by importing the tests into a module of
its own and defining an ``authority`` fixture there that yields its AuthorityUnderTest.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Literal, Protocol

import aiohttp
import pytest

from gateway.filing.adapters import (
    AuthorityUnavailable,
    Decision,
    FilingAdapter,
    WithdrawingAdapter,
)
from gateway.settings import HttpAuthoritySettings, SecretRef
from plugins.authority_simulator import (
    ActionIn,
    MaterialMissing,
    OrganisationNameContains,
    running_simulator,
)
from plugins.http_authority import HttpAuthorityAdapter
from plugins.local_authority import LocalAuthority

# The simulator's server and the adapters' sessions must live in the loop the tests run in.
pytestmark = pytest.mark.asyncio(loop_scope="session")

Application = dict[str, Any]
FaultMode = Literal["down", "error500", "slow"]


class Outages(Protocol):
    """Makes the authority fail, as seen from the adapter."""

    async def begin(self, mode: FaultMode, requests: int | None) -> None:
        """Fail the next ``requests`` requests (None: every request until :meth:`end`).

        ``down``: no answer at all; ``error500``: a server error, nothing done; ``slow``:
        the work is done but the answer comes after the adapter's timeout.
        """

    async def end(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class RejectionCase:
    """An application the authority rejects, and a phrase its comment contains."""

    name: str
    change: Callable[[Application], Application]
    comment_contains: str


@dataclasses.dataclass
class AuthorityUnderTest:
    """One adapter wired to its authority, and what the suite may do to that authority."""

    adapter: FilingAdapter
    filings_for: Callable[[str], Awaitable[int]] | None = None
    """How many filings the authority holds for an application id; None: it keeps none."""
    rejections: Sequence[RejectionCase] = ()
    outages: Outages | None = None
    wrong_credentials: Callable[[], FilingAdapter] | None = None
    """An adapter for the same authority that presents credentials it refuses."""
    decision_wait_seconds: float = 5.0


AuthorityFactory = Callable[
    [pytest.FixtureRequest], AbstractAsyncContextManager[AuthorityUnderTest]
]

# -- the http adapter against the simulator ---------------------------------------------------

SIMULATOR_TOKEN = "contract-suite-token"
REJECTED_ORGANISATION_MARK = "测试"
REQUIRED_MATERIAL = "seal_impression"
REJECTED_ACTION = "cancel"


class SimulatorOutages:
    """Outages set through the simulator's admin endpoint, as an operator would."""

    def __init__(self, url: str, token: str, slow_seconds: float) -> None:
        self._url = url + "/admin/faults"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._slow_seconds = slow_seconds

    async def begin(self, mode: FaultMode, requests: int | None) -> None:
        body = {"mode": mode, "count": requests, "delay_seconds": self._slow_seconds}
        async with aiohttp.ClientSession(headers=self._headers) as session, \
                session.post(self._url, json=body) as response:
            assert response.status == 200, await response.text()

    async def end(self) -> None:
        async with aiohttp.ClientSession(headers=self._headers) as session, \
                session.delete(self._url) as response:
            assert response.status == 204


@contextlib.asynccontextmanager
async def http_authority(request: pytest.FixtureRequest) -> AsyncIterator[AuthorityUnderTest]:
    """The http adapter against a simulator on a free loopback port, with short delays."""
    tmp_path: Path = request.getfixturevalue("tmp_path")
    token_file, wrong_token_file = tmp_path / "authority-token", tmp_path / "wrong-token"
    token_file.write_text(SIMULATOR_TOKEN + "\n")
    wrong_token_file.write_text("not-the-token\n")
    rules = [OrganisationNameContains(REJECTED_ORGANISATION_MARK),
             MaterialMissing(REQUIRED_MATERIAL), ActionIn(frozenset({REJECTED_ACTION}))]
    async with running_simulator(SIMULATOR_TOKEN, review_delay_seconds=0.5,
                                 reject_rules=rules) as simulator:
        settings = HttpAuthoritySettings(
            url=simulator.url, token=SecretRef(file=str(token_file)), enabled=True,
            timeout_seconds=0.5, max_attempts=4, backoff_seconds=0.05,
        )
        adapters = [HttpAuthorityAdapter(settings)]

        def wrong_credentials() -> FilingAdapter:
            adapters.append(HttpAuthorityAdapter(
                dataclasses.replace(settings, token=SecretRef(file=str(wrong_token_file)))
            ))
            return adapters[-1]

        async def filings_for(application_id: str) -> int:
            return len(simulator.state.filings_for(application_id))

        try:
            yield AuthorityUnderTest(
                adapter=adapters[0],
                filings_for=filings_for,
                rejections=[
                    RejectionCase("organisation name",
                                  lambda a: with_organisation_name(a, "测试科技有限公司"),
                                  REJECTED_ORGANISATION_MARK),
                    RejectionCase("material missing",
                                  lambda a: without_material(a, REQUIRED_MATERIAL),
                                  REQUIRED_MATERIAL),
                    RejectionCase("action", lambda a: {**a, "action": REJECTED_ACTION},
                                  REJECTED_ACTION),
                ],
                outages=SimulatorOutages(simulator.url, SIMULATOR_TOKEN, slow_seconds=1.5),
                wrong_credentials=wrong_credentials,
            )
        finally:
            for adapter in adapters:
                await adapter.close()


@contextlib.asynccontextmanager
async def local_authority(request: pytest.FixtureRequest) -> AsyncIterator[AuthorityUnderTest]:
    """The local adapter: reviewers decide inside the gateway, so only submission is tested."""
    yield AuthorityUnderTest(adapter=LocalAuthority())


# The adapters under contract, by name. Add an adapter to the suite by adding its factory here.
FILING_ADAPTER_FACTORIES: dict[str, AuthorityFactory] = {
    "http": http_authority,
    "local": local_authority,
}


@pytest.fixture(params=sorted(FILING_ADAPTER_FACTORIES))
async def authority(request: pytest.FixtureRequest) -> AsyncIterator[AuthorityUnderTest]:
    """Each adapter of FILING_ADAPTER_FACTORIES in turn, wired to a fresh authority."""
    async with FILING_ADAPTER_FACTORIES[request.param](request) as under_test:
        yield under_test


# -- applications -----------------------------------------------------------------------------

_MATERIALS = {
    "business_license": ("application/pdf", b"%PDF-1.7\n% business licence\n%%EOF\n"),
    "legal_rep_id": ("image/jpeg", b"\xff\xd8\xff\xe0 legal representative id \xff\xd9"),
    "seal_impression": ("image/png", b"\x89PNG\r\n\x1a\n seal impression"),
}


def sample_application(**changes: Any) -> Application:
    """A complete, valid ``new`` application with a fresh id; ``changes`` replace top-level keys."""
    materials = [
        {"kind": kind, "content_type": content_type, "size": len(content),
         "sha256": hashlib.sha256(content).hexdigest(),
         "content_b64": base64.b64encode(content).decode("ascii")}
        for kind, (content_type, content) in _MATERIALS.items()
    ]
    application: Application = {
        "id": str(uuid.uuid4()),
        "action": "new",
        "seal": {"id": str(uuid.uuid4()), "seal_code": "3501000000001", "name": "合同专用章",
                 "type": "04",
                 "organization": {"name": "示例科技有限公司", "uscc": "91350100M000100Y43"},
                 "image_sha256": hashlib.sha256(b"seal image").hexdigest()},
        "applicant": {"name": "李四", "phone": "13800000000"},
        "legal_representative": {"name": "张三", "id_number": "11010519491231002X"},
        "materials": materials,
    }
    return {**application, **changes}


def with_organisation_name(application: Application, name: str) -> Application:
    seal = application["seal"]
    return {**application, "seal": {**seal, "organization": {**seal["organization"], "name": name}}}


def without_material(application: Application, kind: str) -> Application:
    return {**application, "materials": [m for m in application["materials"] if m["kind"] != kind]}


async def decided(authority: AuthorityUnderTest, reference: str) -> Decision:
    """Ask for the decision until there is one, as the gateway's poller does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + authority.decision_wait_seconds
    while (decision := await authority.adapter.decision(reference)) is None:
        assert loop.time() < deadline, f"no decision on {reference} in time"
        await asyncio.sleep(0.05)
    return decision


def require(condition: object, reason: str) -> None:
    if not condition:
        pytest.skip(reason)


def require_remote_review(authority: AuthorityUnderTest) -> None:
    require(not authority.adapter.reviews_locally, "reviewers decide inside the gateway")


# -- every adapter ----------------------------------------------------------------------------


async def test_adapter_satisfies_the_protocol(authority: AuthorityUnderTest) -> None:
    """The adapter is a FilingAdapter with a non-empty name and display name."""
    adapter = authority.adapter
    assert isinstance(adapter, FilingAdapter)
    assert isinstance(adapter.name, str) and adapter.name
    assert isinstance(adapter.display_name, str) and adapter.display_name
    assert isinstance(adapter.reviews_locally, bool)


async def test_submit_returns_a_reference(authority: AuthorityUnderTest) -> None:
    """Submitting a valid application returns a non-empty reference."""
    reference = await authority.adapter.submit(sample_application())
    assert isinstance(reference, str) and reference


async def test_resubmission_returns_the_same_reference(authority: AuthorityUnderTest) -> None:
    """Submitting the same application id again returns the first reference, one filing."""
    application = sample_application()
    first = await authority.adapter.submit(application)
    assert await authority.adapter.submit(application) == first
    if authority.filings_for is not None:
        assert await authority.filings_for(application["id"]) == 1


async def test_distinct_applications_get_distinct_references(
    authority: AuthorityUnderTest,
) -> None:
    """Two applications with different ids get different references."""
    first = await authority.adapter.submit(sample_application())
    second = await authority.adapter.submit(sample_application())
    assert first != second


async def test_close_of_an_unused_adapter_is_harmless(authority: AuthorityUnderTest) -> None:
    """close() works on an adapter that never sent anything, and twice."""
    adapter = authority.adapter
    await adapter.close()
    await adapter.close()


async def test_locally_reviewed_filings_wait_for_reviewers(
    authority: AuthorityUnderTest,
) -> None:
    """An adapter that reviews locally never decides by itself."""
    require(authority.adapter.reviews_locally, "the authority decides by itself")
    reference = await authority.adapter.submit(sample_application())
    assert await authority.adapter.decision(reference) is None


# -- decisions by the authority ---------------------------------------------------------------


async def test_decision_is_none_while_reviewing_then_approved(
    authority: AuthorityUnderTest,
) -> None:
    """decision() is None during review, then approved with a positive validity."""
    require_remote_review(authority)
    reference = await authority.adapter.submit(sample_application())
    assert await authority.adapter.decision(reference) is None
    decision = await decided(authority, reference)
    assert decision.outcome == "approved"
    assert isinstance(decision.valid_days, int) and decision.valid_days > 0
    assert decision.reference == reference


async def test_rejections_carry_the_authority_comment(authority: AuthorityUnderTest) -> None:
    """Each application the authority's rules reject is rejected with a comment saying why."""
    require_remote_review(authority)
    require(authority.rejections, "the authority has no rejection rules to trigger")
    references = [await authority.adapter.submit(case.change(sample_application()))
                  for case in authority.rejections]
    for case, reference in zip(authority.rejections, references, strict=True):
        decision = await decided(authority, reference)
        assert decision.outcome == "rejected", case.name
        assert case.comment_contains in decision.comment, case.name
        assert decision.valid_days is None, case.name


async def test_wrong_credentials_leave_the_authority_unavailable(
    authority: AuthorityUnderTest,
) -> None:
    """Credentials the authority refuses are the gateway's configuration, not a verdict on
    the application: AuthorityUnavailable, so the filing is retried once they are fixed."""
    require_remote_review(authority)
    require(authority.wrong_credentials, "the authority takes no credentials")
    assert authority.wrong_credentials is not None
    with pytest.raises(AuthorityUnavailable):
        await authority.wrong_credentials().submit(sample_application())


# -- outages ----------------------------------------------------------------------------------


def outages_of(authority: AuthorityUnderTest) -> Outages:
    require_remote_review(authority)
    require(authority.outages, "the authority cannot be made to fail")
    assert authority.outages is not None
    return authority.outages


@pytest.mark.parametrize("mode", ["down", "error500"])
async def test_short_outage_is_absorbed_by_retries(
    authority: AuthorityUnderTest, mode: FaultMode
) -> None:
    """Two failed requests are retried away: submit and decision still answer."""
    outages = outages_of(authority)
    application = sample_application()
    await outages.begin(mode, 2)
    reference = await authority.adapter.submit(application)
    await outages.begin(mode, 2)
    assert await authority.adapter.decision(reference) is None
    if authority.filings_for is not None:
        assert await authority.filings_for(application["id"]) == 1


async def test_lost_answer_is_retried_into_the_same_filing(
    authority: AuthorityUnderTest,
) -> None:
    """A submission whose answer came too late is retried into the same single filing."""
    outages = outages_of(authority)
    application = sample_application()
    await outages.begin("slow", 1)
    reference = await authority.adapter.submit(application)
    assert await authority.adapter.submit(application) == reference
    if authority.filings_for is not None:
        assert await authority.filings_for(application["id"]) == 1


@pytest.mark.parametrize("mode", ["down", "error500", "slow"])
async def test_long_outage_is_unavailable_and_a_later_retry_files_once(
    authority: AuthorityUnderTest, mode: FaultMode
) -> None:
    """An outage outlasting the retries raises AuthorityUnavailable; a later submit files once."""
    outages = outages_of(authority)
    application = sample_application()
    await outages.begin(mode, None)
    with pytest.raises(AuthorityUnavailable):
        await authority.adapter.submit(application)
    await outages.end()
    reference = await authority.adapter.submit(application)
    assert reference
    if authority.filings_for is not None:
        assert await authority.filings_for(application["id"]) == 1



# -- withdrawals ------------------------------------------------------------------------------


def withdrawing(authority: AuthorityUnderTest) -> WithdrawingAdapter:
    require_remote_review(authority)
    adapter = authority.adapter
    require(isinstance(adapter, WithdrawingAdapter), "the adapter cannot withdraw")
    assert isinstance(adapter, WithdrawingAdapter)
    return adapter


async def test_a_withdrawn_application_is_rejected_as_withdrawn(
    authority: AuthorityUnderTest,
) -> None:
    """withdraw() during review is None; decision() then answers a rejection flagged
    withdrawn that says why; withdrawing again is None again."""
    adapter = withdrawing(authority)
    reference = await adapter.submit(sample_application())
    assert await adapter.withdraw(reference, "filed by mistake") is None
    decision = await adapter.decision(reference)
    assert decision is not None and decision.outcome == "rejected" and decision.withdrawn
    assert "withdrawn" in decision.comment and "filed by mistake" in decision.comment
    assert await adapter.withdraw(reference, "filed by mistake") is None
    assert await adapter.decision(reference) == decision


async def test_a_decision_made_before_the_withdrawal_stands(
    authority: AuthorityUnderTest,
) -> None:
    """withdraw() after the authority decided answers that decision, which stays."""
    adapter = withdrawing(authority)
    reference = await adapter.submit(sample_application())
    decision = await decided(authority, reference)
    assert await adapter.withdraw(reference, "too late") == decision
    assert await adapter.decision(reference) == decision


async def test_a_reference_the_authority_does_not_hold_is_withdrawn(
    authority: AuthorityUnderTest,
) -> None:
    """Nothing is under review under a reference the authority does not know: None."""
    adapter = withdrawing(authority)
    assert await adapter.withdraw(f"unknown-{uuid.uuid4()}", "lost by the authority") is None


async def test_a_withdrawal_in_a_long_outage_is_unavailable(
    authority: AuthorityUnderTest,
) -> None:
    """An outage outlasting the retries raises AuthorityUnavailable; once it ends the
    withdrawal goes through."""
    outages = outages_of(authority)
    adapter = withdrawing(authority)
    reference = await adapter.submit(sample_application())
    await outages.begin("error500", None)
    with pytest.raises(AuthorityUnavailable):
        await adapter.withdraw(reference, "filed by mistake")
    await outages.end()
    answer = await adapter.withdraw(reference, "filed by mistake")
    assert answer is None or answer == await adapter.decision(reference)
