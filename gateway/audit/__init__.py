"""The audit log: an append-only, hash-chained event log with HSM-signed checkpoints."""

from gateway.audit.chain import (
    AuditLog,
    VerifyResult,
    canonical_json,
    event_hash,
    export_jsonl,
    verify,
)
from gateway.audit.checkpoints import (
    CHECKPOINT_KIND,
    CheckpointSigner,
    checkpoint_payload,
    load_public_key,
)

__all__ = [
    "CHECKPOINT_KIND",
    "AuditLog",
    "CheckpointSigner",
    "VerifyResult",
    "canonical_json",
    "checkpoint_payload",
    "event_hash",
    "export_jsonl",
    "load_public_key",
    "verify",
]
