"""Key operations on the token: generate, look up (cached), sign digests, encrypt, destroy.

Keys are addressed by their PKCS#11 ``CKA_ID`` (the gateway's key id as bytes). Private keys
are generated on the token with ``SENSITIVE`` and ``EXTRACTABLE=false`` set explicitly
(python-pkcs11 does not default the latter), so no gateway code path can read them back.
Handles are cached per session because a ``C_FindObjects`` lookup costs more than an ECDSA
signature; the cache is dropped whenever the session is replaced.

Batches are signed with a session copy of the key where ``hsm.session_key_copies`` allows it.
SoftHSM re-checks a token object's file (a stat, a lock, a re-read when it changed) on every
use, so that several processes can share the token; for one ECDSA signature that was a quarter
of the time (EC P-256: 15 k/s on the token object, 20 k/s on a copy, one process). The copy is
made on the token with ``C_CopyObject`` and ``CKA_TOKEN=false``: it keeps ``SENSITIVE`` and
``EXTRACTABLE=false`` (PKCS#11 lets a copy only tighten them), lives in this process's session
and goes with it. Each batch first reads one attribute of the token object, which re-checks
its file once: a key destroyed by another process, or a token that is gone, stops the batch
as it would without the copy. That read costs about as much as the copy saves on one
signature, so a single signature uses the token object itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pkcs11.exceptions as p11e
from asn1crypto.core import ObjectIdentifier, OctetString
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import encode_named_curve_parameters

from gateway.errors import HsmError, HsmUnavailable, NotFound, WrappedDataInvalid
from gateway.hsm.algorithms import (
    HASHES,
    KeyAlgorithm,
    SignatureScheme,
    ecdsa_raw_to_der,
)
from gateway.hsm.token import OUTAGE_ERRORS, TokenSession, softhsm_switch
from gateway.settings import HsmSettings

log = logging.getLogger(__name__)

# The AES key that wraps data keys for personal data; its presence also proves the token is
# the one `sealgate init` prepared (the health check looks it up).
DATA_KEY_WRAPPING_LABEL = "sealgate-kek"
_GCM_NONCE_BYTES = 12

_PSS_PARAMS = {
    "sha256": (Mechanism.SHA256, MGF.SHA256, 32),
    "sha384": (Mechanism.SHA384, MGF.SHA384, 48),
    "sha512": (Mechanism.SHA512, MGF.SHA512, 64),
}
# Named-curve OIDs as the token reports them in CKA_EC_PARAMS.
_EC_CURVES: dict[str, ec.EllipticCurve] = {
    "1.2.840.10045.3.1.7": ec.SECP256R1(),
    "1.3.132.0.34": ec.SECP384R1(),
}


class Hsm:
    """The gateway's view of the HSM: every method is a coroutine run on the HSM thread."""

    def __init__(self, settings: HsmSettings, login_lock: Path | None = None) -> None:
        """``login_lock``: a file the processes of one gateway share, so that they log in one
        at a time and try a PIN the token refused only once (see hsm/token.py)."""
        self.token = TokenSession(settings, login_lock)
        self._handles: dict[tuple[bytes, ObjectClass], Any] = {}
        # key id -> the session copy batches sign with; ids whose copy the HSM refused
        self._copies_made: dict[bytes, Any] = {}
        self._copies_refused: set[bytes] = set()
        self._copies = softhsm_switch(settings, "session_key_copies",
                                      settings.session_key_copies)
        self.token.on_reset(self._forget_handles)

    def start(self) -> None:
        self.token.start()

    async def close(self) -> None:
        await self.token.close()

    async def check(self) -> None:
        """Raise HsmUnavailable unless the token answers and holds the gateway's wrapping key."""
        await self.token.run("health", self._check)

    async def generate_key(self, algorithm: KeyAlgorithm, label: str, key_id: bytes) -> bytes:
        """Generate a key pair on the token; return the public key as SubjectPublicKeyInfo DER."""
        return await self.token.run(
            "generate", lambda s: _generate(s, algorithm, label, key_id)
        )

    async def public_key(self, key_id: bytes) -> bytes:
        return await self.token.run(
            "public_key", lambda s: _public_key_der(self._key(s, key_id, ObjectClass.PUBLIC_KEY))
        )

    async def sign_digest(
        self, key_id: bytes, algorithm: KeyAlgorithm, digest: bytes, hash_name: str,
        scheme: SignatureScheme,
    ) -> bytes:
        """Sign one pre-computed digest; the result is in its X.509/CMS encoding."""
        return await self.token.run(
            "sign",
            lambda s: _signer(self._key(s, key_id, ObjectClass.PRIVATE_KEY),
                              algorithm, hash_name, scheme)(digest),
            short=True,
        )

    async def sign_digests(
        self, key_id: bytes, algorithm: KeyAlgorithm, digests: Sequence[bytes], hash_name: str,
        scheme: SignatureScheme,
    ) -> list[bytes]:
        """Sign a batch in one hop to the HSM thread (one queue wait for the whole batch)."""

        def sign_all(session: Any) -> list[bytes]:
            key = (self._batch_key(session, key_id) if len(digests) > 1
                   else self._key(session, key_id, ObjectClass.PRIVATE_KEY))
            sign = _signer(key, algorithm, hash_name, scheme)
            return [sign(d) for d in digests]

        return await self.token.run("sign", sign_all, short=len(digests) == 1)

    async def key_attributes(self, key_id: bytes) -> dict[str, bool]:
        """The protection and usage attributes of the private key, for audits and tests."""

        def read(session: Any) -> dict[str, bool]:
            key = self._key(session, key_id, ObjectClass.PRIVATE_KEY)
            return {
                name.lower(): bool(key[attr])
                for name, attr in (
                    ("SENSITIVE", Attribute.SENSITIVE),
                    ("EXTRACTABLE", Attribute.EXTRACTABLE),
                    ("ALWAYS_SENSITIVE", Attribute.ALWAYS_SENSITIVE),
                    ("NEVER_EXTRACTABLE", Attribute.NEVER_EXTRACTABLE),
                    ("PRIVATE", Attribute.PRIVATE),
                    ("SIGN", Attribute.SIGN),
                    ("SIGN_RECOVER", Attribute.SIGN_RECOVER),
                    ("DECRYPT", Attribute.DECRYPT),
                    ("UNWRAP", Attribute.UNWRAP),
                    ("DERIVE", Attribute.DERIVE),
                )
            }

        return await self.token.run("attributes", read)

    async def destroy_key(self, key_id: bytes) -> None:
        """Delete the key pair; a key that is gone already is no error, a token that is gone is.

        Without the probe, a vanished token would look like a key with nothing left to delete,
        and the caller would record as destroyed a key that comes back with the token.
        """

        def destroy(session: Any) -> None:
            _probe_token(session)
            self._drop_batch_key(key_id)
            for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                for obj in session.get_objects({Attribute.CLASS: cls, Attribute.ID: key_id}):
                    obj.destroy()
                self._handles.pop((key_id, cls), None)

        await self.token.run("destroy", destroy)

    async def ensure_wrapping_key(self) -> None:
        """Create the AES-256 key that wraps data keys, once per token."""
        await self.token.run("generate", _ensure_wrapping_key)

    async def has_wrapping_key(self) -> bool:
        def find(session: Any) -> bool:
            try:
                session.get_key(object_class=ObjectClass.SECRET_KEY,
                                label=DATA_KEY_WRAPPING_LABEL)
            except p11e.NoSuchKey:
                return False
            return True

        return await self.token.run("probe", find)

    async def wrap(self, secret: bytes, context: bytes) -> bytes:
        """AES-GCM under the token's wrapping key, bound to ``context`` (authenticated: a
        changed byte, or another context, does not unwrap); the nonce is prepended."""

        def run(session: Any) -> bytes:
            nonce = os.urandom(_GCM_NONCE_BYTES)
            return nonce + bytes(self._secret(session).encrypt(
                secret, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, context)))

        return await self.token.run("wrap", run)

    async def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        """What :meth:`wrap` wrapped with ``context``; WrappedDataInvalid for anything else."""

        def run(session: Any) -> bytes:
            nonce, sealed = wrapped[:_GCM_NONCE_BYTES], wrapped[_GCM_NONCE_BYTES:]
            return _refused_as_invalid(session, lambda: bytes(self._secret(session).decrypt(
                sealed, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, context))))

        return await self.token.run("unwrap", run)

    async def unwrap_cbc(self, wrapped: bytes) -> bytes:
        """Data keys wrapped before AES-GCM: AES-CBC-PAD, the IV prepended. Unauthenticated,
        so every failure is the same WrappedDataInvalid (bad padding and a wrong length told
        apart made a padding oracle for anyone able to write storage)."""

        def run(session: Any) -> bytes:
            return _refused_as_invalid(session, lambda: bytes(self._secret(session).decrypt(
                wrapped[16:], mechanism=Mechanism.AES_CBC_PAD, mechanism_param=wrapped[:16])))

        return await self.token.run("unwrap", run)

    # -- on the HSM thread -------------------------------------------------------------------

    def _check(self, session: Any) -> None:
        _probe_token(session)

    def _forget_handles(self) -> None:
        """The session was replaced: its handles, and the copies that lived in it, are gone."""
        self._handles.clear()
        self._copies_made.clear()
        self._copies_refused.clear()

    def _batch_key(self, session: Any, key_id: bytes) -> Any:
        """The key a batch signs with: a session copy when allowed, else the token object.

        The token object is checked first (see the module docstring); one that is gone is
        looked up afresh, which says NotFound for a destroyed key and raises an outage for a
        token that is gone.
        """
        original = self._key(session, key_id, ObjectClass.PRIVATE_KEY)
        if not self._copies or key_id in self._copies_refused:
            return original
        try:
            original[Attribute.SIGN]
        except p11e.ObjectHandleInvalid:
            self._drop_batch_key(key_id)
            self._handles.pop((key_id, ObjectClass.PRIVATE_KEY), None)
            original = self._key(session, key_id, ObjectClass.PRIVATE_KEY)
        copy = self._copies_made.get(key_id)
        if copy is None:
            try:
                copy = original.copy({Attribute.TOKEN: False})
            except OUTAGE_ERRORS:
                raise
            except p11e.PKCS11Error as exc:
                # CKA_COPYABLE false, or an HSM policy: sign as with copies switched off.
                log.info("the HSM refused a session copy of a key (%s); its batches sign "
                         "with the token object", type(exc).__name__)
                self._copies_refused.add(key_id)
                return original
            self._copies_made[key_id] = copy
        return copy

    def _drop_batch_key(self, key_id: bytes) -> None:
        self._copies_refused.discard(key_id)
        copy = self._copies_made.pop(key_id, None)
        if copy is None:
            return
        try:
            copy.destroy()
        except OUTAGE_ERRORS:
            raise
        except p11e.PKCS11Error:
            pass  # the copy is gone already; it would go with the session anyway

    def _secret(self, session: Any) -> Any:
        cache_key = (DATA_KEY_WRAPPING_LABEL.encode(), ObjectClass.SECRET_KEY)
        key = self._handles.get(cache_key)
        if key is None:
            try:
                key = session.get_key(object_class=ObjectClass.SECRET_KEY,
                                      label=DATA_KEY_WRAPPING_LABEL)
            except p11e.NoSuchKey:
                raise HsmUnavailable("the HSM token is not initialised for SealGate") from None
            self._handles[cache_key] = key
        return key

    def _key(self, session: Any, key_id: bytes, cls: ObjectClass) -> Any:
        key = self._handles.get((key_id, cls))
        if key is None:
            key = _lookup(session, key_id, cls)
            self._handles[(key_id, cls)] = key
        return key


def _lookup(session: Any, key_id: bytes, cls: ObjectClass) -> Any:
    """The token object (never a session copy) of this class and id."""
    found = list(session.get_objects({Attribute.CLASS: cls, Attribute.ID: key_id,
                                      Attribute.TOKEN: True}))
    if not found:
        # A missing key and a vanished token look the same to C_FindObjects.
        _probe_token(session)
        raise NotFound("the key does not exist in the HSM")
    if len(found) > 1:
        raise HsmError("the token holds more than one key object with this id")
    return found[0]


def _refused_as_invalid(session: Any, decrypt: Callable[[], bytes]) -> bytes:
    """Run ``decrypt``; SoftHSM refuses data that does not decrypt with a general error,
    which is also what a vanished token gives: the token is probed to tell them apart."""
    try:
        return decrypt()
    except (p11e.GeneralError, p11e.EncryptedDataInvalid, p11e.EncryptedDataLenRange,
            p11e.ArgumentsBad, p11e.MechanismParamInvalid) as exc:
        _probe_token(session)  # raises TokenNotPresent when the token itself is gone
        raise WrappedDataInvalid("the wrapped data does not unwrap with this token's key") \
            from exc


def _probe_token(session: Any) -> None:
    """Look up the wrapping key afresh (never from the cache): it is on every SealGate token,
    so not finding it means the token is gone, and the session must be replaced."""
    try:
        session.get_key(object_class=ObjectClass.SECRET_KEY, label=DATA_KEY_WRAPPING_LABEL)
    except p11e.NoSuchKey:
        raise p11e.TokenNotPresent() from None


def _generate(session: Any, algorithm: KeyAlgorithm, label: str, key_id: bytes) -> bytes:
    # A seal key signs and does nothing else: python-pkcs11's defaults would also let an RSA
    # key decrypt and unwrap, and an EC key derive shared secrets.
    private_template = {
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.PRIVATE: True,
        Attribute.SIGN: True,
        Attribute.SIGN_RECOVER: False,
        Attribute.DECRYPT: False,
        Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
        Attribute.TOKEN: True,
    }
    public_template = {Attribute.VERIFY: True, Attribute.VERIFY_RECOVER: False,
                       Attribute.ENCRYPT: False, Attribute.WRAP: False, Attribute.TOKEN: True}
    if algorithm.is_rsa:
        public, _ = session.generate_keypair(
            KeyType.RSA, algorithm.rsa_bits, store=True, label=label, id=key_id,
            public_template=public_template, private_template=private_template,
        )
    else:
        params = session.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters(algorithm.curve)},
            local=True,
        )
        public, _ = params.generate_keypair(
            store=True, label=label, id=key_id,
            public_template=public_template, private_template=private_template,
        )
    return _public_key_der(public)


def _public_key_der(public: Any) -> bytes:
    if public.key_type == KeyType.RSA:
        numbers = rsa.RSAPublicNumbers(
            int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big"),
            int.from_bytes(public[Attribute.MODULUS], "big"),
        )
        key: Any = numbers.public_key()
    else:
        curve_oid = ObjectIdentifier.load(public[Attribute.EC_PARAMS]).dotted
        point = OctetString.load(public[Attribute.EC_POINT]).native
        key = ec.EllipticCurvePublicKey.from_encoded_point(_EC_CURVES[curve_oid], point)
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _signer(
    key: Any, algorithm: KeyAlgorithm, hash_name: str, scheme: SignatureScheme
) -> Callable[[bytes], bytes]:
    """A function signing one digest with ``key``; key and scheme are checked once, since a
    batch signs up to thousands of digests with them."""
    hash_alg = HASHES[hash_name]
    size = hash_alg.size

    def checked(digest: bytes) -> bytes:
        if len(digest) != size:
            raise HsmError(f"a {hash_name} digest has {size} bytes, not {len(digest)}")
        return digest

    if scheme is SignatureScheme.ECDSA:
        if algorithm.is_rsa:
            raise HsmError("ECDSA needs an EC key")
        return lambda digest: ecdsa_raw_to_der(key.sign(checked(digest),
                                                        mechanism=Mechanism.ECDSA))
    if not algorithm.is_rsa:
        raise HsmError(f"{scheme} needs an RSA key")
    if scheme is SignatureScheme.PSS:
        params = _PSS_PARAMS[hash_name]
        return lambda digest: bytes(key.sign(checked(digest), mechanism=Mechanism.RSA_PKCS_PSS,
                                             mechanism_param=params))
    prefix = hash_alg.digest_info_prefix
    return lambda digest: bytes(key.sign(prefix + checked(digest), mechanism=Mechanism.RSA_PKCS))


# The wrapping key encrypts and decrypts data keys and does nothing else: SoftHSM's defaults
# would also let it wrap and unwrap other keys (import a key of someone's choosing, or wrap
# out an extractable one) and compute MACs. Tokens made before keep the key they have.
_WRAPPING_KEY_TEMPLATE = {
    Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True, Attribute.PRIVATE: True,
    Attribute.ENCRYPT: True, Attribute.DECRYPT: True, Attribute.WRAP: False,
    Attribute.UNWRAP: False, Attribute.SIGN: False, Attribute.VERIFY: False,
    Attribute.DERIVE: False, Attribute.TOKEN: True,
}


def _ensure_wrapping_key(session: Any) -> None:
    try:
        session.get_key(object_class=ObjectClass.SECRET_KEY, label=DATA_KEY_WRAPPING_LABEL)
    except p11e.NoSuchKey:
        session.generate_key(
            KeyType.AES, 256, store=True, label=DATA_KEY_WRAPPING_LABEL,
            template=_WRAPPING_KEY_TEMPLATE,
        )


__all__ = ["DATA_KEY_WRAPPING_LABEL", "Hsm"]
