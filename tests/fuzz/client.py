"""The live gateway as each role of `make fuzz-api` sees it: requests sent with the role's
token, answers run through schemathesis's checks against the OpenAPI document, and findings
recorded rather than raised.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.transport import Response

from gateway.pki.devca import DevCA

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
# Longer than this and a request held its worker too long, whatever it answered.
_SLOW_SECONDS = 10.0
JSON = "application/json"


class TimeUp(Exception):
    """The run's time is over: raised by the next request, it ends the lifecycle."""


@dataclass
class Finding:
    request: str
    status: int
    problem: str


@dataclass
class Gateway:
    """The live gateway, its document, the role tokens and what the run saw."""

    base_url: str
    tokens: dict[str, str]
    ca: DevCA
    deadline: float
    schema: Any = None
    answers: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    receipts: set[str] = field(default_factory=set)
    """The sealing receipts of the signatures the gateway returned."""

    def __post_init__(self) -> None:
        self.schema = schemathesis.openapi.from_url(f"{self.base_url}/openapi.json")

    def call(self, role: str | None, method: str, path: str, *, body: Any = None,
             media_type: str | None = None, query: dict[str, Any] | None = None,
             params: dict[str, str] | None = None,
             headers: dict[str, str] | None = None) -> Response:
        """Send one request with ``role``'s token; check the answer against the document."""
        if time.monotonic() > self.deadline:
            raise TimeUp
        operation = self.schema[path][method]
        sent = {**(headers or {}),
                **({"Authorization": f"Bearer {self.tokens[role]}"} if role else {})}
        case = operation.Case(path_parameters=params or {}, query=query, headers=sent,
                              **({} if body is None else {"body": body}),
                              media_type=media_type or (None if body is None else JSON))
        started = time.monotonic()
        response: Response = case.call(base_url=self.base_url, timeout=60)
        took = time.monotonic() - started
        where = f"{method} {path}"
        self.answers[f"{where} {response.status_code}"] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except AssertionError as failure:
            self._record(where, params, response, str(failure))
        if took > _SLOW_SECONDS:
            self._record(where, params, response, f"took {took:.1f} s")
        return response

    def expect(self, status: int | None, role: str | None, method: str, path: str,
               **kwargs: Any) -> Response | None:
        """:meth:`call`, and a finding when a valid request was not answered ``status``
        (None: whatever the state makes it)."""
        response = self.call(role, method, path, **kwargs)
        if status is not None and response.status_code != status:
            self._record(f"{method} {path}", kwargs.get("params"), response,
                         f"a valid request was answered {response.status_code}, not {status}")
            return None
        return response

    def sealed(self, signed: Response | None) -> str:
        """The sealing receipt a signing answer names ("" for a refusal), kept."""
        if signed is None or signed.status_code != 200:
            return ""
        receipt = signed.headers.get("sealgate-receipt", [""])[0]
        if not receipt:
            self._record("signing", None, signed, "a signature came without Sealgate-Receipt")
        self.receipts.add(receipt)
        return receipt

    def _record(self, where: str, params: dict[str, str] | None, response: Response,
                problem: str) -> None:
        text = response.content[:600].decode(errors="replace")
        self.report(Finding(f"{where} {params or ''}", response.status_code,
                            f"{problem}\n  answer: {text}"))

    def report(self, finding: Finding) -> None:
        self.findings.append(finding)
        print(f"FINDING {finding.request} -> {finding.status}: {finding.problem}", flush=True)


def at_once(copies: int, *calls: Callable[[], Response]) -> list[Response]:
    """Each call (or ``copies`` of the one call) made at the same moment from threads."""
    chosen = list(calls) if len(calls) > 1 else [calls[0]] * copies
    with ThreadPoolExecutor(len(chosen)) as pool:
        return list(pool.map(lambda call: call(), chosen))
