"""Dual control over HTTP: destroying keys, granting seals and key officer role changes happen
only when a second, different key officer approves; requests expire."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import isoformat
from gateway.custody.dual_control import CLAIM_SECONDS
from gateway.errors import NotFound
from gateway.hsm import Hsm, KeyAlgorithm
from gateway.pki.devca import DevCA
from gateway.settings import Settings
from gateway.storage import Write
from tests.api.conftest import World
from tests.api.test_sign_pdf import assert_problem, sign_path
from tests.pdf_samples import one_page_pdf

PDF = {"Content-Type": "application/pdf"}


async def officers(world: World, count: int = 2) -> list[dict[str, str]]:
    return [(await world.client("key_officer", name=f"officer-{n}"))[1] for n in range(count)]


async def file_request(
    world: World, headers: dict[str, str], action: str, **params: Any
) -> dict[str, Any]:
    response = await world.http.post("/v1/approvals", json={"action": action, "params": params},
                                     headers=headers)
    assert response.status == 201, await response.text()
    assert response.headers["Location"] == f"/v1/approvals/{(await response.json())['id']}"
    filed: dict[str, Any] = await response.json()
    return filed


async def disabled_key(world: World) -> dict[str, Any]:
    key = await world.key(KeyAlgorithm.EC_P256)
    return await world.services.keys.disable(key["id"], "test")


async def test_destroy_waits_for_a_second_officer_then_removes_the_key(
    world: World, hsm: Hsm
) -> None:
    """Destroying waits for a second officer's approval, then removes the key from the token."""
    first, second = await officers(world)
    key = await disabled_key(world)
    key_id = uuid.UUID(key["id"]).bytes
    response = await world.http.post(f"/v1/keys/{key['id']}/destroy", headers=first)
    assert response.status == 202, await response.text()
    approval = await response.json()
    assert approval["status"] == "pending"
    assert approval["action"] == "destroy_key"
    assert approval["requested_by"]["name"] == "officer-0"
    assert (await hsm.key_attributes(key_id))["never_extractable"]

    own = await world.http.post(f"/v1/approvals/{approval['id']}/approve", headers=first)
    body = await assert_problem(own, 403, "dual-control")
    assert "second key officer" in body["detail"]
    assert (await world.services.keys.get(key["id"]))["status"] == "disabled"

    approved = await world.http.post(f"/v1/approvals/{approval['id']}/approve", headers=second)
    assert approved.status == 200, await approved.text()
    result = await approved.json()
    assert result["approval"]["status"] == "approved"
    assert result["approval"]["decided_by"]["name"] == "officer-1"
    assert result["result"] == {"key": {"id": key["id"], "status": "destroyed"}}
    with pytest.raises(NotFound):
        await hsm.key_attributes(key_id)
    record = await (await world.http.get(f"/v1/keys/{key['id']}", headers=second)).json()
    assert record["status"] == "destroyed"

    events = await world.services.storage.events()
    assert [e["action"] for e in events[-2:]] == ["approval.approved", "key.destroyed"]
    again = await world.http.post(f"/v1/approvals/{approval['id']}/approve", headers=second)
    await assert_problem(again, 409, "conflict")


async def test_an_enabled_key_cannot_even_be_requested_for_destruction(world: World) -> None:
    """A key must be disabled first: the request itself is refused with 409."""
    first, _ = await officers(world)
    key = await world.key(KeyAlgorithm.EC_P256)
    response = await world.http.post(f"/v1/keys/{key['id']}/destroy", headers=first)
    body = await assert_problem(response, 409, "conflict")
    assert "disable the key" in body["detail"]


async def test_two_officers_approving_at_once_run_the_action_once(world: World) -> None:
    """Of two concurrent approvals by different officers one wins, the other gets 409."""
    first, second, third = await officers(world, 3)
    key = await disabled_key(world)
    approval = await file_request(world, first, "destroy_key", key_id=key["id"])
    path = f"/v1/approvals/{approval['id']}/approve"
    responses = await asyncio.gather(world.http.post(path, headers=second),
                                     world.http.post(path, headers=third))
    assert sorted(r.status for r in responses) == [200, 409]
    destroyed = [e for e in await world.services.storage.events()
                 if e["action"] == "key.destroyed"]
    assert len(destroyed) == 1


async def test_seal_grant_needs_approval_and_then_lets_the_client_sign(world: World) -> None:
    """A seal grant takes effect only once approved, in one commit with the approval event."""
    first, second = await officers(world)
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    client, signer = await world.client("signer")
    before = await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                                   headers={**signer, **PDF})
    await assert_problem(before, 404, "not-found")

    approval = await file_request(world, first, "grant_seal", client_id=client.name,
                                  seal_id=seal["id"], formats=["pdf"])
    assert approval["params"]["client_id"] == client.id
    pending = await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                                    headers={**signer, **PDF})
    await assert_problem(pending, 404, "not-found")

    approved = await world.http.post(f"/v1/approvals/{approval['id']}/approve", headers=second)
    assert approved.status == 200, await approved.text()
    assert (await approved.json())["result"]["client"]["seals"] == [seal["id"]]
    after = await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                                  headers={**signer, **PDF})
    assert after.status == 200

    events = await world.services.storage.events()
    granted = next(e for e in events if e["action"] == "client.granted")
    approved_event = events[granted["seq"] - 2]
    assert approved_event["action"] == "approval.approved"
    assert granted["details"] == {"seal_id": seal["id"], "formats": ["pdf"]}


async def test_key_officer_role_changes_and_creation_need_a_second_officer(
    world: World,
) -> None:
    """Making a key officer, by role change or creation, waits for a second officer."""
    first, second = await officers(world)
    client, headers = await world.client("auditor")
    promote = await file_request(world, first, "set_role", client_id=client.id,
                                 role="key_officer")
    assert (await world.services.clients.get(client.id)).role == "auditor"
    done = await world.http.post(f"/v1/approvals/{promote['id']}/approve", headers=second)
    assert (await done.json())["result"]["client"]["role"] == "key_officer"
    assert (await world.http.post("/v1/keys", json={"label": "x", "algorithm": "ec-p256"},
                                  headers=headers)).status == 201

    create = await file_request(world, first, "create_client", name="officer-new",
                                role="key_officer")
    made = await (await world.http.post(f"/v1/approvals/{create['id']}/approve",
                                        headers=headers)).json()
    token = made["result"]["token"]
    assert made["result"]["client"]["role"] == "key_officer"
    listed = await world.http.get("/v1/approvals", headers={"Authorization": f"Bearer {token}"})
    assert listed.status == 200
    assert token not in repr(await world.services.storage.events())
    assert token not in (await listed.text())


async def test_revoking_a_client_through_approval_stops_its_token(world: World) -> None:
    """A revoke_client request, once approved by another officer, makes the token fail."""
    first, second, third = await officers(world, 3)
    target = await world.services.clients.resolve("officer-2")
    approval = await file_request(world, first, "revoke_client", client_id=target.name)
    assert (await world.http.get("/v1/approvals", headers=third)).status == 200
    done = await world.http.post(f"/v1/approvals/{approval['id']}/approve", headers=second)
    assert (await done.json())["result"]["client"]["status"] == "revoked"
    refused = await world.http.get("/v1/approvals", headers=third)
    await assert_problem(refused, 401, "unauthorized")
    assert target.id == approval["params"]["client_id"]


async def test_admins_take_no_part_in_dual_control(world: World) -> None:
    """An admin passes every role check but can neither file nor approve a request."""
    first, _ = await officers(world)
    _, admin = await world.client("admin")
    key = await disabled_key(world)
    filed = await world.http.post("/v1/approvals", headers=admin,
                                  json={"action": "destroy_key", "params": {"key_id": key["id"]}})
    await assert_problem(filed, 403, "dual-control")
    approval = await file_request(world, first, "destroy_key", key_id=key["id"])
    approve = await world.http.post(f"/v1/approvals/{approval['id']}/approve", headers=admin)
    await assert_problem(approve, 403, "dual-control")


async def test_rejected_request_can_no_longer_be_approved(world: World) -> None:
    """A rejected request stays rejected, with the reason, and its action never runs."""
    first, second = await officers(world)
    key = await disabled_key(world)
    approval = await file_request(world, first, "destroy_key", key_id=key["id"])
    rejected = await world.http.post(f"/v1/approvals/{approval['id']}/reject", headers=second,
                                     json={"reason": "still needed for verification"})
    body = await rejected.json()
    assert body["status"] == "rejected"
    assert body["reason"] == "still needed for verification"
    late = await world.http.post(f"/v1/approvals/{approval['id']}/approve", headers=second)
    await assert_problem(late, 409, "conflict")
    assert (await world.services.keys.get(key["id"]))["status"] == "disabled"


async def test_approval_that_fails_midway_leaves_the_request_pending(
    world: World, hsm: Hsm, token_dir: Path
) -> None:
    """An approval whose action fails (HSM away) leaves the request pending for a retry."""
    first, second = await officers(world)
    key = await disabled_key(world)
    approval = await file_request(world, first, "destroy_key", key_id=key["id"])
    path = f"/v1/approvals/{approval['id']}"
    tokens, away = token_dir / "tokens", token_dir / "tokens.away"
    tokens.rename(away)
    try:
        failed = await world.http.post(f"{path}/approve", headers=second)
        await assert_problem(failed, 503, "hsm-unavailable")
        assert (await (await world.http.get(path, headers=second)).json())["status"] == "pending"
    finally:
        away.rename(tokens)
    for _ in range(50):
        if (await world.http.get("/readyz")).status == 200:
            break
        await asyncio.sleep(0.1)
    done = await world.http.post(f"{path}/approve", headers=second)
    assert done.status == 200, await done.text()
    with pytest.raises(NotFound):
        await hsm.key_attributes(uuid.UUID(key["id"]).bytes)


async def test_request_of_a_revoked_officer_cannot_be_approved(world: World) -> None:
    """Revoking the requesting officer (a leaked token, say) stops what they filed."""
    first, second = await officers(world)
    key = await disabled_key(world)
    approval = await file_request(world, first, "destroy_key", key_id=key["id"])
    requester = await world.services.clients.resolve("officer-0")
    await world.services.clients.revoke(requester.id, "test")
    response = await world.http.post(f"/v1/approvals/{approval['id']}/approve", headers=second)
    body = await assert_problem(response, 409, "conflict")
    assert "no longer an active key officer" in body["detail"]
    assert (await world.services.keys.get(key["id"]))["status"] == "disabled"


async def test_expired_request_is_409(settings: Settings, hsm: Hsm, dev_ca: DevCA) -> None:
    """With a lifetime of zero hours every request is expired at once: approving is 409."""
    instant = settings.replace(auth=dataclasses.replace(settings.auth, approval_ttl_hours=0.0))
    async with World.running(instant, hsm, dev_ca) as world:
        first, second = await officers(world)
        key = await disabled_key(world)
        approval = await file_request(world, first, "destroy_key", key_id=key["id"])
        response = await world.http.post(f"/v1/approvals/{approval['id']}/approve",
                                         headers=second)
        await assert_problem(response, 409, "approval-expired")
        listed = await world.http.get("/v1/approvals?status=expired", headers=second)
        assert [a["id"] for a in (await listed.json())["approvals"]] == [approval["id"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [({"action": "delete_everything", "params": {}}, "action"),
     ({"action": "destroy_key", "params": {}}, "params.key_id"),
     ({"action": "destroy_key", "params": {"key_id": "k", "force": True}}, "params.force"),
     ({"action": "grant_seal", "params": {"client_id": "nobody", "seal_id": "s"}},
      "params.client_id"),
     ({"action": "set_role", "params": {"client_id": "officer-1", "role": "king"}},
      "params.role")],
    ids=["unknown-action", "missing-param", "unknown-param", "unknown-client", "unknown-role"],
)
async def test_requests_are_checked_when_filed(
    world: World, body: dict[str, Any], field: str
) -> None:
    """A request that could never run is refused at once with 422 naming the field."""
    first, _ = await officers(world)
    response = await world.http.post("/v1/approvals", json=body, headers=first)
    problem = await assert_problem(response, 422, "validation-failed")
    assert problem["errors"][0]["field"] == field


async def test_the_client_a_request_is_about_neither_approves_nor_rejects_it(
    world: World,
) -> None:
    """An officer whose revocation is requested cannot veto it; a third officer decides."""
    first, second, third = await officers(world, 3)
    target = await world.services.clients.resolve("officer-1")
    approval = await file_request(world, first, "revoke_client", client_id=target.id)
    path = f"/v1/approvals/{approval['id']}"
    for verb in ("reject", "approve"):
        response = await world.http.post(f"{path}/{verb}", headers=second)
        body = await assert_problem(response, 403, "dual-control")
        assert "about you" in body["detail"]
    assert (await world.http.post(f"{path}/approve", headers=third)).status == 200
    assert (await world.services.clients.get(target.id)).status == "revoked"


async def claim_as(world: World, approval_id: str, officer: str, seconds_ago: float) -> None:
    """The claim an approval takes before its action, as a process that died after it."""
    storage = world.services.storage
    record = await storage.get("approval_request", approval_id)
    assert record is not None
    officer_client = await world.services.clients.resolve(officer)
    claimed_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)
    await storage.commit([Write("approval_request", approval_id, record.version, {
        **record.data, "status": "approving", "claimed_at": isoformat(claimed_at),
        "decided_by": {"id": officer_client.id, "name": officer_client.name}})])


async def test_an_interrupted_approval_is_resumed_only_while_its_request_holds(
    world: World,
) -> None:
    """The officer whose approval died mid-way may finish it, but not once the requester is
    revoked; a claim left longer than CLAIM_SECONDS lapses and any officer may reject."""
    first, second, third = await officers(world, 3)
    key = await disabled_key(world)
    approval = await file_request(world, first, "destroy_key", key_id=key["id"])
    path = f"/v1/approvals/{approval['id']}"
    await claim_as(world, approval["id"], "officer-1", seconds_ago=1)
    busy = await world.http.post(f"{path}/reject", headers=third)
    await assert_problem(busy, 409, "conflict")
    await world.services.clients.revoke(
        (await world.services.clients.resolve("officer-0")).id, "test")
    resumed = await world.http.post(f"{path}/approve", headers=second)
    body = await assert_problem(resumed, 409, "conflict")
    assert "no longer an active key officer" in body["detail"]

    await claim_as(world, approval["id"], "officer-1", seconds_ago=CLAIM_SECONDS + 1)
    assert (await (await world.http.get(path, headers=third)).json())["status"] == "pending"
    rejected = await world.http.post(f"{path}/reject", headers=third)
    assert rejected.status == 200, await rejected.text()
    assert (await world.services.keys.get(key["id"]))["status"] == "disabled"


async def test_approval_checks_the_seal_is_not_cancelled_and_names_stay_unique(
    world: World,
) -> None:
    """A grant filed before its seal was cancelled is refused when approved; of two client
    creations with one name approved at once, one succeeds."""
    first, second = await officers(world)
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    signer, _ = await world.client("signer")
    grant = await file_request(world, first, "grant_seal", client_id=signer.id,
                               seal_id=seal["id"])
    record = await world.services.seals.record(seal["id"])
    await world.services.seals.update(record, {"status": "cancelled"})
    refused = await world.http.post(f"/v1/approvals/{grant['id']}/approve", headers=second)
    body = await assert_problem(refused, 409, "conflict")
    assert "cancelled" in body["detail"]

    twins = [await file_request(world, first, "create_client", name="twin", role="auditor")
             for _ in range(2)]
    answers = await asyncio.gather(*(
        world.http.post(f"/v1/approvals/{t['id']}/approve", headers=second) for t in twins))
    assert sorted(r.status for r in answers) == [200, 409]
    named = await world.services.storage.list("client", where={"name": "twin"})
    assert len(named) == 1
