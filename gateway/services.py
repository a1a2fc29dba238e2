"""The gateway's service objects, built once per process from settings and plugins.

Both the HTTP app and the CLI use this wiring, so that a command and a request go through the
same registries, the same audit log and the same HSM layer.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from gateway import plugins
from gateway.audit import AuditLog, CheckpointSigner
from gateway.auth import ClientRegistry
from gateway.filing.receipt_service import ReceiptService
from gateway.filing.service import FilingService
from gateway.hsm import Hsm, KeyAlgorithm
from gateway.keys.platform import PlatformSigner, load_trust_roots
from gateway.keys.registry import KeyRegistry
from gateway.privacy import PersonalDataVault
from gateway.seals.registry import SealRegistry
from gateway.seals.sealing import SealingService
from gateway.settings import Settings
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
    filings: FilingService
    receipts: ReceiptService
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
    roots_pem = _read_trust_roots(settings)
    platform = PlatformSigner(keys, hsm, load_trust_roots(settings.pki.trust_roots))
    filings = FilingService(
        settings.filing, storage, seals, audit, PersonalDataVault(storage, hsm), platform,
        plugins.filing_adapters(pm, settings),
    )
    return Services(
        settings=settings, storage=storage, hsm=hsm, audit=audit,
        clients=ClientRegistry(storage, audit), keys=keys, seals=seals,
        sealing=SealingService(settings, storage, hsm, seals, audit),
        platform=platform, filings=filings,
        receipts=ReceiptService(storage, hsm, platform, roots_pem),
        owns_hsm=owns_hsm,
    )


def _read_trust_roots(settings: Settings) -> list[bytes]:
    return [Path(p).read_bytes() for p in settings.pki.trust_roots if Path(p).exists()]


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
