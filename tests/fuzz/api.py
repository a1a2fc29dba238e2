"""`make fuzz-api`: schemathesis drives a real gateway from its own OpenAPI document.

    .venv/bin/python -m tests.fuzz.api [--max-examples N] [--seed S] [schemathesis options]

A deployment in a temporary directory (SoftHSM token, SQLite, `sealgate init --demo`) is
served by `sealgate serve`; an admin client is made through dual control, as an operator
would; then `schemathesis run` sends what the document allows (and what it forbids) to every
operation and checks the answers: no 5xx, only documented statuses, media types, headers and
schemas, schema-violating requests refused. Answers of 409 and 422 count as accepting a
schema-valid request: the document cannot express every rule of the domain (a USCC's check
digit, a key that must exist). The run ends with schemathesis's exit status.

Imported by schemathesis (SCHEMATHESIS_HOOKS), this module also teaches it to send the raw
bodies it has no serializer for.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import schemathesis

from tests.gateway_process import PROJECT_ROOT, SEALGATE, Deployment

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
# the demo seal (active, filed), its key and its receipt.
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
SETTINGS = "[limits]\nrequests_per_second = 0\n"
_REQUEST_ID = re.compile(r"approval request ([0-9a-f-]{36})")
_TOKEN = re.compile(r"\bsg_[A-Za-z0-9_-]+")
HOOKS = "tests.fuzz.api"


def admin_token(deployment: Deployment) -> str:
    """An admin client's token: two key officers (the first two need no approval), one files
    the request, the other approves it."""
    officers = []
    for name in ("fuzz-officer-a", "fuzz-officer-b"):
        path = deployment.directory / f"{name}.token"
        path.write_text(deployment.create_client(name, "key_officer"))
        officers.append(path)
    filed = deployment.sealgate("clients", "create", "fuzz-admin", "--role", "admin",
                                "--token-file", str(officers[0]))
    found = _REQUEST_ID.search(filed.stdout + filed.stderr)
    assert found, filed.stderr
    approved = deployment.sealgate("approvals", "approve", found.group(1),
                                   "--token-file", str(officers[1]))
    token = _TOKEN.search(approved.stdout + approved.stderr)
    assert token, approved.stderr
    return token.group(0)


def run(directory: Path, max_examples: int, seed: int, extra: list[str]) -> int:
    deployment = Deployment.create(directory, settings=SETTINGS)
    token = admin_token(deployment)
    demo = json.loads((deployment.var / "demo.json").read_text())
    with deployment.serve(workers=1) as gateway:
        seal = _get(gateway.port, f"/v1/seals/{demo['seal_id']}", token)
        config = directory / "schemathesis.toml"
        config.write_text(CONFIG + KNOWN.format(seal=seal["id"], key=seal["key_id"],
                                                receipt=seal["receipt_number"]))
        command = [
            str(SEALGATE.with_name("schemathesis")), "--config-file", str(config), "run",
            gateway.url("/openapi.json"), "--header", f"Authorization: Bearer {token}",
            "--max-examples", str(max_examples), "--seed", str(seed),
            "--workers", "1", "--request-timeout", "30", "--max-response-time", "10",
            *extra,
        ]
        done = subprocess.run(command, check=False, cwd=directory, env={
            **deployment.env, "SCHEMATHESIS_HOOKS": HOOKS, "PYTHONPATH": str(PROJECT_ROOT)})
        if done.returncode:
            print(f"gateway log: {gateway.log_path}", file=sys.stderr)
        return done.returncode


def _get(port: int, path: str, token: str) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        found: dict[str, Any] = json.load(connection.getresponse())
    finally:
        connection.close()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the deployment directory")
    args, extra = parser.parse_known_args()
    directory = Path(tempfile.mkdtemp(prefix="sealgate-fuzz-"))
    try:
        return run(directory, args.max_examples, args.seed, extra)
    finally:
        if args.keep:
            print(f"deployment kept in {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
