"""A seal's signing identity (HSM key, certificate chain) and the pyHanko ``Signer`` over it.

Everything here is computed once per key and certificate, never per document: the asn1crypto
certificates, the signature mechanism, and the DER of every part of the CMS structure that
does not depend on the document (:mod:`gateway.signing.cms_template`). pyHanko's own PKCS#11
signer is not used: its extra pins an older python-pkcs11, and every token call has to go
through the gateway's one HSM thread anyway (DOMAIN.md §5).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from asn1crypto import algos, x509
from cryptography import x509 as pyca_x509
from cryptography.hazmat.primitives.serialization import Encoding
from pyhanko.sign.general import SigningError
from pyhanko.sign.signers import Signer
from pyhanko_certvalidator.registry import SimpleCertificateStore

from gateway.hsm import HASHES, Hsm, KeyAlgorithm, SignatureScheme
from gateway.signing.cms_template import CmsTemplate

AnyCertificate: TypeAlias = x509.Certificate | pyca_x509.Certificate

# Largest DER encoding of an ECDSA signature: SEQUENCE { INTEGER r, INTEGER s }, each integer
# at most one byte longer than the coordinate size (a leading zero keeps it positive).
_EC_COORDINATE_BYTES = {KeyAlgorithm.EC_P256: 32, KeyAlgorithm.EC_P384: 48}


def to_asn1_certificate(cert: AnyCertificate) -> x509.Certificate:
    """pyHanko and asn1crypto speak asn1crypto; the PKI layer hands out ``cryptography``."""
    if isinstance(cert, x509.Certificate):
        return cert
    return x509.Certificate.load(cert.public_bytes(Encoding.DER))


def max_signature_size(algorithm: KeyAlgorithm) -> int:
    """Upper bound of the X.509/CMS-encoded signature value this key can produce, in bytes."""
    if algorithm.is_rsa:
        return algorithm.rsa_bits // 8
    content = 2 * (_EC_COORDINATE_BYTES[algorithm] + 3)
    return content + (2 if content < 128 else 3)


def signature_mechanism(
    algorithm: KeyAlgorithm, scheme: SignatureScheme, hash_name: str
) -> algos.SignedDigestAlgorithm:
    """The CMS ``signatureAlgorithm`` for what :meth:`Hsm.sign_digest` does with this scheme.

    PSS is pinned to MGF1 with the same hash and a salt as long as the digest, because that is
    what the HSM layer asks the token for; pyHanko's own default (maximum salt) would not
    match the signatures the token makes.
    """
    if scheme is SignatureScheme.ECDSA:
        return algos.SignedDigestAlgorithm({"algorithm": f"{hash_name}_ecdsa"})
    if scheme is SignatureScheme.PSS:
        digest = algos.DigestAlgorithm({"algorithm": hash_name})
        params = algos.RSASSAPSSParams(
            {
                "hash_algorithm": digest,
                "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": digest},
                "salt_length": HASHES[hash_name].size,
                "trailer_field": "trailer_field_bc",
            }
        )
        return algos.SignedDigestAlgorithm({"algorithm": "rsassa_pss", "parameters": params})
    return algos.SignedDigestAlgorithm({"algorithm": f"{hash_name}_rsa"})


class HsmSigner(Signer):
    """A pyHanko signer whose private key operation is one ``C_Sign`` on the HSM thread.

    pyHanko hands over the bytes to sign (the DER of the signed attributes); they are hashed
    here and only the digest travels to the token, as :meth:`Hsm.sign_digest` expects.
    """

    def __init__(
        self,
        hsm: Hsm,
        key_id: bytes,
        algorithm: KeyAlgorithm,
        signing_cert: x509.Certificate,
        chain: Iterable[x509.Certificate] = (),
        scheme: SignatureScheme | None = None,
    ) -> None:
        self.hsm = hsm
        self.key_id = key_id
        self.algorithm = algorithm
        self.scheme = scheme or SignatureScheme.default_for(algorithm)
        self.hash_name = algorithm.default_hash
        super().__init__(
            signing_cert=signing_cert,
            # Only the issuers: pyHanko adds the signing certificate itself, and a registry
            # holding it too would embed it twice. from_certs is unannotated upstream.
            cert_registry=SimpleCertificateStore.from_certs(chain),  # type: ignore[no-untyped-call]
            signature_mechanism=signature_mechanism(algorithm, self.scheme, self.hash_name),
        )

    async def async_sign_raw(
        self, data: bytes, digest_algorithm: str, dry_run: bool = False
    ) -> bytes:
        """Hash ``data`` and sign the digest in the HSM (no HSM call in a dry run)."""
        digest_algorithm = digest_algorithm.lower()
        if digest_algorithm not in HASHES:
            raise SigningError(f"the HSM signs {', '.join(HASHES)} digests, not {digest_algorithm}")
        if dry_run:
            return bytes(max_signature_size(self.algorithm))
        digest = hashlib.new(digest_algorithm, data).digest()
        return await self.hsm.sign_digest(
            self.key_id, self.algorithm, digest, digest_algorithm, self.scheme
        )


@dataclass(frozen=True)
class SealKey:
    """What signing with one seal needs and what never changes between its documents."""

    key_id: bytes
    algorithm: KeyAlgorithm
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    signer: HsmSigner = field(repr=False, compare=False)
    cms: CmsTemplate = field(repr=False, compare=False)

    @classmethod
    def create(
        cls,
        hsm: Hsm,
        key_id: bytes,
        algorithm: KeyAlgorithm,
        certificate: AnyCertificate,
        chain: Iterable[AnyCertificate] = (),
        *,
        scheme: SignatureScheme | None = None,
    ) -> SealKey:
        """Convert the certificates once and build the signer; ``chain`` is the leaf's issuers."""
        leaf = to_asn1_certificate(certificate)
        issuers = tuple(to_asn1_certificate(c) for c in chain)
        signer = HsmSigner(hsm, key_id, algorithm, leaf, issuers, scheme=scheme)
        template = CmsTemplate.for_key(
            leaf,
            issuers,
            signer.hash_name,
            signer.get_signature_mechanism_for_digest(None),
            max_signature_size(algorithm),
        )
        return cls(key_id, algorithm, leaf, issuers, signer, template)

    @functools.cached_property
    def chain_der(self) -> tuple[bytes, ...]:
        """DER of the certificate and its chain, leaf first, as a hash-signing answer lists
        them; encoded once per key, not per request."""
        return tuple(c.dump() for c in (self.certificate, *self.chain))

    @property
    def hash_name(self) -> str:
        return self.signer.hash_name

    @property
    def scheme(self) -> SignatureScheme:
        return self.signer.scheme

    async def sign_digest(self, digest: bytes) -> bytes:
        """Sign a digest made with :attr:`hash_name`; awaited from the event loop."""
        return await self.signer.hsm.sign_digest(
            self.key_id, self.algorithm, digest, self.hash_name, self.scheme
        )
