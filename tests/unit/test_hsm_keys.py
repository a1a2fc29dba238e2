"""The HSM key layer against a real SoftHSM token: generation, protection, signing per algorithm."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_der_public_key
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters
from prometheus_client import REGISTRY

from gateway.errors import ConfigError, HsmError, NotFound, WrappedDataInvalid
from gateway.hsm import (
    DATA_KEY_WRAPPING_LABEL,
    Hsm,
    KeyAlgorithm,
    SignatureScheme,
    ecdsa_raw_to_der,
)
from gateway.hsm.token import softhsm_switch
from gateway.settings import HsmSettings
from tests.conftest import new_key_id

MESSAGE = b"SealGate signs digests, never documents, inside the HSM"
HASH_CLASSES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
async def test_generated_private_key_is_sensitive_and_never_extractable(
    hsm: Hsm, algorithm: KeyAlgorithm
) -> None:
    """Every algorithm's private key is generated sensitive, non-extractable, always so, and
    may sign and nothing else (no decryption, unwrapping, recovery or derivation)."""
    key_id = new_key_id()
    await hsm.generate_key(algorithm, "protect-test", key_id)
    attributes = await hsm.key_attributes(key_id)
    assert attributes == {
        "sensitive": True, "extractable": False, "always_sensitive": True,
        "never_extractable": True, "private": True, "sign": True, "sign_recover": False,
        "decrypt": False, "unwrap": False, "derive": False,
    }


@pytest.mark.parametrize("hash_name", ["sha256", "sha384", "sha512"])
@pytest.mark.parametrize(
    ("algorithm", "scheme"),
    [
        (KeyAlgorithm.RSA_2048, SignatureScheme.PKCS1V15),
        (KeyAlgorithm.RSA_2048, SignatureScheme.PSS),
        (KeyAlgorithm.RSA_3072, SignatureScheme.PKCS1V15),
        (KeyAlgorithm.EC_P256, SignatureScheme.ECDSA),
        (KeyAlgorithm.EC_P384, SignatureScheme.ECDSA),
    ],
)
async def test_signature_over_digest_verifies_with_public_key(
    hsm: Hsm, algorithm: KeyAlgorithm, scheme: SignatureScheme, hash_name: str
) -> None:
    """A digest signed in the HSM verifies over the message with cryptography."""
    key_id = new_key_id()
    public = load_der_public_key(await hsm.generate_key(algorithm, "sign-test", key_id))
    digest = hashlib.new(hash_name, MESSAGE).digest()
    signature = await hsm.sign_digest(key_id, algorithm, digest, hash_name, scheme)
    chosen = HASH_CLASSES[hash_name]()
    if scheme is SignatureScheme.ECDSA:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(signature, MESSAGE, ec.ECDSA(chosen))
    elif scheme is SignatureScheme.PSS:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(signature, MESSAGE,
                      padding.PSS(padding.MGF1(chosen), chosen.digest_size), chosen)
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(signature, MESSAGE, padding.PKCS1v15(), chosen)


async def test_batch_signing_keeps_order(hsm: Hsm) -> None:
    """sign_digests returns one signature per digest, in the order given."""
    key_id = new_key_id()
    public = load_der_public_key(await hsm.generate_key(KeyAlgorithm.EC_P256, "batch", key_id))
    assert isinstance(public, ec.EllipticCurvePublicKey)
    messages = [f"document {i}".encode() for i in range(5)]
    digests = [hashlib.sha256(m).digest() for m in messages]
    signatures = await hsm.sign_digests(key_id, KeyAlgorithm.EC_P256, digests, "sha256",
                                        SignatureScheme.ECDSA)
    for message, signature in zip(messages, signatures, strict=True):
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))


async def test_wrong_digest_length_is_refused(hsm: Hsm) -> None:
    """A digest of the wrong size never reaches C_Sign."""
    key_id = new_key_id()
    await hsm.generate_key(KeyAlgorithm.EC_P256, "len", key_id)
    with pytest.raises(HsmError):
        await hsm.sign_digest(key_id, KeyAlgorithm.EC_P256, b"short", "sha256",
                              SignatureScheme.ECDSA)


async def test_unknown_key_is_not_found(hsm: Hsm) -> None:
    """Signing with a key id the token does not hold is NotFound, not an outage."""
    with pytest.raises(NotFound):
        await hsm.sign_digest(new_key_id(), KeyAlgorithm.EC_P256, bytes(32), "sha256",
                              SignatureScheme.ECDSA)


async def test_destroyed_key_is_gone(hsm: Hsm) -> None:
    """destroy_key removes both halves of the pair from the token."""
    key_id = new_key_id()
    await hsm.generate_key(KeyAlgorithm.EC_P256, "destroy", key_id)
    await hsm.destroy_key(key_id)
    with pytest.raises(NotFound):
        await hsm.public_key(key_id)


async def _private_key_objects(hsm: Hsm, key_id: bytes) -> list[dict[str, bool]]:
    """Every private key object with this id the session sees: token objects and copies."""

    def read(session: Any) -> list[dict[str, bool]]:
        found = session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                     Attribute.ID: key_id})
        return [{"token": bool(o[Attribute.TOKEN]), "sensitive": bool(o[Attribute.SENSITIVE]),
                 "extractable": bool(o[Attribute.EXTRACTABLE])} for o in found]

    return await hsm.token.run("probe", read)


async def _sign_and_verify(hsm: Hsm, key_id: bytes, public: Any, count: int = 2) -> None:
    """Sign ``count`` digests in one call (a batch when more than one) and verify each."""
    messages = [MESSAGE + bytes([n]) for n in range(count)]
    signatures = await hsm.sign_digests(
        key_id, KeyAlgorithm.EC_P256, [hashlib.sha256(m).digest() for m in messages], "sha256",
        SignatureScheme.ECDSA)
    for message, signature in zip(messages, signatures, strict=True):
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))


TOKEN_OBJECT = {"token": True, "sensitive": True, "extractable": False}
SESSION_COPY = {"token": False, "sensitive": True, "extractable": False}


async def test_batches_sign_with_a_session_copy_as_protected_as_the_key(hsm: Hsm) -> None:
    """With SoftHSM, a batch makes one in-session copy of the private key, as sensitive and
    non-extractable as the token object; a single signature uses the token object."""
    key_id = new_key_id()
    public = load_der_public_key(await hsm.generate_key(KeyAlgorithm.EC_P256, "copy", key_id))
    await _sign_and_verify(hsm, key_id, public, count=1)
    assert await _private_key_objects(hsm, key_id) == [TOKEN_OBJECT]
    for _ in range(3):
        await _sign_and_verify(hsm, key_id, public)
    objects = await _private_key_objects(hsm, key_id)
    assert sorted(objects, key=lambda o: o["token"]) == [SESSION_COPY, TOKEN_OBJECT]


async def test_destroying_a_key_destroys_its_session_copy(hsm: Hsm) -> None:
    key_id = new_key_id()
    public = load_der_public_key(await hsm.generate_key(KeyAlgorithm.EC_P256, "copy", key_id))
    await _sign_and_verify(hsm, key_id, public)
    await hsm.destroy_key(key_id)
    assert await _private_key_objects(hsm, key_id) == []
    with pytest.raises(NotFound):
        await _sign_and_verify(hsm, key_id, public)


async def test_a_key_destroyed_by_another_process_signs_no_further_batch(hsm: Hsm) -> None:
    """Another worker destroying the token object leaves this worker's copy in its session;
    the next batch finds the token object gone, says NotFound and destroys the copy."""
    key_id = new_key_id()
    public = load_der_public_key(await hsm.generate_key(KeyAlgorithm.EC_P256, "copy", key_id))
    await _sign_and_verify(hsm, key_id, public)

    def destroy_token_object(session: Any) -> None:
        for found in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                          Attribute.ID: key_id, Attribute.TOKEN: True}):
            found.destroy()

    await hsm.token.run("probe", destroy_token_object)
    assert await _private_key_objects(hsm, key_id) == [SESSION_COPY]
    with pytest.raises(NotFound):
        await _sign_and_verify(hsm, key_id, public)
    assert await _private_key_objects(hsm, key_id) == []


async def test_a_key_that_may_not_be_copied_signs_with_its_token_object(hsm: Hsm) -> None:
    """A key made with CKA_COPYABLE false (or an HSM that refuses copies) still signs."""
    key_id = new_key_id()

    def generate(session: Any) -> None:
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True)
        params.generate_keypair(
            store=True, label="no-copy", id=key_id,
            public_template={Attribute.VERIFY: True, Attribute.TOKEN: True},
            private_template={Attribute.SIGN: True, Attribute.TOKEN: True,
                              Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                              Attribute.COPYABLE: False})

    await hsm.token.run("probe", generate)
    public = load_der_public_key(await hsm.public_key(key_id))
    await _sign_and_verify(hsm, key_id, public)
    await _sign_and_verify(hsm, key_id, public)
    assert await _private_key_objects(hsm, key_id) == [TOKEN_OBJECT]


async def test_data_key_wrapping_round_trip(hsm: Hsm) -> None:
    """wrap/unwrap under the token's wrapping key returns the secret, never shown wrapped."""
    secret = os.urandom(32)
    wrapped = await hsm.wrap(secret, b"key-1")
    assert secret not in wrapped
    assert await hsm.unwrap(wrapped, b"key-1") == secret


async def test_the_wrapping_key_encrypts_data_keys_and_does_nothing_else(hsm: Hsm) -> None:
    """The data-key wrapping key is sensitive, never leaves the token, and may not wrap or
    unwrap other keys, sign or derive (SoftHSM's defaults allow some of these)."""
    names = ["sensitive", "extractable", "private", "encrypt", "decrypt", "wrap", "unwrap",
             "sign", "verify", "derive"]

    def read(session: Any) -> dict[str, bool]:
        key = session.get_key(object_class=ObjectClass.SECRET_KEY,
                              label=DATA_KEY_WRAPPING_LABEL)
        return {name: bool(key[getattr(Attribute, name.upper())]) for name in names}

    assert await hsm.token.run("probe", read) == {
        "sensitive": True, "extractable": False, "private": True, "encrypt": True,
        "decrypt": True, "wrap": False, "unwrap": False, "sign": False, "verify": False,
        "derive": False,
    }


async def test_a_changed_wrapping_or_another_context_does_not_unwrap_and_is_no_outage(
    hsm: Hsm,
) -> None:
    """Every byte of a wrapped key is authenticated, and so is what it is bound to: any
    change gives the same WrappedDataInvalid (nothing to learn from the answer), and the
    HSM is not taken for down (its session and sealgate_hsm_up stay)."""
    wrapped = await hsm.wrap(os.urandom(32), b"key-1")
    changed = [bytes([wrapped[0] ^ 1]) + wrapped[1:], wrapped[:-1] + bytes([wrapped[-1] ^ 1]),
               wrapped[:20], b""]
    for attempt in changed:
        with pytest.raises(WrappedDataInvalid):
            await hsm.unwrap(attempt, b"key-1")
    with pytest.raises(WrappedDataInvalid):
        await hsm.unwrap(wrapped, b"key-2")
    for padding_probe in (os.urandom(32), os.urandom(48), b"\x00" * 16):
        with pytest.raises(WrappedDataInvalid):
            await hsm.unwrap_cbc(padding_probe)
    assert REGISTRY.get_sample_value("sealgate_hsm_up") == 1
    await hsm.check()


async def test_a_single_signature_runs_on_the_callers_thread_when_the_token_is_free(
    hsm: Hsm,
) -> None:
    """With SoftHSM, a short call runs right here; behind a long call it waits its turn on
    the HSM thread instead of running beside it."""

    def where(_session: object) -> str:
        return threading.current_thread().name

    assert await hsm.token.run("probe", where, short=True) == threading.current_thread().name
    assert await hsm.token.run("probe", where) == "hsm"
    started = threading.Event()

    def long_call(_session: object) -> None:
        started.set()
        time.sleep(1.0)

    slow = asyncio.create_task(hsm.token.run("probe", long_call))
    assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
    assert await hsm.token.run("probe", where, short=True) == "hsm"
    assert slow.done()  # it ran after the long call, not beside it
    await slow


SWITCHES = ["inline_signing", "session_key_copies"]


@pytest.mark.parametrize("switch", SWITCHES)
@pytest.mark.parametrize(
    ("module", "setting", "on"),
    [
        ("/usr/lib/softhsm/libsofthsm2.so", "auto", True),
        ("/opt/vendor/lib/libnethsm-pkcs11.so", "auto", False),
        ("/opt/vendor/lib/libnethsm-pkcs11.so", "on", True),
        ("/usr/lib/softhsm/libsofthsm2.so", "off", False),
    ],
)
def test_softhsm_switches_are_for_local_software_tokens_unless_set(
    switch: str, module: str, setting: str, on: bool
) -> None:
    """Inline signing and session copies only pay off with a local software token (a network
    HSM's calls wait on the network), so elsewhere they are off unless the operator says so."""
    settings = HsmSettings(module=module, **{switch: setting})
    assert softhsm_switch(settings, switch, setting) is on


@pytest.mark.parametrize("switch", SWITCHES)
def test_an_unknown_switch_value_is_a_config_error(switch: str) -> None:
    with pytest.raises(ConfigError, match=rf"hsm\.{switch}"):
        Hsm(HsmSettings(**{switch: "sometimes"}))


@pytest.mark.parametrize("size", [32, 48])
def test_ecdsa_signatures_are_the_der_that_cryptography_writes(size: int) -> None:
    """r‖s to DER by hand, for the edge cases too: leading zero bytes, high bits, zero."""
    values = [os.urandom(size) for _ in range(200)]
    values += [b"\x00" * size, b"\x80" + b"\x00" * (size - 1), b"\x00\x7f" + b"\x01" * (size - 2),
               b"\x00\x00\x80" + b"\xff" * (size - 3), b"\xff" * size]
    for r in values:
        for s in (values[0], r[::-1]):
            expected = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
            assert ecdsa_raw_to_der(r + s) == expected
