"""The audit trail for auditors: GET /v1/audit with its filters, GET /v1/audit/verify, one
edited byte in the database caught by the real `sealgate audit verify`, and a full run of the
gateway leaving an event for every security-relevant action."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from pathlib import Path
from typing import Any

from gateway.hsm import Hsm, KeyAlgorithm
from gateway.pki.certs import chain_to_pem
from gateway.pki.devca import DevCA
from gateway.settings import Settings
from tests.api.conftest import APPLICANT, LEGAL_REPRESENTATIVE, ORGANIZATION, World
from tests.api.test_sign_pdf import assert_problem, sign_path
from tests.cli_support import Installation
from tests.pdf_samples import one_page_pdf

PDF = {"Content-Type": "application/pdf"}
PEM = {"Content-Type": "application/x-pem-file"}


def installation_for(settings: Settings) -> Installation:
    """The `sealgate` command pointed at the same database and token as ``settings``."""
    env = {
        **os.environ,
        "SEALGATE_VAR_DIR": settings.var_dir,
        "SEALGATE_STORAGE__SQLITE_PATH": settings.storage.sqlite_path,
        "SEALGATE_HSM__PIN__FILE": settings.hsm.pin.file,
        "SEALGATE_HSM__SOFTHSM_CONF": settings.hsm.softhsm_conf,
        "SEALGATE_PKI__DEV_CA_DIR": settings.pki.dev_ca_dir,
        "SEALGATE_PKI__TRUST_ROOTS": json.dumps(list(settings.pki.trust_roots)),
        "SOFTHSM2_CONF": settings.hsm.softhsm_conf,
    }
    return Installation(Path(settings.var_dir), env)


async def audit_events(world: World, headers: dict[str, str], query: str = "") -> Any:
    response = await world.http.get(f"/v1/audit?{query}", headers=headers)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_filters_narrow_the_events_and_pages_follow_on(world: World) -> None:
    """action (exact or prefix*), seal, since/until and limit/after each narrow the answer."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    _, signer = await world.client("signer", [seal["id"]])
    await world.http.post(sign_path(seal["id"]), data=one_page_pdf(), headers={**signer, **PDF})
    _, auditor = await world.client("auditor")
    # Times have whole seconds, so a split inside this run could fall on a shared second.
    dated = await world.services.audit.append("test", "test.dated", "test/1",
                                              time=dt.datetime(2031, 1, 1, tzinfo=dt.UTC))

    everything = (await audit_events(world, auditor, "limit=1000"))["events"]
    assert [e["seq"] for e in everything] == list(range(1, len(everything) + 1))
    assert set(everything[0]) == {"seq", "time", "actor", "action", "target", "details",
                                  "prev_hash", "hash"}

    keys = (await audit_events(world, auditor, "action=key.*"))["events"]
    assert keys
    assert all(e["action"].startswith("key.") for e in keys)
    signed = (await audit_events(world, auditor, "action=seal.signed"))["events"]
    assert [e["target"] for e in signed] == [f"seal/{seal['id']}"]
    about_seal = (await audit_events(world, auditor, f"seal={seal['id']}"))["events"]
    assert {"seal.created", "filing.created", "seal.signed"} <= {e["action"] for e in about_seal}
    assert all(e["target"] == f"seal/{seal['id']}" or e["details"].get("seal_id") == seal["id"]
               for e in about_seal)

    split = "2030-12-31T23:59:59Z"
    later = (await audit_events(world, auditor, f"since={split}&limit=1000"))["events"]
    earlier = (await audit_events(world, auditor, f"until={split}&limit=1000"))["events"]
    assert later == [dated]
    assert earlier == everything[:-1]
    window = f"since={everything[0]['time']}&until=2031-01-01T00:00:01Z&limit=1000"
    assert (await audit_events(world, auditor, window))["events"] == everything

    pages, after = [], 0
    while True:
        page = await audit_events(world, auditor, f"limit=3&after={after}")
        pages.extend(page["events"])
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert pages == everything


async def test_bad_filters_are_422_naming_the_parameter(world: World) -> None:
    """since without a zone, a limit out of range and a non-numeric after are refused."""
    _, auditor = await world.client("auditor")
    for query, field in (("since=2025-01-01T00:00:00", "since"), ("until=yesterday", "until"),
                         ("limit=0", "limit"), ("limit=5000", "limit"), ("after=x", "after")):
        response = await world.http.get(f"/v1/audit?{query}", headers=auditor)
        body = await assert_problem(response, 422, "validation-failed")
        assert body["errors"][0]["field"] == field


async def test_one_edited_byte_is_named_by_the_cli_and_the_api(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """One edited byte in the database: `sealgate audit verify` and the API name its seq."""
    async with World.running(settings, hsm, dev_ca) as world:
        await world.active_seal(KeyAlgorithm.EC_P256)
        target = await world.services.audit.append("tamper-target", "test.marker", "test/1")
        await world.client("signer")
        _, auditor = await world.client("auditor")
        intact = await (await world.http.get("/v1/audit/verify", headers=auditor)).json()
        assert intact["intact"] is True
        assert intact["first_bad_seq"] is None
        assert intact["events"] == target["seq"] + 2
    cli = installation_for(settings)
    assert cli.run("audit", "verify").returncode == 0

    database = Path(settings.storage.sqlite_path)
    assert not Path(f"{database}-wal").exists() or Path(f"{database}-wal").stat().st_size == 0
    raw = database.read_bytes()
    assert raw.count(b'"actor":"tamper-target"') == 1
    database.write_bytes(raw.replace(b'"actor":"tamper-target"', b'"actor":"tamper-targes"'))

    broken = cli.run("audit", "verify", check=False)
    assert broken.returncode == 1, broken.stderr
    report = json.loads(broken.stdout)
    assert report["intact"] is False
    assert report["first_bad_seq"] == target["seq"]
    assert report["problem"] == f"event {target['seq']} was modified"

    async with World.running(settings, hsm, dev_ca) as world:
        _, auditor = await world.client("auditor")
        answer = await (await world.http.get("/v1/audit/verify", headers=auditor)).json()
    assert answer["intact"] is False
    assert answer["first_bad_seq"] == target["seq"]


async def test_a_full_run_audits_every_security_relevant_action(world: World) -> None:
    """A full run leaves an event for every security-relevant action, in an intact chain."""
    svc = world.services
    _, a = await world.client("key_officer", name="officer-a")
    _, b = await world.client("key_officer", name="officer-b")
    _, filer = await world.client("filer")
    _, auditor = await world.client("auditor")

    key = await (await world.http.post("/v1/keys", headers=a,
                                       json={"label": "k", "algorithm": "ec-p256"})).json()
    await world.http.post(f"/v1/keys/{key['id']}/csr", headers=a,
                          json={"subject": {"common_name": "合同专用章"}})
    cert = world.ca.issue(svc.keys.public_key_der(key), "合同专用章", ORGANIZATION["name"])
    await world.http.put(f"/v1/keys/{key['id']}/certificate", headers={**a, **PEM},
                         data=chain_to_pem([cert, world.ca.certificate]).encode())
    seal = await (await world.http.post("/v1/seals", headers=filer, json={
        "name": "合同专用章", "type": "04", "organization": ORGANIZATION,
        "key_id": key["id"]})).json()
    await svc.filings.file_and_approve_locally(seal["id"], APPLICANT, LEGAL_REPRESENTATIVE,
                                               "filer")

    signer, signer_headers = await world.client("signer")
    grant = await (await world.http.post("/v1/approvals", headers=a, json={
        "action": "grant_seal",
        "params": {"client_id": signer.id, "seal_id": seal["id"]}})).json()
    await world.http.post(f"/v1/approvals/{grant['id']}/approve", headers=b)
    signed = await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                                   headers={**signer_headers, **PDF})
    assert signed.status == 200

    new_key = await world.key(KeyAlgorithm.EC_P256)
    await world.http.post(f"/v1/seals/{seal['id']}/rotate-key", headers=a,
                          json={"key_id": new_key["id"]})
    await world.http.post(f"/v1/keys/{key['id']}/disable", headers=a)
    destroy = await (await world.http.post(f"/v1/keys/{key['id']}/destroy", headers=a)).json()
    await world.http.post(f"/v1/approvals/{destroy['id']}/approve", headers=b)
    role = await (await world.http.post("/v1/approvals", headers=b, json={
        "action": "set_role", "params": {"client_id": signer.id, "role": "auditor"}})).json()
    await world.http.post(f"/v1/approvals/{role['id']}/reject", headers=a)

    await svc.clients.revoke_grant(signer.id, seal["id"], "officer-a")
    await svc.clients.rotate(signer.id, "officer-a")
    await svc.clients.revoke(signer.id, "officer-a")
    await world.http.get("/v1/keys", headers={"Authorization": "Bearer sg_made-up"})

    events = (await audit_events(world, auditor, "limit=1000"))["events"]
    actions = {e["action"] for e in events}
    expected = {
        "key.created", "key.csr_created", "key.certificate_imported", "seal.key_rotated",
        "key.disabled", "key.destroyed", "client.created", "client.granted",
        "client.grant_revoked", "client.rotated", "client.revoked", "seal.created",
        "seal.signed", "filing.created", "filing.submitted", "filing.approved",
        "approval.requested", "approval.approved", "approval.rejected", "auth.failed",
    }
    assert expected - actions == set()
    signature = next(e for e in events if e["action"] == "seal.signed")
    assert signature["actor"] == signer.name
    assert {"format", "sealing_receipt", "document_sha256", "client_id"} <= set(
        signature["details"])
    assert signature["details"]["sealing_receipt"] == signed.headers["Sealgate-Receipt"]
    verified = await (await world.http.get("/v1/audit/verify", headers=auditor)).json()
    assert verified == {"intact": True, "events": len(events), "checkpoints": 0,
                        "first_bad_seq": None, "problem": None}


async def test_only_auditors_read_the_audit_log(world: World) -> None:
    """Key officers and signers are 403 on both audit endpoints."""
    for role in ("key_officer", "signer"):
        _, headers = await world.client(role, name=f"{role}-{uuid.uuid4().hex[:6]}")
        for path in ("/v1/audit", "/v1/audit/verify"):
            await assert_problem(await world.http.get(path, headers=headers), 403, "forbidden")


async def test_a_seal_s_audit_includes_the_decisions_on_granting_it(world: World) -> None:
    """?seal= also finds the dual-control requests about the seal: filed, approved, and
    rejected (whose event names what was refused)."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    _, a = await world.client("key_officer", name="officer-a")
    _, b = await world.client("key_officer", name="officer-b")
    _, auditor = await world.client("auditor")
    signer, _ = await world.client("signer")
    ids = []
    for decision in ("approve", "reject"):
        filed = await (await world.http.post("/v1/approvals", headers=a, json={
            "action": "grant_seal",
            "params": {"client_id": signer.id, "seal_id": seal["id"]}})).json()
        response = await world.http.post(f"/v1/approvals/{filed['id']}/{decision}", headers=b)
        assert response.status == 200, await response.text()
        ids.append(filed["id"])
    events = (await audit_events(world, auditor, f"seal={seal['id']}"))["events"]
    decisions = [(e["action"], e["target"]) for e in events if e["action"].startswith("approval")]
    assert decisions == [
        ("approval.requested", f"approval/{ids[0]}"), ("approval.approved", f"approval/{ids[0]}"),
        ("approval.requested", f"approval/{ids[1]}"), ("approval.rejected", f"approval/{ids[1]}"),
    ]
