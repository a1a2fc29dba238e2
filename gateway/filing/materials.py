"""Filing materials (business licence, the legal representative's ID card, the seal
impression, an authorization letter): what may be uploaded, and how the bytes are kept.

A material is stored encrypted with the personal-data key (an ID card scan carries the ID
number, a photo and an address), bound to its filing and digest, under its digest: an
upload that loses the race to commit cannot overwrite the bytes the filing's record names.
Materials uploaded by an earlier release were stored as they came, under their kind; they
are read from there until the start-up migration has encrypted them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from gateway.clock import isoformat, utcnow
from gateway.errors import MaterialUnreadable, UnsupportedMediaType, WrappedDataInvalid
from gateway.privacy import PersonalDataVault
from gateway.storage import Storage

MATERIAL_KINDS = ("business_license", "legal_rep_id", "seal_impression", "authorization_letter")
MAX_MATERIAL_BYTES = 10 * 1024 * 1024
# What the authority learns of each material besides its bytes (not how it is stored here).
MATERIAL_FIELDS_SENT = ("content_type", "size", "sha256", "uploaded_at")
# Records that one-off upgrades of stored data are done (FilingService.encrypt_stored_materials).
MIGRATION = "migration"
MATERIALS_ENCRYPTED = "materials-encrypted"
_SNIFF = (
    (b"%PDF-", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
)


def material_blob_key(filing_id: str, sha256: str) -> str:
    """Where a material's bytes are kept: under their digest."""
    return f"filing-material/{filing_id}/sha256/{sha256}"


def legacy_material_blob_key(filing_id: str, kind: str) -> str:
    """Where materials uploaded before they were kept by digest are."""
    return f"filing-material/{filing_id}/{kind}"


def sniff_material(body: bytes) -> str:
    """The content type from the bytes themselves; a client's Content-Type is not trusted."""
    for magic, content_type in _SNIFF:
        if body.startswith(magic):
            return content_type
    raise UnsupportedMediaType("materials must be PDF, PNG or JPEG documents")


def _context(filing_id: str, sha256: str) -> str:
    """What a material's encryption is bound to: its filing and its content."""
    return f"{filing_id}/material/{sha256}"


class MaterialStore:
    """The bytes of filing materials in storage; the filing records say which exist."""

    def __init__(self, storage: Storage, vault: PersonalDataVault) -> None:
        self._storage = storage
        self._vault = vault

    async def put(self, filing_id: str, body: bytes, content_type: str) -> dict[str, Any]:
        """Store ``body`` encrypted; the record of it, for the filing's ``materials``."""
        sha256 = hashlib.sha256(body).hexdigest()
        return await self._put_encrypted(filing_id, body, {
            "content_type": content_type,
            "size": len(body),
            "sha256": sha256,
            "uploaded_at": isoformat(utcnow()),
        })

    async def read(self, filing_id: str, kind: str, meta: Mapping[str, Any]) -> bytes:
        """A material's bytes, from where its record says they are: encrypted under their
        digest, or (uploaded before materials were encrypted) as they came, under their
        kind. Checked against the digest filed: an authority refuses a mismatch for good."""
        if meta.get("encrypted"):
            sealed = await self._storage.get_blob(material_blob_key(filing_id, meta["sha256"]))
            try:
                content = None if sealed is None else await self._vault.decrypt_bytes(
                    sealed, _context(filing_id, meta["sha256"]))
            except WrappedDataInvalid:
                content = None  # damaged in storage: as good as gone
        else:
            content = await self._storage.get_blob(legacy_material_blob_key(filing_id, kind))
        if content is None or hashlib.sha256(content).hexdigest() != meta["sha256"]:
            raise MaterialUnreadable(f"material {kind} of filing {filing_id} is missing from "
                                     "storage, damaged, or does not match its digest")
        return content

    async def encrypt_plain(self, filing_id: str, kind: str,
                            meta: Mapping[str, Any]) -> dict[str, Any]:
        """Store encrypted a material an earlier release stored plain; its new record (the
        plain copy stays until :meth:`blank_plain_copy`). MaterialUnreadable when the plain
        bytes are gone or damaged."""
        return await self._put_encrypted(filing_id, await self.read(filing_id, kind, meta), meta)

    async def blank_plain_copy(self, filing_id: str, kind: str) -> bool:
        """Blank the plain copy of a material stored encrypted too; whether there was one.
        (Storage has no blob deletion: an empty blob is what is left.)"""
        legacy = legacy_material_blob_key(filing_id, kind)
        if not await self._storage.get_blob(legacy):
            return False
        await self._storage.put_blob(legacy, b"")
        return True

    async def _put_encrypted(self, filing_id: str, body: bytes,
                             meta: Mapping[str, Any]) -> dict[str, Any]:
        sealed = await self._vault.encrypt_bytes(body, _context(filing_id, meta["sha256"]))
        await self._storage.put_blob(material_blob_key(filing_id, meta["sha256"]), sealed)
        return {**meta, "encrypted": True}
