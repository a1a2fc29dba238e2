"""The platform's time-stamps: its own TSA key with serials from storage, or an outside TSA.

``POST /tsa`` and every signature level with a time-stamp go through :class:`TimestampService`.
The TSA key record (made by `sealgate init`) is read once per process; each token's serial
number comes from the storage backend's atomic counter, so serials grow across every worker
process and gateway instance sharing the backend; the token is signed in the HSM. When
``[signing] tsa_url`` names an outside TSA, signatures are time-stamped there instead, while
``POST /tsa`` keeps answering with the gateway's own key.
"""

from __future__ import annotations

import asyncio
import secrets
import urllib.error
import urllib.request
import uuid

from asn1crypto import cms

from gateway.clock import utcnow
from gateway.errors import ServiceUnavailable
from gateway.hsm import HASHES, Hsm, KeyAlgorithm
from gateway.kept import Kept
from gateway.keys.registry import KeyRegistry, certificate_chain
from gateway.settings import Settings
from gateway.signing.tsa import (
    TIMESTAMP_QUERY,
    TimeStampAuthority,
    TimeStampQuery,
    TsaRefusal,
    parse_query,
    query_bytes,
    read_response,
    refusal_response,
)
from gateway.storage import Storage

SERIAL_COUNTER = "tsa-serial"
# An outside TSA's tokens vary in size (certificates, nonce, time precision): placeholders are
# sized from a first token with this much to spare, as pyHanko does.
_OUTSIDE_MARGIN = 1.5
# Bytes read at most from an outside TSA's answer; real tokens are a few kilobytes.
_MAX_ANSWER_BYTES = 256 * 1024


def tsa_unavailable(detail: str) -> ServiceUnavailable:
    return ServiceUnavailable(detail, type_slug="tsa-unavailable")


class TimestampService:
    """Issues RFC 3161 tokens with the TSA key, and fetches them for signatures."""

    def __init__(self, settings: Settings, keys: KeyRegistry, hsm: Hsm, storage: Storage) -> None:
        self._settings = settings
        self._keys = keys
        self._hsm = hsm
        self._storage = storage
        # Made from the key's stored chain: a renewed TSA certificate is used from the next
        # token on.
        self._authority: Kept[str, TimeStampAuthority] = Kept()
        url = settings.signing.tsa_url
        self.outside = (
            OutsideTsa(url, settings.signing.tsa_timeout_seconds) if url else None
        )

    async def authority(self) -> TimeStampAuthority:
        """The gateway's own TSA; 503 until `sealgate init` has created its key."""
        record = await self._keys.tsa_key()
        if record is None:
            raise tsa_unavailable("the time-stamp authority is not set up; run `sealgate init`")
        key_id, chain_pem = str(record["id"]), record.get("certificate_chain_pem")
        found = self._authority.get(key_id, chain_pem)
        if found is None:
            chain = certificate_chain(record)
            if not chain:
                raise tsa_unavailable(
                    "the time-stamp authority is not set up; run `sealgate init`")
            found = self._authority.keep(key_id, chain_pem, TimeStampAuthority.create(
                self._hsm, uuid.UUID(key_id).bytes, KeyAlgorithm(record["algorithm"]),
                chain[0], chain[1:], self._settings.tsa.policy_oid,
                self._settings.tsa.accuracy_seconds,
            ))
        return found

    async def respond(self, query: bytes) -> bytes:
        """The DER ``TimeStampResp`` to a DER ``TimeStampReq``: a token, or a refusal."""
        authority = await self.authority()
        try:
            parsed = parse_query(query, authority.policy)
        except TsaRefusal as refusal:
            return refusal_response(refusal)
        # Refusals take no serial: numbers go only to tokens, in the order they are issued.
        serial = await self._storage.incr(SERIAL_COUNTER)
        return await authority.respond(parsed, serial, utcnow())

    async def issue(self, query: TimeStampQuery) -> cms.ContentInfo:
        """A token from the gateway's own TSA, in-process."""
        authority = await self.authority()
        serial = await self._storage.incr(SERIAL_COUNTER)
        return await authority.token(query, serial, utcnow())

    # -- TimeStamps (gateway.signing.ltv): what signatures with a time-stamp use ----------------

    async def timestamp(self, digest: bytes, hash_name: str) -> cms.ContentInfo:
        """A token over ``digest`` from the configured TSA (outside when ``tsa_url`` is set)."""
        if self.outside is not None:
            return await self.outside.timestamp(digest, hash_name)
        return await self.issue(TimeStampQuery.for_digest(digest, hash_name))

    async def max_token_size(self, hash_name: str) -> int:
        if self.outside is not None:
            return await self.outside.max_token_size(hash_name)
        return (await self.authority()).max_token_size(hash_name)



class OutsideTsa:
    """An RFC 3161 TSA reached over HTTP (RFC 3161 §3.4); every answer is checked.

    One small POST per signature: the standard library's client in a worker thread does it,
    which keeps HTTP client sessions (and aiohttp) out of the core.
    """

    def __init__(self, url: str, timeout_seconds: float) -> None:
        self.url = url
        self._timeout = timeout_seconds
        self._sizes: dict[str, int] = {}

    async def timestamp(self, digest: bytes, hash_name: str) -> cms.ContentInfo:
        query = TimeStampQuery.for_digest(digest, hash_name, nonce=secrets.randbits(63))
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(None, self._post, query_bytes(query))
        try:
            return read_response(answer, query)
        except TsaRefusal as refusal:
            raise tsa_unavailable(f"the time-stamp authority refused: {refusal.text}") from None
        except ValueError as exc:
            raise tsa_unavailable(f"the time-stamp authority's answer is unusable: {exc}") from exc

    def _post(self, query: bytes) -> bytes:
        request = urllib.request.Request(  # noqa: S310 (the operator's configured https/http URL)
            self.url, data=query, method="POST", headers={"Content-Type": TIMESTAMP_QUERY}
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                answer: bytes = response.read(_MAX_ANSWER_BYTES)
                return answer
        except urllib.error.HTTPError as exc:
            raise tsa_unavailable(f"the time-stamp authority answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise tsa_unavailable("the time-stamp authority cannot be reached") from exc

    async def max_token_size(self, hash_name: str) -> int:
        """Sized from one token over a zero digest, fetched once per process and algorithm."""
        if hash_name not in self._sizes:
            probe = await self.timestamp(bytes(HASHES[hash_name].size), hash_name)
            self._sizes[hash_name] = int(len(probe.dump()) * _OUTSIDE_MARGIN)
        return self._sizes[hash_name]
