"""Key records: keys generated in the HSM, their certificates, status, and signing material.

The private key lives only on the token (addressed by ``CKA_ID`` = the key's UUID bytes);
storage keeps what may be public: label, algorithm, public key, certificate chain, status.
A key may carry a ``usage_limit``: the number of signatures it may ever make, counted with the
storage backend's atomic counter so that every worker process draws from the same budget.
Destroying a key removes it from the token for good; the record stays, ``destroyed``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.audit import AuditLog
from gateway.clock import isoformat, utcnow
from gateway.errors import Conflict, NotFound, SealMaySignNot, ValidationFailed
from gateway.hsm import Hsm, KeyAlgorithm
from gateway.pki.certs import chain_to_pem, check_signing_leaf, parse_pem_chain, summarize
from gateway.pki.csr import build_csr
from gateway.pki.devca import (
    PLATFORM_PROFILE,
    SEAL_PROFILE,
    TSA_PROFILE,
    CertificateProfile,
    DevCA,
)
from gateway.storage import EventSealer, Record, Storage, Write

KEY = "key"
PLATFORM = "platform"
RECEIPT_SIGNER = "receipt-signer"
AUDIT_SIGNER = "audit-signer"
TSA_SIGNER = "tsa-signer"
PLATFORM_KEY_LABEL = "sealgate-platform-receipts"
AUDIT_KEY_LABEL = "sealgate-audit-checkpoints"
TSA_KEY_LABEL = "sealgate-time-stamping"
MAX_USAGE_LIMIT = 10**12

JSONRecord = dict[str, Any]


class KeyRegistry:
    """Owns records of kind ``key`` and every HSM call that creates or changes a key."""

    def __init__(self, storage: Storage, hsm: Hsm, audit: AuditLog) -> None:
        self._storage = storage
        self._hsm = hsm
        self._audit = audit

    async def create(
        self, label: object, algorithm: object, actor: str, usage_limit: object = None
    ) -> JSONRecord:
        algo = KeyAlgorithm.parse(algorithm)
        label = label.strip() if isinstance(label, str) else ""
        if not label or len(label) > 100:
            raise ValidationFailed.one("label", "must be 1 to 100 characters")
        limit = _usage_limit(usage_limit)
        key_id = uuid.uuid4()
        public_der = await self._hsm.generate_key(algo, label, key_id.bytes)
        public_pem = serialization.load_der_public_key(public_der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        data = {
            "id": str(key_id), "label": label, "algorithm": algo.value,
            "public_key_pem": public_pem, "status": "enabled", "created_at": isoformat(utcnow()),
            "certificate_chain_pem": None, "certificate": None, "usage_limit": limit,
        }
        await self._audit.commit(
            [Write(KEY, str(key_id), 0, data)],
            [self._audit.event_sealer(actor, "key.created", f"key/{key_id}",
                                      {"label": label, "algorithm": algo.value,
                                       "usage_limit": limit})],
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

    async def import_certificate(
        self, key_id: str, pem: bytes, actor: str, *, time_stamping: bool | None = None
    ) -> JSONRecord:
        """Store the key's certificate chain after :func:`check_signing_leaf`; the chain is
        checked for time-stamping when the key is the time-stamp authority's (or when
        ``time_stamping`` says so, as while that key is being set up)."""
        record = await self._record(key_id)
        self._require_enabled(record.data)
        chain = parse_pem_chain(pem)
        if time_stamping is None:
            tsa = await self._storage.get(PLATFORM, TSA_SIGNER)
            time_stamping = tsa is not None and str(tsa.data["key_id"]) == key_id
        check_signing_leaf(chain, _public_der(record.data), utcnow(), time_stamping=time_stamping)
        summary = summarize(chain[0])
        data = {**record.data, "certificate_chain_pem": chain_to_pem(chain),
                "certificate": summary.as_dict()}
        replaced = record.data.get("certificate")
        if replaced and replaced.get("sha256") != summary.sha256:
            # Verifiers still name the seal of documents signed under the certificate
            # this one replaces (a renewal keeps the key).
            data["certificate_history"] = [*(record.data.get("certificate_history") or []),
                                           {"sha256": replaced.get("sha256"),
                                            "serial": replaced.get("serial"),
                                            "replaced_at": isoformat(utcnow())}]
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

    async def destroyable(self, key_id: str) -> Record:
        """The key's record when it may be destroyed now; 409 naming the reason otherwise."""
        record = await self._record(key_id)
        status = record.data["status"]
        if status == "enabled":
            raise Conflict("disable the key before destroying it")
        if status != "disabled":
            raise Conflict(f"the key is {status}")
        if key_id in await self.platform_key_ids():
            raise Conflict("the platform's own receipt, audit and time-stamping keys are never "
                           "destroyed")
        return record

    async def destroy(
        self,
        key_id: str,
        actor: str,
        *,
        also_writes: Sequence[Write] = (),
        also_events: Sequence[EventSealer] = (),
    ) -> JSONRecord:
        """Remove the private and public key from the token, then mark the record destroyed.

        The token comes first: if the record cannot be written afterwards, the key is gone
        and a retry (the token step finds nothing to delete) completes the record. The other
        order could leave a key marked destroyed that still exists on the token.
        """
        record = await self.destroyable(key_id)
        await self._hsm.destroy_key(uuid.UUID(key_id).bytes)
        data = {**record.data, "status": "destroyed", "destroyed_at": isoformat(utcnow())}
        await self._audit.commit(
            [Write(KEY, key_id, record.version, data), *also_writes],
            [*also_events,
             self._audit.event_sealer(actor, "key.destroyed", f"key/{key_id}",
                                      {"label": data["label"]})],
        )
        return data

    async def usage(self, data: JSONRecord) -> int | None:
        """Signatures made so far by a key with a usage limit; None for keys without one."""
        if data.get("usage_limit") is None:
            return None
        return await self._storage.incr(usage_counter(str(data["id"])), 0)

    async def certify(
        self, key: JSONRecord, ca: DevCA, common_name: str, organization: str, actor: str,
        *, profile: CertificateProfile = SEAL_PROFILE, days: int = 825,
    ) -> JSONRecord:
        """Have the development CA certify ``key`` and import the chain (trials, the demo,
        and the platform's own keys; production seals bring their CA's chain)."""
        cert = ca.issue(self.public_key_der(key), common_name, organization,
                        profile=profile, days=days)
        return await self.import_certificate(
            str(key["id"]), chain_to_pem([cert, ca.certificate]).encode(), actor,
            time_stamping=True if profile is TSA_PROFILE else None)

    async def ensure_platform_key(self, ca: DevCA) -> JSONRecord:
        """The key that signs filing and sealing receipts; created once, certified by ``ca``."""
        link = await self._storage.get(PLATFORM, RECEIPT_SIGNER)
        if link is not None:
            return await self.get(str(link.data["key_id"]))
        key = await self.create(PLATFORM_KEY_LABEL, KeyAlgorithm.EC_P256.value, "system")
        key = await self.certify(key, ca, "SealGate Receipt Signing", "SealGate Platform",
                                 "system", profile=PLATFORM_PROFILE, days=3 * 365)
        await self._storage.commit([Write(PLATFORM, RECEIPT_SIGNER, 0, {"key_id": key["id"]})])
        return key

    async def ensure_tsa_key(self, ca: DevCA) -> JSONRecord:
        """The time-stamp authority's key (``POST /tsa``, B-T and above); created once, certified
        by ``ca`` for time-stamping only (critical extended key usage, RFC 3161 §2.3)."""
        link = await self._storage.get(PLATFORM, TSA_SIGNER)
        if link is not None:
            return await self.get(str(link.data["key_id"]))
        key = await self.create(TSA_KEY_LABEL, KeyAlgorithm.EC_P256.value, "system")
        key = await self.certify(key, ca, "SealGate Time-Stamping Authority",
                                 "SealGate Platform", "system", profile=TSA_PROFILE,
                                 days=3 * 365)
        await self._storage.commit([Write(PLATFORM, TSA_SIGNER, 0, {"key_id": key["id"]})])
        return key

    async def tsa_key(self) -> JSONRecord | None:
        link = await self._storage.get(PLATFORM, TSA_SIGNER)
        return None if link is None else await self.get(str(link.data["key_id"]))

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

    async def platform_key_ids(self) -> set[str]:
        """Ids of the platform's own keys (receipt signing, audit checkpoints, time-stamping)."""
        links = [await self._storage.get(PLATFORM, name)
                 for name in (RECEIPT_SIGNER, AUDIT_SIGNER, TSA_SIGNER)]
        return {str(link.data["key_id"]) for link in links if link is not None}

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


def _usage_limit(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_USAGE_LIMIT:
        raise ValidationFailed.one("usage_limit", "must be a whole number of signatures above 0")
    return value


def _public_der(data: JSONRecord) -> bytes:
    return serialization.load_pem_public_key(str(data["public_key_pem"]).encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def usage_counter(key_id: str) -> str:
    return f"key-usage/{key_id}"


async def reserve_signatures(storage: Storage, key: Mapping[str, Any], count: int = 1) -> None:
    """Take ``count`` signatures from the key's usage budget, or refuse with 409.

    The atomic counter is shared by every worker, so concurrent requests can never sign more
    than the limit together; a refused reservation is given back so the count stays exact. A
    reservation is not returned when the signing then fails for another reason: the limit is
    an upper bound on uses of the key, never a promise of that many signatures.
    """
    limit = key.get("usage_limit")
    if limit is None or count == 0:
        return
    counter = usage_counter(str(key["id"]))
    if await storage.incr(counter, count) > int(limit):
        await storage.incr(counter, -count)
        raise SealMaySignNot("key-usage-exhausted",
                             f"the seal's key has used up its limit of {limit} signatures")


def certificate_chain(data: JSONRecord) -> list[x509.Certificate]:
    """The key's certificate chain, leaf first; empty when none was imported yet."""
    pem = data.get("certificate_chain_pem")
    return x509.load_pem_x509_certificates(str(pem).encode()) if pem else []


def public_view(data: JSONRecord) -> JSONRecord:
    """What the API shows of a key (API.md "Keys")."""
    return {
        k: data.get(k)
        for k in ("id", "label", "algorithm", "public_key_pem", "status", "created_at",
                  "certificate", "usage_limit")
    }
