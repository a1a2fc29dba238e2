"""RFC 3161 time-stamping: reading queries, answering them with tokens signed in the HSM.

Bytes in, bytes out. The caller supplies each token's serial number and time (the service
layer draws serials from storage, so that they grow across every worker process); this module
reads the query, refuses what it cannot honour with a ``TimeStampResp`` that says why (RFC 3161
§2.4.2: a refusal is an answer, not a transport error), and joins ``TSTInfo`` and the
``SignedData`` around it from DER parts that asn1crypto encoded once per TSA key. The TSA key
signs one digest of the signed attributes on the HSM thread, like every other gateway key.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from asn1crypto import algos, cms, core, tsp, x509
from pyhanko.sign.general import as_signing_certificate_v2

from gateway.hsm import HASHES, Hsm, KeyAlgorithm, SignatureScheme
from gateway.signing.cms_template import der
from gateway.signing.seal_key import (
    AnyCertificate,
    max_signature_size,
    signature_mechanism,
    to_asn1_certificate,
)

ACCEPTED_HASHES = tuple(HASHES)  # sha256, sha384, sha512
TIMESTAMP_QUERY = "application/timestamp-query"
TIMESTAMP_REPLY = "application/timestamp-reply"

_SEQUENCE = 0x30
_SET = 0x31
_OCTET_STRING = 0x04
_CONTEXT_0 = 0xA0  # [0], constructed
_GRANTED = tsp.PKIStatusInfo({"status": "granted"}).dump()
_TST_INFO_TYPE = cms.ContentType("tst_info").dump()
_SIGNED_DATA_TYPE = cms.ContentType("signed_data").dump()

# The largest serial a token of :meth:`TimeStampAuthority.max_token_size` is sized for; a
# storage counter that grows by one per token stays far below it.
_MAX_SERIAL = 2**63 - 1


class TimeStampResp(core.Sequence):  # type: ignore[misc]  # asn1crypto is untyped
    """RFC 3161 §2.4.2 ``TimeStampResp``; asn1crypto's own requires the token even in a
    refusal, which carries none."""

    _fields = [  # noqa: RUF012 (asn1crypto's schema declaration)
        ("status", tsp.PKIStatusInfo),
        ("time_stamp_token", cms.ContentInfo, {"optional": True}),
    ]


class TsaRefusal(Exception):
    """A query the TSA does not stamp; ``failure`` names a PKIFailureInfo bit (RFC 3161 §2.4.2)."""

    def __init__(self, failure: str, text: str) -> None:
        super().__init__(text)
        self.failure = failure
        self.text = text


@dataclass(frozen=True)
class TimeStampQuery:
    """What a token is asked for: the imprint, the nonce to echo, whether to add certificates."""

    imprint: tsp.MessageImprint
    hash_name: str
    nonce: int | None = None
    cert_req: bool = True

    @classmethod
    def for_digest(
        cls, digest: bytes, hash_name: str, *, nonce: int | None = None, cert_req: bool = True
    ) -> TimeStampQuery:
        """A query made in-process, for a digest computed with ``hash_name``."""
        imprint = tsp.MessageImprint(
            {"hash_algorithm": {"algorithm": hash_name}, "hashed_message": digest}
        )
        return cls(imprint, hash_name, nonce, cert_req)

    @property
    def digest(self) -> bytes:
        value: bytes = self.imprint["hashed_message"].native
        return value


def _attribute(name: str, value: object) -> bytes:
    attribute: bytes = cms.CMSAttribute({"type": name, "values": [value]}).dump()
    return attribute


def parse_query(data: bytes, policy: str) -> TimeStampQuery:
    """Read a DER ``TimeStampReq``; raise :class:`TsaRefusal` for anything not stamped.

    ``policy`` is the TSA's one policy: a query asking for another is refused.
    """
    try:
        request = tsp.TimeStampReq.load(data, strict=True)
        # asn1crypto parses lazily: reading every value here surfaces malformed content now.
        request.native  # noqa: B018
        version = request["version"].native
        algorithm = request["message_imprint"]["hash_algorithm"]["algorithm"].native
        digest = request["message_imprint"]["hashed_message"].native
        nonce = request["nonce"].native
        cert_req = bool(request["cert_req"].native)
        requested_policy = request["req_policy"]
        extensions = request["extensions"]
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise TsaRefusal("bad_data_format", "the body is not a DER TimeStampReq") from exc
    if version != "v1":
        raise TsaRefusal("bad_request", f"only version 1 queries are answered, not {version}")
    if algorithm not in ACCEPTED_HASHES:
        raise TsaRefusal(
            "bad_alg", f"the message imprint must be {', '.join(ACCEPTED_HASHES)}, not {algorithm}"
        )
    if len(digest) != HASHES[algorithm].size:
        raise TsaRefusal(
            "bad_data_format",
            f"a {algorithm} imprint has {HASHES[algorithm].size} bytes, not {len(digest)}",
        )
    if requested_policy.native is not None and requested_policy.dotted != policy:
        raise TsaRefusal("unaccepted_policy", f"this TSA issues tokens under policy {policy} only")
    if extensions.native:
        raise TsaRefusal("unaccepted_extensions", "this TSA supports no request extensions")
    return TimeStampQuery(request["message_imprint"], algorithm, nonce, cert_req)


def refusal_response(refusal: TsaRefusal) -> bytes:
    """The DER ``TimeStampResp`` with status rejection, its reason in words and as a failure bit."""
    status = tsp.PKIStatusInfo(
        {
            "status": "rejection",
            "status_string": [refusal.text],
            "fail_info": {refusal.failure},
        }
    )
    data: bytes = TimeStampResp({"status": status}).dump()
    return data


@dataclass(frozen=True)
class _TokenTemplate:
    """The DER of every part of a token that depends only on the TSA, encoded once.

    Building tokens with asn1crypto objects copies and re-encodes the certificates and
    names for every token (milliseconds each, as for seals: DOMAIN.md §6); joining
    pre-encoded parts with DER framing costs microseconds.
    """

    tst_info_head: bytes  # version, policy
    accuracy: bytes
    tsa_name: bytes  # [0] EXPLICIT GeneralName: the TSA certificate's subject
    digest_algorithm: bytes
    signer_info_head: bytes  # version, sid, digestAlgorithm
    signature_algorithm: bytes
    static_attributes: tuple[bytes, ...]  # content-type, signing-certificate-v2
    message_digest_type: bytes
    certificates: bytes  # [0] IMPLICIT SET OF Certificate

    @classmethod
    def for_authority(
        cls,
        certificate: x509.Certificate,
        chain: tuple[x509.Certificate, ...],
        policy: str,
        accuracy_seconds: int,
        hash_name: str,
        signature_algorithm: algos.SignedDigestAlgorithm,
    ) -> _TokenTemplate:
        digest_algorithm = algos.DigestAlgorithm({"algorithm": hash_name}).dump()
        sid = cms.IssuerAndSerialNumber(
            {"issuer": certificate.issuer, "serial_number": certificate.serial_number}
        ).dump()
        name = x509.GeneralName(name="directory_name", value=certificate.subject).dump()
        return cls(
            tst_info_head=core.Integer(1).dump() + core.ObjectIdentifier(policy).dump(),
            accuracy=(
                tsp.Accuracy({"seconds": accuracy_seconds}).dump() if accuracy_seconds else b""
            ),
            tsa_name=der(_CONTEXT_0, name),
            digest_algorithm=digest_algorithm,
            signer_info_head=core.Integer(1).dump() + sid + digest_algorithm,
            signature_algorithm=signature_algorithm.dump(),
            static_attributes=(
                _attribute("content_type", "tst_info"),
                # RFC 5816: the ESS certificate id ties the token to the TSA certificate.
                _attribute("signing_certificate_v2", as_signing_certificate_v2(certificate)),
            ),
            message_digest_type=cms.CMSAttributeType("message_digest").dump(),
            # DER orders the members of a SET OF by their encodings.
            certificates=der(_CONTEXT_0, b"".join(sorted(c.dump() for c in (certificate, *chain)))),
        )


@dataclass(frozen=True)
class TimeStampAuthority:
    """The TSA's key in the HSM, its certificates and policy; builds and signs tokens."""

    hsm: Hsm = field(repr=False, compare=False)
    key_id: bytes
    algorithm: KeyAlgorithm
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    policy: str
    accuracy_seconds: int = 1
    hash_name: str = field(init=False)
    scheme: SignatureScheme = field(init=False)
    _template: _TokenTemplate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        scheme = SignatureScheme.default_for(self.algorithm)
        hash_name = self.algorithm.default_hash
        object.__setattr__(self, "hash_name", hash_name)
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "_template", _TokenTemplate.for_authority(
            self.certificate, self.chain, self.policy, self.accuracy_seconds, hash_name,
            signature_mechanism(self.algorithm, scheme, hash_name),
        ))

    @classmethod
    def create(
        cls,
        hsm: Hsm,
        key_id: bytes,
        algorithm: KeyAlgorithm,
        certificate: AnyCertificate,
        chain: Iterable[AnyCertificate],
        policy: str,
        accuracy_seconds: int = 1,
    ) -> TimeStampAuthority:
        return cls(
            hsm, key_id, algorithm, to_asn1_certificate(certificate),
            tuple(to_asn1_certificate(c) for c in chain), policy, accuracy_seconds,
        )

    async def token(self, query: TimeStampQuery, serial: int, at: dt.datetime) -> cms.ContentInfo:
        """The signed ``TimeStampToken`` for ``query``, numbered ``serial``, stamped ``at``."""
        return cms.ContentInfo.load(await self._signed_token(query, serial, at))

    async def respond(self, query: TimeStampQuery, serial: int, at: dt.datetime) -> bytes:
        """The DER ``TimeStampResp`` granting ``query``."""
        token = await self._signed_token(query, serial, at)
        return der(_SEQUENCE, _GRANTED + token)

    def max_token_size(self, hash_name: str) -> int:
        """Largest DER size of an in-process token (no nonce) over a ``hash_name`` digest.

        Signature placeholders in PDFs are sized from it, so no token is fetched to measure.
        """
        return self._max_token_sizes[hash_name]

    @functools.cached_property
    def _max_token_sizes(self) -> dict[str, int]:
        # The longest time DER can write: every fractional digit significant.
        at = dt.datetime(2000, 1, 1, 0, 0, 0, 999000, tzinfo=dt.UTC)
        signature = bytes(max_signature_size(self.algorithm))
        sizes = {}
        for name, algorithm in HASHES.items():
            query = TimeStampQuery.for_digest(bytes(algorithm.size), name)
            tst_info = self._tst_info(query, _MAX_SERIAL, at)
            token = self._token(tst_info, self._signed_attributes(tst_info), signature, True)
            sizes[name] = len(token)
        return sizes

    # -- building ------------------------------------------------------------------------------

    async def _signed_token(self, query: TimeStampQuery, serial: int, at: dt.datetime) -> bytes:
        tst_info = self._tst_info(query, serial, at)
        signed_attributes = self._signed_attributes(tst_info)
        digest = hashlib.new(self.hash_name, signed_attributes).digest()
        signature = await self.hsm.sign_digest(
            self.key_id, self.algorithm, digest, self.hash_name, self.scheme
        )
        return self._token(tst_info, signed_attributes, signature, query.cert_req)

    def _tst_info(self, query: TimeStampQuery, serial: int, at: dt.datetime) -> bytes:
        template = self._template
        # Milliseconds: finer than the accuracy claimed, and short in DER.
        at = at.astimezone(dt.UTC).replace(microsecond=at.microsecond // 1000 * 1000)
        nonce = b"" if query.nonce is None else core.Integer(query.nonce).dump()
        return der(
            _SEQUENCE,
            template.tst_info_head
            # As the query sent it (RFC 3161 §2.4.2: the same value).
            + query.imprint.dump()
            + core.Integer(serial).dump()
            + core.GeneralizedTime(at).dump()
            + template.accuracy
            + nonce
            # Names the signer, so verifiers (openssl ts -verify) can match its certificate.
            + template.tsa_name,
        )

    def _signed_attributes(self, tst_info: bytes) -> bytes:
        template = self._template
        message_digest = der(
            _SEQUENCE,
            template.message_digest_type
            + der(_SET, der(_OCTET_STRING, hashlib.new(self.hash_name, tst_info).digest())),
        )
        return der(_SET, b"".join(sorted((*template.static_attributes, message_digest))))

    def _token(
        self, tst_info: bytes, signed_attributes: bytes, signature: bytes, cert_req: bool
    ) -> bytes:
        template = self._template
        signer_info = der(
            _SEQUENCE,
            template.signer_info_head
            # In SignerInfo the attributes are [0] IMPLICIT, so only the tag changes.
            + bytes((_CONTEXT_0,)) + signed_attributes[1:]
            + template.signature_algorithm
            + der(_OCTET_STRING, signature),
        )
        signed_data = der(
            _SEQUENCE,
            # v3: the encapsulated content is not id-data (RFC 5652 §5.1).
            core.Integer(3).dump()
            + der(_SET, template.digest_algorithm)
            + der(_SEQUENCE, _TST_INFO_TYPE + der(_CONTEXT_0, der(_OCTET_STRING, tst_info)))
            # RFC 3161 §2.4.1: certReq asks for the TSA's certificate; its issuers come along
            # so that a verifier holding only the root can build the path.
            + (template.certificates if cert_req else b"")
            + der(_SET, signer_info),
        )
        return der(_SEQUENCE, _SIGNED_DATA_TYPE + der(_CONTEXT_0, signed_data))


def token_info(token: cms.ContentInfo) -> tsp.TSTInfo:
    """The ``TSTInfo`` inside a time-stamp token."""
    info: tsp.TSTInfo = token["content"]["encap_content_info"]["content"].parsed
    return info


def query_bytes(query: TimeStampQuery) -> bytes:
    """The DER ``TimeStampReq`` for ``query``, as sent to an outside TSA."""
    values: dict[str, object] = {
        "version": "v1", "message_imprint": query.imprint, "cert_req": query.cert_req,
    }
    if query.nonce is not None:
        values["nonce"] = query.nonce
    data: bytes = tsp.TimeStampReq(values).dump()
    return data


def read_response(data: bytes, query: TimeStampQuery) -> cms.ContentInfo:
    """The token of a TSA's DER ``TimeStampResp`` to ``query``.

    Raises :class:`TsaRefusal` when the TSA refused, and ValueError when the answer is not
    one: unreadable, without a token, or for another imprint or nonce (RFC 3161 §2.4.2).
    """
    try:
        response = TimeStampResp.load(data, strict=True)
        status = response["status"]
        state = status["status"].native
        if state not in ("granted", "granted_with_mods"):
            failures = sorted(status["fail_info"].native or ()) or ["unspecified"]
            text = " ".join(status["status_string"].native or ()) or state
            raise TsaRefusal(failures[0], text)
        token: cms.ContentInfo = response["time_stamp_token"]
        if token.native is None:
            raise TypeError("no token")
        info = token_info(token)
        imprint_ok = info["message_imprint"].dump() == query.imprint.dump()
        nonce = info["nonce"].native
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError("the answer is not an RFC 3161 TimeStampResp") from exc
    if not imprint_ok:
        raise ValueError("the token is for another message imprint")
    if nonce != query.nonce:
        raise ValueError("the token does not echo the query's nonce")
    return token


__all__ = [
    "ACCEPTED_HASHES",
    "TIMESTAMP_QUERY",
    "TIMESTAMP_REPLY",
    "TimeStampAuthority",
    "TimeStampQuery",
    "TsaRefusal",
    "parse_query",
    "query_bytes",
    "read_response",
    "refusal_response",
    "token_info",
]
