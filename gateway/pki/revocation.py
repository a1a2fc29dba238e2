"""Revocation data the gateway vouches for itself: fresh CRLs of its development CA.

Long-term signatures (PAdES B-LT and B-LTA) embed the CRLs of every certificate in the seal's
chain and the TSA's chain. The gateway issues those certificates through its dev CA, so it
signs a fresh CRL locally instead of fetching it over HTTP from itself. Certificates from any
other CA have no CRL here yet, and asking for long-term levels with them is refused with a
message that names the issuer.
"""

from __future__ import annotations

from collections.abc import Sequence

from asn1crypto import crl, x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.errors import ValidationFailed
from gateway.pki.devca import DevCA


class LocalRevocation:
    """CRLs for certificates the dev CA issued; ``ca`` is None where no dev CA exists."""

    def __init__(self, ca: DevCA | None) -> None:
        self._ca = ca
        self._ca_name = (
            None if ca is None
            else x509.Certificate.load(ca.certificate.public_bytes(Encoding.DER)).subject
        )

    async def crls(self, certificates: Sequence[x509.Certificate]) -> list[crl.CertificateList]:
        """One fresh dev-CA CRL when any of ``certificates`` (roots aside) needs one."""
        # asn1crypto names compare by their normalised form, which is also their hash key.
        issuers = {c.issuer.hashable: c.issuer for c in certificates if c.issuer != c.subject}
        own = None if self._ca_name is None else self._ca_name.hashable
        foreign = [name for key, name in issuers.items() if key != own]
        if foreign:
            raise ValidationFailed.one(
                "level",
                "long-term levels need revocation data, and the gateway has none for "
                f"certificates issued by {foreign[0].human_friendly}",
            )
        if not issuers or self._ca is None:
            return []
        return [crl.CertificateList.load(self._ca.crl().public_bytes(Encoding.DER))]
