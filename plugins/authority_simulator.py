"""The filing-authority simulator: an in-memory authority that speaks the http adapter's protocol.

It serves the protocol documented in :mod:`plugins.http_authority` for tests and demos, and
nothing is persisted: a restart forgets every filing. What it does, as an authority would:

- checks ``Authorization: Bearer <token>`` on every request except ``GET /health`` (401);
- validates the application (400 when the body is not a JSON object, 422 naming each bad
  field: USCC and resident ID checksums, material digests against their content);
- is idempotent on the application ``id``: a resubmission answers 200 with the reference
  the first submission got (201), whatever the body says this time, and is counted;
- decides each filing ``review_delay_seconds`` after receiving it, computed when asked (no
  timers): rejected with the comment of the first :class:`RejectRule` that matches the
  application, otherwise approved for ``valid_days``;
- withdraws a filing still under review when asked (``POST .../withdrawal``), and from then
  on shows it ``withdrawn`` with the reason given; a filing decided already keeps its decision;
  a reference it does not hold is a 404 problem document to the withdrawal and the GET alike.

Fault injection, for tests of what the gateway does when the authority misbehaves (protected
by the same token, and never applied to ``/admin`` or ``/health``):

    POST   /admin/faults  {"mode": "down"|"error500"|"slow"|"throttle", "count": n|null,
                           "delay_seconds": s}
    DELETE /admin/faults
    GET    /admin/filings  every filing, with how many times its application was submitted

``down`` drops the connection without an answer, ``error500`` answers 500 without doing
anything, ``slow`` does the work and then holds the answer back ``delay_seconds`` (the
outcome-unknown case: the filing exists but the caller timed out), ``throttle`` answers 429
with ``Retry-After: delay_seconds``. ``count`` requests are affected, or every request until
the faults are cleared when it is null. Requests are counted as they arrive: an HTTP client
may resend an idempotent request once by itself when its connection is dropped.

Run it with ``python -m plugins.authority_simulator --port 8090 --token-file PATH``; embed it
with :func:`running_simulator` (tests) or :func:`run_simulator` (the CLI).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import datetime as dt
import functools
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from aiohttp import web

from gateway.errors import FieldError, ValidationFailed
from gateway.filing.states import FilingAction
from gateway.hookspecs import hookimpl
from gateway.identifiers import validate_resident_id, validate_uscc

FaultMode = Literal["down", "error500", "slow", "throttle"]
FAULT_MODES: tuple[str, ...] = get_args(FaultMode)
DEFAULT_VALID_DAYS = 365
# Materials are up to 10 MiB each and travel base64-encoded inside the JSON application.
MAX_APPLICATION_BYTES = 64 * 1024 * 1024
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_PUBLIC_PATHS = frozenset({"/health"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Comments and names are Chinese; escaping them would make every answer unreadable by eye.
_dumps = functools.partial(json.dumps, ensure_ascii=False)


# -- rejection rules -------------------------------------------------------------------------


class RejectRule(Protocol):
    """Decides, from the application alone, whether the authority rejects it."""

    def rejection(self, application: Mapping[str, Any]) -> str | None:
        """The comment to reject with, or None when this rule does not apply."""


@dataclass(frozen=True)
class OrganisationNameContains:
    """Reject when ``seal.organization.name`` contains ``text``."""

    text: str

    def rejection(self, application: Mapping[str, Any]) -> str | None:
        name = str(application.get("seal", {}).get("organization", {}).get("name", ""))
        return f"organisation name contains '{self.text}'" if self.text in name else None


@dataclass(frozen=True)
class MaterialMissing:
    """Reject when no material of ``kind`` came with the application."""

    kind: str

    def rejection(self, application: Mapping[str, Any]) -> str | None:
        kinds = {m.get("kind") for m in application.get("materials", ()) if isinstance(m, dict)}
        return f"material '{self.kind}' is missing" if self.kind not in kinds else None


@dataclass(frozen=True)
class ActionIn:
    """Reject every application whose action is one of ``actions``."""

    actions: frozenset[str]

    def rejection(self, application: Mapping[str, Any]) -> str | None:
        action = application.get("action")
        if action in self.actions:
            return f"action '{action}' is not accepted by this authority"
        return None


# -- state -----------------------------------------------------------------------------------


@dataclass
class SimulatedFiling:
    """One filing the simulated authority holds."""

    reference: str
    application_id: str
    received_at: dt.datetime
    received_monotonic: float
    rejection: str | None
    """Decided on receipt (the rules read only the application), revealed after the delay."""
    withdrawal: str | None = None
    """The reason it was withdrawn for, while it was still under review."""

    def view(self, state: SimulatorState) -> dict[str, Any]:
        """The filing as ``GET /api/v1/filings/{reference}`` shows it now."""
        shown = {"reference": self.reference, "application_id": self.application_id,
                 "status": "under_review", "comment": "", "valid_days": None, "decided_at": None}
        if self.withdrawal is not None:
            return {**shown, "status": "withdrawn", "comment": self.withdrawal}
        if time.monotonic() - self.received_monotonic < state.review_delay_seconds:
            return shown
        decided_at = self.received_at + dt.timedelta(seconds=state.review_delay_seconds)
        shown["decided_at"] = decided_at.isoformat(timespec="seconds")
        if self.rejection is not None:
            return {**shown, "status": "rejected", "comment": self.rejection}
        return {**shown, "status": "approved", "valid_days": state.valid_days}


@dataclass
class Faults:
    """What the next requests suffer; ``remaining`` None means until cleared."""

    mode: FaultMode
    remaining: int | None = None
    delay_seconds: float = 5.0

    def take(self) -> bool:
        """Whether this request is affected; uses up one of ``remaining``."""
        if self.remaining is not None:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
        return True


@dataclass
class SimulatorState:
    """Everything the simulator knows; tests read it directly through :data:`SIMULATOR`."""

    token: str
    review_delay_seconds: float
    reject_rules: tuple[RejectRule, ...]
    valid_days: int
    filings: dict[str, SimulatedFiling] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)
    """Application id → reference: what makes submission idempotent."""
    submissions: collections.Counter[str] = field(default_factory=collections.Counter)
    """Application id → how many times it was submitted (valid submissions only)."""
    faults: Faults | None = None
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at shutdown, so that answers held back by a ``slow`` fault do not delay it."""

    def filings_for(self, application_id: str) -> list[SimulatedFiling]:
        return [f for f in self.filings.values() if f.application_id == application_id]

    def receive(self, application: Mapping[str, Any]) -> tuple[SimulatedFiling, bool]:
        """The filing for this application and whether it is new."""
        application_id = str(application["id"])
        self.submissions[application_id] += 1
        existing = self.references.get(application_id)
        if existing is not None:
            return self.filings[existing], False
        now = dt.datetime.now(dt.UTC)
        reference = f"SIM-{now:%Y%m%d}-{len(self.filings) + 1:06d}"
        rejection = next(
            (c for c in (r.rejection(application) for r in self.reject_rules) if c), None
        )
        filing = SimulatedFiling(reference, application_id, now, time.monotonic(), rejection)
        self.filings[reference] = filing
        self.references[application_id] = reference
        return filing, True


SIMULATOR = web.AppKey("simulator", SimulatorState)


# -- validation ------------------------------------------------------------------------------


def validate_application(body: Any) -> list[FieldError]:
    """Every way ``body`` is not an application the authority can review (empty: it is)."""
    errors: list[FieldError] = []

    def text(container: Any, key: str, where: str) -> str:
        value = container.get(key) if isinstance(container, dict) else None
        if not isinstance(value, str) or not value.strip():
            errors.append(FieldError(where + key, "is required (a non-empty string)"))
            return ""
        return value

    def obj(container: Mapping[str, Any], key: str, where: str = "") -> dict[str, Any]:
        value = container.get(key)
        if not isinstance(value, dict):
            errors.append(FieldError(where + key, "is required (an object)"))
            return {}
        return value

    def identifier(check: Callable[[object, str], str], value: str, where: str) -> None:
        if not value:
            return
        try:
            check(value, where)
        except ValidationFailed as exc:
            # The identifier rules' messages name positions and rules, never the value.
            errors.extend(exc.errors)

    text(body, "id", "")
    action = text(body, "action", "")
    if action and action not in {a.value for a in FilingAction}:
        errors.append(FieldError("action", f"must be one of {', '.join(FilingAction)}"))
    # Fields inside a missing object are not listed: the object's own error says enough.
    if (seal := obj(body, "seal")) and (organisation := obj(seal, "organization", "seal.")):
        text(organisation, "name", "seal.organization.")
        identifier(validate_uscc, text(organisation, "uscc", "seal.organization."),
                   "seal.organization.uscc")
    if applicant := obj(body, "applicant"):
        text(applicant, "name", "applicant.")
        phone = text(applicant, "phone", "applicant.")
        if phone and not _DIALLABLE.match(phone):
            # An authority calls the applicant: a masked number is of no use to it.
            errors.append(FieldError("applicant.phone", "must be a whole phone number"))
    if legal := obj(body, "legal_representative"):
        text(legal, "name", "legal_representative.")
        identifier(validate_resident_id, text(legal, "id_number", "legal_representative."),
                   "legal_representative.id_number")
    materials = body.get("materials")
    if not isinstance(materials, list):
        errors.append(FieldError("materials", "is required (an array, possibly empty)"))
        materials = []
    for index, material in enumerate(materials):
        errors.extend(_material_errors(material, f"materials[{index}]"))
    return errors


_DIALLABLE = re.compile(r"^[0-9][0-9-]{6,19}$")


def _material_errors(material: Any, where: str) -> list[FieldError]:
    if not isinstance(material, dict):
        return [FieldError(where, "must be an object")]
    errors = [FieldError(f"{where}.{key}", "is required (a non-empty string)")
              for key in ("kind", "sha256", "content_b64")
              if not isinstance(material.get(key), str) or not material[key]]
    if errors:
        return errors
    if not _SHA256_HEX.match(material["sha256"]):
        return [FieldError(f"{where}.sha256", "must be 64 lower-case hex digits")]
    try:
        content = base64.b64decode(material["content_b64"], validate=True)
    except (binascii.Error, ValueError):
        return [FieldError(f"{where}.content_b64", "is not valid base64")]
    if hashlib.sha256(content).hexdigest() != material["sha256"]:
        return [FieldError(f"{where}.sha256", "does not match the content")]
    if "size" in material and material["size"] != len(content):
        return [FieldError(f"{where}.size", "does not match the content")]
    return []


# -- HTTP ------------------------------------------------------------------------------------


def problem(status: int, title: str, detail: str, **extra: Any) -> web.Response:
    """An RFC 9457 problem answer, the shape the http adapter reads refusals from."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return web.json_response(body, status=status, content_type="application/problem+json",
                             dumps=_dumps)


def _unprocessable(detail: str, **extra: Any) -> web.Response:
    return problem(422, "Unprocessable Content", detail, **extra)


@web.middleware
async def _fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[SIMULATOR]
    faults = state.faults
    if (request.path.startswith("/admin/") or request.path in _PUBLIC_PATHS
            or faults is None or not faults.take()):
        return await handler(request)
    if faults.mode == "down":
        # Abort the connection before any answer: the client sees a dropped connection,
        # as with an authority that crashed or a middlebox that reset the connection.
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=503)
    if faults.mode == "error500":
        return problem(500, "Internal Server Error", "simulated server error")
    if faults.mode == "throttle":
        response = problem(429, "Too Many Requests", "simulated rate limit")
        response.headers["Retry-After"] = str(math.ceil(faults.delay_seconds))
        return response
    answer = await handler(request)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(state.closing.wait(), faults.delay_seconds)
    return answer


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in _PUBLIC_PATHS:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    expected = request.app[SIMULATOR].token
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode(), expected.encode()
    ):
        response = problem(401, "Unauthorized", "a valid bearer token is required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="filing-authority"'
        return response
    return await handler(request)


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except ValueError:
        return problem(400, "Bad Request", "the body must be a JSON object")
    if not isinstance(body, dict):
        return problem(400, "Bad Request", "the body must be a JSON object")
    return body


async def submit_filing(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    errors = validate_application(body)
    if errors:
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
        return _unprocessable(detail, errors=[{"field": e.field, "message": e.message}
                                              for e in errors])
    state = request.app[SIMULATOR]
    filing, new = state.receive(body)
    return web.json_response(
        {**filing.view(state), "received_at": filing.received_at.isoformat(timespec="seconds")},
        status=201 if new else 200, dumps=_dumps,
    )


async def get_filing(request: web.Request) -> web.Response:
    state = request.app[SIMULATOR]
    filing = state.filings.get(request.match_info["reference"])
    if filing is None:
        return problem(404, "Not Found", "no filing with this reference")
    return web.json_response(filing.view(state), dumps=_dumps)


async def withdraw_filing(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        return _unprocessable("reason: is required (a non-empty string)",
                              errors=[{"field": "reason", "message": "is required"}])
    state = request.app[SIMULATOR]
    filing = state.filings.get(request.match_info["reference"])
    if filing is None:
        return problem(404, "Not Found", "no filing with this reference")
    if filing.view(state)["status"] == "under_review":
        filing.withdrawal = reason
    return web.json_response(filing.view(state), dumps=_dumps)


async def set_faults(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    mode, count, delay = body.get("mode"), body.get("count"), body.get("delay_seconds", 5.0)
    # bool is an int to Python but never a count or a number of seconds in JSON.
    if mode not in FAULT_MODES:
        return _unprocessable(f"mode must be one of {', '.join(FAULT_MODES)}")
    if count is not None and (type(count) is not int or count < 0):
        return _unprocessable("count must be a non-negative integer or null")
    if type(delay) not in (int, float) or delay < 0:
        return _unprocessable("delay_seconds must be a non-negative number")
    request.app[SIMULATOR].faults = Faults(mode, count, float(delay))
    return web.json_response({"mode": mode, "count": count, "delay_seconds": float(delay)})


async def clear_faults(request: web.Request) -> web.Response:
    request.app[SIMULATOR].faults = None
    return web.Response(status=204)


async def list_filings(request: web.Request) -> web.Response:
    state = request.app[SIMULATOR]
    filings = [{**f.view(state), "submissions": state.submissions[f.application_id]}
               for f in state.filings.values()]
    return web.json_response({"filings": filings}, dumps=_dumps)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _wake_held_answers(app: web.Application) -> None:
    app[SIMULATOR].closing.set()


def create_simulator_app(
    token: str,
    *,
    review_delay_seconds: float = 1.0,
    reject_rules: Iterable[RejectRule] = (),
    valid_days: int = DEFAULT_VALID_DAYS,
    faults: Faults | None = None,
) -> web.Application:
    """The simulator as an aiohttp application; its state is ``app[SIMULATOR]``.

    ``faults`` are in force from the first request (an authority that is down when the
    gateway starts); later ones are set through ``/admin/faults``.
    """
    if not token:
        raise ValueError("the simulator needs a non-empty token")
    app = web.Application(middlewares=[_fault_middleware, _auth_middleware],
                          client_max_size=MAX_APPLICATION_BYTES)
    app[SIMULATOR] = SimulatorState(token=token, review_delay_seconds=review_delay_seconds,
                                    reject_rules=tuple(reject_rules), valid_days=valid_days,
                                    faults=faults)
    app.router.add_routes([
        web.post("/api/v1/filings", submit_filing),
        web.get("/api/v1/filings/{reference}", get_filing),
        web.post("/api/v1/filings/{reference}/withdrawal", withdraw_filing),
        web.post("/admin/faults", set_faults),
        web.delete("/admin/faults", clear_faults),
        web.get("/admin/filings", list_filings),
        web.get("/health", health),
    ])
    app.on_shutdown.append(_wake_held_answers)
    return app


# -- running it ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunningSimulator:
    """A simulator serving on a loopback port: ``url`` for adapters, ``state`` for asserts."""

    url: str
    app: web.Application

    @property
    def state(self) -> SimulatorState:
        return self.app[SIMULATOR]


@contextlib.asynccontextmanager
async def running_simulator(
    token: str, *, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> AsyncIterator[RunningSimulator]:
    """Serve a simulator inside the running loop (port 0: a free one) until the block ends."""
    app = create_simulator_app(token, **options)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        yield RunningSimulator(url=f"http://{host}:{bound_port}", app=app)
    finally:
        await runner.cleanup()


def run_simulator(
    host: str,
    port: int,
    token: str,
    review_delay: float,
    reject_rules: Sequence[RejectRule] = (),
    *,
    valid_days: int = DEFAULT_VALID_DAYS,
) -> None:
    """Serve a simulator until interrupted (what ``sealgate authority-simulator`` runs)."""
    app = create_simulator_app(token, review_delay_seconds=review_delay,
                               reject_rules=reject_rules, valid_days=valid_days)
    rules = ", ".join(map(repr, reject_rules)) or "none"
    print(f"filing authority simulator on http://{host}:{port} "
          f"(review delay {review_delay:g} s, rejection rules: {rules})", flush=True)
    web.run_app(app, host=host, port=port, print=None)


def read_or_create_token(path: Path) -> str:
    """The token in ``path``; a new random one written there (mode 0600) when it is absent."""
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise SystemExit(f"token file {path} is empty")
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    print(f"wrote a new token to {path}", file=sys.stderr)
    return token


def rules_from_arguments(args: argparse.Namespace) -> list[RejectRule]:
    rules: list[RejectRule] = [OrganisationNameContains(t) for t in args.reject_if_org_contains]
    rules += [MaterialMissing(k) for k in args.reject_if_material_missing]
    if args.reject_action:
        rules.append(ActionIn(frozenset(args.reject_action)))
    return rules


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m plugins.authority_simulator",
        description="Serve an in-memory filing authority for the http filing adapter.",
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options, for ``python -m`` and for ``sealgate authority-simulator``."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    # The token is read from a file or a variable, never from the command line, where any
    # local user could read it in the process list.
    parser.add_argument("--token-file", type=Path,
                        help="file holding the bearer token (created with a new one if absent)")
    parser.add_argument("--token-env", default="SEALGATE_AUTHORITY_TOKEN",
                        help="variable holding the token when --token-file is not given")
    parser.add_argument("--review-delay", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--valid-days", type=int, default=DEFAULT_VALID_DAYS)
    parser.add_argument("--reject-if-org-contains", action="append", default=[], metavar="TEXT")
    parser.add_argument("--reject-if-material-missing", action="append", default=[],
                        metavar="KIND")
    parser.add_argument("--reject-action", action="append", default=[],
                        choices=[a.value for a in FilingAction])


def main(argv: Sequence[str] | None = None) -> int:
    return serve_from_arguments(argument_parser().parse_args(argv))


def serve_from_arguments(args: argparse.Namespace) -> int:
    if args.token_file is not None:
        token = read_or_create_token(args.token_file)
    else:
        token = os.environ.get(args.token_env, "")
        if not token:
            print(f"give --token-file, or set {args.token_env}", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_simulator(args.host, args.port, token, args.review_delay, rules_from_arguments(args),
                  valid_days=args.valid_days)
    return 0


if __name__ == "__main__":
    sys.exit(main())


@hookimpl
def sealgate_register_commands(subparsers: Any) -> None:
    """`sealgate authority-simulator …`: the same options as ``python -m`` this module."""
    command = subparsers.add_parser(
        "authority-simulator", help="serve the filing-authority simulator (tests and demos)",
        description="Serve an in-memory filing authority for the http filing adapter. Point "
                    "the gateway at it with [filing.http] enabled = true and url = "
                    "\"http://HOST:PORT\" and the same token, then file with --authority "
                    "sim.",
    )
    add_arguments(command)
    command.set_defaults(handler=serve_from_arguments)
