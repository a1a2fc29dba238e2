"""`make fuzz-api`: schemathesis drives a real gateway from its own OpenAPI document, then
hypothesis runs whole lifecycles of valid requests against it.

    .venv/bin/python -m tests.fuzz.api [--max-examples N] [--seed S] [--deep-seconds T]
                                       [--deep-steps K] [--no-schemathesis] [schemathesis options]

A deployment in a temporary directory (SoftHSM token, SQLite, `sealgate init --demo`) is
served by `sealgate serve`; a client of each role is made as an operator would (the admin and
a signer granted the demo seal through dual control). Then `schemathesis run` sends what the
document allows (its examples first) and what it forbids to every operation, each with the
token of the first role the operation names, and checks the answers: no 5xx, only documented
statuses, media types, headers and schemas, schema-violating requests refused. Answers of 409
and 422 count as accepting a schema-valid request: the document cannot express every rule of
the domain (a USCC's check digit, a key that must exist). After it, :mod:`tests.fuzz.deep`
makes keys, seals, filings, signatures and approvals for ``--deep-seconds``, as each role
would, and every signature it got back must be in the audit log. `sealgate audit verify`
ends the run; its status is non-zero when anything failed.

Imported by schemathesis (SCHEMATHESIS_HOOKS), this module also teaches it to send the raw
bodies it has no serializer for, gives it the tokens and counts its answers.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import schemathesis

from gateway.pki.devca import DevCA
from tests.fuzz import deep
from tests.gateway_process import PROJECT_ROOT, SEALGATE, Deployment, GatewayProcess

# Raw DER and PDF bodies are bytes as they are; schemathesis knows that only of octet-stream.
for _media_type in ("application/timestamp-query", "application/pdf", "*/*"):
    schemathesis.serializer.alias(_media_type, "application/octet-stream")

CONFIG = """\
# 409 and 422: rules of the domain; 415: a body sent as a PDF that is none.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "415", "422"]

# 413: a raw body past the endpoint's limit (maxLength) is refused before it is read.
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422",
                     "428", "429", "5xx"]

# CSC answers every request error with 400 (CSC API v1.0.4.0 §10.1).
[[operations]]
include-path-regex = "^/csc/"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403"]

# GET /v1/receipts/{number} takes "verify" for a receipt number, so this path allows GET.
[[operations]]
include-path = "/v1/receipts/verify"
checks.allow_header_conformance.enabled = false
"""
# Half the operations on a seal, key or receipt reach their work only with one that exists:
# the demo seal (active, filed, granted to the signer) and its receipt, and a key of no seal:
# the demo seal's own would be disabled early in the run, and the seal with it.
KNOWN = """
[[operations]]
include-path-regex = '^/v1/seals/[{{]id[}}]'
parameters = {{ id = "{seal}" }}

[[operations]]
include-path-regex = '^/v1/keys/[{{]id[}}]'
parameters = {{ id = "{key}" }}

[[operations]]
include-path-regex = '^/v1/receipts/[{{]number[}}]'
parameters = {{ number = "{receipt}" }}
"""
# The fuzzer's own requests, a few hundred a second, must not meet the per-client limit.
# Nor its bad tokens the limit on failed authentications, which turns 401 into 429.
SETTINGS = """\
[limits]
requests_per_second = 0

[auth]
failures_per_minute = 1000000.0
failure_burst = 1000000
"""
_REQUEST_ID = re.compile(r"approval request ([0-9a-f-]{36})")
_TOKEN = re.compile(r"\bsg_[A-Za-z0-9_-]+")
HOOKS = "tests.fuzz.api"
TOKENS_VARIABLE = "SEALGATE_FUZZ_TOKENS"
CALLS_VARIABLE = "SEALGATE_FUZZ_CALLS"


ROLES = ("signer", "filer", "reviewer", "auditor", "key_officer", "admin")


def role_tokens(deployment: Deployment, seal_id: str) -> dict[str, str]:
    """A client of each role, made as an operator would: two key officers first (the first
    two need no approval), then through dual control the admin and a signer granted the demo
    seal, and a third key officer; the roles that need no approval directly.
    ``key_officer_b`` and ``key_officer_c`` decide what ``key_officer`` files."""
    tokens = {}
    for name, role in (("key_officer", "key_officer"), ("key_officer_b", "key_officer")):
        tokens[name] = deployment.create_client(f"fuzz-{name}", role)
    (deployment.directory / "officer.token").write_text(tokens["key_officer"])
    for role in ("filer", "reviewer", "auditor"):
        tokens[role] = deployment.create_client(f"fuzz-{role}", role)
    tokens["admin"] = _approved_client(deployment, tokens["key_officer_b"], "fuzz-admin",
                                       "--role", "admin")
    tokens["signer"] = _approved_client(deployment, tokens["key_officer_b"], "fuzz-signer",
                                        "--role", "signer", "--seal", seal_id)
    tokens["key_officer_c"] = _approved_client(deployment, tokens["key_officer_b"],
                                               "fuzz-key_officer_c", "--role", "key_officer")
    return tokens


def _approved_client(deployment: Deployment, second_officer: str, name: str,
                     *options: str) -> str:
    """A client whose creation the first officer files and the second approves: its token."""
    officer = deployment.directory / "officer.token"
    filed = deployment.sealgate("clients", "create", name, *options,
                                "--token-file", str(officer))
    found = _REQUEST_ID.search(filed.stdout + filed.stderr)
    assert found, filed.stderr
    second = deployment.directory / f"{name}.approver"
    second.write_text(second_officer)
    approved = deployment.sealgate("approvals", "approve", found.group(1),
                                   "--token-file", str(second))
    token = _TOKEN.search(approved.stdout + approved.stderr)
    assert token, approved.stderr
    return token.group(0)


def run(directory: Path, options: argparse.Namespace, extra: list[str]) -> int:
    deployment = Deployment.create(directory, settings=SETTINGS)
    tokens = role_tokens(deployment, deployment.seal_id)
    tokens_path = directory / "tokens.json"
    tokens_path.write_text(json.dumps(tokens))
    calls = directory / "calls.log"
    failed = False
    with deployment.serve(workers=1) as gateway:
        if options.schemathesis:
            failed |= _schemathesis(deployment, gateway, tokens, options, extra, {
                TOKENS_VARIABLE: str(tokens_path), CALLS_VARIABLE: str(calls)}) != 0
            print_answers(_counted(calls), "schemathesis")
        if options.deep_seconds > 0:
            started = time.monotonic()
            found = deep.run(gateway.url(""), tokens, _dev_ca(deployment),
                             options.deep_seconds, options.deep_steps)
            print_answers(found.answers, f"lifecycles ({time.monotonic() - started:.0f} s)")
            gaps = deep.audit_gaps(found, deployment.audit_events())
            for gap in gaps:
                print(f"FINDING audit log: {gap}")
            print(f"lifecycles: {len(found.findings) + len(gaps)} findings", flush=True)
            failed |= bool(found.findings or gaps)
        if failed:
            print(f"gateway log: {gateway.log_path}", file=sys.stderr)
    audit = deployment.sealgate("audit", "verify", check=False)
    print(f"sealgate audit verify: {audit.stdout.strip()}{audit.stderr.strip()}", flush=True)
    return 1 if failed or audit.returncode else 0


def _dev_ca(deployment: Deployment) -> DevCA:
    """The deployment's development CA, which certifies the keys the lifecycles make."""
    ca = DevCA.open(deployment.var / "ca")
    assert ca is not None, "sealgate init --demo makes the development CA"
    return ca


def _schemathesis(deployment: Deployment, gateway: GatewayProcess, tokens: dict[str, str],
                  options: argparse.Namespace, extra: list[str], env: dict[str, str]) -> int:
    seal = _request(gateway.port, "GET", f"/v1/seals/{deployment.seal_id}", tokens["auditor"])
    spare = _request(gateway.port, "POST", "/v1/keys", tokens["key_officer"],
                     {"label": "fuzz-spare", "algorithm": "ec-p256"})
    config = deployment.directory / "schemathesis.toml"
    config.write_text(CONFIG + KNOWN.format(seal=seal["id"], key=spare["id"],
                                            receipt=seal["receipt_number"]))
    command = [
        str(SEALGATE.with_name("schemathesis")), "--config-file", str(config), "run",
        gateway.url("/openapi.json"),
        "--max-examples", str(options.max_examples), "--seed", str(options.seed),
        "--workers", "1", "--request-timeout", "30", "--max-response-time", "10",
        *extra,
    ]
    done = subprocess.run(command, check=False, cwd=deployment.directory, env={
        **deployment.env, **env, "SCHEMATHESIS_HOOKS": HOOKS,
        "PYTHONPATH": str(PROJECT_ROOT)})
    return done.returncode


@schemathesis.auth(refresh_interval=None)  # a token per operation, not one cached
class RoleTokens:
    """Each operation is called with the token of the first role it names (the signer's
    holds the demo seal's grant). As an auth provider, schemathesis still sends its own
    missing and invalid tokens where it tests authentication."""

    def get(self, case: Any, context: Any) -> str | None:
        roles = case.operation.definition.raw.get("x-roles") or []
        return _tokens().get(roles[0]) if roles else None

    def set(self, case: Any, token: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    """Each answer's operation and status, appended to the run's call log."""
    log = os.environ.get(CALLS_VARIABLE)
    if log:
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"{case.operation.method.upper()} {case.operation.path} "
                      f"{response.status_code}\n")


@functools.cache
def _tokens() -> dict[str, str]:
    path = os.environ.get(TOKENS_VARIABLE)
    return json.loads(Path(path).read_text()) if path else {}


def _counted(calls: Path) -> Counter[str]:
    if not calls.exists():
        return Counter()
    return Counter(line.strip() for line in calls.read_text().splitlines() if line.strip())


def print_answers(answers: Counter[str], what: str) -> None:
    """The answers by operation and status, and the operations that got some 2xx."""
    succeeded = sorted({key.rsplit(" ", 1)[0] for key in answers
                        if key.rsplit(" ", 1)[1].startswith("2")})
    print(f"{what}: {sum(answers.values())} requests; answers by operation and status:")
    for key, count in sorted(answers.items()):
        print(f"  {key}: {count}")
    print(f"{what}: {len(succeeded)} operations answered 2xx: {', '.join(succeeded)}",
          flush=True)


def _request(port: int, method: str, path: str, token: str,
             body: dict[str, Any] | None = None) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, None if body is None else json.dumps(body),
                           headers={"Authorization": f"Bearer {token}",
                                    "Content-Type": "application/json"})
        found: dict[str, Any] = json.load(connection.getresponse())
    finally:
        connection.close()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--deep-seconds", type=float, default=120,
                        help="how long to run valid lifecycles after schemathesis (0: none)")
    parser.add_argument("--deep-steps", type=int, default=40,
                        help="steps of one lifecycle run before the next starts")
    parser.add_argument("--no-schemathesis", dest="schemathesis", action="store_false",
                        help="only the lifecycles")
    parser.add_argument("--keep", action="store_true", help="keep the deployment directory")
    args, extra = parser.parse_known_args()
    directory = Path(tempfile.mkdtemp(prefix="sealgate-fuzz-"))
    try:
        return run(directory, args, extra)
    finally:
        if args.keep:
            print(f"deployment kept in {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
