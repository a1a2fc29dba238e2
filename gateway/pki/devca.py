"""A development certificate authority: issues seal, platform and TSA certificates, and CRLs.

It exists so that `make run` and the tests have a real trust chain without an outside CA.
Its own key is a software key in ``var/ca`` (mode 0600): it certifies HSM keys but is not one,
and a production deployment imports certificates from its real CA instead (``PUT
/v1/keys/{id}/certificate``). Certificates it issues name the gateway's CRL URL (when it was
given one), so that validators of long-term signatures can find the revocation status.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.pem"
CRL_PATH = "/pki/crl/dev-ca.crl"
CRL_VALIDITY = dt.timedelta(days=1)


def crl_url(public_base_url: str) -> str:
    """Where the gateway serves the dev CA's CRL, as certificates name it."""
    return public_base_url.rstrip("/") + CRL_PATH


@dataclass(frozen=True)
class CertificateProfile:
    """What a certificate is for; decides its key usage and extended key usage."""

    name: str
    key_usage: dict[str, bool]
    extended_key_usage: tuple[x509.ObjectIdentifier, ...] = ()
    eku_critical: bool = False


SEAL_PROFILE = CertificateProfile(
    "seal", {"digital_signature": True, "content_commitment": True},
)
PLATFORM_PROFILE = CertificateProfile(
    "platform", {"digital_signature": True, "content_commitment": True},
)
TSA_PROFILE = CertificateProfile(
    "tsa", {"digital_signature": True}, (ExtendedKeyUsageOID.TIME_STAMPING,), eku_critical=True,
)


def _name(common_name: str, organization: str = "", country: str = "CN") -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, country)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


class DevCA:
    """Loads or creates the development CA under one directory."""

    def __init__(
        self, directory: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate,
        crl_url: str | None = None,
    ):
        self.directory = directory
        self._key = key
        self.certificate = cert
        self.crl_url = crl_url

    @classmethod
    def open(cls, directory: Path, *, crl_url: str | None = None) -> DevCA | None:
        """The CA kept in ``directory``, or None when `sealgate init` has not made one there."""
        key_path, cert_path = directory / CA_KEY_FILE, directory / CA_CERT_FILE
        if not (key_path.exists() and cert_path.exists()):
            return None
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        return cls(directory, key, cert, crl_url)

    @classmethod
    def open_or_create(
        cls, directory: Path, name: str = "SealGate Development CA", *, crl_url: str | None = None
    ) -> DevCA:
        existing = cls.open(directory, crl_url=crl_url)
        if existing is not None:
            return existing
        key_path, cert_path = directory / CA_KEY_FILE, directory / CA_CERT_FILE
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP384R1())
        now = dt.datetime.now(dt.UTC)
        subject = _name(name, "SealGate Development")
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA384())
        )
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, key, cert, crl_url)

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        public_key_der: bytes,
        common_name: str,
        organization: str = "",
        *,
        profile: CertificateProfile = SEAL_PROFILE,
        days: int = 825,
        not_before: dt.datetime | None = None,
        country: str = "CN",
    ) -> x509.Certificate:
        """Certify an HSM public key (SubjectPublicKeyInfo DER) for one profile."""
        public_key = serialization.load_der_public_key(public_key_der)
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        usage = {
            k: profile.key_usage.get(k, False)
            for k in ("digital_signature", "content_commitment", "key_encipherment",
                      "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                      "encipher_only", "decipher_only")
        }
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organization, country))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(**usage), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)  # type: ignore[arg-type]
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
        )
        if profile.extended_key_usage:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage(list(profile.extended_key_usage)),
                critical=profile.eku_critical,
            )
        if self.crl_url:
            builder = builder.add_extension(
                x509.CRLDistributionPoints([x509.DistributionPoint(
                    full_name=[x509.UniformResourceIdentifier(self.crl_url)],
                    relative_name=None, reasons=None, crl_issuer=None,
                )]),
                critical=False,
            )
        return builder.sign(self._key, hashes.SHA384())

    def crl(self, now: dt.datetime | None = None) -> x509.CertificateRevocationList:
        """A freshly signed CRL: nothing is revoked yet, valid until ``now + CRL_VALIDITY``.

        Fresh rather than cached, so that revocation data embedded for a long-term signature
        was issued after that signature's time-stamp, as validators of past signatures expect.
        """
        now = now or dt.datetime.now(dt.UTC)
        return (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now)
            .next_update(now + CRL_VALIDITY)
            # Increasing across processes and restarts without shared state.
            .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
            .sign(self._key, hashes.SHA384())
        )
