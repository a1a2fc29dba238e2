"""Compact JWS with detached payload (RFC 7515 App. F), signed in the HSM, and its verification.

This is how the platform signs receipts (API.md, ``GET /v1/receipts/{number}``): the payload
is the receipt's canonical JSON, the JWS travels as ``header..signature`` next to it, and the
protected header is exactly ``{"alg","kid","x5c"}`` in RFC 8785 form, so that two signings
of the same receipt with the same key have byte-identical headers.

The payload is base64url-encoded into the signing input as in any JWS (RFC 7797's
``"b64": false`` is not used), so every JOSE library verifies it once the payload is put
back between the dots.

Verification takes the key from a certificate the caller trusts or, failing that, from the
``x5c`` leaf; deciding whether that leaf chains to a trusted root is the caller's job, since
trust anchors are configuration and this module knows none.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from gateway.hsm import Hsm, KeyAlgorithm, SignatureScheme
from gateway.signing.jcs import canonicalize


class JwsInvalid(Exception):
    """A JWS that is malformed, uses an algorithm not accepted here, or does not verify.

    ``reason`` is a stable slug for callers that report checks (``malformed``,
    ``not-detached``, ``unsupported-algorithm``, ``key-mismatch``, ``bad-certificate``,
    ``bad-signature``); the message says what exactly was wrong.
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class JwsAlgorithm(enum.StrEnum):
    """The JWA ``alg`` values the gateway signs and accepts (RFC 7518 §3.1)."""

    RS256 = "RS256"
    PS256 = "PS256"
    ES256 = "ES256"
    ES384 = "ES384"

    @property
    def hash_name(self) -> str:
        return "sha384" if self is JwsAlgorithm.ES384 else "sha256"

    @property
    def scheme(self) -> SignatureScheme:
        return {
            "RS": SignatureScheme.PKCS1V15,
            "PS": SignatureScheme.PSS,
            "ES": SignatureScheme.ECDSA,
        }[self.value[:2]]

    @property
    def curve(self) -> ec.EllipticCurve | None:
        """The one curve an ES* algorithm is defined for (RFC 7518 §3.4); None for RSA."""
        return {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1()}.get(self.value)

    def fits(self, algorithm: KeyAlgorithm) -> bool:
        """Whether an HSM key of ``algorithm`` can make this JWS signature."""
        if self.scheme is SignatureScheme.ECDSA:
            return algorithm is (
                KeyAlgorithm.EC_P256 if self is JwsAlgorithm.ES256 else KeyAlgorithm.EC_P384
            )
        return algorithm.is_rsa

    @classmethod
    def default_for(cls, algorithm: KeyAlgorithm) -> JwsAlgorithm:
        """RS256 for RSA keys (the most widely verified), the matching ES* for EC keys."""
        if algorithm is KeyAlgorithm.EC_P256:
            return cls.ES256
        if algorithm is KeyAlgorithm.EC_P384:
            return cls.ES384
        return cls.RS256


_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
}
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
# RFC 7518 §3.3 and §3.5: RSA keys for RS*/PS* must be at least 2048 bits.
_MIN_RSA_BITS = 2048


class DigestSigner(Protocol):
    """Signs a pre-computed digest with one key; :class:`HsmDigestSigner` is the real one.

    The signature comes back in its X.509/CMS encoding (ECDSA as a DER SEQUENCE), as
    :meth:`gateway.hsm.Hsm.sign_digest` returns it; the JWS form is made here.
    """

    @property
    def key_algorithm(self) -> KeyAlgorithm: ...

    async def sign_digest(
        self, digest: bytes, hash_name: str, scheme: SignatureScheme
    ) -> bytes: ...


@dataclass(frozen=True)
class HsmDigestSigner:
    """One HSM key as a :class:`DigestSigner`."""

    hsm: Hsm
    key_id: bytes
    algorithm: KeyAlgorithm

    @property
    def key_algorithm(self) -> KeyAlgorithm:
        return self.algorithm

    async def sign_digest(self, digest: bytes, hash_name: str, scheme: SignatureScheme) -> bytes:
        return await self.hsm.sign_digest(self.key_id, self.algorithm, digest, hash_name, scheme)


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, what: str) -> bytes:
    """Strict base64url: only the URL-safe alphabet, no padding, no stray bits."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise JwsInvalid(f"the {what} is not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    # Re-encoding rejects a second spelling of the same bytes (non-zero trailing bits).
    if b64url_encode(data) != text:
        raise JwsInvalid(f"the {what} is not canonical base64url")
    return data


def protected_header(alg: JwsAlgorithm | str, kid: str, x5c: list[bytes]) -> bytes:
    """The canonical protected header: ``{"alg","kid","x5c"}``, x5c in standard base64."""
    if not kid:
        raise ValueError("kid must be a non-empty string")
    if not x5c:
        raise ValueError("x5c needs at least the signing certificate")
    # RFC 7515 §4.1.6: x5c entries are base64 (with padding), not base64url.
    chain = [base64.b64encode(der).decode("ascii") for der in x5c]
    return canonicalize({"alg": str(JwsAlgorithm(alg)), "kid": kid, "x5c": chain})


async def sign_detached(
    payload: bytes,
    signer: DigestSigner,
    *,
    alg: JwsAlgorithm | str,
    kid: str,
    x5c: list[bytes],
) -> str:
    """Sign ``payload``; return ``BASE64URL(header)..BASE64URL(signature)``.

    ``x5c`` is the DER chain, signing certificate first. Raises ValueError when ``alg``
    cannot be made with the signer's key (e.g. ES256 with an RSA key).
    """
    alg = JwsAlgorithm(alg)
    if not alg.fits(signer.key_algorithm):
        raise ValueError(f"{alg} cannot be made with an {signer.key_algorithm} key")
    header = b64url_encode(protected_header(alg, kid, x5c))
    signing_input = f"{header}.{b64url_encode(payload)}".encode("ascii")
    digest = hashlib.new(alg.hash_name, signing_input).digest()
    signature = await signer.sign_digest(digest, alg.hash_name, alg.scheme)
    if alg.scheme is SignatureScheme.ECDSA:
        signature = _ecdsa_der_to_raw(signature, alg)
    return f"{header}..{b64url_encode(signature)}"


def verify_detached(
    jws: str, payload: bytes, certificate: x509.Certificate | None = None
) -> dict[str, Any]:
    """Verify a detached compact JWS over ``payload``; return its protected header.

    The key is ``certificate``'s when given, else the ``x5c`` leaf's (whose chain the caller
    checks). Raises :class:`JwsInvalid` for anything else than a valid signature.
    """
    if not isinstance(jws, str):
        raise JwsInvalid("a compact JWS is a string")
    parts = jws.split(".")
    if len(parts) != 3:
        raise JwsInvalid(f"a compact JWS has 3 dot-separated parts, not {len(parts)}")
    encoded_header, encoded_payload, encoded_signature = parts
    if encoded_payload:
        raise JwsInvalid("the payload is not detached (RFC 7515 App. F)", "not-detached")
    header = _parse_header(b64url_decode(encoded_header, "protected header"))
    alg = JwsAlgorithm(header["alg"])
    if certificate is None:
        certificate = _x5c_leaf(header)
    public_key = certificate.public_key()
    _check_key(alg, public_key)
    signature = b64url_decode(encoded_signature, "signature")
    signing_input = f"{encoded_header}.{b64url_encode(payload)}".encode("ascii")
    chosen = _HASHES[alg.hash_name]()
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            size = _coordinate_size(alg)
            if len(signature) != 2 * size:
                raise JwsInvalid(
                    f"an {alg} signature has {2 * size} bytes, not {len(signature)}",
                    "bad-signature",
                )
            der = encode_dss_signature(
                int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            )
            public_key.verify(der, signing_input, ec.ECDSA(chosen))
        else:
            assert isinstance(public_key, rsa.RSAPublicKey)  # _check_key made sure
            pad: padding.AsymmetricPadding = (
                padding.PSS(padding.MGF1(chosen), chosen.digest_size)
                if alg.scheme is SignatureScheme.PSS
                else padding.PKCS1v15()
            )
            public_key.verify(signature, signing_input, pad, chosen)
    except InvalidSignature:
        raise JwsInvalid(
            "the signature does not verify over this payload with this key", "bad-signature"
        ) from None
    return header


def _parse_header(raw: bytes) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise JwsInvalid("the protected header repeats a member")
        return dict(pairs)

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise JwsInvalid("the protected header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise JwsInvalid("the protected header is not a JSON object")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in {a.value for a in JwsAlgorithm}:
        allowed = ", ".join(JwsAlgorithm)
        raise JwsInvalid(
            f"alg {alg!r} is not accepted; accepted: {allowed}", "unsupported-algorithm"
        )
    # RFC 7515 §4.1.11: extensions listed in crit must be understood, and none are here
    # (notably b64=false, which would change what was signed).
    if "crit" in header:
        raise JwsInvalid("critical header extensions are not supported", "unsupported-algorithm")
    if "kid" in header and not isinstance(header["kid"], str):
        raise JwsInvalid("kid is not a string")
    if "x5c" in header:
        x5c = header["x5c"]
        if not isinstance(x5c, list) or not x5c or not all(isinstance(c, str) for c in x5c):
            raise JwsInvalid("x5c is not a non-empty list of base64 strings")
    return header


def _x5c_leaf(header: dict[str, Any]) -> x509.Certificate:
    if "x5c" not in header:
        raise JwsInvalid("no certificate given and the header has no x5c", "bad-certificate")
    try:
        der = base64.b64decode(header["x5c"][0], validate=True)
        return x509.load_der_x509_certificate(der)
    except (binascii.Error, ValueError):
        raise JwsInvalid(
            "the first x5c entry is not a base64 DER certificate", "bad-certificate"
        ) from None


def _check_key(alg: JwsAlgorithm, public_key: object) -> None:
    curve = alg.curve
    if curve is not None:
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or (
            public_key.curve.name != curve.name
        ):
            raise JwsInvalid(
                f"{alg} needs a {curve.name} key; the certificate has {_describe(public_key)}",
                "key-mismatch",
            )
        return
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise JwsInvalid(
            f"{alg} needs an RSA key; the certificate has {_describe(public_key)}",
            "key-mismatch",
        )
    if public_key.key_size < _MIN_RSA_BITS:
        raise JwsInvalid(
            f"{alg} needs an RSA key of at least {_MIN_RSA_BITS} bits, not {public_key.key_size}",
            "key-mismatch",
        )


def _describe(public_key: object) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"an EC {public_key.curve.name} key"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"an RSA-{public_key.key_size} key"
    return f"a {type(public_key).__name__}"


def _coordinate_size(alg: JwsAlgorithm) -> int:
    curve = alg.curve
    assert curve is not None
    return (curve.key_size + 7) // 8


def _ecdsa_der_to_raw(der: bytes, alg: JwsAlgorithm) -> bytes:
    """JWS wants r‖s, each left-padded to the curve size (RFC 7518 §3.4), not DER."""
    r, s = decode_dss_signature(der)
    size = _coordinate_size(alg)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


__all__ = [
    "DigestSigner",
    "HsmDigestSigner",
    "JwsAlgorithm",
    "JwsInvalid",
    "b64url_decode",
    "b64url_encode",
    "protected_header",
    "sign_detached",
    "verify_detached",
]
