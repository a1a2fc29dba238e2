"""The fuzzer against a gateway process: sealing, verification and receipt checks over HTTP."""

from __future__ import annotations

import http.client
import json
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.signing.verify import validate_pdf_signatures
from tests.fuzz.harness import pdfsig_accepts
from tests.gateway_process import Deployment

# Longer than this and a request held its worker too long, whatever it answered.
_SLOW_SECONDS = 10.0
Record = Callable[[Path, str, bytes, str, object], None]


def run_live(seconds: float, out: Path, rng: random.Random, pool: dict[str, bytes],
             mutate: Callable[[bytes, random.Random], bytes], record: Record) -> int:
    """Post mutated documents until ``seconds`` have passed; return how many were posted."""
    deployment = Deployment.create(Path(tempfile.mkdtemp(prefix="pdffuzz-live-")))
    roots = [(deployment.var / "ca" / "ca.pem").read_bytes()]
    names = sorted(pool)
    sealed = count = 0
    answers: Counter[str] = Counter()
    # Without the per-client rate limit: the fuzzer's one client outpaces it.
    with deployment.serve(workers=1, env={"SEALGATE_LIMITS__REQUESTS_PER_SECOND": "0"}
                          ) as gateway:
        before = _seal_events(deployment)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            name = rng.choice(names)
            document = mutate(pool[name], rng)
            count += 1
            visible = rng.choice(["true", "false"])
            sign = f"/v1/seals/{deployment.seal_id}/sign/pdf?visible={visible}"
            for path, token in ((sign, deployment.token), ("/v1/verify", ""),
                                ("/v1/receipts/verify", "")):
                problem, ok, status = _judge(gateway.port, path, token, document, roots)
                answers[f"{_endpoint(path)} {status}"] += 1
                sealed += ok and path == sign
                if problem:
                    record(out, name, document, f"{path}: {problem}", {"path": path})
        after = _seal_events(deployment)
    print("answers:", dict(sorted(answers.items())), flush=True)
    if after - before != sealed:
        print(f"FINDING: {after - before} seal events in the audit log, {sealed} sealed "
              "documents returned", flush=True)
    return count


def _judge(port: int, path: str, token: str, document: bytes,
           roots: list[bytes]) -> tuple[str, bool, int]:
    """What is wrong with the answer to one request ("" if nothing), whether it sealed,
    and its status (0: none)."""
    started = time.monotonic()
    try:
        status, content_type, body = _post(port, path, token, document)
    except (OSError, http.client.HTTPException) as exc:
        return f"no answer: {type(exc).__name__}: {exc}", False, 0
    elapsed = time.monotonic() - started
    if elapsed > _SLOW_SECONDS:
        return f"answered {status} after {elapsed:.1f} s", False, status
    if status >= 500:
        return f"{status}: {body[:300]!r}", False, status
    if status >= 400:
        problem = _problem(content_type, body)
        return ("" if problem.get("type") and problem.get("detail")
                else f"{status} without problem+json: {body[:200]!r}"), False, status
    if "/sign/pdf" not in path:
        return "", False, status
    return _check_sealed(document, body, roots), True, status


def _endpoint(path: str) -> str:
    return "sign" if "/sign/pdf" in path else "receipts" if "receipts" in path else "verify"


def _post(port: int, path: str, token: str, document: bytes) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/pdf"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request("POST", path, body=document, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def _problem(content_type: str, body: bytes) -> dict[str, Any]:
    if not content_type.startswith("application/problem+json"):
        return {}
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _check_sealed(document: bytes, sealed: bytes, roots: list[bytes]) -> str:
    if not sealed.startswith(document):
        return "200 whose body does not start with the document"
    try:
        reports = validate_pdf_signatures(sealed, roots)
    except Exception as exc:
        return f"200 whose sealed PDF the verifier refuses: {exc}"
    # The seal is the one signature over the whole document.
    if not any(r.intact and r.trusted and r.covers_whole_document for r in reports):
        return f"200 whose seal does not validate: {[r.problems for r in reports]}"
    return "" if pdfsig_accepts(sealed) else "200 whose sealed PDF pdfsig rejects"


def _seal_events(deployment: Deployment) -> int:
    return sum(1 for event in deployment.audit_events() if event.get("action") == "seal.signed"
               and (event.get("details") or {}).get("format") == "pdf")
