"""The gateway's service objects, built once per process from settings and plugins.

Both the HTTP app and the CLI use this wiring, so that a command and a request go through the
same registries, the same audit log and the same HSM layer.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from gateway import plugins
from gateway.audit import AuditLog, CheckpointSigner
from gateway.auth import ClientRegistry
from gateway.csc import CscService
from gateway.custody import DualControl
from gateway.filing.receipt_service import ReceiptService
from gateway.filing.service import FilingService
from gateway.hsm import Hsm, KeyAlgorithm
from gateway.keys.platform import PlatformSigner, load_trust_roots
from gateway.keys.registry import KeyRegistry
from gateway.keys.timestamping import TimestampService
from gateway.pki.devca import DevCA, crl_url
from gateway.pki.revocation import LocalRevocation
from gateway.privacy import PersonalDataVault
from gateway.seals.registry import SealRegistry
from gateway.seals.sealing import SealingService
from gateway.seals.verification import SignatureVerifier, VerificationGate
from gateway.settings import Settings
from gateway.signing.ltv import LongTermSigning
from gateway.storage import Storage


@dataclass
class Services:
    settings: Settings
    storage: Storage
    hsm: Hsm
    audit: AuditLog
    clients: ClientRegistry
    keys: KeyRegistry
    seals: SealRegistry
    sealing: SealingService
    platform: PlatformSigner
    timestamps: TimestampService
    verifier: SignatureVerifier
    dev_ca: DevCA | None  # None where `sealgate init` has made no dev CA
    filings: FilingService
    receipts: ReceiptService
    approvals: DualControl
    csc: CscService
    owns_hsm: bool = True


async def open_services(
    settings: Settings, *, hsm: Hsm | None = None, extra_plugins: tuple[object, ...] = ()
) -> Services:
    """Open storage and start the HSM layer (lazily: an absent token is not a start-up error).

    ``hsm`` lets a caller that already holds this process's one HSM session share it.
    """
    pm = plugins.plugin_manager(extra_plugins)
    storage = plugins.storage_backend(pm, settings)
    await storage.open()
    owns_hsm = hsm is None
    if hsm is None:
        hsm = Hsm(settings.hsm)
    hsm.start()
    audit = AuditLog(storage, checkpoint_every=settings.audit.checkpoint_every)
    keys = KeyRegistry(storage, hsm, audit)
    audit.set_signer(await audit_signer(settings, keys, hsm))
    seals = SealRegistry(storage, keys, audit)
    clients = ClientRegistry(storage, audit)
    timestamps = TimestampService(settings, keys, hsm, storage)
    dev_ca = DevCA.open(Path(settings.pki.dev_ca_dir),
                        crl_url=crl_url(settings.public_base_url))
    sealing = SealingService(settings, storage, hsm, seals, audit,
                             long_term=LongTermSigning(timestamps, LocalRevocation(dev_ca)))
    roots = load_trust_roots(settings.pki.trust_roots)
    roots_pem = [root.public_bytes(serialization.Encoding.PEM) for root in roots]
    gate = VerificationGate(settings.server.max_verifications)
    platform = PlatformSigner(keys, hsm, roots)
    filings = FilingService(
        settings.filing, storage, seals, audit, PersonalDataVault(storage, hsm), platform,
        plugins.filing_adapters(pm, settings),
    )
    return Services(
        settings=settings, storage=storage, hsm=hsm, audit=audit,
        clients=clients, keys=keys, seals=seals,
        sealing=sealing,
        platform=platform, timestamps=timestamps, dev_ca=dev_ca, filings=filings,
        verifier=SignatureVerifier(storage, roots_pem, gate),
        receipts=ReceiptService(storage, hsm, platform, roots_pem, gate),
        approvals=DualControl(settings.auth, storage, audit, clients, keys, seals),
        csc=CscService(settings, storage, seals, keys, sealing),
        owns_hsm=owns_hsm,
    )


def audit_key_file(settings: Settings) -> Path:
    """The audit public key, kept outside storage: verifiers never trust a key stored
    next to the checkpoints it vouches for."""
    return Path(settings.var_dir) / "audit-key.pem"


async def audit_signer(settings: Settings, keys: KeyRegistry, hsm: Hsm) -> CheckpointSigner | None:
    key = await keys.audit_key()
    pem_file = audit_key_file(settings)
    if key is None or not pem_file.exists():
        return None
    return CheckpointSigner(hsm, uuid.UUID(str(key["id"])).bytes, KeyAlgorithm(key["algorithm"]),
                            pem_file.read_bytes())


async def close_services(services: Services) -> None:
    for adapter in services.filings.adapters.values():
        await adapter.close()
    await services.storage.close()
    if services.owns_hsm:
        await services.hsm.close()
