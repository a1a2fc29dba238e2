"""Personal data at rest: the data key's wrapping, and what a changed or lost one answers."""

from __future__ import annotations

import base64
import os
from typing import Any

from pkcs11 import Mechanism
from prometheus_client import REGISTRY

from gateway.hsm import KeyAlgorithm
from gateway.hsm.keys import DATA_KEY_WRAPPING_LABEL
from gateway.privacy import CURRENT, KIND
from gateway.storage import Write
from tests.api.conftest import APPLICANT, LEGAL_REPRESENTATIVE, World
from tests.api.test_sign_pdf import assert_problem


async def create_filing(world: World, seal_id: str, filer: dict[str, str]) -> Any:
    return await world.http.post("/v1/filings", headers=filer, json={
        "seal_id": seal_id, "action": "suspend", "applicant": APPLICANT,
        "legal_representative": LEGAL_REPRESENTATIVE})


async def use_data_key(world: World, key_id: str, record: dict[str, Any]) -> None:
    """Write a data key record and make it the current one, as whoever can write storage."""
    storage = world.services.storage
    current = await storage.get(KIND, CURRENT)
    await storage.commit([Write(KIND, key_id, 0, {"key_id": key_id, **record}),
                          Write(KIND, CURRENT, current.version if current else 0,
                                {"key_id": key_id})])


async def wrap_as_before(world: World, secret: bytes) -> bytes:
    """AES-CBC-PAD under the token's wrapping key, IV first: data keys made before AES-GCM."""

    def run(session: Any) -> bytes:
        from pkcs11 import ObjectClass

        key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=DATA_KEY_WRAPPING_LABEL)
        iv = os.urandom(16)
        return iv + bytes(key.encrypt(secret, mechanism=Mechanism.AES_CBC_PAD,
                                      mechanism_param=iv))

    return await world.services.hsm.token.run("probe", run)


async def test_a_data_key_made_before_gcm_wrapping_still_reads_and_writes(world: World) -> None:
    """Databases made before keep their data key: filings encrypt and read back with it."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    _, filer = await world.client("filer")
    wrapped = await wrap_as_before(world, os.urandom(32))
    await use_data_key(world, "before-gcm", {"wrapped": base64.b64encode(wrapped).decode()})
    created = await create_filing(world, seal["id"], filer)
    assert created.status == 201, await created.text()
    filing = await created.json()
    record = await world.services.storage.get("filing", filing["id"])
    assert record is not None
    assert ":before-gcm:" in record.data["legal_representative"]["id_number_encrypted"]
    shown = await (await world.http.get(f"/v1/filings/{filing['id']}", headers=filer)).json()
    assert shown["legal_representative"]["id_number"] == "110105********002X"


async def test_a_forged_data_key_record_gets_one_answer_whatever_its_bytes(
    world: World,
) -> None:
    """Whoever can write storage may put in a data key record of their own making and post
    filings against it. A padding oracle needs two answers: one for a wrapping whose padding
    decrypts, another for one whose padding does not. Both get the same 500, the HSM is not
    taken for down, and signing goes on."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    _, filer = await world.client("filer")
    _, signer = await world.client("signer", [seal["id"]])
    secret = os.urandom(32)
    wrapped = await wrap_as_before(world, secret)
    iv, block = wrapped[:16], wrapped[16:32]
    decrypted_last = secret[15] ^ iv[15]  # the last byte of the block before the IV's XOR
    details = set()
    # With this last IV byte the block decrypts to a valid one-byte pad (15 bytes come out);
    # with the other, the pad is broken: before, one was a 500 and the other a 503.
    for n, last in enumerate((decrypted_last ^ 0x01, decrypted_last ^ 0x5A)):
        forged = iv[:15] + bytes([last]) + block
        await use_data_key(world, f"forged-{n}", {"wrapped": base64.b64encode(forged).decode()})
        answer = await create_filing(world, seal["id"], filer)
        details.add((answer.status, (await assert_problem(answer, 500,
                                                          "wrapped-data-invalid"))["detail"]))
    assert details == {(500, "the wrapped data does not unwrap with this token's key")}
    assert REGISTRY.get_sample_value("sealgate_hsm_up") == 1
    signed = await world.http.post(f"/v1/seals/{seal['id']}/sign/hash", headers=signer, json={
        "hash_algorithm": "sha256", "hashes": [base64.b64encode(os.urandom(32)).decode()]})
    assert signed.status == 200, await signed.text()


async def test_a_lost_current_data_key_record_is_reported_not_replaced(world: World) -> None:
    """Data keys in storage but none named current (a partial restore): no new data key is
    made, which would leave the personal data encrypted before unreadable unnoticed."""
    seal = await world.active_seal(KeyAlgorithm.EC_P256)
    _, filer = await world.client("filer")
    assert (await create_filing(world, seal["id"], filer)).status == 201
    storage = world.services.storage
    before = [r.key for r in await storage.list(KIND)]
    current = await storage.get(KIND, CURRENT)
    assert current is not None
    await storage.commit([Write(KIND, CURRENT, current.version, None)])
    world.services.filings._vault._keys.clear()  # a process started after the restore
    refused = await create_filing(world, seal["id"], filer)
    body = await assert_problem(refused, 500, "wrapped-data-invalid")
    assert "no 'current' record" in body["detail"]
    assert [r.key for r in await storage.list(KIND)] == [k for k in before if k != CURRENT]
