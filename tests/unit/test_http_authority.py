"""The http filing adapter and the authority simulator: retries, refusals, secrecy, plugins."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import stat
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.errors import ConfigError
from gateway.filing.adapters import (
    AuthorityAnswerUnusable,
    AuthorityRefused,
    AuthorityUnavailable,
    Decision,
)
from gateway.hookspecs import hookimpl
from gateway.plugins import filing_adapters, plugin_manager
from gateway.settings import HttpAuthoritySettings, SecretRef, Settings, load_settings
from plugins.authority_simulator import (
    ActionIn,
    MaterialMissing,
    OrganisationNameContains,
    RunningSimulator,
    argument_parser,
    main,
    read_or_create_token,
    rules_from_arguments,
    running_simulator,
)
from plugins.http_authority import (
    MAX_BACKOFF_SECONDS,
    HttpAuthorityAdapter,
    backoff_delay,
)
from tests.contract.test_filing_adapter_contract import sample_application

# Async tests run in the session loop that the async fixtures use: the servers and the
# adapters' sessions must live in the loop the tests run in.
in_session_loop = pytest.mark.asyncio(loop_scope="session")

TOKEN = "unit-test-authority-token"
TOKEN_ENV = "SEALGATE_TEST_AUTHORITY_TOKEN"
ID_NUMBER = "11010519491231002X"


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> SecretRef:
    """The adapter's token, kept in an environment variable."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return SecretRef(env=TOKEN_ENV)


def adapter_settings(url: str, token: SecretRef, **changes: Any) -> HttpAuthoritySettings:
    values: dict[str, Any] = {"timeout_seconds": 0.5, "max_attempts": 3, "backoff_seconds": 0.01,
                              "enabled": True, **changes}
    return HttpAuthoritySettings(url=url, token=token, **values)


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    """A simulator that rejects organisations named 测试 and decides after 0.3 s."""
    async with running_simulator(TOKEN, review_delay_seconds=0.3,
                                 reject_rules=[OrganisationNameContains("测试")]) as running:
        yield running


@pytest.fixture
async def adapter(simulator: RunningSimulator, token_env: SecretRef
                  ) -> AsyncIterator[HttpAuthorityAdapter]:
    """An http adapter pointed at the simulator."""
    under_test = HttpAuthorityAdapter(adapter_settings(simulator.url, token_env))
    yield under_test
    await under_test.close()


@contextlib.asynccontextmanager
async def serving(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> AsyncIterator[str]:
    """Serve one handler for every path on a free loopback port; yields the base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def call(simulator: RunningSimulator, method: str, path: str, *, token: str | None = TOKEN,
               **kwargs: Any) -> tuple[int, Any, Any]:
    """Status, JSON body (or None) and headers of one raw request to the simulator."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.request(
        method, simulator.url + path, headers=headers, **kwargs
    ) as response:
        text = await response.text()
        body = await response.json(content_type=None) if text else None
        return response.status, body, response.headers


# -- backoff and masking ----------------------------------------------------------------------


def test_backoff_doubles_with_jitter_in_the_upper_half() -> None:
    """Each wait lies between half and all of base·2^(n−1)."""
    rng = random.Random(7)
    for attempt in range(1, 6):
        ceiling = 0.5 * 2 ** (attempt - 1)
        assert ceiling / 2 <= backoff_delay(attempt, 0.5, rng) <= ceiling


def test_backoff_is_capped() -> None:
    """No wait exceeds MAX_BACKOFF_SECONDS, however many attempts failed."""
    assert backoff_delay(40, 1.0, random.Random(1)) <= MAX_BACKOFF_SECONDS


# -- configuration and plugins ----------------------------------------------------------------


def test_a_url_that_is_not_http_is_a_config_error() -> None:
    """The adapter refuses to start with a URL it could never reach."""
    with pytest.raises(ConfigError, match=r"filing\.http\.url"):
        HttpAuthorityAdapter(HttpAuthoritySettings(url="ftp://authority.example"))


def enabled(settings: Settings, **changes: Any) -> Settings:
    http = dataclasses.replace(settings.filing.http, enabled=True, **changes)
    return settings.replace(filing=dataclasses.replace(settings.filing, http=http))


def test_the_hook_provides_the_adapter_only_when_enabled() -> None:
    """filing_adapters() has the http adapter under its configured name iff it is enabled."""
    settings = load_settings(environ={})
    assert "sim" not in filing_adapters(plugin_manager(), settings)
    adapters = filing_adapters(plugin_manager(), enabled(settings, name="provincial"))
    assert isinstance(adapters["provincial"], HttpAuthorityAdapter)
    assert adapters["provincial"].display_name == settings.filing.http.display_name


class ThirdPartyAuthority:
    """An adapter from outside the package, as another distribution would ship it."""

    name = "elsewhere"
    display_name = "An authority SealGate does not ship"
    reviews_locally = False

    async def submit(self, application: Any) -> str:
        return "ELSEWHERE-1"

    async def decision(self, reference: str) -> Decision | None:
        return Decision("approved", valid_days=30, reference=reference)

    async def close(self) -> None:
        return None


class ThirdPartyPlugin:
    @hookimpl
    def sealgate_filing_adapters(self) -> list[ThirdPartyAuthority]:
        return [ThirdPartyAuthority()]


def test_a_third_party_adapter_registers_through_the_plugin_manager() -> None:
    """A plugin object passed to plugin_manager(extra=…) adds its adapter beside the built-ins."""
    adapters = filing_adapters(plugin_manager(extra=(ThirdPartyPlugin(),)),
                               load_settings(environ={}))
    assert isinstance(adapters["elsewhere"], ThirdPartyAuthority)
    assert "local" in adapters


# -- the adapter against the simulator --------------------------------------------------------


@in_session_loop
async def test_resubmission_is_counted_once_as_a_filing(
    adapter: HttpAuthorityAdapter, simulator: RunningSimulator
) -> None:
    """The simulator counts both submissions of one application but holds one filing."""
    application = sample_application()
    await adapter.submit(application)
    await adapter.submit(types.MappingProxyType(application))
    assert simulator.state.submissions[application["id"]] == 2
    assert len(simulator.state.filings_for(application["id"])) == 1


@in_session_loop
async def test_an_invalid_application_is_refused_with_the_authority_reason(
    adapter: HttpAuthorityAdapter,
) -> None:
    """A 422 becomes AuthorityRefused naming the field, and never the ID number sent."""
    application = sample_application(
        legal_representative={"name": "张三", "id_number": ID_NUMBER[:-1] + "5"}
    )
    with pytest.raises(AuthorityRefused, match=r"HTTP 422.*legal_representative\.id_number") \
            as refused:
        await adapter.submit(application)
    assert ID_NUMBER[:-1] not in str(refused.value)


@in_session_loop
async def test_an_unknown_reference_is_refused(adapter: HttpAuthorityAdapter) -> None:
    """Asking about a reference the authority never gave is AuthorityRefused (404)."""
    with pytest.raises(AuthorityRefused, match="HTTP 404"):
        await adapter.decision("SIM-19700101-000000")


def not_found() -> web.Response:
    """What many servers answer for a path they do not serve: a problem document."""
    return web.Response(status=404, content_type="application/problem+json",
                        text=json.dumps({"type": "about:blank", "title": "Not Found",
                                         "status": 404, "detail": "no such route"}))


@pytest.mark.parametrize(("shown", "withdrawn"), [
    (None, None),
    ("withdrawn", None),
    ("rejected", Decision("rejected", "incomplete", None, "REF-1")),
], ids=["unknown", "withdrawn", "decided"])
@in_session_loop
async def test_a_404_to_a_withdrawal_is_read_from_what_the_authority_shows(
    token_env: SecretRef, shown: str | None, withdrawn: Decision | None
) -> None:
    """A 404 problem document to a withdrawal is a withdrawal done once the authority shows
    no filing under the reference, or shows it withdrawn; a decision it shows stands."""
    async def authority(request: web.Request) -> web.Response:
        if request.method == "GET" and shown is not None:
            return web.json_response({"reference": "REF-1", "status": shown,
                                      "comment": "incomplete", "valid_days": None})
        return not_found()

    async with serving(authority) as url:
        adapter = HttpAuthorityAdapter(adapter_settings(url, token_env))
        assert await adapter.withdraw("REF-1", "filed by mistake") == withdrawn
        await adapter.close()


@in_session_loop
async def test_an_authority_without_withdrawals_is_not_taken_to_have_withdrawn(
    token_env: SecretRef, caplog: pytest.LogCaptureFixture
) -> None:
    """An authority whose server answers every path it lacks with a 404 problem document,
    the withdrawal's too, and still shows the filing under review has no withdrawal call:
    an unusable answer, logged as an error naming what to check, not a withdrawal."""
    seen: list[str] = []

    async def without_withdrawals(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        if request.method == "GET" and request.path == "/api/v1/filings/REF-1":
            return web.json_response({"reference": "REF-1", "status": "under_review",
                                      "comment": "", "valid_days": None})
        return not_found()

    async with serving(without_withdrawals) as url:
        adapter = HttpAuthorityAdapter(adapter_settings(url, token_env))
        with caplog.at_level(logging.ERROR, logger="plugins.http_authority"), \
                pytest.raises(AuthorityAnswerUnusable, match="no withdrawal call") as unusable:
            await adapter.withdraw("REF-1", "filed by mistake")
        await adapter.close()
    assert seen == ["POST /api/v1/filings/REF-1/withdrawal", "GET /api/v1/filings/REF-1"]
    assert [r.getMessage() for r in caplog.records] == [f"filing {unusable.value}"]


@in_session_loop
async def test_a_rate_limit_is_waited_out(
    adapter: HttpAuthorityAdapter, simulator: RunningSimulator
) -> None:
    """429 answers are retried like server errors."""
    status, _, _ = await call(simulator, "POST", "/admin/faults",
                              json={"mode": "throttle", "count": 2, "delay_seconds": 0})
    assert status == 200
    assert await adapter.submit(sample_application())


@in_session_loop
async def test_the_authority_decision_is_read(adapter: HttpAuthorityAdapter) -> None:
    """Approvals carry the simulator's validity; rule matches are rejected with a comment."""
    approved = await adapter.submit(sample_application())
    organisation = {"name": "测试有限公司", "uscc": "91350100M000100Y43"}
    rejected = await adapter.submit(sample_application(
        seal={**sample_application()["seal"], "organization": organisation}
    ))
    assert await adapter.decision(approved) is None
    await asyncio.sleep(0.35)
    assert await adapter.decision(approved) == Decision("approved", "", 365, approved)
    decision = await adapter.decision(rejected)
    assert decision is not None and decision.outcome == "rejected"
    assert "测试" in decision.comment and decision.valid_days is None


@in_session_loop
async def test_logs_never_show_the_token_or_an_id_number(
    adapter: HttpAuthorityAdapter, simulator: RunningSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Retry warnings and success lines name the authority, not the secret or the person."""
    caplog.set_level(logging.DEBUG)
    await call(simulator, "POST", "/admin/faults", json={"mode": "error500", "count": 2})
    await adapter.submit(sample_application())
    assert "retrying" in caplog.text
    assert TOKEN not in caplog.text and ID_NUMBER not in caplog.text


@in_session_loop
async def test_the_session_is_reused_and_remade_after_close(
    adapter: HttpAuthorityAdapter,
) -> None:
    """Requests share one ClientSession; after close() the next request opens a new one."""
    await adapter.submit(sample_application())
    first = adapter._client()
    await adapter.submit(sample_application())
    assert adapter._client() is first
    await adapter.close()
    assert first.closed
    assert await adapter.submit(sample_application())
    assert adapter._client() is not first


@in_session_loop
async def test_an_unreadable_token_is_unavailable_without_a_request(
    simulator: RunningSimulator,
) -> None:
    """A token variable that is not set makes the authority unavailable, naming the variable."""
    adapter = HttpAuthorityAdapter(
        adapter_settings(simulator.url, SecretRef(env="SEALGATE_TEST_UNSET_TOKEN"))
    )
    with pytest.raises(AuthorityUnavailable, match="SEALGATE_TEST_UNSET_TOKEN"):
        await adapter.submit(sample_application())
    await adapter.close()
    assert sum(simulator.state.submissions.values()) == 0


# -- the adapter against misbehaving servers --------------------------------------------------


@in_session_loop
async def test_server_errors_are_retried_max_attempts_times(token_env: SecretRef) -> None:
    """A server that always answers 503 is asked exactly max_attempts times."""
    requests = 0

    async def always_busy(request: web.Request) -> web.Response:
        nonlocal requests
        requests += 1
        return web.Response(status=503)

    async with serving(always_busy) as url:
        adapter = HttpAuthorityAdapter(adapter_settings(url, token_env, max_attempts=3))
        with pytest.raises(AuthorityUnavailable, match="HTTP 503 after 3 attempts"):
            await adapter.submit(sample_application())
        await adapter.close()
    assert requests == 3


@in_session_loop
async def test_an_answer_outside_the_protocol_is_not_retried(token_env: SecretRef) -> None:
    """A 200 that is not a JSON object is AuthorityUnavailable at once."""
    requests = 0

    async def html(request: web.Request) -> web.Response:
        nonlocal requests
        requests += 1
        return web.Response(text="<html>portal maintenance</html>", content_type="text/html")

    async with serving(html) as url:
        adapter = HttpAuthorityAdapter(adapter_settings(url, token_env))
        with pytest.raises(AuthorityUnavailable, match="not a JSON object"):
            await adapter.submit(sample_application())
        await adapter.close()
    assert requests == 1


@in_session_loop
async def test_an_id_number_echoed_in_a_refusal_is_masked(token_env: SecretRef) -> None:
    """An authority that repeats the ID number in its message does not get it into ours."""

    async def echo(request: web.Request) -> web.Response:
        detail = f"id_number {ID_NUMBER} is on a blocklist"
        return web.json_response({"detail": detail}, status=409)

    async with serving(echo) as url:
        adapter = HttpAuthorityAdapter(adapter_settings(url, token_env))
        with pytest.raises(AuthorityRefused) as refused:
            await adapter.submit(sample_application())
        await adapter.close()
    assert ID_NUMBER not in str(refused.value)
    assert "110105********002X is on a blocklist" in str(refused.value)


@pytest.mark.parametrize("status", [400, 409, 413, 415, 422])
@in_session_loop
async def test_answers_about_the_application_refuse_it(token_env: SecretRef, status: int) -> None:
    """400, 409, 413 (too large), 415 (a type it takes not) and 422 to a submission are
    AuthorityRefused at once: resending the same application cannot change them."""
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"detail": "the application is incomplete"}, status=status)

    async with serving(refuse) as url:
        adapter = HttpAuthorityAdapter(adapter_settings(url, token_env))
        with pytest.raises(AuthorityRefused, match=f"HTTP {status}"):
            await adapter.submit(sample_application())
        await adapter.close()


@pytest.mark.parametrize(("status", "names"), [
    (401, "token"), (403, "token"), (404, "url"), (405, "url"), (301, "https://elsewhere"),
    (307, "url"),
])
@in_session_loop
async def test_answers_about_the_gateway_s_configuration_do_not_refuse_the_application(
    token_env: SecretRef, caplog: pytest.LogCaptureFixture, status: int, names: str
) -> None:
    """A refused token, a wrong address (404 to the POST) or a redirect is the gateway's
    configuration, not a verdict on the application: AuthorityUnavailable at once, without
    retrying, and an error in the log that says what to check."""
    requests = 0

    async def misconfigured(request: web.Request) -> web.Response:
        nonlocal requests
        requests += 1
        return web.json_response({"detail": f"no ({ID_NUMBER})"}, status=status,
                                 headers={"Location": "https://elsewhere/api/v1/filings"})

    async with serving(misconfigured) as url:
        adapter = HttpAuthorityAdapter(adapter_settings(url, token_env))
        with caplog.at_level(logging.ERROR, logger="plugins.http_authority"), \
                pytest.raises(AuthorityUnavailable, match=f"HTTP {status}") as unavailable:
            await adapter.submit(sample_application())
        await adapter.close()
    assert requests == 1
    assert names in str(unavailable.value)
    assert [r.getMessage() for r in caplog.records] == [f"filing {unavailable.value}"]
    assert ID_NUMBER not in caplog.text


@in_session_loop
async def test_the_token_goes_in_a_bearer_header(token_env: SecretRef) -> None:
    """Each request carries Authorization: Bearer <token> and a JSON body."""
    seen: list[tuple[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.headers["Authorization"], request.content_type))
        return web.json_response({"reference": "R-1"}, status=201)

    async with serving(record) as url:
        adapter = HttpAuthorityAdapter(adapter_settings(url, token_env))
        assert await adapter.submit(sample_application()) == "R-1"
        await adapter.close()
    assert seen == [(f"Bearer {TOKEN}", "application/json")]


# -- the simulator itself ---------------------------------------------------------------------


@in_session_loop
async def test_simulator_requires_the_token(simulator: RunningSimulator) -> None:
    """Every path but /health answers 401 without the right bearer token."""
    for token in (None, "wrong"):
        for method, path in (("POST", "/api/v1/filings"), ("GET", "/api/v1/filings/x"),
                             ("POST", "/admin/faults"), ("GET", "/admin/filings")):
            status, _, headers = await call(simulator, method, path, token=token, json={})
            assert status == 401, (token, path)
            assert headers["WWW-Authenticate"].startswith("Bearer")
    assert (await call(simulator, "GET", "/health", token=None))[0] == 200


@in_session_loop
async def test_simulator_rejects_a_body_that_is_not_an_object(
    simulator: RunningSimulator,
) -> None:
    """A body that is not a JSON object is a 400."""
    for data in (b"not json", b"[1, 2]"):
        status, body, _ = await call(simulator, "POST", "/api/v1/filings", data=data)
        assert status == 400 and body["detail"]


@in_session_loop
async def test_simulator_names_every_missing_field(simulator: RunningSimulator) -> None:
    """An empty application is a 422 listing each required field."""
    status, body, _ = await call(simulator, "POST", "/api/v1/filings", json={})
    assert status == 422
    fields = {e["field"] for e in body["errors"]}
    assert fields == {"id", "action", "seal", "applicant", "legal_representative", "materials"}


@in_session_loop
async def test_simulator_checks_identifiers_and_material_digests(
    simulator: RunningSimulator,
) -> None:
    """A bad USCC check character and a material whose digest lies are 422s."""
    application = sample_application()
    application["seal"]["organization"]["uscc"] = "91350100M000100Y44"
    application["materials"][0]["sha256"] = "0" * 64
    status, body, _ = await call(simulator, "POST", "/api/v1/filings", json=application)
    assert status == 422
    assert {e["field"] for e in body["errors"]} == {"seal.organization.uscc",
                                                    "materials[0].sha256"}


def test_simulator_rules_reject_with_their_own_comment() -> None:
    """Each rule type rejects what it describes and says so in the comment."""
    application = sample_application()
    org = OrganisationNameContains("示例")
    missing = MaterialMissing("authorization_letter")
    action = ActionIn(frozenset({"cancel"}))
    assert org.rejection(application) == "organisation name contains '示例'"
    assert missing.rejection(application) == "material 'authorization_letter' is missing"
    assert action.rejection(application) is None
    assert action.rejection({**application, "action": "cancel"}) == (
        "action 'cancel' is not accepted by this authority"
    )


@in_session_loop
async def test_simulator_faults_count_down_and_clear(simulator: RunningSimulator) -> None:
    """A counted fault hits that many requests; DELETE clears an open-ended one."""
    await call(simulator, "POST", "/admin/faults", json={"mode": "error500", "count": 1})
    assert (await call(simulator, "GET", "/api/v1/filings/x"))[0] == 500
    assert (await call(simulator, "GET", "/api/v1/filings/x"))[0] == 404
    await call(simulator, "POST", "/admin/faults", json={"mode": "error500", "count": None})
    assert (await call(simulator, "GET", "/api/v1/filings/x"))[0] == 500
    assert (await call(simulator, "GET", "/admin/filings"))[0] == 200
    assert (await call(simulator, "DELETE", "/admin/faults"))[0] == 204
    assert (await call(simulator, "GET", "/api/v1/filings/x"))[0] == 404


@in_session_loop
async def test_simulator_refuses_unknown_fault_settings(simulator: RunningSimulator) -> None:
    """Unknown modes and negative counts or delays are 422s."""
    for body in ({"mode": "flaky"}, {"mode": "down", "count": -1},
                 {"mode": "slow", "delay_seconds": "long"}):
        assert (await call(simulator, "POST", "/admin/faults", json=body))[0] == 422, body


@in_session_loop
async def test_simulator_lists_filings_with_submission_counts(
    adapter: HttpAuthorityAdapter, simulator: RunningSimulator
) -> None:
    """GET /admin/filings shows each filing and how often its application came in."""
    application = sample_application()
    reference = await adapter.submit(application)
    await adapter.submit(application)
    status, body, _ = await call(simulator, "GET", "/admin/filings")
    assert status == 200
    [listed] = body["filings"]
    assert listed["reference"] == reference and listed["submissions"] == 2


def test_simulator_command_line_builds_rules() -> None:
    """Each --reject-… option becomes the matching rule."""
    args = argument_parser().parse_args([
        "--reject-if-org-contains", "测试", "--reject-if-material-missing", "legal_rep_id",
        "--reject-action", "cancel", "--reject-action", "report_loss",
    ])
    assert rules_from_arguments(args) == [
        OrganisationNameContains("测试"), MaterialMissing("legal_rep_id"),
        ActionIn(frozenset({"cancel", "report_loss"})),
    ]


def test_simulator_token_file_is_created_private_and_then_reused(tmp_path: Path) -> None:
    """A missing token file is created with mode 0600; an existing one is read back."""
    path = tmp_path / "var" / "authority-token"
    token = read_or_create_token(path)
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_or_create_token(path) == token


def test_simulator_without_a_token_does_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --token-file and with the token variable unset, main() exits with 2."""
    monkeypatch.delenv("SEALGATE_AUTHORITY_TOKEN", raising=False)
    assert main(["--port", "0"]) == 2
