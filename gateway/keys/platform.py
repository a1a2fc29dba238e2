"""The platform's own signature: JWS over canonical JSON for filing and sealing receipts.

Receipts are signed with the platform key in the HSM (created by ``sealgate init``), as a
compact JWS with detached payload whose payload is the RFC 8785 form of the receipt without
its ``signature`` member. Anyone holding the platform certificate can check it offline.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from gateway.hsm import Hsm, KeyAlgorithm
from gateway.kept import Kept
from gateway.keys.registry import KeyRegistry, certificate_chain
from gateway.signing.jcs import canonicalize
from gateway.signing.jws import (
    HsmDigestSigner,
    JwsAlgorithm,
    JwsInvalid,
    sign_detached,
    verify_detached,
)


@dataclass(frozen=True)
class Check:
    """One verification step as ``POST /v1/receipts/verify`` reports it."""

    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class PlatformKey:
    key_id: str
    algorithm: KeyAlgorithm
    chain: tuple[x509.Certificate, ...]

    @property
    def chain_der(self) -> list[bytes]:
        return [c.public_bytes(serialization.Encoding.DER) for c in self.chain]


class PlatformSigner:
    """Signs and verifies receipts with the platform key."""

    def __init__(self, keys: KeyRegistry, hsm: Hsm, trust_roots: Sequence[x509.Certificate]):
        self._keys = keys
        self._hsm = hsm
        self._trust_roots = tuple(trust_roots)
        # Made from the key's stored chain: a renewed certificate is used from the next
        # receipt on, in every worker.
        self._key: Kept[str, PlatformKey] = Kept()

    async def key(self) -> PlatformKey:
        record = await self._keys.platform_key()
        chain_pem = record.get("certificate_chain_pem")
        found = self._key.get(str(record["id"]), chain_pem)
        if found is None:
            found = self._key.keep(str(record["id"]), chain_pem, PlatformKey(
                str(record["id"]), KeyAlgorithm(record["algorithm"]),
                tuple(certificate_chain(record))))
        return found

    async def certificate_pem(self) -> bytes:
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (await self.key()).chain
        )

    async def sign(self, document: Mapping[str, Any]) -> str:
        """The detached JWS over the canonical form of ``document`` (without ``signature``)."""
        key = await self.key()
        payload = canonicalize(unsigned(document))
        signer = HsmDigestSigner(self._hsm, uuid.UUID(key.key_id).bytes, key.algorithm)
        return await sign_detached(
            payload,
            signer,
            alg=JwsAlgorithm.default_for(key.algorithm),
            kid=key.key_id,
            x5c=key.chain_der,
        )

    async def verify(self, document: Mapping[str, Any], now: dt.datetime) -> list[Check]:
        """Check a signed document's JWS with the platform's key, and the platform's chain.

        The key is the platform's own, never the one the JWS header names: the same CA
        certifies every seal, so a seal's holder could otherwise sign a receipt of their
        own making, name their seal certificate in ``x5c`` and have it chain to a trusted
        root. The platform key is made once and never replaced, so it verifies every
        receipt the platform has issued.
        """
        jws = document.get("signature")
        if not isinstance(jws, str):
            return [Check("signature", False, "the document has no 'signature' member")]
        platform = await self.key()
        try:
            header = verify_detached(jws, canonicalize(unsigned(document)),
                                     certificate=platform.chain[0])
        except (JwsInvalid, ValueError, TypeError) as exc:
            return [Check("signature", False, f"not a valid signature of the platform: {exc}")]
        checks = [Check("signature", True,
                        f"{header['alg']} signature by the platform key {platform.key_id}")]
        checks.append(self._check_chain(list(platform.chain), now))
        return checks

    def _check_chain(self, chain: list[x509.Certificate], now: dt.datetime) -> Check:
        for cert in chain:
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                return Check(
                    "certificate",
                    False,
                    f"certificate {cert.subject.rfc4514_string()} is not valid now",
                )
        for child, issuer in itertools.pairwise(chain):
            if not _issued_by(child, issuer):
                return Check("certificate", False, "the certificate chain is broken")
        for root in self._trust_roots:
            if chain[-1] == root or _issued_by(chain[-1], root):
                return Check(
                    "certificate", True, f"chains to trusted root {root.subject.rfc4514_string()}"
                )
        return Check("certificate", False, "the certificate does not chain to a trusted root")


def unsigned(document: Mapping[str, Any]) -> dict[str, Any]:
    """A signed document's content: everything but its ``signature`` member."""
    return {k: v for k, v in document.items() if k != "signature"}


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    if child.issuer != issuer.subject:
        return False
    public = issuer.public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            assert child.signature_hash_algorithm is not None
            public.verify(
                child.signature,
                child.tbs_certificate_bytes,
                padding.PKCS1v15(),
                child.signature_hash_algorithm,
            )
        elif isinstance(public, ec.EllipticCurvePublicKey):
            assert child.signature_hash_algorithm is not None
            public.verify(
                child.signature,
                child.tbs_certificate_bytes,
                ec.ECDSA(child.signature_hash_algorithm),
            )
        else:
            return False
    except InvalidSignature:
        return False
    return True


def load_trust_roots(paths: Sequence[str]) -> list[x509.Certificate]:
    """Certificates from the configured trust-root files; missing files are skipped."""
    roots: list[x509.Certificate] = []
    for path in paths:
        p = Path(path)
        if p.exists():
            roots.extend(x509.load_pem_x509_certificates(p.read_bytes()))
    return roots
