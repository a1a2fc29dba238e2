"""The `http` filing adapter: hands filings to an authority that speaks JSON over HTTP.

The protocol (version 1; :mod:`plugins.authority_simulator` implements the authority side)::

    POST /api/v1/filings                      body: the application, as FilingAdapter.submit
                                              receives it (UTF-8 JSON)
        201 {"reference", "application_id", "status": "under_review", "received_at", ...}
        200 the same, when an application with this ``id`` was submitted before: the
            authority is idempotent on the application id and answers with the first
            reference, so a retry after a lost answer can never file twice
    GET  /api/v1/filings/{reference}
        200 {"reference", "application_id",
             "status": "under_review"|"approved"|"rejected"|"withdrawn",
             "comment", "valid_days": int|null, "decided_at": ISO 8601|null}
            (a withdrawn filing's ``comment`` is the reason given for withdrawing it)
    POST /api/v1/filings/{reference}/withdrawal   body: {"reason"}
        200 the filing as the GET shows it: ``withdrawn`` (now, or by an earlier withdrawal),
            or the decision made before the withdrawal arrived, which stands
        404 (a problem document) when the authority holds no filing under ``reference``; the
            GET of it answers 404 (a problem document) too, which is how the gateway tells
            this from a server without the withdrawal call answering a path it lacks

Every request carries ``Authorization: Bearer <token>``. Refusals are RFC 9457 problem
documents (``detail``, and ``errors: [{"field", "message"}]`` for 422); the adapter passes
the authority's wording on in :class:`AuthorityRefused`.

What the adapter does with answers:

- 2xx: parsed, without retrying now when it is not what the protocol says (the authority is
  misbehaving; a later attempt may find it fixed): a body that is no JSON object (a
  maintenance page) raises AuthorityUnavailable, a JSON answer the gateway cannot act on (no
  reference, a status the protocol does not know, a validity out of range, a withdrawal
  answered with the filing under review) AuthorityAnswerUnusable;
- connection errors, timeouts (``timeout_seconds`` per attempt), 5xx and 429: retried with
  exponential backoff and jitter (``backoff_seconds`` · 2^(n−1), or longer when the answer
  has a ``Retry-After`` in seconds) up to ``max_attempts`` attempts, then
  AuthorityUnavailable. Retrying a POST is safe only because the authority is idempotent on
  the application id;
- 400, 409 and 422, answers about the application itself, and 404 to a GET (a reference
  the authority does not know): AuthorityRefused at once, since sending the same request
  again cannot change the answer; a refused submission rejects the filing;
- 404 with a problem document to a withdrawal: the adapter asks for the filing (GET). A 404
  problem document there too: the authority holds nothing under that reference, so nothing
  is under review there and the withdrawal is done. A filing shown withdrawn or decided
  answers the withdrawal as a 200 would; one still under review means the authority has no
  withdrawal call at this address (many servers answer a path they lack with a problem
  document): AuthorityAnswerUnusable, logged as an error, and the gateway withdraws the
  filing without telling the authority. A 404 without a problem document to the withdrawal
  is a wrong ``url``: see the next point;
- any other answer (401/403: the gateway's own token; 404 to the POST: a wrong ``url``; 3xx,
  since redirects are not followed; other 4xx) is the gateway's configuration, not a verdict
  on the application: logged as an error and AuthorityUnavailable at once, so the filing
  waits for the configuration to be fixed instead of being rejected for good.

Responses are not signed. An HMAC keyed with the bearer token would add nothing: whoever can
alter responses on the path can read the token from the requests too. Integrity and
confidentiality (the application carries an ID number) come from TLS — use an ``https``
URL for anything but the loopback simulator. The decision's legal weight comes from the
receipt, which the gateway signs with its own HSM key.

Logs name the authority, the application id, the reference and the HTTP status; never the
token, and never an ID number (digit runs shaped like one are masked even inside messages
the authority sends back).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from gateway.errors import ConfigError
from gateway.filing.adapters import (
    MAX_VALID_DAYS,
    AuthorityAnswerUnusable,
    AuthorityRefused,
    AuthorityUnavailable,
    Decision,
)
from gateway.hookspecs import hookimpl
from gateway.identifiers import mask_personal_numbers
from gateway.settings import HttpAuthoritySettings, Settings

logger = logging.getLogger(__name__)

FILINGS_PATH = "/api/v1/filings"
MAX_BACKOFF_SECONDS = 30.0
MAX_MESSAGE_CHARS = 300
# Jitter spreads load; it needs no cryptographic randomness.
_JITTER = random.Random()  # noqa: S311
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# Answers about the application (malformed, in conflict with another, too large, in a type
# the authority takes not, invalid), not about how the gateway reached the authority.
_REFUSALS = frozenset({400, 409, 413, 415, 422})
# 17 digits and a check character: a resident ID number, wherever it turns up in a message.


def backoff_delay(attempt: int, base_seconds: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): exponential, with jitter.

    The jitter takes each wait uniformly from its upper half, so gateways that lost the
    authority at the same moment do not come back at the same moment.
    """
    ceiling = min(base_seconds * 2.0 ** (attempt - 1), MAX_BACKOFF_SECONDS)
    return ceiling * (rng or _JITTER).uniform(0.5, 1.0)


class HttpAuthorityAdapter:
    """A :class:`~gateway.filing.adapters.FilingAdapter` for one JSON-over-HTTP authority."""

    reviews_locally = False

    def __init__(self, settings: HttpAuthoritySettings, *, rng: random.Random | None = None):
        url = URL(settings.url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"filing.http.url must be an http(s) URL, not {settings.url!r}")
        if settings.max_attempts < 1:
            raise ConfigError("filing.http.max_attempts must be at least 1")
        if url.scheme == "http" and url.host not in _LOOPBACK_HOSTS:
            logger.warning("filing authority %s is reached without TLS; applications carry "
                           "ID numbers and requests the token in clear", settings.name)
        self.name = settings.name
        self.display_name = settings.display_name
        self._settings = settings
        self._base_url = str(url).rstrip("/")
        self._rng = rng
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, application: Mapping[str, Any]) -> str:
        """Send the application; the authority's reference (the same one on a resubmission)."""
        body = json.dumps(application, ensure_ascii=False, default=_plain).encode()
        status, answer = await self._request("POST", FILINGS_PATH, body)
        reference = answer.get("reference")
        if not isinstance(reference, str) or not reference:
            raise AuthorityAnswerUnusable(
                f"authority {self.name} accepted the filing but sent no reference"
            )
        logger.info("filing authority %s %s application %s as %s", self.name,
                    "received" if status == 201 else "already had", application.get("id"),
                    reference)
        return reference

    async def decision(self, reference: str) -> Decision | None:
        """The decision on ``reference``, or None while the authority is still reviewing."""
        _, answer = await self._request("GET", _filing_path(reference))
        return self._decision(answer, reference)

    async def withdraw(self, reference: str, reason: str) -> Decision | None:
        """Withdraw ``reference``: None once the authority no longer reviews it, or the
        decision it had made before."""
        body = json.dumps({"reason": reason}, ensure_ascii=False).encode()
        status, answer = await self._request(
            "POST", _filing_path(reference) + "/withdrawal", body, unknown_is_answer=True)
        if status == 404:
            return await self._after_not_found(reference)
        shown = self._decision(answer, reference)
        if shown is None:
            raise AuthorityAnswerUnusable(
                f"authority {self.name} answered the withdrawal of {reference} with the filing "
                "still under review")
        if shown.withdrawn:
            logger.info("filing authority %s withdrew %s", self.name, reference)
            return None
        return shown

    async def _after_not_found(self, reference: str) -> Decision | None:
        """What a 404 problem document to the withdrawal of ``reference`` means, as the
        filing shows: a server answers so for a path it does not serve too, so only an
        authority that also shows no filing under ``reference`` holds nothing to withdraw."""
        status, answer = await self._request("GET", _filing_path(reference),
                                             unknown_is_answer=True)
        if status == 404:
            logger.info("filing authority %s holds nothing under %s to withdraw", self.name,
                        reference)
            return None
        shown = self._decision(answer, reference)
        if shown is None:
            message = (f"authority {self.name} answers 404 to the withdrawal of {reference}, "
                       "which it still reviews: it has no withdrawal call at [filing.http] url")
            logger.error("filing %s", message)
            raise AuthorityAnswerUnusable(message)
        return None if shown.withdrawn else shown

    def _decision(self, answer: Mapping[str, Any], reference: str) -> Decision | None:
        """A filing as the authority shows it, as a Decision; None while under review."""
        status = answer.get("status")
        if status == "withdrawn":
            # What a gateway that lost the answer to its withdrawal learns by polling.
            return Decision("rejected", f"withdrawn: {answer.get('comment') or ''}",
                            reference=str(answer.get("reference") or reference), withdrawn=True)
        if status == "under_review":
            return None
        if status not in ("approved", "rejected"):
            raise AuthorityAnswerUnusable(
                f"authority {self.name} answered with an unknown filing status {status!r}"
            )
        valid_days = answer.get("valid_days")
        if status == "approved" and valid_days is not None and (
            not isinstance(valid_days, int) or isinstance(valid_days, bool)
            or not 1 <= valid_days <= MAX_VALID_DAYS
        ):
            raise AuthorityAnswerUnusable(
                f"authority {self.name} granted an invalid validity {valid_days!r}"
            )
        return Decision(
            outcome=status,
            comment=str(answer.get("comment") or ""),
            valid_days=valid_days if status == "approved" else None,
            reference=str(answer.get("reference") or reference),
        )

    async def close(self) -> None:
        session, self._session, self._session_loop = self._session, None, None
        if session is not None and not session.closed:
            await session.close()

    # -- transport ---------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use because a ClientSession belongs to the loop it was made in, and
        # the adapter is built by a synchronous hook before any loop runs. A session left
        # over from another loop (a CLI command that ran asyncio.run twice) cannot be used
        # or closed from this one, so it is dropped.
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(headers={"Accept": "application/json"})
            self._session_loop = loop
        return self._session

    def _headers(self, has_body: bool) -> dict[str, str]:
        try:
            # Read at every request, so that a rotated token file takes effect without a
            # restart.
            token = self._settings.token.reveal()
        except ConfigError as exc:
            raise AuthorityUnavailable(f"authority {self.name}: {exc.detail}") from exc
        headers = {"Authorization": f"Bearer {token}"}
        if has_body:
            headers["Content-Type"] = "application/json; charset=utf-8"
        return headers

    async def _request(
        self, method: str, path: str, body: bytes | None = None, *,
        unknown_is_answer: bool = False,
    ) -> tuple[int, dict[str, Any]]:
        """Status and JSON object of a 2xx answer, retrying what may succeed later; with
        ``unknown_is_answer``, also (404, {}) for a 404 problem document."""
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout_seconds)
        attempts = self._settings.max_attempts
        failure = ""
        for attempt in range(1, attempts + 1):
            retry_after = 0.0
            try:
                # Redirects are not followed: a moved authority is a configuration change,
                # and a redirected POST would reach its target without the application.
                async with self._client().request(
                    method, self._base_url + path, data=body, allow_redirects=False,
                    headers=self._headers(body is not None), timeout=timeout,
                ) as response:
                    text = await response.text(encoding="utf-8", errors="replace")
                    if 200 <= response.status < 300:
                        return response.status, self._json_object(text, method, path)
                    if unknown_is_answer and response.status == 404 and (
                            response.content_type == "application/problem+json"):
                        return response.status, {}
                    if response.status in _REFUSALS or (response.status == 404
                                                        and method == "GET"):
                        raise AuthorityRefused(self._refusal(response.status, text))
                    if response.status != 429 and response.status < 500:
                        raise self._misconfigured(response, text, method, path)
                    failure = f"HTTP {response.status}"
                    retry_after = _retry_after(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = _describe(exc)
            if attempt == attempts:
                break
            delay = max(backoff_delay(attempt, self._settings.backoff_seconds, self._rng),
                        retry_after)
            logger.warning("filing authority %s: %s %s failed (%s), attempt %d of %d; "
                           "retrying in %.2f s", self.name, method, path, failure, attempt,
                           attempts, delay)
            await asyncio.sleep(delay)
        raise AuthorityUnavailable(
            f"authority {self.name} is unavailable ({failure} after {attempts} attempts)"
        )

    def _json_object(self, text: str, method: str, path: str) -> dict[str, Any]:
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise AuthorityUnavailable(
                f"authority {self.name} answered {method} {path} with something not a JSON object"
            )
        return answer

    def _refusal(self, status: int, text: str) -> str:
        return (f"authority {self.name} refused the request (HTTP {status}): "
                f"{self._message(text)}")

    def _misconfigured(
        self, response: aiohttp.ClientResponse, text: str, method: str, path: str
    ) -> AuthorityUnavailable:
        status = response.status
        if status in (401, 403):
            fix = "check the token ([filing.http] token) on both sides"
        elif 300 <= status < 400:
            fix = (f"it redirects to {response.headers.get('Location', '?')!r}; "
                   "check [filing.http] url")
        elif status == 404:
            fix = "check [filing.http] url"
        else:
            fix = "check [filing.http] url and the authority's protocol version"
        message = (f"authority {self.name} answered {method} {path} with HTTP {status} "
                   f"({self._message(text)}): {fix}; filings wait until it is fixed")
        logger.error("filing %s", message)
        return AuthorityUnavailable(message)

    def _message(self, text: str) -> str:
        """The authority's wording from a problem document, masked and shortened."""
        message = ""
        try:
            problem = json.loads(text)
        except ValueError:
            problem = None
        if isinstance(problem, dict):
            message = str(problem.get("detail") or problem.get("message")
                          or problem.get("title") or "")
        if not message:
            message = text.strip() or "no reason given"
        message = mask_personal_numbers(message)
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 1] + "…"
        return message


def _filing_path(reference: str) -> str:
    return f"{FILINGS_PATH}/{quote(reference, safe='')}"


def _plain(value: object) -> object:
    # Applications may be built from read-only mappings (MappingProxyType), which the json
    # module does not serialise by itself.
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _retry_after(header: str | None) -> float:
    # Only the delta-seconds form: an authority behind a clock-skewed proxy sending an
    # HTTP date would make the wait meaningless.
    try:
        seconds = float(header or 0)
    except ValueError:
        return 0.0
    return min(seconds, MAX_BACKOFF_SECONDS) if math.isfinite(seconds) and seconds > 0 else 0.0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@hookimpl
def sealgate_filing_adapters(settings: Settings) -> list[HttpAuthorityAdapter]:
    """The http authority adapter, when ``filing.http.enabled`` is set."""
    if not settings.filing.http.enabled:
        return []
    return [HttpAuthorityAdapter(settings.filing.http)]
