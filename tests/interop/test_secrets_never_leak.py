"""PINs and tokens never show up where people and machines read: logs (at DEBUG), HTTP
responses (bodies and headers), the exported audit log, CLI output and exception texts."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import export_jsonl
from gateway.hsm import Hsm, KeyAlgorithm
from gateway.pki.devca import DevCA
from gateway.settings import Settings
from tests.api.conftest import World
from tests.api.test_audit_api import installation_for
from tests.api.test_sign_pdf import sign_path
from tests.gateway_process import Deployment
from tests.pdf_samples import one_page_pdf

pytestmark = pytest.mark.interop

PDF = {"Content-Type": "application/pdf"}


def bearer(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


async def test_no_pin_or_token_leaks_from_a_full_run(
    settings: Settings, hsm: Hsm, dev_ca: DevCA, token_dir: Path,
    caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    """No PIN or token shows in logs, responses, audit export or CLI output of a full run."""
    caplog.set_level(logging.DEBUG)
    pins = {(token_dir / "user-pin").read_text().strip(),
            (token_dir / "so-pin").read_text().strip()}
    tokens: set[str] = set()
    seen: list[str] = []

    async with World.running(settings, hsm, dev_ca) as world:

        async def call(method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
            response = await world.http.request(method, path, headers=headers, **kw)
            body = await response.read()
            seen.append(f"{response.status} {list(response.headers.items())} "
                         f"{body.decode('utf-8', 'replace')}")
            return response

        async def client(role: str, seals: list[str] | None = None) -> tuple[Any, dict[str, str]]:
            made, headers = await world.client(role, seals)
            tokens.add(bearer(headers))
            return made, headers

        _, first = await client("key_officer")
        _, second = await client("key_officer")
        _, auditor = await client("auditor")
        signer, signer_headers = await client("signer")
        seal = await world.active_seal(KeyAlgorithm.EC_P256)

        filed = await call("POST", "/v1/approvals", first, json={
            "action": "grant_seal", "params": {"client_id": signer.id, "seal_id": seal["id"]}})
        approval = await filed.json()
        await call("POST", f"/v1/approvals/{approval['id']}/approve", second)
        signed = await call("POST", sign_path(seal["id"]), {**signer_headers, **PDF},
                            data=one_page_pdf())
        assert signed.status == 200
        await call("GET", f"/v1/sealing-receipts/{signed.headers['Sealgate-Receipt']}",
                   signer_headers)
        key = await call("POST", "/v1/keys", first, json={"label": "k", "algorithm": "ec-p256"})
        await call("POST", f"/v1/keys/{(await key.json())['id']}/csr", first,
                   json={"subject": {"common_name": "x"}})

        wrong = f"sg_{uuid.uuid4().hex}"
        tokens.add(wrong)
        assert (await call("GET", "/v1/keys", {"Authorization": f"Bearer {wrong}"})).status == 401
        rotated = await world.services.clients.rotate(signer.id, "test")
        tokens.add(rotated)
        assert (await call("GET", "/v1/seals", signer_headers)).status == 401
        await world.services.clients.revoke(signer.id, "test")
        assert (await call("GET", "/v1/seals",
                           {"Authorization": f"Bearer {rotated}"})).status == 401

        tokens_dir = token_dir / "tokens"
        away = token_dir / "tokens.away"
        tokens_dir.rename(away)
        try:
            _, fresh_signer = await client("signer", [seal["id"]])
            outage = await call("POST", sign_path(seal["id"]), {**fresh_signer, **PDF},
                                data=one_page_pdf())
            assert outage.status == 503
            assert (await call("GET", "/readyz", {})).status == 503
        finally:
            away.rename(tokens_dir)
        for _ in range(50):
            if (await call("GET", "/readyz", {})).status == 200:
                break
            await asyncio.sleep(0.1)

        await call("GET", "/v1/audit?limit=1000", auditor)
        await call("GET", "/v1/audit/verify", auditor)
        exported = io.StringIO()
        await export_jsonl(world.services.storage, exported)

    pin_file = tmp_path / "wrong-pin"
    wrong_pin = uuid.uuid4().hex
    pin_file.write_text(wrong_pin)
    cli = installation_for(settings)
    cli.env["SEALGATE_HSM__PIN__FILE"] = str(pin_file)
    refused = cli.run("keys", "create", "never-made", check=False)
    assert refused.returncode != 0
    pins.add(wrong_pin)

    places = {"logs": caplog.text, "responses": "\n".join(seen), "audit": exported.getvalue(),
              "cli": refused.stdout + refused.stderr, "settings": repr(settings)}
    assert len(tokens) >= 7
    assert "auth.failed" in places["audit"] and "seal.signed" in places["audit"]
    # Name the place and kind of a leak, never the secret, so a failure leaks nothing either.
    leaks = [(where, kind) for where, text in places.items()
             for kind, secrets in (("pin", pins), ("token", tokens))
             for secret in secrets
             if secret in text or secret.removeprefix("sg_") in text]
    assert leaks == []


def test_a_request_the_http_parser_refuses_is_one_log_line_without_its_bytes(
    tmp_path: Path,
) -> None:
    """aiohttp's parser refuses these before any handler runs, and used to log each as an
    ERROR with a traceback quoting the offending line: a token in a malformed
    Authorization header went to the log, and anyone could fill it with tracebacks."""
    token = f"sg_{uuid.uuid4().hex}"
    malformed = [
        f"GET /v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\x01\r\n\r\n",
        f"GET /v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}{'A' * 9000}"
        "\r\n\r\n",
        "POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    ]
    deployment = Deployment.create(tmp_path)
    with deployment.serve(workers=1) as gateway:
        for request in malformed:
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as connection:
                connection.sendall(request.encode("latin-1"))
                assert connection.recv(64).startswith(b"HTTP/1.0 400 ")
    log = gateway.log_path.read_text()
    refusals = [line for line in log.splitlines() if "refused a malformed HTTP request" in line]
    assert len(refusals) == 3, log
    assert "Invalid header value char" in refusals[0]
    assert "Traceback" not in log and " ERROR " not in log
    assert token not in log and token.removeprefix("sg_") not in log
