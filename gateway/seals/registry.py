"""Seal records: creation with an image, lookup within a client's grants, status changes."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import io
import secrets
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, UnidentifiedImageError

from gateway.audit import AuditLog
from gateway.auth import ApiClient
from gateway.clock import isoformat, utcnow
from gateway.clock import parse as parse_time
from gateway.errors import Conflict, NotFound, ValidationFailed
from gateway.identifiers import validate_uscc
from gateway.keys.registry import KEY, KeyRegistry
from gateway.seals.image import SEAL_TYPES, render_round_seal, seal_type_name
from gateway.seals.policy import effective_status, may_sign
from gateway.storage import EventSealer, Record, StaleWrite, Storage, Write

SEAL = "seal"
SEAL_KEY_CLAIM = "seal_key"
MAX_IMAGE_BYTES = 2 * 1024 * 1024
MAX_IMAGE_MM = 100.0
# 100 mm at 1,200 dpi is 4,724 pixels a side; a seal picture needs far fewer.
MAX_IMAGE_PIXELS = 5000 * 5000
DEFAULT_DPI = 300.0
DEFAULT_DIAMETER_MM = 40.0

JSONRecord = dict[str, Any]


def image_blob_key(seal_id: str) -> str:
    return f"seal-image/{seal_id}"


# Seals whose key may not change, and why: a lost or cancelled seal is only ever cancelled.
# (A filing's receipt files the certificate current at its decision, so a filing under
# review does not stop a rotation.)
_KEEPS_ITS_KEY = {
    "cancelled": "a cancelled seal keeps its last key",
    "lost": "a seal reported lost keeps its key; cancel it and make a new seal",
}


class SealRegistry:
    """Owns records of kind ``seal`` and their images (blobs)."""

    def __init__(self, storage: Storage, keys: KeyRegistry, audit: AuditLog) -> None:
        self._storage = storage
        self._keys = keys
        self._audit = audit

    async def create(self, body: Mapping[str, Any], actor: str) -> JSONRecord:
        name = _required_text(body, "name", 64)
        seal_type = str(body.get("type", ""))
        if seal_type not in SEAL_TYPES:
            raise ValidationFailed.one("type", f"must be one of {', '.join(SEAL_TYPES)}")
        org = body.get("organization")
        if not isinstance(org, Mapping):
            raise ValidationFailed.one("organization", "must be an object with name and uscc")
        org_name = _required_text(org, "name", 100, prefix="organization.")
        uscc = validate_uscc(str(org.get("uscc", "")), field="organization.uscc")
        key = await self._keys.get(_required_text(body, "key_id", 64))
        await self._check_key_is_free(str(key["id"]))
        seal_id = str(uuid.uuid4())
        seal_code = _seal_code()
        # Only absent or null means "draw the standard image": an empty or non-string value
        # is a picture the filer meant to send and did not.
        if body.get("image_png") is not None:
            png, size_mm = _checked_png(body["image_png"])
        else:
            png = _rendered(org_name, seal_type_name(seal_type), seal_code)
            size_mm = (DEFAULT_DIAMETER_MM, DEFAULT_DIAMETER_MM)
        await self._storage.put_blob(image_blob_key(seal_id), png)
        data: JSONRecord = {
            "id": seal_id,
            "name": name,
            "type": seal_type,
            "seal_code": seal_code,
            "organization": {"name": org_name, "uscc": uscc},
            "key_id": key["id"],
            "status": "draft",
            "valid_from": None,
            "valid_to": None,
            "receipt_number": None,
            "image_sha256": hashlib.sha256(png).hexdigest(),
            "image_size_mm": {"width": size_mm[0], "height": size_mm[1]},
            "created_at": isoformat(utcnow()),
        }
        try:
            await self._audit.commit(
                [Write(SEAL, seal_id, 0, data), _key_claim(str(key["id"]), seal_id)],
                [
                    self._audit.event_sealer(
                        actor,
                        "seal.created",
                        f"seal/{seal_id}",
                        {"name": name, "type": seal_type, "key_id": key["id"]},
                    )
                ],
            )
        except StaleWrite:
            raise Conflict("the key was taken by another seal meanwhile") from None
        return data

    async def record(self, seal_id: str) -> Record:
        record = await self._storage.get(SEAL, seal_id)
        if record is None:
            raise NotFound(f"no seal with id {seal_id}")
        return record

    async def get_for(self, client: ApiClient, seal_id: str) -> JSONRecord:
        """The seal, or 404 when it does not exist *or* the client holds no grant for it:
        a client must not learn that a seal it may not use exists."""
        if not client.may_use_seal(seal_id):
            raise NotFound(f"no seal with id {seal_id}")
        return (await self.record(seal_id)).data

    async def list_for(self, client: ApiClient) -> list[JSONRecord]:
        return [r.data for r in await self._storage.list(SEAL) if client.may_use_seal(r.key)]

    async def image(self, seal_id: str) -> bytes:
        png = await self._storage.get_blob(image_blob_key(seal_id))
        if png is None:
            raise NotFound(f"seal {seal_id} has no image")
        return png

    async def signing_material(
        self, client: ApiClient, seal_id: str, now: dt.datetime
    ) -> tuple[JSONRecord, JSONRecord]:
        """The seal and its key record after the grant check and ``may_sign``."""
        seal = await self.get_for(client, seal_id)
        key = await self._storage.get(KEY, str(seal["key_id"]))
        if key is None:
            raise NotFound(f"the key of seal {seal_id} no longer exists")
        may_sign(seal, key.data, now)
        return seal, key.data

    async def rotate_key(self, seal_id: str, key_id: object, actor: str) -> JSONRecord:
        """Switch the seal to another key whose certificate is valid now, in one write.

        A request that read the seal before the switch finishes with the old key, which stays
        enabled; every later request signs with the new one, so there is no moment without a
        usable key. The old key and its certificate go into ``key_history`` for verifiers.
        The seal's receipt files the old certificate: from now on it is no longer current
        (filing/receipts.py) until a change filing files the new one.
        """
        record = await self.record(seal_id)
        seal = record.data
        if seal["status"] in _KEEPS_ITS_KEY:
            raise Conflict(_KEEPS_ITS_KEY[seal["status"]])
        new_id = _required_text({"key_id": key_id}, "key_id", 64)
        if new_id == seal["key_id"]:
            raise ValidationFailed.one("key_id", "is the seal's current key already")
        try:
            key = await self._keys.get(new_id)
        except NotFound:
            raise ValidationFailed.one("key_id", "names no key") from None
        now = utcnow()
        certificate = key.get("certificate") or {}
        not_before = parse_time(certificate.get("not_before"))
        not_after = parse_time(certificate.get("not_after"))
        if key["status"] != "enabled":
            raise ValidationFailed.one("key_id", f"the key is {key['status']}")
        if not_before is None or not_after is None or not not_before <= now < not_after:
            raise ValidationFailed.one("key_id", "the key has no certificate valid now")
        await self._check_key_is_free(new_id)
        old_key = await self._keys.get(str(seal["key_id"]))
        retired = {"key_id": old_key["id"],
                   "certificate_sha256": (old_key.get("certificate") or {}).get("sha256"),
                   "replaced_at": isoformat(now)}
        data = {**seal, "key_id": new_id,
                "key_history": [*(seal.get("key_history") or []), retired]}
        try:
            await self._audit.commit(
                [Write(SEAL, record.key, record.version, data), _key_claim(new_id, seal_id)],
                [self._audit.event_sealer(
                    actor, "seal.key_rotated", f"seal/{seal_id}",
                    {"from_key": old_key["id"], "to_key": new_id,
                     "certificate_sha256": certificate.get("sha256")},
                )])
        except StaleWrite:
            raise Conflict("the seal or the key changed meanwhile; read the seal again") from None
        return data

    async def _check_key_is_free(self, key_id: str) -> None:
        """One key per seal (DOMAIN.md §1): a key that signs or signed for another seal, or for
        the platform itself, would make signatures of two identities indistinguishable.

        The claim record written with the seal makes this atomic; the scan also covers seals
        stored before claims were written.
        """
        if key_id in await self._keys.platform_key_ids():
            raise Conflict("the platform's own keys sign no seal")
        claim = await self._storage.get(SEAL_KEY_CLAIM, key_id)
        if claim is not None:
            raise Conflict(f"the key is or was the key of seal {claim.data['seal_id']}")
        for other in await self._storage.list(SEAL, limit=1_000_000):
            history = other.data.get("key_history") or []
            if key_id in {other.data["key_id"], *(h["key_id"] for h in history)}:
                raise Conflict(f"the key is or was the key of seal {other.key}")

    def status_write(self, record: Record, changes: Mapping[str, Any]) -> Write:
        """A write that applies ``changes`` to a seal, for the caller's own atomic commit."""
        return Write(SEAL, record.key, record.version, {**record.data, **changes})

    async def update(
        self, record: Record, changes: Mapping[str, Any], events: Sequence[EventSealer] = ()
    ) -> JSONRecord:
        data = {**record.data, **changes}
        await self._audit.commit([Write(SEAL, record.key, record.version, data)], events)
        return data


def _key_claim(key_id: str, seal_id: str) -> Write:
    """The record that a key belongs to a seal, for good: created once (version 0), so two
    seals committing the same key at once cannot both succeed."""
    return Write(SEAL_KEY_CLAIM, key_id, 0, {"seal_id": seal_id})


def public_view(seal: Mapping[str, Any], now: dt.datetime) -> JSONRecord:
    """The seal as the API shows it, with ``expired`` derived from time."""
    return {**seal, "status": effective_status(seal, now)}


def _rendered(organization: str, type_name: str, seal_code: str) -> bytes:
    """The standard round seal image; a name it cannot show (a character the font lacks, more
    than the ring holds) is the filer's to change, or to send its own image_png for."""
    try:
        return render_round_seal(organization, type_name, seal_code,
                                 diameter_mm=DEFAULT_DIAMETER_MM)
    except ValueError as exc:
        raise ValidationFailed.one(
            "organization.name", f"cannot be drawn on the standard seal image ({exc}); "
                                 "send image_png") from None


def _required_text(body: Mapping[str, Any], field: str, max_len: int, prefix: str = "") -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed.one(prefix + field, "is required")
    if len(value) > max_len:
        raise ValidationFailed.one(prefix + field, f"must be at most {max_len} characters")
    return value.strip()


def _checked_png(b64: object) -> tuple[bytes, tuple[float, float]]:
    if not isinstance(b64, str):
        raise ValidationFailed.one("image_png", "must be a PNG image as a base64 string")
    try:
        png = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationFailed.one("image_png", "is not valid base64") from None
    if len(png) > MAX_IMAGE_BYTES:
        raise ValidationFailed.one("image_png", f"must be at most {MAX_IMAGE_BYTES} bytes")
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValidationFailed.one("image_png", "is not a PNG image")
    try:
        with Image.open(io.BytesIO(png)) as img:
            # From the header, before any pixel is decoded: a few kilobytes of PNG can
            # declare a billion pixels.
            width_px, height_px = img.size
            if width_px * height_px > MAX_IMAGE_PIXELS:
                raise ValidationFailed.one(
                    "image_png", f"must have at most {MAX_IMAGE_PIXELS} pixels")
            img.verify()
        with Image.open(io.BytesIO(png)) as img:
            dpi = img.info.get("dpi", (DEFAULT_DPI, DEFAULT_DPI))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
            ValueError):
        raise ValidationFailed.one("image_png", "is a damaged PNG image") from None
    # A PNG may declare 0 pixels per metre (unknown): the default resolution then.
    dpi_x, dpi_y = (float(d) if float(d) > 0 else DEFAULT_DPI for d in dpi[:2])
    size = (round(width_px / dpi_x * 25.4, 1), round(height_px / dpi_y * 25.4, 1))
    if max(size) > MAX_IMAGE_MM:
        raise ValidationFailed.one(
            "image_png", f"must be at most {MAX_IMAGE_MM:g} mm wide and high"
        )
    return png, size


def _seal_code() -> str:
    """A 13-digit seal code; real codes come from the authority, this one identifies drafts."""
    return "".join(secrets.choice("0123456789") for _ in range(13))
