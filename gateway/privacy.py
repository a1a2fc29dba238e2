"""Personal data at rest: fields encrypted with a data key that only the HSM can unwrap.

Envelope encryption: one random AES-256 data key, stored only wrapped by the token's
non-extractable AES key (``sealgate-kek``) with AES-GCM, bound to the data key's id. Each
process unwraps it once, on first use, and then encrypts fields with AES-GCM locally, so
reading a filing costs no HSM round trip per field. Stealing the database yields
ciphertext; the data key needs the HSM and its PIN, and a data key record changed in storage
does not unwrap (WrappedDataInvalid, whatever was changed: no oracle on its bytes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import HsmError, WrappedDataInvalid
from gateway.hsm import Hsm
from gateway.storage import StaleWrite, Storage, Write

KIND = "data_key"
CURRENT = "current"
FORMAT = "v1"
WRAP = "aes-gcm"  # how a data key record's key is wrapped; records without it: AES-CBC-PAD
DATA_KEY_BYTES = 32


class PersonalDataVault:
    def __init__(self, storage: Storage, hsm: Hsm) -> None:
        self._storage = storage
        self._hsm = hsm
        self._keys: dict[str, AESGCM] = {}
        self._lock = asyncio.Lock()

    async def encrypt(self, plaintext: str, context: str) -> str:
        """Ciphertext bound to ``context`` (e.g. the filing id): it cannot be moved elsewhere."""
        return (await self.encrypt_bytes(plaintext.encode("utf-8"), context)).decode("ascii")

    async def decrypt(self, token: str, context: str) -> str:
        return (await self.decrypt_bytes(token.encode("ascii"), context)).decode("utf-8")

    async def encrypt_bytes(self, plaintext: bytes, context: str) -> bytes:
        """:meth:`encrypt` for bytes (a scanned document): the same format, as ASCII."""
        key_id, aead = await self._current()
        nonce = os.urandom(12)
        sealed = aead.encrypt(nonce, plaintext, context.encode("utf-8"))
        return ":".join((FORMAT, key_id, _b64(nonce), _b64(sealed))).encode("ascii")

    async def decrypt_bytes(self, token: bytes, context: str) -> bytes:
        try:
            version, key_id, nonce, sealed = token.decode("ascii").split(":")
            iv, ciphertext = base64.b64decode(nonce), base64.b64decode(sealed)
        except ValueError:
            # Bytes damaged in storage: as unreadable as a wrong tag, not a bug.
            raise WrappedDataInvalid(
                f"personal data of {context} is not in the personal-data format") from None
        if version != FORMAT:
            raise HsmError(f"unknown personal-data format {version}")
        aead = await self._key(key_id)
        try:
            return aead.decrypt(iv, ciphertext, context.encode("utf-8"))
        except InvalidTag:
            raise WrappedDataInvalid(
                f"personal data of {context} does not decrypt with data key {key_id}") from None

    async def _current(self) -> tuple[str, AESGCM]:
        record = await self._storage.get(KIND, CURRENT)
        if record is None:
            await self._create()
            record = await self._storage.get(KIND, CURRENT)
            assert record is not None
        key_id = str(record.data["key_id"])
        return key_id, await self._key(key_id)

    async def _key(self, key_id: str) -> AESGCM:
        async with self._lock:
            if key_id not in self._keys:
                record = await self._storage.get(KIND, key_id)
                if record is None:
                    raise WrappedDataInvalid(f"data key {key_id} is missing from storage")
                self._keys[key_id] = AESGCM(await self._unwrap(key_id, record.data))
            return self._keys[key_id]

    async def _unwrap(self, key_id: str, record: dict[str, Any]) -> bytes:
        wrapped = base64.b64decode(str(record["wrapped"]))
        if record.get("wrap") == WRAP:
            return await self._hsm.unwrap(wrapped, _context(key_id))
        key = await self._hsm.unwrap_cbc(wrapped)  # a data key made before AES-GCM wrapping
        if len(key) != DATA_KEY_BYTES:
            raise WrappedDataInvalid("the wrapped data does not unwrap with this token's key")
        return key

    async def _create(self) -> None:
        """The first data key. Never a replacement: data keys that exist without a current
        one mean storage lost a record, and a new key would hide that until the personal
        data encrypted before is needed and cannot be read."""
        if await self._storage.list(KIND, limit=1):
            if await self._storage.get(KIND, CURRENT) is not None:
                return  # another process made the first one meanwhile
            raise WrappedDataInvalid(
                f"storage holds data keys but no '{CURRENT}' record naming the one in use; "
                f"restore it (a partial restore, or another storage prefix?)")
        key_id = _b64(os.urandom(9)).replace("+", "-").replace("/", "_")
        wrapped = await self._hsm.wrap(AESGCM.generate_key(bit_length=256), _context(key_id))
        # Another process may create the first data key at the same moment: then use theirs.
        with contextlib.suppress(StaleWrite):
            await self._storage.commit([
                Write(KIND, key_id, 0, {"key_id": key_id, "wrapped": _b64(wrapped),
                                        "wrap": WRAP}),
                Write(KIND, CURRENT, 0, {"key_id": key_id}),
            ])


def _context(key_id: str) -> bytes:
    """What a data key's wrapping is bound to: it unwraps under its own id only."""
    return f"sealgate data key {key_id}".encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
