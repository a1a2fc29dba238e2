"""Checkpoints of the audit chain: the head (seq, hash) signed by an audit key in the HSM.

A checkpoint is stored as a record of kind ``audit_checkpoint``::

    {"seq": 200, "hash": "<hash of event 200>", "time": "2024-05-01T08:00:00Z",
     "key_id": "<hex CKA_ID>", "algorithm": "ecdsa-sha256", "signature": "<base64>"}

The signature covers :func:`checkpoint_payload`, a fixed line-based text rather than JSON, so
that checkers in any language can rebuild it without a canonical-JSON library; the first line
names what is signed, so that a signature made for something else can never pass as one.
Verifiers trust public keys given to them, never a key stored next to the checkpoints.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from gateway.hsm.algorithms import KeyAlgorithm, SignatureScheme

if TYPE_CHECKING:
    from gateway.hsm import Hsm

CHECKPOINT_KIND = "audit_checkpoint"

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
KeyMaterial = bytes | PublicKey | x509.Certificate
"""A public key as SubjectPublicKeyInfo or certificate (DER or PEM), or already loaded."""

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def checkpoint_payload(seq: int, head_hash: str, time: str, key_id: str, algorithm: str) -> bytes:
    """The exact bytes a checkpoint signature covers."""
    fields = (str(seq), head_hash, time, key_id, algorithm)
    if any("\n" in field for field in fields):
        raise ValueError("checkpoint fields are single lines")
    return "\n".join(("sealgate-audit-checkpoint-v1", *fields)).encode()


def load_public_key(material: KeyMaterial) -> PublicKey:
    """An EC or RSA public key from a key or certificate in any of the usual encodings."""
    key: Any = material
    if isinstance(material, bytes):
        text = material.lstrip()
        if text.startswith(b"-----BEGIN CERTIFICATE"):
            key = x509.load_pem_x509_certificate(material)
        elif text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(material)
        else:
            try:
                key = serialization.load_der_public_key(material)
            except ValueError:
                key = x509.load_der_x509_certificate(material)
    if isinstance(key, x509.Certificate):
        key = key.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError("an audit key is an EC or RSA key")
    return key


class CheckpointSigner:
    """Signs checkpoints with one HSM key; its public half is what verifiers are given."""

    def __init__(
        self,
        hsm: Hsm,
        key_id: bytes,
        algorithm: KeyAlgorithm,
        public_key: KeyMaterial,
        scheme: SignatureScheme | None = None,
    ) -> None:
        self.hsm = hsm
        self.key_id = key_id
        self.key_algorithm = algorithm
        self.public_key = load_public_key(public_key)
        self.scheme = scheme or SignatureScheme.default_for(algorithm)
        self.hash_name = algorithm.default_hash

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()

    @property
    def algorithm(self) -> str:
        """The checkpoint's ``algorithm`` field: signature scheme and hash, e.g. ecdsa-sha256."""
        return f"{self.scheme.value}-{self.hash_name}"

    async def sign(self, seq: int, head_hash: str, time: str) -> dict[str, Any]:
        """The checkpoint record for the event ``seq`` whose hash is ``head_hash``."""
        payload = checkpoint_payload(seq, head_hash, time, self.key_id_hex, self.algorithm)
        signature = await self.hsm.sign_digest(
            self.key_id, self.key_algorithm, hashlib.new(self.hash_name, payload).digest(),
            self.hash_name, self.scheme,
        )
        return {
            "seq": seq,
            "hash": head_hash,
            "time": time,
            "key_id": self.key_id_hex,
            "algorithm": self.algorithm,
            "signature": base64.b64encode(signature).decode("ascii"),
        }


def checkpoint_problem(
    checkpoint: Mapping[str, Any], trusted_keys: Mapping[str, PublicKey]
) -> str | None:
    """Why a checkpoint cannot be trusted, or None when its signature verifies."""
    try:
        seq = int(checkpoint["seq"])
        key_id, algorithm = str(checkpoint["key_id"]), str(checkpoint["algorithm"])
        payload = checkpoint_payload(
            seq, str(checkpoint["hash"]), str(checkpoint["time"]), key_id, algorithm
        )
        signature = base64.b64decode(str(checkpoint["signature"]), validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        return "a checkpoint record is malformed"
    key = trusted_keys.get(key_id)
    if key is None:
        return f"checkpoint {seq} is signed by key {key_id}, which is not trusted"
    scheme, _, hash_name = algorithm.partition("-")
    hash_class = _HASHES.get(hash_name)
    if hash_class is None:
        return f"checkpoint {seq} uses the unknown algorithm {algorithm}"
    try:
        if scheme == SignatureScheme.ECDSA and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, payload, ec.ECDSA(hash_class()))
        elif scheme == SignatureScheme.PKCS1V15 and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, payload, padding.PKCS1v15(), hash_class())
        elif scheme == SignatureScheme.PSS and isinstance(key, rsa.RSAPublicKey):
            digest = hash_class()
            key.verify(signature, payload, padding.PSS(padding.MGF1(digest), digest.digest_size),
                       digest)
        else:
            return f"checkpoint {seq}: {algorithm} does not fit key {key_id}"
    except InvalidSignature:
        return f"checkpoint {seq}: the signature does not verify"
    return None
