"""Access control over HTTP: roles as API.md gives them, signers confined to their grants,
token rotation and revocation seen at once by every instance, failed logins limited."""

from __future__ import annotations

import collections
import dataclasses
import re
import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.api.middlewares import failure_bucket
from gateway.app import create_app
from gateway.auth import ROLES
from gateway.errors import ConfigError
from gateway.hsm import Hsm, KeyAlgorithm
from gateway.pki.devca import DevCA
from gateway.server import bind_socket
from gateway.settings import Settings
from tests.api.conftest import World
from tests.api.test_openapi import API_MD
from tests.api.test_sign_pdf import assert_problem, sign_path
from tests.pdf_samples import one_page_pdf

PDF = {"Content-Type": "application/pdf"}
_ROW = re.compile(r"^\|([^|]*)\|([^|]*)\|")
_OPERATION = re.compile(r"`(GET|POST|PUT|DELETE) (/v1/[^`\s?]*)[^`]*`")
_ROLE = re.compile(r"\b(" + "|".join(ROLES) + r")\b")
# Operations this issue added beyond API.md's tables, with their roles.
EXTRA_OPERATIONS = {
    ("POST", "/v1/keys/{id}/destroy"): {"key_officer"},
    ("GET", "/v1/keys/{id}/usage"): {"key_officer", "auditor"},
    ("POST", "/v1/seals/{id}/rotate-key"): {"key_officer"},
    ("POST", "/v1/approvals"): {"key_officer"},
    ("GET", "/v1/approvals"): {"key_officer", "auditor"},
    ("GET", "/v1/approvals/{id}"): {"key_officer", "auditor"},
    ("POST", "/v1/approvals/{id}/approve"): {"key_officer"},
    ("POST", "/v1/approvals/{id}/reject"): {"key_officer"},
}


def contract_roles(text: str) -> dict[tuple[str, str], set[str]]:
    """Each role-restricted ``/v1`` operation of API.md's tables and the roles it names."""
    found: dict[tuple[str, str], set[str]] = {}
    for line in text.splitlines():
        row = _ROW.match(line)
        if row is None:
            continue
        roles = set(_ROLE.findall(row.group(2)))
        for method, path in _OPERATION.findall(row.group(1)):
            if roles:
                found[(method, path)] = roles
    return found


def concrete(path: str) -> str:
    return (path.replace("{id}", str(uuid.uuid4())).replace("{number}", "R-0")
            .replace("{kind}", "business_license"))


def test_contract_roles_parser_reads_a_row() -> None:
    """The parser reads methods, paths and role words from one table row."""
    row = "| `GET /v1/seals`, `GET /v1/seals/{id}` | filer, signer (own grants), auditor | x |"
    assert contract_roles(row) == {("GET", "/v1/seals"): {"filer", "signer", "auditor"},
                                   ("GET", "/v1/seals/{id}"): {"filer", "signer", "auditor"}}


@pytest.mark.skipif(not API_MD.exists(), reason="the shared contract API.md is not present")
async def test_every_role_gets_exactly_the_operations_api_md_gives_it(world: World) -> None:
    """Each role gets 403 forbidden exactly where API.md does not name it; admin never."""
    operations = {**contract_roles(API_MD.read_text()), **EXTRA_OPERATIONS}
    served = {(r.method, r.resource.canonical) for r in world.http.app.router.routes()
              if r.resource is not None}
    headers = {role: (await world.client(role))[1] for role in ROLES}
    mismatches = []
    for (method, path), allowed in sorted(operations.items()):
        assert (method, path) in served, f"{method} {path} is not served"
        for role in ROLES:
            response = await world.http.request(method, concrete(path), json={},
                                                headers=headers[role])
            refused = response.status == 403 and (await response.json())["type"].endswith(
                "/forbidden")
            if refused != (role not in allowed and role != "admin") or response.status == 401:
                mismatches.append(f"{method} {path} as {role}: {response.status}")
    assert mismatches == []


async def test_signer_is_confined_to_its_grants_everywhere(world: World) -> None:
    """A seal outside a signer's grants is a 404 like a missing seal in every endpoint."""
    granted = await world.active_seal(KeyAlgorithm.EC_P256)
    hidden = await world.active_seal(KeyAlgorithm.EC_P256)
    _, mine = await world.client("signer", [granted["id"]])
    _, theirs = await world.client("signer", [hidden["id"]])
    missing = str(uuid.uuid4())

    listed = await (await world.http.get("/v1/seals", headers=mine)).json()
    assert [s["id"] for s in listed["seals"]] == [granted["id"]]
    their_signature = await world.http.post(sign_path(hidden["id"]), data=one_page_pdf(),
                                            headers={**theirs, **PDF})
    their_receipt = their_signature.headers["Sealgate-Receipt"]

    for seal_id in (hidden["id"], missing):
        for response in (
            await world.http.get(f"/v1/seals/{seal_id}", headers=mine),
            await world.http.get(f"/v1/seals/{seal_id}/image", headers=mine),
            await world.http.post(sign_path(seal_id), data=one_page_pdf(),
                                  headers={**mine, **PDF}),
        ):
            body = await assert_problem(response, 404, "not-found")
            assert body["detail"] == f"no seal with id {seal_id}"
    receipt = await world.http.get(f"/v1/sealing-receipts/{their_receipt}", headers=mine)
    await assert_problem(receipt, 404, "not-found")
    for suffix in ("", ".pdf"):
        filed = await world.http.get(f"/v1/receipts/{hidden['receipt_number']}{suffix}",
                                     headers=mine)
        body = await assert_problem(filed, 404, "not-found")
        assert body["detail"] == f"no receipt numbered {hidden['receipt_number']}"

    for path in (f"/v1/seals/{granted['id']}", f"/v1/seals/{granted['id']}/image"):
        assert (await world.http.get(path, headers=mine)).status == 200
    signed = await world.http.post(sign_path(granted["id"]), data=one_page_pdf(),
                                   headers={**mine, **PDF})
    assert signed.status == 200
    own = await world.http.get(f"/v1/sealing-receipts/{signed.headers['Sealgate-Receipt']}",
                               headers=mine)
    assert own.status == 200
    for suffix in ("", ".pdf"):
        filed = await world.http.get(f"/v1/receipts/{granted['receipt_number']}{suffix}",
                                     headers=mine)
        assert filed.status == 200


async def test_grant_narrowed_to_a_format_refuses_other_formats(world: World) -> None:
    """A grant for CMS only lets the client see the seal but not seal PDFs with it."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    client, headers = await world.client("signer")
    await world.services.clients.grant(client.id, seal["id"], "test", formats=["cms"])
    assert (await world.http.get(f"/v1/seals/{seal['id']}", headers=headers)).status == 200
    response = await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                                     headers={**headers, **PDF})
    body = await assert_problem(response, 403, "forbidden")
    assert "pdf" in body["detail"]
    await world.services.clients.grant(client.id, seal["id"], "test")
    again = await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                                  headers={**headers, **PDF})
    assert again.status == 200


async def test_an_admin_sees_every_seal_but_signs_only_with_granted_ones(world: World) -> None:
    """Granting a seal is what dual control guards, so an admin token without a grant is
    refused on every signing path, CSC included, and signs once granted."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    admin, headers = await world.client("admin")
    assert (await world.http.get(f"/v1/seals/{seal['id']}", headers=headers)).status == 200
    digest = {"hash_algorithm": "sha256", "hashes": ["A" * 43 + "="]}
    for response in (
        await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                              headers={**headers, **PDF}),
        await world.http.post(f"/v1/seals/{seal['id']}/sign/hash", json=digest,
                              headers=headers),
    ):
        body = await assert_problem(response, 403, "forbidden")
        assert body["detail"] == "this client holds no grant for the seal"
    listed = await world.http.post("/csc/v1/credentials/list", json={}, headers=headers)
    assert (await listed.json())["credentialIDs"] == []

    await world.services.clients.grant(admin.id, seal["id"], "test")
    signed = await world.http.post(f"/v1/seals/{seal['id']}/sign/hash", json=digest,
                                   headers=headers)
    assert signed.status == 200, await signed.text()


async def test_rotation_and_revocation_apply_to_the_next_request_in_every_instance(
    signer_world: tuple[World, dict[str, Any], dict[str, str]],
    settings: Settings, hsm: Hsm, dev_ca: DevCA,
) -> None:
    """Rotated and revoked tokens fail on the next request in both instances of one database."""
    world, seal, _ = signer_world
    client, old = await world.client("signer", [seal["id"]])
    async with World.running(settings, hsm, dev_ca) as other:
        for instance in (world, other):
            assert (await instance.http.get(f"/v1/seals/{seal['id']}", headers=old)).status == 200
        token = await other.services.clients.rotate(client.id, "test")
        new = {"Authorization": f"Bearer {token}"}
        for instance in (world, other):
            refused = await instance.http.get(f"/v1/seals/{seal['id']}", headers=old)
            await assert_problem(refused, 401, "unauthorized")
            assert (await instance.http.get(f"/v1/seals/{seal['id']}", headers=new)).status == 200
        await world.services.clients.revoke(client.id, "test")
        for instance in (other, world):
            refused = await instance.http.get(f"/v1/seals/{seal['id']}", headers=new)
            await assert_problem(refused, 401, "unauthorized")
    actions = [e["action"] for e in await world.services.storage.events()]
    assert {"client.rotated", "client.revoked"} <= set(actions)


async def test_a_worker_reads_a_token_link_once_and_the_client_on_every_request(
    signer_world: tuple[World, dict[str, Any], dict[str, str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The link from a token to its client never changes, so a worker keeps it; the client
    record, where a revocation or rotation shows, is read for every request."""
    world, seal, headers = signer_world
    reads: collections.Counter[str] = collections.Counter()
    get = world.services.storage.get

    async def counted(kind: str, key: str) -> Any:
        reads[kind] += 1
        return await get(kind, key)

    monkeypatch.setattr(world.services.storage, "get", counted)
    for _ in range(3):
        assert (await world.http.get(f"/v1/seals/{seal['id']}", headers=headers)).status == 200
    assert (reads["client_token"], reads["client"]) == (1, 3)


async def test_failed_authentication_is_limited_per_address_and_audited(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """Bad tokens beyond the burst get 429 + Retry-After; failures are audited, tokens never."""
    strict = settings.replace(auth=dataclasses.replace(settings.auth, failure_burst=3,
                                                       failures_per_minute=1.0))
    async with World.running(strict, hsm, dev_ca) as world:
        _, auditor = await world.client("auditor")
        bad = [f"sg_wrong-{n}-{uuid.uuid4().hex}" for n in range(6)]
        statuses = []
        for token in bad:
            response = await world.http.get("/v1/keys",
                                            headers={"Authorization": f"Bearer {token}"})
            statuses.append(response.status)
            if response.status == 429:
                body = await assert_problem(response, 429, "rate-limited")
                assert int(response.headers["Retry-After"]) >= 1
                assert "address" in body["detail"]
        assert statuses == [401, 401, 401, 429, 429, 429]
        assert (await world.http.get("/v1/keys", headers=auditor)).status == 200

        events = await world.services.storage.events()
        failed = [e for e in events if e["action"] == "auth.failed"]
        limited = [e for e in events if e["action"] == "auth.rate_limited"]
        assert len(failed) == 3
        assert len(limited) == 1
        assert failed[0]["details"] == {"remote": "127.0.0.1",
                                        "reason": "unknown or revoked token"}
        exported = repr(events)
        assert not [t for t in bad if t in exported or t[3:] in exported]


async def test_missing_token_is_401_without_an_audit_event(world: World) -> None:
    """A request without Authorization is 401 and writes nothing to the audit log."""
    before = len(await world.services.storage.events())
    response = await world.http.get("/v1/keys")
    await assert_problem(response, 401, "unauthorized")
    assert len(await world.services.storage.events()) == before


async def test_every_401_carries_its_bearer_challenge(world: World) -> None:
    """RFC 6750 §3: a 401 names the scheme, and says so when the token sent is invalid."""
    missing = await world.http.get("/v1/keys")
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = await world.http.get("/v1/keys", headers={"Authorization": "Bearer sg_wrong"})
    await assert_problem(wrong, 401, "unauthorized")
    assert wrong.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def with_proxies(settings: Settings, *proxies: str, burst: int = 1) -> Settings:
    return settings.replace(
        server=dataclasses.replace(settings.server, trusted_proxies=proxies),
        auth=dataclasses.replace(settings.auth, failure_burst=burst, failures_per_minute=1.0))


async def failed_from(world: World, forwarded: str | None) -> int:
    headers = {"Authorization": f"Bearer sg_wrong-{uuid.uuid4().hex}"}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    return (await world.http.get("/v1/keys", headers=headers)).status


async def audited_remotes(world: World) -> list[object]:
    return [e["details"]["remote"]  # type: ignore[index]
            for e in await world.services.storage.events() if e["action"] == "auth.failed"]


async def test_behind_a_trusted_proxy_failures_count_per_forwarded_client(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """Through a trusted proxy, each client behind it has its own failure budget, and the
    audit names the client; hops left of the first untrusted one are not believed."""
    async with World.running(with_proxies(settings, "127.0.0.0/8"), hsm, dev_ca) as world:
        assert await failed_from(world, "203.0.113.7") == 401
        assert await failed_from(world, "203.0.113.7") == 429
        assert await failed_from(world, "203.0.113.8") == 401
        # A client that prepends a made-up hop still counts as itself.
        assert await failed_from(world, "198.51.100.1, 203.0.113.8") == 429
        assert await audited_remotes(world) == ["203.0.113.7", "203.0.113.8"]


async def test_without_trusted_proxies_x_forwarded_for_is_ignored(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """Anyone can send X-Forwarded-For: unless the peer is a trusted proxy, the peer counts."""
    async with World.running(with_proxies(settings), hsm, dev_ca) as world:
        assert await failed_from(world, "203.0.113.7") == 401
        assert await failed_from(world, "203.0.113.8") == 429
        assert await audited_remotes(world) == ["127.0.0.1"]


@pytest.mark.parametrize("proxies", ["127.0.0.0/8", "::ffff:127.0.0.0/104"])
async def test_a_trusted_ipv4_proxy_is_recognised_on_a_dual_stack_listener(
    settings: Settings, hsm: Hsm, dev_ca: DevCA, proxies: str
) -> None:
    """Listening on "::", a connection from an IPv4 proxy arrives from its IPv4-mapped
    address; it is still the trusted proxy, however the setting writes it (IPv4, or the
    IPv4-mapped form that was the only one matching before), and the clients it forwards
    (mapped or not) are told apart and named in plain IPv4 form."""
    async with World.running(with_proxies(settings, proxies), hsm, dev_ca) as world:
        listener = bind_socket("::", 0)
        site = web.SockSite(world.http.server.runner, listener)
        await site.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/keys"
        statuses = []
        async with aiohttp.ClientSession() as session:
            for forwarded in ("203.0.113.7", "::ffff:203.0.113.7", "203.0.113.8"):
                async with session.get(url, headers={
                    "Authorization": f"Bearer sg_wrong-{uuid.uuid4().hex}",
                    "X-Forwarded-For": f"{forwarded}, ::ffff:127.0.0.2",
                }) as response:
                    statuses.append(response.status)
        assert statuses == [401, 429, 401]
        assert await audited_remotes(world) == ["203.0.113.7", "203.0.113.8"]


def test_a_trusted_proxy_that_is_no_address_stops_the_start(settings: Settings) -> None:
    with pytest.raises(ConfigError, match=r"server\.trusted_proxies"):
        create_app(with_proxies(settings, "proxy.internal"))


@pytest.mark.parametrize(("remote", "bucket"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
])
def test_failed_authentications_count_per_ipv4_address_and_per_ipv6_64(
    remote: str, bucket: str
) -> None:
    assert failure_bucket(remote) == bucket
