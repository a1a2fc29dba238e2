"""Idempotency-Key on signing and filing submit: one run per key, identical replays, 409s."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway import storage
from gateway.api import bodies
from gateway.api.idempotency import IDEMPOTENT_ROUTES, Attempt, fingerprint, record_key
from gateway.hsm import Hsm, KeyAlgorithm
from gateway.idempotency_scope import CURRENT_SCOPE, IdempotencyScope
from gateway.pki.devca import DevCA
from gateway.seals.once import SIGNED_ONCE
from gateway.settings import Settings
from gateway.signing import PdfSealOptions
from tests.api.conftest import APPLICANT, LEGAL_REPRESENTATIVE, World
from tests.api.test_sign_pdf import assert_problem, sign_path
from tests.conftest import on_redis
from tests.pdf_samples import one_page_pdf
from tests.redis_server import RedisServer

PDF = {"Content-Type": "application/pdf"}
SignerWorld = tuple[World, dict[str, Any], dict[str, str]]


def keyed(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, **PDF, "Idempotency-Key": key}


async def events(world: World, action: str) -> list[dict[str, Any]]:
    return [e for e in await world.services.storage.events(limit=100_000)
            if e["action"] == action]


def with_idempotency(settings: Settings, **changes: float) -> Settings:
    return settings.replace(idempotency=dataclasses.replace(settings.idempotency, **changes))


async def test_retry_returns_the_identical_answer_and_signs_once(
    signer_world: SignerWorld,
) -> None:
    """A retry with the same key and body gets the same status, receipt and PDF bytes."""
    world, seal, headers = signer_world
    document = one_page_pdf()
    first = await world.http.post(sign_path(seal["id"]), data=document,
                                  headers=keyed(headers, "order-4711"))
    assert first.status == 200, await first.text()
    retry = await world.http.post(sign_path(seal["id"]), data=document,
                                  headers=keyed(headers, "order-4711"))
    assert retry.status == 200
    assert await retry.read() == await first.read()
    assert retry.headers["Sealgate-Receipt"] == first.headers["Sealgate-Receipt"]
    assert retry.headers["Content-Type"] == first.headers["Content-Type"] == "application/pdf"
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert retry.headers["X-Request-Id"] != first.headers["X-Request-Id"]
    assert len(await events(world, "seal.signed")) == 1


@pytest.mark.parametrize("fmt", ["cms", "hash"])
async def test_detached_signatures_replay_identically(world: World, fmt: str) -> None:
    """CMS and hash-batch answers (ECDSA: different at every signing) replay byte for byte."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    _, headers = await world.client("signer", [seal["id"]])
    body: dict[str, Any]
    if fmt == "cms":
        body = {"data": b"any content at all"}
        headers = {**headers, "Content-Type": "application/octet-stream"}
    else:
        digest = base64.b64encode(hashlib.sha256(b"a document").digest()).decode()
        body = {"json": {"hash_algorithm": "sha256", "hashes": [digest, digest]}}
    path = f"/v1/seals/{seal['id']}/sign/{fmt}"
    answers = []
    for _ in range(2):
        response = await world.http.post(path, headers={**headers, "Idempotency-Key": fmt},
                                         **body)
        assert response.status == 200, await response.text()
        answers.append((await response.read(), response.headers["Sealgate-Receipt"],
                        response.headers["Content-Type"]))
    assert answers[0] == answers[1]
    assert len(await events(world, "seal.signed")) == 1


async def test_requests_without_a_key_each_sign(signer_world: SignerWorld) -> None:
    """Without Idempotency-Key, two identical requests are two sealings."""
    world, seal, headers = signer_world
    document = one_page_pdf()
    first = await world.http.post(sign_path(seal["id"]), data=document, headers={**headers, **PDF})
    second = await world.http.post(sign_path(seal["id"]), data=document,
                                   headers={**headers, **PDF})
    assert first.headers["Sealgate-Receipt"] != second.headers["Sealgate-Receipt"]
    assert len(await events(world, "seal.signed")) == 2


async def test_same_key_for_another_request_is_409(signer_world: SignerWorld) -> None:
    """The key reused with another body or another query is refused, and signs nothing."""
    world, seal, headers = signer_world
    document = one_page_pdf()
    first = await world.http.post(sign_path(seal["id"]), data=document,
                                  headers=keyed(headers, "k-1"))
    assert first.status == 200
    other_body = await world.http.post(sign_path(seal["id"]), data=document + b"\n",
                                       headers=keyed(headers, "k-1"))
    body = await assert_problem(other_body, 409, "idempotency-key-reused")
    assert "Idempotency-Key" in body["detail"]
    other_query = await world.http.post(sign_path(seal["id"]) + "?visible=false", data=document,
                                        headers=keyed(headers, "k-1"))
    await assert_problem(other_query, 409, "idempotency-key-reused")
    assert len(await events(world, "seal.signed")) == 1


async def test_keys_belong_to_their_client(signer_world: SignerWorld) -> None:
    """Two clients using the same key do not see each other's answers."""
    world, seal, headers = signer_world
    _, other = await world.client("signer", [seal["id"]])
    document = one_page_pdf()
    mine = await world.http.post(sign_path(seal["id"]), data=document,
                                 headers=keyed(headers, "shared-key"))
    theirs = await world.http.post(sign_path(seal["id"]), data=document,
                                   headers=keyed(other, "shared-key"))
    assert mine.status == theirs.status == 200
    assert mine.headers["Sealgate-Receipt"] != theirs.headers["Sealgate-Receipt"]
    assert "Idempotent-Replayed" not in theirs.headers


async def test_concurrent_duplicates_sign_once(signer_world: SignerWorld) -> None:
    """Duplicates sent at once all get the one answer; the document is sealed once."""
    world, seal, headers = signer_world
    document = one_page_pdf()

    async def send() -> tuple[int, bytes, str]:
        response = await world.http.post(sign_path(seal["id"]), data=document,
                                         headers=keyed(headers, "burst"))
        return response.status, await response.read(), response.headers.get("Sealgate-Receipt", "")

    answers = await asyncio.gather(*(send() for _ in range(6)))
    assert {status for status, _, _ in answers} == {200}
    assert len({body for _, body, _ in answers}) == 1
    assert len({receipt for _, _, receipt in answers}) == 1
    assert len(await events(world, "seal.signed")) == 1


async def test_errors_are_not_stored_so_a_retry_runs_again(world: World) -> None:
    """A refused request leaves the key free: once the seal is filed, the retry signs."""
    seal = await world.draft_seal()
    _, headers = await world.client("signer", [seal["id"]])
    document = one_page_pdf()
    refused = await world.http.post(sign_path(seal["id"]), data=document,
                                    headers=keyed(headers, "after-filing"))
    await assert_problem(refused, 409, "seal-not-filed")
    await world.services.filings.file_and_approve_locally(
        seal["id"], APPLICANT, LEGAL_REPRESENTATIVE, "test")
    retry = await world.http.post(sign_path(seal["id"]), data=document,
                                  headers=keyed(headers, "after-filing"))
    assert retry.status == 200, await retry.text()
    assert "Idempotent-Replayed" not in retry.headers


async def submittable_filing(world: World) -> tuple[str, dict[str, str]]:
    """A draft filing with its materials, and the headers of a filer."""
    seal = await world.draft_seal()
    filer, headers = await world.client("filer")
    filing = await world.services.filings.create(
        {"seal_id": seal["id"], "action": "new", "authority": "local",
         "applicant": APPLICANT, "legal_representative": LEGAL_REPRESENTATIVE}, filer.name)
    image = await world.services.seals.image(seal["id"])
    for kind in ("business_license", "legal_rep_id", "seal_impression"):
        await world.services.filings.put_material(filing["id"], kind, image, filer.name)
    return f"/v1/filings/{filing['id']}/submit", headers


async def test_filing_submit_retry_returns_the_same_202(world: World) -> None:
    """Submitting a filing twice with one key answers 202 twice and submits once."""
    path, headers = await submittable_filing(world)
    first = await world.http.post(path, headers={**headers, "Idempotency-Key": "submit-1"})
    assert first.status == 202, await first.text()
    assert "submitted_by_request" not in await first.json()
    retry = await world.http.post(path, headers={**headers, "Idempotency-Key": "submit-1"})
    assert retry.status == 202
    assert await retry.read() == await first.read()
    unkeyed = await world.http.post(path, headers=headers)
    await assert_problem(unkeyed, 409, "invalid-transition")
    assert len(await events(world, "filing.submitted")) == 1


async def test_a_submission_whose_answer_was_lost_is_finished_not_refused(
    world: World,
) -> None:
    """A submission committed by a worker that died before answering: the keyed retry gets
    202 and the filing, not a 409 for a filing no longer in draft; it is submitted once."""
    path, headers = await submittable_filing(world)
    keyed_headers = {**headers, "Idempotency-Key": "submit-lost"}
    first = await world.http.post(path, headers=keyed_headers)
    assert first.status == 202, await first.text()
    await forget_answer(world, headers, "submit-lost")
    retry = await world.http.post(path, headers=keyed_headers)
    assert retry.status == 202, await retry.text()
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert (await retry.json())["id"] == (await first.json())["id"]
    other_key = await world.http.post(path, headers={**headers, "Idempotency-Key": "another"})
    await assert_problem(other_key, 409, "invalid-transition")
    assert len(await events(world, "filing.submitted")) == 1


async def test_a_claim_held_elsewhere_is_409_in_progress(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """While another worker holds the key past the wait, the answer is 409 with Retry-After."""
    async with World.running(with_idempotency(settings, wait_seconds=0.3), hsm, dev_ca) as world:
        seal = await world.active_seal()
        signer, headers = await world.client("signer", [seal["id"]])
        document = one_page_pdf()
        path = sign_path(seal["id"])
        # What a worker that is still signing has written for this key.
        claim = {"state": "running", "attempt": "elsewhere",
                 "fingerprint": fingerprint("POST", path, signer.id, document)}
        assert await world.services.storage.put_expiring(
            record_key(signer.id, "slow-one"), claim, 30)
        response = await world.http.post(path, data=document, headers=keyed(headers, "slow-one"))
        await assert_problem(response, 409, "idempotency-key-in-progress")
        assert int(response.headers["Retry-After"]) >= 1
        assert await events(world, "seal.signed") == []


async def test_a_dead_workers_claim_expires_and_the_retry_signs(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """A claim nobody renews (its worker was killed) lapses; the waiting retry then signs."""
    async with World.running(with_idempotency(settings, wait_seconds=10), hsm, dev_ca) as world:
        seal = await world.active_seal()
        signer, headers = await world.client("signer", [seal["id"]])
        document = one_page_pdf()
        path = sign_path(seal["id"])
        claim = {"state": "running", "attempt": "killed",
                 "fingerprint": fingerprint("POST", path, signer.id, document)}
        assert await world.services.storage.put_expiring(
            record_key(signer.id, "orphan"), claim, 0.5)
        response = await world.http.post(path, data=document, headers=keyed(headers, "orphan"))
        assert response.status == 200, await response.text()
        assert len(await events(world, "seal.signed")) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "naïve", "with space"])
async def test_malformed_keys_are_422(signer_world: SignerWorld, key: str) -> None:
    """A key that is empty, too long or not visible ASCII is refused, naming the header."""
    world, seal, headers = signer_world
    response = await world.http.post(sign_path(seal["id"]), data=one_page_pdf(),
                                     headers=keyed(headers, key))
    body = await assert_problem(response, 422, "validation-failed")
    assert [e["field"] for e in body["errors"]] == ["Idempotency-Key"]


async def test_large_answers_replay_from_chunks(
    signer_world: SignerWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer larger than a chunk is stored in pieces and replayed whole."""
    monkeypatch.setattr(storage, "CHUNK_BYTES", 4096)
    world, seal, headers = signer_world
    document = one_page_pdf()
    first = await world.http.post(sign_path(seal["id"]), data=document,
                                  headers=keyed(headers, "big"))
    sealed = await first.read()
    assert len(sealed) > 3 * 4096
    signer = await world.services.clients.authenticate(headers["Authorization"].split()[1])
    assert signer is not None
    record = await world.services.storage.get_expiring(record_key(signer.id, "big"))
    assert record is not None and record["body"]["chunks"] == -(-len(sealed) // 4096)
    retry = await world.http.post(sign_path(seal["id"]), data=document,
                                  headers=keyed(headers, "big"))
    assert await retry.read() == sealed


async def forget_answer(world: World, headers: dict[str, str], key: str) -> None:
    """Leave storage as a worker killed after its sealing commit leaves it: the sealing and
    its output committed, no answer stored for the key and no claim on it."""
    client = await world.services.clients.authenticate(headers["Authorization"].split()[1])
    assert client is not None
    await world.services.storage.set_expiring(record_key(client.id, key), {"state": "released"},
                                              0.001)
    await asyncio.sleep(0.01)


SEAL_REQUESTS = {
    "pdf": lambda: {"data": one_page_pdf(), "headers": PDF},
    "cms": lambda: {"data": b"any content", "headers": {"Content-Type": "text/plain"}},
    "hash": lambda: {"json": {"hash_algorithm": "sha256", "hashes": [
        base64.b64encode(hashlib.sha256(b"one").digest()).decode(),
        base64.b64encode(hashlib.sha256(b"two").digest()).decode(),
    ]}},
}


@pytest.mark.parametrize("fmt", sorted(SEAL_REQUESTS))
async def test_a_sealing_whose_answer_was_lost_is_handed_back_not_signed_again(
    world: World, fmt: str
) -> None:
    """A worker killed between its commit and storing the answer: the retry gets the sealing
    that was committed (same bytes, same receipt), and nothing is signed a second time."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    _, headers = await world.client("signer", [seal["id"]])
    request = SEAL_REQUESTS[fmt]()
    path = f"/v1/seals/{seal['id']}/sign/{fmt}"
    sent = {**request, "headers": {**headers, **request.get("headers", {}),
                                   "Idempotency-Key": f"lost-{fmt}"}}
    first = await world.http.post(path, **sent)
    assert first.status == 200, await first.text()
    await forget_answer(world, headers, f"lost-{fmt}")
    retry = await world.http.post(path, **sent)
    assert retry.status == 200, await retry.text()
    # ECDSA signs differently every time: equal bytes can only be the first signature.
    assert await retry.read() == await first.read()
    assert retry.headers["Sealgate-Receipt"] == first.headers["Sealgate-Receipt"]
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert len(await events(world, "seal.signed")) == 1
    # From now on the answer is stored again and replayed as usual.
    again = await world.http.post(path, **sent)
    assert await again.read() == await first.read()
    assert len(await events(world, "seal.signed")) == 1


async def test_duplicates_past_their_claims_commit_once(signer_world: SignerWorld) -> None:
    """Two runs under one key that both got past the claim (a worker paused beyond
    lock_seconds) both sign, but only the first commits; the other hands back its result."""
    world, seal, headers = signer_world
    signer = await world.services.clients.authenticate(headers["Authorization"].split()[1])
    assert signer is not None
    document = one_page_pdf()
    key = record_key(signer.id, "paused")
    same = fingerprint("POST", sign_path(seal["id"]), signer.id, document)

    async def run(attempt: str) -> tuple[bytes, str]:
        CURRENT_SCOPE.set(IdempotencyScope(key, same, attempt, 60.0))
        result = await world.services.sealing.seal_pdf(
            signer, seal["id"], document, PdfSealOptions())
        return result.output, result.receipt_id

    # Each task has its own copy of the context, so each run has its own scope.
    answers = await asyncio.gather(run("one"), run("two"))
    assert answers[0] == answers[1]
    assert len(await events(world, "seal.signed")) == 1
    record = await world.services.storage.get(SIGNED_ONCE, key)
    assert record is not None and record.data["receipt_id"] == answers[0][1]


async def test_a_key_past_its_ttl_signs_afresh(settings: Settings, hsm: Hsm, dev_ca: DevCA) -> None:
    """Once answer and sealing under a key are forgotten (ttl_seconds), the key is free again."""
    async with World.running(with_idempotency(settings, ttl_seconds=0.5), hsm, dev_ca) as world:
        seal = await world.active_seal()
        _, headers = await world.client("signer", [seal["id"]])
        document = one_page_pdf()
        first = await world.http.post(sign_path(seal["id"]), data=document,
                                      headers=keyed(headers, "daily"))
        assert first.status == 200, await first.text()
        await asyncio.sleep(0.7)
        later = await world.http.post(sign_path(seal["id"]), data=document,
                                      headers=keyed(headers, "daily"))
        assert later.status == 200, await later.text()
        assert later.headers["Sealgate-Receipt"] != first.headers["Sealgate-Receipt"]
        assert "Idempotent-Replayed" not in later.headers
        assert len(await events(world, "seal.signed")) == 2


async def test_every_signing_route_honours_the_key(world: World) -> None:
    """Every POST that signs or submits is covered by the one idempotency mechanism."""
    signing = re.compile(r"(/sign/[a-z]+|/signHash|^/tsa|/submit)$")
    served = {
        (route.method, route.resource.canonical)
        for route in world.http.app.router.routes()
        if route.resource is not None and route.method == "POST"
        and signing.search(route.resource.canonical)
    }
    assert served, "no signing routes found"
    assert served <= IDEMPOTENT_ROUTES


@contextlib.asynccontextmanager
async def two_instances(
    settings: Settings, hsm: Hsm, dev_ca: DevCA, redis: RedisServer
) -> AsyncIterator[tuple[World, World]]:
    shared = on_redis(settings, redis.url)
    async with World.running(shared, hsm, dev_ca) as one, \
            World.running(shared, hsm, dev_ca) as other:
        yield one, other


async def test_a_retry_through_another_instance_replays_the_answer(
    settings: Settings, hsm: Hsm, dev_ca: DevCA, redis_server: RedisServer
) -> None:
    """Two gateways on one Redis: a retry on the second gets the first's PDF, byte for byte."""
    async with two_instances(settings, hsm, dev_ca, redis_server) as (one, other):
        seal = await one.active_seal()
        _, headers = await one.client("signer", [seal["id"]])
        document = one_page_pdf()
        first = await one.http.post(sign_path(seal["id"]), data=document,
                                    headers=keyed(headers, "cross"))
        assert first.status == 200, await first.text()
        retry = await other.http.post(sign_path(seal["id"]), data=document,
                                      headers=keyed(headers, "cross"))
        assert retry.status == 200
        assert await retry.read() == await first.read()
        assert retry.headers["Sealgate-Receipt"] == first.headers["Sealgate-Receipt"]
        reused = await other.http.post(sign_path(seal["id"]), data=document + b" ",
                                       headers=keyed(headers, "cross"))
        await assert_problem(reused, 409, "idempotency-key-reused")
        assert len(await events(one, "seal.signed")) == 1


async def test_a_keyed_body_past_the_keyed_limit_gets_413_and_claims_nothing(
    settings: Settings, hsm: Hsm, dev_ca: DevCA
) -> None:
    """A keyed body is held in memory, so it has a lower limit than any body. Past it the
    answer is 413 naming the key; nothing is signed and the key is not claimed, and the same
    document sent without the key is sealed."""
    document = one_page_pdf()
    limited = with_idempotency(settings, max_body_bytes=len(document) - 1)
    async with World.running(limited, hsm, dev_ca) as world:
        seal = await world.active_seal()
        _, headers = await world.client("signer", [seal["id"]])
        refused = await world.http.post(sign_path(seal["id"]), data=document,
                                        headers=keyed(headers, "too-large"))
        problem = await assert_problem(refused, 413, "payload-too-large")
        assert "Idempotency-Key" in problem["detail"]
        assert await events(world, "seal.signed") == []
        # The key is free: a small request under it runs (a claim would make this a 409).
        digest = base64.b64encode(hashlib.sha256(b"a document").digest()).decode()
        small = await world.http.post(
            f"/v1/seals/{seal['id']}/sign/hash", json={"hash_algorithm": "sha256",
                                                      "hashes": [digest]},
            headers={**headers, "Idempotency-Key": "too-large"})
        assert small.status == 200, await small.text()
        unkeyed = await world.http.post(sign_path(seal["id"]), data=document,
                                        headers={**headers, **PDF})
        assert unkeyed.status == 200, await unkeyed.text()
        assert len(await events(world, "seal.signed")) == 2


async def test_a_keyed_document_above_the_spool_size_replays(
    signer_world: SignerWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keyed body is in memory already, so it is sealed there rather than spooled, and its
    answer can be stored and replayed like any other."""
    monkeypatch.setattr(bodies, "SPOOL_BYTES", 512)
    world, seal, headers = signer_world
    document = one_page_pdf()
    assert len(document) > 512
    first = await world.http.post(sign_path(seal["id"]), data=document,
                                  headers=keyed(headers, "large"))
    assert first.status == 200, await first.text()
    retry = await world.http.post(sign_path(seal["id"]), data=document,
                                  headers=keyed(headers, "large"))
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert await retry.read() == await first.read()
    assert len(await events(world, "seal.signed")) == 1


async def test_an_attempt_whose_claim_lapsed_leaves_the_new_claimant_s_record_alone(
    world: World,
) -> None:
    """Storage away longer than lock_seconds: the claim lapsed and a duplicate claimed the
    key. The first attempt, finishing, neither stores its answer over that claim nor
    releases it; with the key free, it stores its answer."""
    settings = world.services.settings.idempotency
    store = world.services.storage
    first = Attempt(store, settings, IdempotencyScope("idem:lapsed", "fp", "first", 60.0))
    theirs = {"state": "running", "fingerprint": "fp", "attempt": "second"}
    await store.set_expiring("idem:lapsed", theirs, 60.0)
    await first._store(200, [], b"{}")
    await first._release()
    assert await store.get_expiring("idem:lapsed") == theirs

    alone = Attempt(store, settings, IdempotencyScope("idem:free", "fp", "first", 60.0))
    await alone._store(200, [], b"{}")
    stored = await store.get_expiring("idem:free")
    assert stored is not None and stored["state"] == "done" and stored["attempt"] == "first"
