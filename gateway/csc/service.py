"""The CSC API v1 (1.0.4.0, the version pyHanko's ``CSCSigner`` speaks) over the gateway's seals.

A credential is a seal the API client holds a grant for that covers the ``csc`` format; its
``credentialID`` is the seal id. The bearer token already authenticates the client, so
credential authorization is "explicit" with neither PIN nor OTP, and every SAD is bound to
the hashes it may sign (SCAL 2): an organisation's seal signs only what was authorized for it.
Signing goes through the same path as every other format (grant, ``may_sign``, key usage
budget, one HSM hop for the batch, sealing receipt and audit event).

Every refusal is a :class:`CscRequestError` whose description follows the error tables of the
specification (§11), with the reason appended where it helps.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.auth import ApiClient
from gateway.clock import utcnow
from gateway.csc.sad import Activation, SadStore
from gateway.errors import (
    CscRequestError,
    Forbidden,
    NotFound,
    SealMaySignNot,
    ValidationFailed,
)
from gateway.hsm import HASHES, KeyAlgorithm
from gateway.keys.registry import KeyRegistry, certificate_chain, reserve_signatures
from gateway.seals.policy import may_sign
from gateway.seals.registry import SealRegistry
from gateway.seals.sealing import DigestSignatures, SealingService
from gateway.settings import Settings
from gateway.signing.digests import (
    check_key_signs,
    curve_oid,
    decode_base64,
    hash_for_signature,
    key_bits,
    offered_signature_algorithms,
)
from gateway.storage import StaleWrite, Storage

SPECS = "1.0.4.0"
METHODS = ("credentials/list", "credentials/info", "credentials/authorize",
           "signatures/signHash")
FORMAT = "csc"
SCAL = "2"
_DIGEST_SIZES = {h.size for h in HASHES.values()}
_CERTIFICATES = ("none", "single", "chain")
_GENERALIZED_TIME = "%Y%m%d%H%M%SZ"

JSON = dict[str, Any]


class CscService:
    """Answers the CSC methods for one authenticated API client at a time."""

    def __init__(
        self, settings: Settings, storage: Storage, seals: SealRegistry, keys: KeyRegistry,
        sealing: SealingService,
    ) -> None:
        self._seals = seals
        self._keys = keys
        self._sealing = sealing
        self._storage = storage
        self._multisign = settings.signing.max_hash_batch
        self.sads = SadStore(storage, settings.signing.csc_sad_ttl_seconds)

    def info(self) -> JSON:
        """``info``: the service and the methods it implements."""
        return {
            "specs": SPECS, "name": "SealGate", "logo": "", "region": "CN", "lang": "en-US",
            "description": "Electronic seals of organisations; every key stays in an HSM.",
            # The bearer token is an API client token issued out of band (sealgate clients).
            "authType": ["external"], "methods": list(METHODS),
        }

    async def list_credentials(self, client: ApiClient, body: Mapping[str, Any]) -> JSON:
        """``credentials/list``: the seals this client may sign with over CSC, paged."""
        if body.get("userID") is not None:
            raise CscRequestError("Invalid parameter userID: the bearer token names the user")
        max_results = _optional_int(body, "maxResults", minimum=1)
        offset = 0
        token = body.get("pageToken")
        if token is not None:
            # isdigit() alone takes superscripts and other scripts' digits, which int() refuses
            # or reads as another page.
            if not isinstance(token, str) or not (token.isascii() and token.isdigit()):
                raise CscRequestError("Invalid parameter pageToken")
            offset = int(token)
        ids = [s["id"] for s in await self._seals.list_for(client)
               if client.may_sign_format(s["id"], FORMAT)]
        end = len(ids) if max_results is None else offset + max_results
        answer: JSON = {"credentialIDs": ids[offset:end]}
        if end < len(ids):
            answer["nextPageToken"] = str(end)
        return answer

    async def credential_info(self, client: ApiClient, body: Mapping[str, Any]) -> JSON:
        """``credentials/info``: the key, its certificates and how to authorize it."""
        credential_id = _string(body, "credentialID")
        certificates = body.get("certificates", "single")
        if certificates not in _CERTIFICATES:
            raise CscRequestError("Invalid parameter certificates: one of none, single, chain")
        cert_info = _optional_bool(body, "certInfo")
        auth_info = _optional_bool(body, "authInfo")
        seal, key = await self._credential(client, credential_id)
        algorithm = KeyAlgorithm(key["algorithm"])
        try:
            may_sign(seal, key, utcnow())
            status = "enabled"
        except SealMaySignNot:
            status = "disabled"
        key_part: JSON = {"status": status, "algo": offered_signature_algorithms(algorithm),
                          "len": key_bits(algorithm)}
        if curve := curve_oid(algorithm):
            key_part["curve"] = curve
        chain = certificate_chain(dict(key))
        answer: JSON = {
            "description": f"{seal['name']} — {seal['organization']['name']}",
            "key": key_part,
            "cert": _certificate_part(chain, str(certificates), cert_info),
            "authMode": "explicit",
            "SCAL": SCAL,
            "multisign": self._multisign,
            "lang": "en-US",
        }
        if auth_info:
            answer["PIN"] = {"presence": "false"}
            answer["OTP"] = {"presence": "false"}
        return answer

    async def authorize(self, client: ApiClient, body: Mapping[str, Any]) -> JSON:
        """``credentials/authorize``: a SAD for ``numSignatures`` signatures of these hashes."""
        credential_id = _string(body, "credentialID")
        count = body.get("numSignatures")
        if not isinstance(count, int) or isinstance(count, bool):
            raise CscRequestError("Missing (or invalid type) integer parameter numSignatures")
        if count < 1:
            raise CscRequestError("Invalid value for parameter numSignatures")
        if count > self._multisign:
            raise CscRequestError(f"Numbers of signatures is too high: at most "
                                  f"{self._multisign} per authorization")
        hashes = [_digest(value) for value in _hash_array(body, self._multisign)]
        if len(hashes) != count:
            raise CscRequestError("Invalid value for parameter numSignatures: a SCAL 2 SAD "
                                  "authorizes exactly one signature per hash given")
        try:
            # Grant (csc format included) and "may this seal sign now?"; nothing reserved yet.
            ctx = await self._sealing.context(client, credential_id, FORMAT, 0)
        except (NotFound, Forbidden):
            raise CscRequestError("Invalid parameter credentialID") from None
        except SealMaySignNot as exc:
            raise CscRequestError(
                f"The credential identified by credentialID is disabled: {exc.detail}") from None
        sad = await self.sads.issue(credential_id, client.id, ctx.key, count, hashes)
        return {"SAD": sad, "expiresIn": self.sads.ttl_seconds}

    async def sign_hash(self, client: ApiClient, body: Mapping[str, Any]) -> tuple[JSON, str]:
        """``signatures/signHash``: the signatures, in order, and the sealing receipt's id."""
        credential_id = _string(body, "credentialID")
        sad = _string(body, "SAD")
        values = _hash_array(body, self._multisign)
        sign_oid = _string(body, "signAlgo")
        hash_oid = body.get("hashAlgo")
        if hash_oid is not None and not isinstance(hash_oid, str):
            raise CscRequestError("Missing (or invalid type) string parameter hashAlgo")
        if body.get("signAlgoParams") is not None:
            # Only PSS takes parameters, and it is not offered (see signing/digests.py).
            raise CscRequestError("Invalid parameter signAlgoParams: the offered signature "
                                  "algorithms take no parameters")
        try:
            hash_name = hash_for_signature(sign_oid, hash_oid)
        except ValidationFailed as exc:
            raise _invalid(exc) from None
        digests = [_digest(value, HASHES[hash_name].size) for value in values]

        async def run() -> DigestSignatures:
            # The credential first: a SAD is only valid or not for a credential that exists.
            await self._credential(client, credential_id)
            activation = await self.sads.find(sad)
            if activation.credential_id != credential_id or activation.client_id != client.id:
                raise CscRequestError("Invalid parameter SAD")
            if not all(activation.allows(d) for d in digests):
                raise CscRequestError("Hash is not authorized by the SAD")
            # Everything that can refuse is checked before the SAD is spent (a refused
            # request must not need a new authorization: for SCAL 2, the user again); the
            # key's usage budget comes after it, so that replaying a spent SAD never uses
            # up the key's budget.
            ctx = await self._sealing.context(client, credential_id, FORMAT, 0)
            _check_signs_with(activation, ctx.key)
            check_key_signs(ctx.seal_key.algorithm, sign_oid)
            spending = await self.sads.spend(activation, len(digests))
            try:
                await reserve_signatures(self._storage, ctx.key, len(digests))
                signed = await self._sealing.digest_signatures(ctx, hash_name, digests)
            except BaseException:
                # Nothing was signed for the client (usage budget, HSM or storage away, or
                # the request cancelled): the authorization can be used again.
                await self.sads.give_back(spending)
                raise
            try:
                return await self._sealing.record_digests(
                    client, ctx, FORMAT, hash_name, digests, signed)
            except StaleWrite:
                # Nothing of the commit was applied (another attempt under the request's
                # idempotency key committed first, and its answer is the one given). A commit
                # that failed otherwise may have been applied: its signatures stay spent.
                await self.sads.give_back(spending)
                raise

        try:
            result = await self._sealing.measured(FORMAT, run, DigestSignatures.from_outcome)
        except (NotFound, Forbidden):
            raise CscRequestError("Invalid parameter credentialID") from None
        except SealMaySignNot as exc:
            raise CscRequestError(
                f"The credential identified by credentialID is disabled: {exc.detail}") from None
        except ValidationFailed as exc:
            raise _invalid(exc) from None
        signatures = [base64.b64encode(s).decode("ascii") for s in result.signatures]
        return {"signatures": signatures}, result.receipt_id

    async def _credential(
        self, client: ApiClient, credential_id: str
    ) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        """The seal and its key record, when the client's grant covers CSC for it."""
        try:
            if not client.may_sign_format(credential_id, FORMAT):
                raise NotFound(credential_id)
            seal = await self._seals.get_for(client, credential_id)
            key = await self._keys.get(str(seal["key_id"]))
        except NotFound:
            raise CscRequestError("Invalid parameter credentialID") from None
        return seal, key


def _check_signs_with(activation: Activation, key: Mapping[str, Any]) -> None:
    """Refuse a SAD issued for another key or certificate than the seal's ``key`` now."""
    if not activation.signs_with(key):
        raise CscRequestError("Invalid parameter SAD: the credential's key or certificate "
                              "has changed since it was authorized; authorize again")


def _certificate_part(
    chain: list[x509.Certificate], certificates: str, cert_info: bool
) -> JSON:
    """The ``cert`` object; ``certificates`` is none, single (the leaf) or chain."""
    part: JSON = {"status": "valid"}
    if certificates != "none":
        chosen = chain if certificates == "chain" else chain[:1]
        part["certificates"] = [
            base64.b64encode(c.public_bytes(Encoding.DER)).decode("ascii") for c in chosen]
    if not chain:
        return part
    leaf = chain[0]
    if utcnow() >= leaf.not_valid_after_utc:
        part["status"] = "expired"
    if cert_info:
        part.update({
            "issuerDN": leaf.issuer.rfc4514_string(),
            "serialNumber": format(leaf.serial_number, "x"),
            "subjectDN": leaf.subject.rfc4514_string(),
            "validFrom": leaf.not_valid_before_utc.strftime(_GENERALIZED_TIME),
            "validTo": leaf.not_valid_after_utc.strftime(_GENERALIZED_TIME),
        })
    return part


def _string(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise CscRequestError(f"Missing (or invalid type) string parameter {name}")
    return value


def _optional_bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise CscRequestError(f"Invalid parameter {name}: must be true or false")
    return value


def _optional_int(body: Mapping[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise CscRequestError(f"Invalid parameter {name}")
    return value


def _hash_array(body: Mapping[str, Any], max_count: int) -> list[Any]:
    values = body.get("hash")
    if not isinstance(values, list):
        raise CscRequestError("Missing (or invalid type) array parameter hash")
    if not values:
        raise CscRequestError("Empty hash array")
    if len(values) > max_count:
        raise CscRequestError(f"Invalid parameter hash: at most {max_count} hashes per request")
    return values


def _digest(value: object, size: int | None = None) -> bytes:
    """One base64 digest: of ``size`` bytes, or of any SHA-2 size when the algorithm is not
    known yet (at authorization)."""
    try:
        digest = decode_base64(value)
    except ValueError:
        raise CscRequestError("Invalid Base64 hash string parameter") from None
    sizes = _DIGEST_SIZES if size is None else {size}
    if len(digest) not in sizes:
        raise CscRequestError("Invalid digest value length")
    return digest


def _invalid(exc: ValidationFailed) -> CscRequestError:
    first = exc.errors[0]
    return CscRequestError(f"Invalid parameter {first.field}: {first.message}")
