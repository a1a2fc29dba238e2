"""The deep half of `make fuzz-api`: whole lifecycles of valid requests, as each role makes them.

schemathesis alone rarely gets a request past validation: a USCC or an ID number with the right
check character, a key with a certificate, a seal that is filed and granted, a SAD bound to
the hashes it signs are beyond what it draws from a schema. Here hypothesis chooses among
valid steps (a key of any algorithm, its CSR and certificate, a seal on it, a filing of any
action with its materials, a review or withdrawal, signatures of every format with any
placement and level, time-stamps, CSC, receipts, key rotation, disabling and destruction
through dual control, audit queries) and draws their values; each request is sent with the
token of the role it belongs to and its answer run through schemathesis's checks against the
document. A failed check is recorded, not raised: the gateway's state is no function of the
steps hypothesis would shrink, so a finding is the request and answer as they were.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from asn1crypto import algos, tsp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    rule,
    run_state_machine_as_test,
)

from gateway.identifiers import USCC_ALPHABET, resident_id_check_character, uscc_check_character
from gateway.pki.devca import DevCA
from tests.fuzz.client import Finding, Gateway, TimeUp, at_once
from tests.pdf_samples import multi_page_pdf, one_page_pdf, seal_png

SHA256 = "2.16.840.1.101.3.4.2.1"
SIGN_ALGORITHMS = {"rsa": "1.2.840.113549.1.1.11", "ec": "1.2.840.10045.4.3.2"}
SEAL_TYPES = ("01", "02", "03", "04", "05", "99")


# -- valid values ---------------------------------------------------------------------------

@st.composite
def usccs(draw: st.DrawFn) -> str:
    """A unified social credit code with its right check character (GB 32100-2015)."""
    body = draw(st.text(USCC_ALPHABET, min_size=17, max_size=17))
    return body + uscc_check_character(body)


@st.composite
def resident_ids(draw: st.DrawFn) -> str:
    """A resident ID number with a real past birth date and its check character."""
    area = draw(st.sampled_from(["110105", "310104", "440305", "350102", "510107"]))
    born = draw(st.dates(dt.date(1930, 1, 1), dt.date(2005, 12, 31)))
    body = f"{area}{born:%Y%m%d}{draw(st.integers(0, 999)):03d}"
    return body + resident_id_check_character(body)


PHONES = st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True)
CHINESE = st.text(st.characters(min_codepoint=0x4E00, max_codepoint=0x4FFF), min_size=2,
                  max_size=8)
NAMES = CHINESE | st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1,
                          max_size=30)
PRINTABLE = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?",
                    min_size=1, max_size=40).filter(str.strip)
ORGANIZATIONS = st.builds(lambda name: name + "有限公司", CHINESE)
ALGORITHMS = st.sampled_from(["rsa-2048", "ec-p256", "ec-p384", "rsa-3072"])
LEVELS = st.sampled_from(["B-B", "B-T", "B-LT", "B-LTA"])
REASONS = st.none() | st.text(max_size=60)


def must_verify(what: str, body: Any, media_type: str | None = None) -> None:
    """POST /v1/verify, and a finding unless the answer says the signatures are valid."""
    g = gateway()
    verified = g.expect(200, None, "POST", "/v1/verify", body=body, media_type=media_type)
    if verified is not None and not verified.json().get("valid"):
        g.report(Finding("POST /v1/verify", 200, f"{what} is not valid: {verified.text}"))


def signs_digest(certificate_der: bytes, signature: bytes, digest: bytes, hash_name: str
                 ) -> bool:
    """Whether ``signature`` is the certificate's key's signature of the pre-hashed
    ``digest`` (RSA PKCS#1 v1.5 or ECDSA, as the gateway makes them)."""
    algorithms: dict[str, type[hashes.HashAlgorithm]] = {
        "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
    algorithm = algorithms[hash_name]()
    public_key = x509.load_der_x509_certificate(certificate_der).public_key()
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, digest, padding.PKCS1v15(), Prehashed(algorithm))
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, digest, ec.ECDSA(Prehashed(algorithm)))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _picked(items: list[dict[str, Any]], pick: int) -> dict[str, Any]:
    """One of items the gateway listed: hypothesis draws the index, not from the live list,
    whose length it cannot know beforehand."""
    return items[pick % len(items)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


GATEWAY: Gateway | None = None


def gateway() -> Gateway:
    assert GATEWAY is not None, "run() sets the gateway before the machine runs"
    return GATEWAY


# -- the lifecycles -------------------------------------------------------------------------

@dataclass(frozen=True)
class Key:
    id: str  # "" when it could not be made: the steps that take it then do nothing
    algorithm: str
    limited: bool


@dataclass(frozen=True)
class Seal:
    id: str
    key: Key


class Lifecycles(RuleBasedStateMachine):
    """Keys, seals, filings, signatures and approvals, in the orders people make them."""

    keys = Bundle("keys")  # enabled, with a certificate
    drafts = Bundle("drafts")
    active = Bundle("active")  # filed, approved and granted to the signer
    sealing_receipts = Bundle("sealing_receipts")

    def __init__(self) -> None:
        super().__init__()
        self.changed: set[str] = set()
        """Seals and keys whose later steps may leave them unable to sign."""

    @rule(target=keys, algorithm=ALGORITHMS, label=NAMES, limit=st.none() | st.integers(1, 50),
          common_name=PRINTABLE, organization=ORGANIZATIONS)
    def certified_key(self, algorithm: str, label: str, limit: int | None, common_name: str,
                      organization: str) -> Key:
        g = gateway()
        body: dict[str, Any] = {"label": label, "algorithm": algorithm}
        if limit is not None:
            body["usage_limit"] = limit
        created = g.expect(201, "key_officer", "POST", "/v1/keys", body=body)
        if created is None:
            return Key("", algorithm, False)
        key_id = created.json()["id"]
        csr = g.expect(200, "key_officer", "POST", "/v1/keys/{id}/csr", params={"id": key_id},
                       body={"subject": {"common_name": common_name, "country": "CN"}})
        if csr is None:
            return Key("", algorithm, False)
        request = x509.load_pem_x509_csr(csr.content)
        leaf = g.ca.issue(request.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
            common_name, organization)
        chain = leaf.public_bytes(serialization.Encoding.PEM) + g.ca.certificate_pem
        g.expect(200, "key_officer", "PUT", "/v1/keys/{id}/certificate", params={"id": key_id},
                 body=chain.decode(), media_type="text/plain")
        return Key(key_id, algorithm, limit is not None)

    @rule(target=drafts, key=consumes(keys), name=CHINESE, seal_type=st.sampled_from(SEAL_TYPES),
          organization=ORGANIZATIONS, uscc=usccs(), own_image=st.booleans())
    def draft_seal(self, key: Key, name: str, seal_type: str, organization: str,
                   uscc: str, own_image: bool) -> Seal:
        body: dict[str, Any] = {"name": name, "type": seal_type, "key_id": key.id,
                                "organization": {"name": organization, "uscc": uscc}}
        if own_image:
            body["image_png"] = b64(seal_png(120))
        created = gateway().expect(201, "filer", "POST", "/v1/seals", body=body) if key.id else None
        return Seal(created.json()["id"] if created else "", key)

    @rule(target=active, seal=consumes(drafts), applicant=CHINESE, phone=PHONES,
          legal=CHINESE, id_number=resident_ids(), valid_days=st.none() | st.integers(1, 3650))
    def file_and_approve(self, seal: Seal, applicant: str, phone: str, legal: str,
                         id_number: str, valid_days: int | None) -> Seal:
        if not seal.id:
            return seal
        g = gateway()
        filing = self._submitted(seal.id, "new", applicant, phone, legal, id_number)
        if filing is None:
            return Seal("", seal.key)
        review: dict[str, Any] = {"decision": "approve", "comment": "ok"}
        if valid_days is not None:
            review["valid_days"] = valid_days
        g.expect(200, "reviewer", "POST", "/v1/filings/{id}/review", params={"id": filing},
                 body=review)
        self._grant_signer(seal.id)
        return seal

    @rule(seal=drafts, applicant=CHINESE, phone=PHONES, legal=CHINESE, id_number=resident_ids(),
          withdraw=st.booleans(), comment=st.text(max_size=50))
    def file_and_refuse(self, seal: Seal, applicant: str, phone: str, legal: str,
                        id_number: str, withdraw: bool, comment: str) -> None:
        """A filing rejected, or withdrawn, leaves the seal a draft to file again."""
        if not seal.id:
            return
        g = gateway()
        filing = self._submitted(seal.id, "new", applicant, phone, legal, id_number)
        if filing is None:
            return
        if withdraw:
            g.expect(200, "reviewer", "POST", "/v1/filings/{id}/withdraw", params={"id": filing},
                     body={"reason": comment or "withdrawn"})
        else:
            g.expect(200, "reviewer", "POST", "/v1/filings/{id}/review", params={"id": filing},
                     body={"decision": "reject", "comment": comment})

    @rule(seal=active, action=st.sampled_from(["renew", "change", "suspend", "resume",
                                               "report_loss"]),
          applicant=CHINESE, phone=PHONES, legal=CHINESE, id_number=resident_ids(),
          approve=st.booleans())
    def file_change(self, seal: Seal, action: str, applicant: str, phone: str, legal: str,
                    id_number: str, approve: bool) -> None:
        """A later filing on an active seal; the state it needs may not hold (409)."""
        if not seal.id:
            return
        g = gateway()
        created = g.call("filer", "POST", "/v1/filings", body={
            "seal_id": seal.id, "action": action, "applicant": {"name": applicant, "phone": phone},
            "legal_representative": {"name": legal, "id_number": id_number}})
        if created.status_code != 201:
            return
        self.changed.add(seal.id)
        filing = created.json()["id"]
        submitted = g.call("filer", "POST", "/v1/filings/{id}/submit", params={"id": filing})
        if submitted.status_code == 202:
            g.expect(200, "reviewer", "POST", "/v1/filings/{id}/review", params={"id": filing},
                     body={"decision": "approve" if approve else "reject"})

    @rule(target=sealing_receipts, seal=active, pages=st.integers(1, 3),
          page=st.none() | st.integers(1, 3), x=st.none() | st.floats(0, 500),
          y=st.none() | st.floats(0, 700), width=st.none() | st.floats(20, 300),
          level=st.none() | LEVELS, reason=REASONS, location=REASONS,
          visible=st.none() | st.booleans())
    def sign_pdf(self, seal: Seal, pages: int, page: int | None, x: float | None,
                 y: float | None, width: float | None, level: str | None, reason: str | None,
                 location: str | None, visible: bool | None) -> str:
        chosen = {"page": None if page is None else min(page, pages), "x": x, "y": y,
                  "width": width, "level": level, "reason": reason, "location": location,
                  "visible": None if visible is None else str(visible).lower()}
        query = {k: v for k, v in chosen.items() if v is not None}
        document = one_page_pdf() if pages == 1 else multi_page_pdf(pages)
        g = gateway()
        signed = g.expect(self._signs(seal), "signer", "POST", "/v1/seals/{id}/sign/pdf",
                          params={"id": seal.id}, body=document, media_type="application/pdf",
                          query=query)
        if signed is None or signed.status_code != 200:
            return ""
        must_verify("a document just sealed", signed.content, "application/pdf")
        return g.sealed(signed)

    @rule(target=sealing_receipts, seal=active, content=st.binary(min_size=1, max_size=2000),
          level=st.none() | st.sampled_from(["B-B", "B-T"]))
    def sign_cms(self, seal: Seal, content: bytes, level: str | None) -> str:
        g = gateway()
        signed = g.expect(self._signs(seal), "signer", "POST", "/v1/seals/{id}/sign/cms",
                          params={"id": seal.id}, body=content,
                          media_type="application/octet-stream",
                          query={"level": level} if level else None)
        if signed is None or signed.status_code != 200:
            return ""
        must_verify("a CMS just made", {"cms": b64(signed.content), "content": b64(content)})
        return g.sealed(signed)

    @rule(target=sealing_receipts, seal=active,
          algorithm=st.sampled_from([("sha256", 32), ("sha384", 48), ("sha512", 64)]),
          seeds=st.lists(st.binary(), min_size=1, max_size=5))
    def sign_hash(self, seal: Seal, algorithm: tuple[str, int], seeds: list[bytes]) -> str:
        """Digests of any bytes, by each algorithm (the hash is cut to the algorithm's size
        from a SHA-512, so that every digest has the size its name says)."""
        name, size = algorithm
        digests = [hashlib.sha512(seed).digest()[:size] for seed in seeds]
        g = gateway()
        signed = g.expect(self._signs(seal), "signer", "POST", "/v1/seals/{id}/sign/hash",
                          params={"id": seal.id},
                          body={"hash_algorithm": name, "hashes": [b64(d) for d in digests]})
        if signed is not None and signed.status_code == 200:
            answer = signed.json()
            leaf = base64.b64decode(answer["certificate_chain"][0])
            for digest, signature in zip(digests, answer["signatures"], strict=True):
                if not signs_digest(leaf, base64.b64decode(signature), digest, name):
                    g.report(Finding("POST /v1/seals/{id}/sign/hash", 200,
                                     f"a {name} signature does not verify: {answer}"))
        return g.sealed(signed)

    @rule(target=sealing_receipts, seal=active, documents=st.lists(st.binary(), min_size=1,
                                                                    max_size=3))
    def sign_through_csc(self, seal: Seal, documents: list[bytes]) -> str:
        g = gateway()
        signs = self._signs(seal)
        g.expect(200, "signer", "POST", "/csc/v1/credentials/list", body={})
        info = g.expect(200, "signer", "POST", "/csc/v1/credentials/info",
                        body={"credentialID": seal.id, "certificates": "chain"})
        digests = [b64(hashlib.sha256(d).digest()) for d in documents]
        authorized = g.expect(signs, "signer", "POST", "/csc/v1/credentials/authorize", body={
            "credentialID": seal.id, "numSignatures": len(digests), "hash": digests})
        if info is None or authorized is None or authorized.status_code != 200:
            return ""
        algorithm = SIGN_ALGORITHMS["rsa" if seal.key.algorithm.startswith("rsa") else "ec"]
        signed = g.expect(signs, "signer", "POST", "/csc/v1/signatures/signHash", body={
            "credentialID": seal.id, "SAD": authorized.json()["SAD"], "hash": digests,
            "hashAlgo": SHA256, "signAlgo": algorithm})
        if signed is not None and signed.status_code == 200:
            leaf = base64.b64decode(info.json()["cert"]["certificates"][0])
            for digest, signature in zip(digests, signed.json()["signatures"], strict=True):
                if not signs_digest(leaf, base64.b64decode(signature), base64.b64decode(digest),
                                    "sha256"):
                    g.report(Finding("POST /csc/v1/signatures/signHash", 200,
                                     f"a signature does not verify: {signed.text}"))
        return g.sealed(signed)

    @rule(seal=active, copies=st.integers(2, 4),
          seeds=st.lists(st.binary(), min_size=1, max_size=3))
    def keyed_signing_at_once(self, seal: Seal, copies: int, seeds: list[bytes]) -> None:
        """The same keyed hash batch sent several times at once: one signature, and every
        answer that carries it names the same sealing receipt (409 while the first runs)."""
        g = gateway()
        # A new key each time: hypothesis would draw the same one for different batches.
        key = uuid.uuid4()
        body = {"hash_algorithm": "sha256",
                "hashes": [b64(hashlib.sha256(seed).digest()) for seed in seeds]}
        answers = at_once(copies, lambda: g.call(
            "signer", "POST", "/v1/seals/{id}/sign/hash", params={"id": seal.id}, body=body,
            headers={"Idempotency-Key": str(key)}))
        signed = [a for a in answers if a.status_code == 200]
        receipts = {g.sealed(a) for a in signed}
        others = sorted({a.status_code for a in answers} - {200, 409})
        if len(receipts) > 1 or (self._signs(seal) == 200 and (not signed or others)):
            g.report(Finding(f"{copies} x keyed sign/hash", 0,
                                      f"receipts {receipts}, other answers {others}"))

    @rule(seal=active, decisions=st.lists(st.sampled_from(["approve", "reject"]), min_size=2,
                                          max_size=2))
    def decided_twice_at_once(self, seal: Seal, decisions: list[str]) -> None:
        """One grant request decided by two other key officers at the same moment: exactly
        one decision is taken, the other is 409."""
        g = gateway()
        filed = g.call("key_officer", "POST", "/v1/approvals", body={
            "action": "grant_seal", "params": {"client_id": "fuzz-filer", "seal_id": seal.id}})
        if filed.status_code != 201:
            return
        approval = {"id": filed.json()["id"]}
        calls = [lambda role=role, decision=decision: g.call(
            role, "POST", f"/v1/approvals/{{id}}/{decision}", params=approval,
            body={} if decision == "reject" else None)
            for role, decision in zip(("key_officer_b", "key_officer_c"), decisions,
                                      strict=True)]
        answers = at_once(len(calls), *calls)
        statuses = sorted(a.status_code for a in answers)
        if statuses != [200, 409]:
            g.report(Finding(f"{decisions} at once", 0,
                                      f"answered {statuses}, not one 200 and one 409"))

    def _signs(self, seal: Seal) -> int | None:
        """200 for a seal that must sign; None (any answer) for one whose key has a limit
        or may have been rotated, disabled or whose status a later filing may have changed."""
        if seal.key.limited or {seal.id, seal.key.id} & self.changed:
            return None
        return 200

    @rule(content=st.binary(max_size=200), nonce=st.none() | st.integers(0, 2**64),
          cert_req=st.booleans())
    def timestamp(self, content: bytes, nonce: int | None, cert_req: bool) -> None:
        query = tsp.TimeStampReq({
            "version": 1, "cert_req": cert_req, "nonce": nonce,
            "message_imprint": {"hash_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
                                "hashed_message": hashlib.sha256(content).digest()}})
        gateway().expect(200, "signer", "POST", "/tsa", body=query.dump(),
                         media_type="application/timestamp-query")

    @rule(number=sealing_receipts)
    def read_sealing_receipt(self, number: str) -> None:
        if number:
            for role in ("signer", "auditor"):
                gateway().expect(200, role, "GET", "/v1/sealing-receipts/{id}",
                                 params={"id": number})

    @rule(seal=active)
    def read_receipt(self, seal: Seal) -> None:
        g = gateway()
        found = g.expect(200, "auditor", "GET", "/v1/seals/{id}", params={"id": seal.id})
        number = found.json().get("receipt_number") if found else None
        if not number:
            return
        receipt = g.expect(200, "filer", "GET", "/v1/receipts/{number}", params={"number": number})
        pdf = g.expect(200, "signer", "GET", "/v1/receipts/{number}.pdf",
                       params={"number": number})
        for body, media in ((receipt.json() if receipt else None, "application/json"),
                            (pdf.content if pdf else None, "application/pdf")):
            if body is not None:
                g.expect(200, None, "POST", "/v1/receipts/verify", body=body, media_type=media)
        if pdf is not None:
            must_verify("a receipt PDF", pdf.content, "application/pdf")

    @rule(seal=active, key=consumes(keys))
    def rotate_key(self, seal: Seal, key: Key) -> None:
        """The new key may serve another seal or be disabled: 409 and 422 are answers."""
        if seal.id and key.id:
            self.changed.add(seal.id)
            gateway().call("key_officer", "POST", "/v1/seals/{id}/rotate-key",
                           params={"id": seal.id}, body={"key_id": key.id})

    @rule(key=consumes(keys), destroy=st.booleans())
    def retire_key(self, key: Key, destroy: bool) -> None:
        if not key.id:
            return
        self.changed.add(key.id)
        g = gateway()
        params = {"id": key.id}
        if g.call("key_officer", "POST", "/v1/keys/{id}/disable", params=params
                  ).status_code == 200 and destroy:
            filed = g.expect(202, "key_officer", "POST", "/v1/keys/{id}/destroy", params=params)
            if filed is not None:
                g.expect(200, "key_officer_b", "POST", "/v1/approvals/{id}/approve",
                         params={"id": filed.json()["id"]})

    @rule(pick=st.integers(0, 2**16))
    def read_everything(self, pick: int) -> None:
        """The lists and single reads of every kind, by every role that may read them."""
        g = gateway()
        for role, path in (("key_officer", "/v1/keys"), ("auditor", "/v1/seals"),
                           ("signer", "/v1/seals"), ("reviewer", "/v1/filings"),
                           ("auditor", "/v1/approvals"), ("auditor", "/v1/audit/verify")):
            g.expect(200, role, "GET", path)
        keys = g.expect(200, "auditor", "GET", "/v1/keys")
        if keys is not None and keys.json()["keys"]:
            key = _picked(keys.json()["keys"], pick)
            g.expect(200, "auditor", "GET", "/v1/keys/{id}/usage", params={"id": key["id"]})
        seals = g.expect(200, "filer", "GET", "/v1/seals")
        if seals is not None and seals.json()["seals"]:
            seal = _picked(seals.json()["seals"], pick)
            g.expect(200, "filer", "GET", "/v1/seals/{id}/image", params={"id": seal["id"]})
            g.expect(200, "auditor", "GET", "/v1/filings", query={"seal_id": seal["id"]})

    @rule(after=st.none() | st.integers(0, 50), limit=st.none() | st.integers(1, 100),
          action=st.none() | st.sampled_from(["seal.*", "key.*", "filing.*", "sign*",
                                              "approval.*"]))
    def read_audit(self, after: int | None, limit: int | None, action: str | None) -> None:
        query = {k: v for k, v in {"after": after, "limit": limit, "action": action}.items()
                 if v is not None}
        gateway().expect(200, "auditor", "GET", "/v1/audit", query=query)

    @rule(reason=st.none() | st.text(max_size=40))
    def refused_grant(self, reason: str | None) -> None:
        """A grant request filed and rejected by the second officer."""
        g = gateway()
        seals = g.expect(200, "auditor", "GET", "/v1/seals")
        if seals is None or not seals.json()["seals"]:
            return
        filed = g.call("key_officer", "POST", "/v1/approvals", body={
            "action": "grant_seal",
            "params": {"client_id": "fuzz-filer", "seal_id": seals.json()["seals"][0]["id"]}})
        if filed.status_code == 201:
            g.expect(200, "key_officer_b", "POST", "/v1/approvals/{id}/reject",
                     params={"id": filed.json()["id"]}, body={"reason": reason})
            g.expect(200, "auditor", "GET", "/v1/approvals/{id}",
                     params={"id": filed.json()["id"]})

    # -- steps shared by the rules --

    def _submitted(self, seal_id: str, action: str, applicant: str, phone: str, legal: str,
                   id_number: str) -> str | None:
        """A filing created, with every material, and submitted: its id."""
        g = gateway()
        created = g.expect(201, "filer", "POST", "/v1/filings", body={
            "seal_id": seal_id, "action": action, "applicant": {"name": applicant, "phone": phone},
            "legal_representative": {"name": legal, "id_number": id_number}})
        if created is None:
            return None
        filing = created.json()["id"]
        for kind, body, media in (("business_license", one_page_pdf(), "application/pdf"),
                                  ("legal_rep_id", seal_png(80), "image/png"),
                                  ("seal_impression", seal_png(), "image/png")):
            g.expect(200, "filer", "PUT", "/v1/filings/{id}/materials/{kind}",
                     params={"id": filing, "kind": kind}, body=body, media_type=media)
        submitted = g.expect(202, "filer", "POST", "/v1/filings/{id}/submit",
                             params={"id": filing})
        return filing if submitted is not None else None

    def _grant_signer(self, seal_id: str) -> None:
        g = gateway()
        filed = g.expect(201, "key_officer", "POST", "/v1/approvals", body={
            "action": "grant_seal", "params": {"client_id": "fuzz-signer", "seal_id": seal_id}})
        if filed is not None:
            g.expect(200, "key_officer_b", "POST", "/v1/approvals/{id}/approve",
                     params={"id": filed.json()["id"]})


def run(base_url: str, tokens: dict[str, str], ca: DevCA, seconds: float,
        steps: int) -> Gateway:
    """Run lifecycles of up to ``steps`` steps until ``seconds`` have passed."""
    global GATEWAY
    GATEWAY = Gateway(base_url, tokens, ca, time.monotonic() + seconds)
    # Generation only: shrinking would replay steps against a gateway they already changed.
    # The run ends when a request finds the time over; hypothesis then replays that lifecycle
    # to report it, which ends at its first request.
    each = settings(max_examples=1_000_000, stateful_step_count=steps, deadline=None,
                    database=None, phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet)
    try:
        run_state_machine_as_test(Lifecycles, settings=each)
    except (TimeUp, Flaky):
        # Replayed once the time is over, a lifecycle ends sooner than it did: hypothesis
        # calls that flaky. Before then, it is a harness that draws from the gateway's state.
        if time.monotonic() <= GATEWAY.deadline:
            raise
    return GATEWAY


def audit_gaps(found: Gateway, events: list[dict[str, Any]]) -> list[str]:
    """Sealing receipts of signatures the gateway returned that no seal.signed event names,
    or that more than one names."""
    logged = Counter(str((e.get("details") or {}).get("sealing_receipt")) for e in events
                     if e.get("action") == "seal.signed")
    return ([f"sealing receipt {r} returned, no seal.signed event"
             for r in sorted(found.receipts - set(logged))]
            + [f"sealing receipt {r} in {n} seal.signed events" for r, n in logged.items()
               if n > 1])
