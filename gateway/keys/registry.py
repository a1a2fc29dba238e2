"""Key records: keys generated in the HSM, their certificates, status, and signing material.

The private key lives only on the token (addressed by ``CKA_ID`` = the key's UUID bytes);
storage keeps what may be public: label, algorithm, public key, certificate chain, status.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.audit import AuditLog
from gateway.clock import isoformat, utcnow
from gateway.errors import Conflict, NotFound, ValidationFailed
from gateway.hsm import Hsm, KeyAlgorithm
from gateway.pki.certs import chain_to_pem, check_signing_leaf, parse_pem_chain, summarize
from gateway.pki.csr import build_csr
from gateway.pki.devca import PLATFORM_PROFILE, DevCA
from gateway.storage import Record, Storage, Write

KEY = "key"
PLATFORM = "platform"
RECEIPT_SIGNER = "receipt-signer"
AUDIT_SIGNER = "audit-signer"
PLATFORM_KEY_LABEL = "sealgate-platform-receipts"
AUDIT_KEY_LABEL = "sealgate-audit-checkpoints"
KEY_STATUSES = ("enabled", "disabled", "destroyed")

JSONRecord = dict[str, Any]


class KeyRegistry:
    """Owns records of kind ``key`` and every HSM call that creates or changes a key."""

    def __init__(self, storage: Storage, hsm: Hsm, audit: AuditLog) -> None:
        self._storage = storage
        self._hsm = hsm
        self._audit = audit

    async def create(self, label: str, algorithm: object, actor: str) -> JSONRecord:
        algo = KeyAlgorithm.parse(algorithm)
        label = str(label or "").strip()
        if not label or len(label) > 100:
            raise ValidationFailed.one("label", "must be 1 to 100 characters")
        key_id = uuid.uuid4()
        public_der = await self._hsm.generate_key(algo, label, key_id.bytes)
        public_pem = serialization.load_der_public_key(public_der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        data = {
            "id": str(key_id), "label": label, "algorithm": algo.value,
            "public_key_pem": public_pem, "status": "enabled", "created_at": isoformat(utcnow()),
            "certificate_chain_pem": None, "certificate": None,
        }
        await self._audit.commit(
            [Write(KEY, data["id"], 0, data)],
            [self._audit.event_sealer(actor, "key.created", f"key/{data['id']}",
                                      {"label": label, "algorithm": algo.value})],
        )
        return data

    async def get(self, key_id: str) -> JSONRecord:
        return (await self._record(key_id)).data

    async def list(self) -> list[JSONRecord]:
        return [r.data for r in await self._storage.list(KEY)]

    async def csr(self, key_id: str, subject: Mapping[str, object], actor: str) -> bytes:
        data = await self.get(key_id)
        self._require_enabled(data)
        algo = KeyAlgorithm(data["algorithm"])
        public_der = _public_der(data)
        pem = await build_csr(self._hsm, uuid.UUID(key_id).bytes, algo, public_der, subject)
        await self._audit.append(actor, "key.csr_created", f"key/{key_id}",
                                 {"subject": {k: str(v) for k, v in subject.items()}})
        return pem

    async def import_certificate(self, key_id: str, pem: bytes, actor: str) -> JSONRecord:
        record = await self._record(key_id)
        self._require_enabled(record.data)
        chain = parse_pem_chain(pem)
        check_signing_leaf(chain, _public_der(record.data), utcnow())
        summary = summarize(chain[0])
        data = {**record.data, "certificate_chain_pem": chain_to_pem(chain),
                "certificate": summary.as_dict()}
        await self._audit.commit(
            [Write(KEY, key_id, record.version, data)],
            [self._audit.event_sealer(actor, "key.certificate_imported", f"key/{key_id}",
                                      {"serial": summary.serial, "sha256": summary.sha256,
                                       "issuer": summary.issuer})],
        )
        return data

    async def disable(self, key_id: str, actor: str) -> JSONRecord:
        record = await self._record(key_id)
        if record.data["status"] != "enabled":
            raise Conflict(f"the key is {record.data['status']}, not enabled")
        data = {**record.data, "status": "disabled"}
        await self._audit.commit(
            [Write(KEY, key_id, record.version, data)],
            [self._audit.event_sealer(actor, "key.disabled", f"key/{key_id}", {})],
        )
        return data

    async def ensure_platform_key(self, ca: DevCA) -> JSONRecord:
        """The key that signs filing and sealing receipts; created once, certified by ``ca``."""
        link = await self._storage.get(PLATFORM, RECEIPT_SIGNER)
        if link is not None:
            return await self.get(str(link.data["key_id"]))
        key = await self.create(PLATFORM_KEY_LABEL, KeyAlgorithm.EC_P256.value, "system")
        cert = ca.issue(self.public_key_der(key), "SealGate Receipt Signing", "SealGate Platform",
                        profile=PLATFORM_PROFILE, days=3 * 365)
        key = await self.import_certificate(
            key["id"], chain_to_pem([cert, ca.certificate]).encode(), "system"
        )
        await self._storage.commit([Write(PLATFORM, RECEIPT_SIGNER, 0, {"key_id": key["id"]})])
        return key

    async def ensure_audit_key(self) -> JSONRecord:
        """The key that signs audit checkpoints; created once."""
        link = await self._storage.get(PLATFORM, AUDIT_SIGNER)
        if link is not None:
            return await self.get(str(link.data["key_id"]))
        key = await self.create(AUDIT_KEY_LABEL, KeyAlgorithm.EC_P256.value, "system")
        await self._storage.commit([Write(PLATFORM, AUDIT_SIGNER, 0, {"key_id": key["id"]})])
        return key

    async def audit_key(self) -> JSONRecord | None:
        link = await self._storage.get(PLATFORM, AUDIT_SIGNER)
        return None if link is None else await self.get(str(link.data["key_id"]))

    async def platform_key(self) -> JSONRecord:
        link = await self._storage.get(PLATFORM, RECEIPT_SIGNER)
        if link is None:
            raise NotFound("the platform receipt key is not set up; run `sealgate init`")
        return await self.get(str(link.data["key_id"]))

    @staticmethod
    def public_key_der(data: JSONRecord) -> bytes:
        return _public_der(data)

    async def _record(self, key_id: str) -> Record:
        try:
            uuid.UUID(key_id)
        except ValueError:
            raise NotFound(f"no key with id {key_id}") from None
        record = await self._storage.get(KEY, key_id)
        if record is None:
            raise NotFound(f"no key with id {key_id}")
        return record

    @staticmethod
    def _require_enabled(data: JSONRecord) -> None:
        if data["status"] != "enabled":
            raise Conflict(f"the key is {data['status']}")


def _public_der(data: JSONRecord) -> bytes:
    return serialization.load_pem_public_key(str(data["public_key_pem"]).encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def certificate_chain(data: JSONRecord) -> list[x509.Certificate]:
    """The key's certificate chain, leaf first; empty when none was imported yet."""
    pem = data.get("certificate_chain_pem")
    return x509.load_pem_x509_certificates(str(pem).encode()) if pem else []


def public_view(data: JSONRecord) -> JSONRecord:
    """What the API shows of a key (API.md "Keys")."""
    return {
        k: data.get(k)
        for k in ("id", "label", "algorithm", "public_key_pem", "status", "created_at",
                  "certificate")
    }
