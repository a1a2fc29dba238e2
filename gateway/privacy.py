"""Personal data at rest: fields encrypted with a data key that only the HSM can unwrap.

Envelope encryption: one random AES-256 data key, stored only wrapped by the token's
non-extractable AES key (``sealgate-kek``). Each process unwraps it once, on first use, and
then encrypts fields with AES-GCM locally, so reading a filing costs no HSM round trip per
field. Stealing the database yields ciphertext; the data key needs the HSM and its PIN.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import HsmError
from gateway.hsm import Hsm
from gateway.storage import StaleWrite, Storage, Write

KIND = "data_key"
CURRENT = "current"
FORMAT = "v1"


class PersonalDataVault:
    def __init__(self, storage: Storage, hsm: Hsm) -> None:
        self._storage = storage
        self._hsm = hsm
        self._keys: dict[str, AESGCM] = {}
        self._lock = asyncio.Lock()

    async def encrypt(self, plaintext: str, context: str) -> str:
        """Ciphertext bound to ``context`` (e.g. the filing id): it cannot be moved elsewhere."""
        key_id, aead = await self._current()
        nonce = os.urandom(12)
        sealed = aead.encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
        return ":".join((FORMAT, key_id, _b64(nonce), _b64(sealed)))

    async def decrypt(self, token: str, context: str) -> str:
        version, key_id, nonce, sealed = token.split(":")
        if version != FORMAT:
            raise HsmError(f"unknown personal-data format {version}")
        aead = await self._key(key_id)
        plain = aead.decrypt(base64.b64decode(nonce), base64.b64decode(sealed),
                             context.encode("utf-8"))
        return plain.decode("utf-8")

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
                    raise HsmError(f"data key {key_id} is missing")
                wrapped = base64.b64decode(str(record.data["wrapped"]))
                self._keys[key_id] = AESGCM(await self._hsm.decrypt(wrapped))
            return self._keys[key_id]

    async def _create(self) -> None:
        key_id = _b64(os.urandom(9)).replace("+", "-").replace("/", "_")
        wrapped = await self._hsm.encrypt(AESGCM.generate_key(bit_length=256))
        # Another process may create the first data key at the same moment: then use theirs.
        with contextlib.suppress(StaleWrite):
            await self._storage.commit([
                Write(KIND, key_id, 0, {"key_id": key_id, "wrapped": _b64(wrapped)}),
                Write(KIND, CURRENT, 0, {"key_id": key_id}),
            ])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
