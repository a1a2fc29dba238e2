"""The seal's legal life over HTTP: filing through authorities, receipts, and every refusal."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import json
import struct
import subprocess
import types
import zlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from cryptography import x509
from joserfc import jws
from joserfc.jwk import ECKey
from PIL import Image
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.embed import EmbeddedFileObject, FileSpec, embed_file
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter

from gateway import app
from gateway.clock import isoformat, parse, utcnow
from gateway.filing import authority_calls
from gateway.filing.adapters import Decision
from gateway.filing.materials import MATERIALS_ENCRYPTED, MIGRATION, legacy_material_blob_key
from gateway.hookspecs import hookimpl
from gateway.hsm import Hsm
from gateway.pki.devca import DevCA
from gateway.settings import SecretRef, Settings
from gateway.signing.jcs import canonicalize
from gateway.signing.jws import b64url_encode, protected_header
from gateway.storage import BackendUnavailable, Write
from plugins.authority_simulator import Faults, OrganisationNameContains, running_simulator
from tests.api.conftest import APPLICANT, LEGAL_REPRESENTATIVE, ORGANIZATION, World
from tests.api.test_sign_pdf import assert_problem
from tests.pdf_samples import one_page_pdf, seal_png

PDF = {"Content-Type": "application/pdf"}
AUTHORITY_TOKEN = "simulator-token-for-tests"


@dataclasses.dataclass
class Filing:
    """A world with a filer, a reviewer and a signer, and a simulator authority beside it."""

    world: World
    filer: dict[str, str]
    reviewer: dict[str, str]
    simulator: Any

    async def seal(self, organization: dict[str, str] | None = None,
                   key: dict[str, Any] | None = None) -> dict[str, Any]:
        key = key or await self.world.key()
        response = await self.world.http.post("/v1/seals", headers=self.filer, json={
            "name": "合同专用章", "type": "04", "organization": organization or ORGANIZATION,
            "key_id": key["id"]})
        assert response.status == 201, await response.text()
        return dict(await response.json())

    async def draft(self, seal_id: str, action: str = "new",
                    authority: str = "local") -> dict[str, Any]:
        """A new filing (a draft) with the standard applicant and legal representative."""
        created = await self.world.http.post("/v1/filings", headers=self.filer, json={
            "seal_id": seal_id, "action": action, "authority": authority,
            "applicant": APPLICANT, "legal_representative": LEGAL_REPRESENTATIVE})
        assert created.status == 201, await created.text()
        return dict(await created.json())

    async def file(self, seal_id: str, action: str, authority: str = "local",
                   materials: bool = True) -> dict[str, Any]:
        """Create and submit a filing; return it as the submit call answered."""
        filing = await self.draft(seal_id, action, authority)
        if materials and action == "new":
            for kind in ("business_license", "legal_rep_id", "seal_impression"):
                put = await self.world.http.put(f"/v1/filings/{filing['id']}/materials/{kind}",
                                                data=seal_png(), headers=self.filer)
                assert put.status == 200, await put.text()
        submitted = await self.world.http.post(f"/v1/filings/{filing['id']}/submit",
                                               headers=self.filer)
        assert submitted.status == 202, await submitted.text()
        return dict(await submitted.json())

    async def approve(self, filing_id: str, **extra: Any) -> dict[str, Any]:
        response = await self.world.http.post(f"/v1/filings/{filing_id}/review",
                                              headers=self.reviewer,
                                              json={"decision": "approve", **extra})
        assert response.status == 200, await response.text()
        return dict(await response.json())

    async def active(self) -> dict[str, Any]:
        seal = await self.seal()
        filing = await self.file(seal["id"], "new")
        await self.approve(filing["id"])
        return dict(await (await self.world.http.get(f"/v1/seals/{seal['id']}",
                                                     headers=self.filer)).json())

    async def sign(self, seal_id: str) -> Any:
        _, signer = await self.world.client("signer", [seal_id])
        return await self.world.http.post(f"/v1/seals/{seal_id}/sign/pdf", data=one_page_pdf(),
                                          headers={**signer, **PDF})


@contextlib.asynccontextmanager
async def filing_world(settings: Settings, hsm: Hsm, dev_ca: DevCA, tmp_path: Path,
                       plugins: tuple[object, ...] = ()) -> AsyncIterator[Filing]:
    """A :class:`Filing` world whose poller is idle (tests call ``process_pending``)."""
    token_file = tmp_path / "authority-token"
    token_file.write_text(AUTHORITY_TOKEN)
    async with running_simulator(AUTHORITY_TOKEN, review_delay_seconds=0.0,
                                 reject_rules=(OrganisationNameContains("拒绝"),)) as simulator:
        http = dataclasses.replace(settings.filing.http, enabled=True, url=simulator.url,
                                   token=SecretRef(file=str(token_file)), backoff_seconds=0.01,
                                   max_attempts=2, timeout_seconds=2.0)
        configured = settings.replace(filing=dataclasses.replace(
            settings.filing, http=http, poll_interval_seconds=3600.0))
        async with World.running(configured, hsm, dev_ca, plugins) as world:
            _, filer = await world.client("filer")
            _, reviewer = await world.client("reviewer")
            yield Filing(world, filer, reviewer, simulator)


@pytest.fixture
async def filing(settings: Settings, hsm: Hsm, dev_ca: DevCA, tmp_path: Path
                 ) -> AsyncIterator[Filing]:
    async with filing_world(settings, hsm, dev_ca, tmp_path) as world:
        yield world


class UnrulyAuthority:
    """A third-party authority plugin's adapter that misbehaves as a test tells it to."""

    name = "unruly"
    display_name = "Unruly authority plugin"

    def __init__(self) -> None:
        self.reviews_locally = False
        self.fails: Exception | None = None
        self.hangs = False
        self.reference: object = ...
        """What submit answers; ``...`` for a proper reference."""
        self.decided: object = None

    async def submit(self, application: Mapping[str, Any]) -> Any:
        await self._misbehave()
        return f"unruly-{application['id']}" if self.reference is ... else self.reference

    async def decision(self, reference: str) -> Any:
        await self._misbehave()
        return self.decided

    async def close(self) -> None:
        return None

    async def _misbehave(self) -> None:
        if self.hangs:
            await asyncio.sleep(3600)
        if self.fails is not None:
            raise self.fails


class UnrulyPlugin:
    def __init__(self, adapter: UnrulyAuthority) -> None:
        self.adapter = adapter

    @hookimpl
    def sealgate_filing_adapters(self) -> list[UnrulyAuthority]:
        return [self.adapter]


@dataclasses.dataclass
class Unruly:
    filing: Filing
    adapter: UnrulyAuthority

    async def file(self, action: str = "renew") -> dict[str, Any]:
        """An active seal's filing with the unruly authority, as submit answered."""
        seal = await self.filing.active()
        return await self.filing.file(seal["id"], action, authority="unruly")


@pytest.fixture
async def unruly(settings: Settings, hsm: Hsm, dev_ca: DevCA, tmp_path: Path
                 ) -> AsyncIterator[Unruly]:
    adapter = UnrulyAuthority()
    async with filing_world(settings, hsm, dev_ca, tmp_path, (UnrulyPlugin(adapter),)) as world:
        yield Unruly(world, adapter)


async def test_new_seal_filed_locally_becomes_active_and_signs(filing: Filing) -> None:
    """draft → pending_filing → active with a receipt; only then does the seal sign."""
    seal = await filing.seal()
    assert seal["status"] == "draft"
    refused = await filing.sign(seal["id"])
    await assert_problem(refused, 409, "seal-not-filed")
    submitted = await filing.file(seal["id"], "new")
    assert submitted["status"] == "under_review"
    pending = await filing.world.http.get(f"/v1/seals/{seal['id']}", headers=filing.filer)
    assert (await pending.json())["status"] == "pending_filing"
    approved = await filing.approve(submitted["id"], valid_days=30)
    assert approved["status"] == "approved"
    assert approved["receipt_number"].startswith("SG")
    now = await (await filing.world.http.get(f"/v1/seals/{seal['id']}",
                                             headers=filing.filer)).json()
    assert now["status"] == "active"
    assert now["receipt_number"] == approved["receipt_number"]
    assert parse(now["valid_to"]) - parse(now["valid_from"]) == dt.timedelta(days=30)
    assert (await filing.sign(seal["id"])).status == 200


async def test_receipt_json_verifies_with_an_independent_jose_library(filing: Filing) -> None:
    """The receipt's detached JWS verifies with joserfc and the platform certificate alone."""
    seal = await filing.active()
    receipt = await (await filing.world.http.get(f"/v1/receipts/{seal['receipt_number']}",
                                                 headers=filing.filer)).json()
    assert receipt["legal_representative"]["id_number_masked"] == "110105********002X"
    assert LEGAL_REPRESENTATIVE["id_number"] not in json.dumps(receipt)
    pem = await (await filing.world.http.get("/v1/platform/certificate")).read()
    certificate = x509.load_pem_x509_certificates(pem)[0]
    header_b64, empty, signature_b64 = receipt["signature"].split(".")
    assert empty == ""
    unsigned = {k: v for k, v in receipt.items() if k != "signature"}
    payload = json.dumps(unsigned, ensure_ascii=False, sort_keys=True,
                         separators=(",", ":")).encode()
    payload_b64 = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    key = ECKey.import_key(certificate.public_key())  # type: ignore[arg-type]
    registry = jws.JWSRegistry(header_registry=None, algorithms=["ES256"])
    registry.max_header_length = 16 * 1024
    obj = jws.deserialize_compact(f"{header_b64}.{payload_b64}.{signature_b64}", key,
                                  registry=registry)
    assert json.loads(obj.payload) == unsigned
    assert obj.protected["alg"] == "ES256"


async def test_receipt_verification_reports_each_check(filing: Filing) -> None:
    """A genuine receipt is valid and current; a changed one is invalid."""
    seal = await filing.active()
    receipt = await (await filing.world.http.get(f"/v1/receipts/{seal['receipt_number']}",
                                                 headers=filing.filer)).json()
    verified = await (await filing.world.http.post("/v1/receipts/verify", json=receipt)).json()
    assert verified["valid"] is True, verified
    assert verified["status"] == "current"
    assert {c["name"] for c in verified["checks"]} >= {"signature", "certificate",
                                                        "seal_status", "validity"}
    forged = {**receipt, "valid_to": "2099-01-01T00:00:00Z"}
    verdict = await (await filing.world.http.post("/v1/receipts/verify", json=forged)).json()
    assert verdict["valid"] is False
    assert verdict["status"] == "invalid"


async def test_a_receipt_signed_with_a_seal_key_is_not_the_platform_s(filing: Filing) -> None:
    """The same CA certifies seals and the platform: a seal's holder who signs a receipt of
    their own making and names their seal certificate in ``x5c`` gets "invalid"."""
    seal = await filing.active()
    receipt = await (await filing.world.http.get(f"/v1/receipts/{seal['receipt_number']}",
                                                 headers=filing.filer)).json()
    _, signer = await filing.world.client("signer", [seal["id"]])

    async def sign_hash(digest: bytes) -> dict[str, Any]:
        response = await filing.world.http.post(
            f"/v1/seals/{seal['id']}/sign/hash", headers=signer,
            json={"hash_algorithm": "sha256", "hashes": [base64.b64encode(digest).decode()]})
        assert response.status == 200, await response.text()
        return dict(await response.json())

    chain = [base64.b64decode(c) for c in (await sign_hash(bytes(32)))["certificate_chain"]]
    forged = {k: v for k, v in receipt.items() if k != "signature"}
    forged["valid_to"] = "2099-01-01T00:00:00Z"
    header = b64url_encode(protected_header("RS256", "forged", chain))
    signing_input = f"{header}.{b64url_encode(canonicalize(forged))}".encode()
    signed = await sign_hash(hashlib.sha256(signing_input).digest())
    forged["signature"] = f"{header}..{b64url_encode(base64.b64decode(signed['signatures'][0]))}"

    verdict = await (await filing.world.http.post("/v1/receipts/verify", json=forged)).json()

    assert verdict["valid"] is False
    assert verdict["status"] == "invalid"
    signature = next(c for c in verdict["checks"] if c["name"] == "signature")
    assert signature["ok"] is False
    assert "platform" in signature["detail"]


async def test_a_receipt_pdf_whose_attachment_inflates_to_gigabytes_is_refused(
    filing: Filing,
) -> None:
    """receipt.json of 64 MiB that compresses to 64 KiB: refused after decoding a little more
    than any receipt needs, not inflated whole (anyone may post to /v1/receipts/verify)."""
    writer = IncrementalPdfFileWriter(io.BytesIO(one_page_pdf()))
    embed_file(writer, FileSpec(
        file_spec_string="receipt.json", file_name="receipt.json",
        embedded_data=EmbeddedFileObject.from_file_data(writer, b" " * (64 * 1024 * 1024),
                                                        mime_type="application/json")))
    out = io.BytesIO()
    writer.write(out)  # type: ignore[no-untyped-call]  # pyHanko's writer is unannotated
    assert len(out.getvalue()) < 1024 * 1024
    response = await filing.world.http.post("/v1/receipts/verify", data=out.getvalue(),
                                            headers=PDF)
    body = await assert_problem(response, 422, "bad-document")
    assert "larger than" in body["detail"]


@pytest.mark.interop
async def test_receipt_pdf_is_signed_readable_and_verifies(
    filing: Filing, tmp_path: Path, poppler: str
) -> None:
    """The receipt PDF renders Chinese text, is PAdES-valid, and verifies through the API."""
    seal = await filing.active()
    response = await filing.world.http.get(f"/v1/receipts/{seal['receipt_number']}.pdf",
                                           headers=filing.filer)
    assert response.status == 200
    pdf = await response.read()
    out = tmp_path / "receipt.pdf"
    out.write_bytes(pdf)
    report = subprocess.run([poppler, str(out)], capture_output=True, text=True, check=False)
    assert "Signature is Valid" in report.stdout, report.stdout
    text = subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert "电子印章备案回执" in text
    assert seal["receipt_number"] in text
    assert "110105********002X" in text
    verified = await (await filing.world.http.post("/v1/receipts/verify", data=pdf,
                                                   headers=PDF)).json()
    assert verified["valid"] is True, verified
    tampered = bytearray(pdf)
    # A digit of the signing time in the signature dictionary: covered by the signature,
    # and still a digit, so the file parses and only the signature breaks.
    spot = pdf.index(b"20", pdf.rindex(b"/M (D")) + 3  # the last digit of the year
    tampered[spot] = ord("1") if tampered[spot] != ord("1") else ord("2")
    response = await filing.world.http.post("/v1/receipts/verify", data=bytes(tampered),
                                            headers=PDF)
    assert response.status == 200, await response.text()
    verdict = await response.json()
    assert verdict["valid"] is False
    assert verdict["status"] == "invalid"
    # An incremental update after the platform's signature (new text painted on the page)
    # leaves that signature intact, but the document is no longer what it signed.
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
    writer.add_stream_to_page(0, writer.add_object(generic.StreamObject(
        stream_data=b"q 1 1 1 rg 0 300 600 600 re f Q BT /F1 24 Tf 50 700 Td (FORGED) Tj ET")))
    updated = io.BytesIO()
    writer.write(updated)  # type: ignore[no-untyped-call]  # pyHanko's writer is unannotated
    verdict = await (await filing.world.http.post("/v1/receipts/verify",
                                                  data=updated.getvalue(), headers=PDF)).json()
    assert verdict["status"] == "invalid"
    assert verdict["checks"][0] == {"name": "pdf_signature", "ok": False, "detail": ANY}


@pytest.mark.parametrize("name", ["示例科技\U000519d5有限公司", "测" * 41],
                         ids=["no-glyph", "past-the-ring"])
async def test_an_organisation_name_the_seal_image_cannot_show_is_422(
    filing: Filing, name: str
) -> None:
    """A name with a character the seal font lacks, or too long for the ring, is 422 naming
    organization.name when the gateway draws the image (it was a 500); with the filer's own
    image_png the same name is taken."""
    key = await filing.world.key()
    seal = {"name": "合同专用章", "type": "04", "key_id": key["id"],
            "organization": {**ORGANIZATION, "name": name}}
    drawn = await filing.world.http.post("/v1/seals", headers=filing.filer, json=seal)
    body = await assert_problem(drawn, 422, "validation-failed")
    assert body["errors"][0]["field"] == "organization.name"
    own_image = {**seal, "image_png": base64.b64encode(seal_png()).decode()}
    given = await filing.world.http.post("/v1/seals", headers=filing.filer, json=own_image)
    assert given.status == 201, await given.text()


async def test_a_seal_is_filed_only_once_its_key_is_certified_and_with_every_material(
    filing: Filing,
) -> None:
    """The receipt names the seal's certificate: a seal whose key has none is refused at
    filing; a submission names every missing material at once."""
    bare = await filing.world.services.keys.create("bare", "ec-p256", "test")
    uncertified = await filing.world.http.post("/v1/seals", headers=filing.filer, json={
        "name": "合同专用章", "type": "04", "organization": ORGANIZATION, "key_id": bare["id"]})
    response = await filing.world.http.post("/v1/filings", headers=filing.filer, json={
        "seal_id": (await uncertified.json())["id"], "action": "new", "authority": "local",
        "applicant": APPLICANT, "legal_representative": LEGAL_REPRESENTATIVE})
    body = await assert_problem(response, 409, "conflict")
    assert "no certificate" in body["detail"]

    seal = await filing.seal()
    created = await filing.draft(seal["id"])
    submitted = await filing.world.http.post(f"/v1/filings/{created['id']}/submit",
                                             headers=filing.filer)
    body = await assert_problem(submitted, 422, "validation-failed")
    assert [e["field"] for e in body["errors"]] == [
        "materials.business_license", "materials.legal_rep_id", "materials.seal_impression"]


async def test_filing_through_the_simulator_authority(filing: Filing) -> None:
    """A filing to the http authority is reviewed there and its decision applied once."""
    seal = await filing.seal()
    submitted = await filing.file(seal["id"], "new", authority="sim")
    assert submitted["status"] == "under_review"
    assert await filing.world.services.filings.process_pending() == 1
    done = await (await filing.world.http.get(f"/v1/filings/{submitted['id']}",
                                              headers=filing.filer)).json()
    assert done["status"] == "approved"
    assert done["decision"]["by"] == "authority:sim"
    assert await filing.world.services.filings.process_pending() == 0
    assert (await filing.sign(seal["id"])).status == 200
    review = await filing.world.http.post(f"/v1/filings/{submitted['id']}/review",
                                          headers=filing.reviewer, json={"decision": "approve"})
    await assert_problem(review, 409, "conflict")


async def test_simulator_rejection_returns_seal_to_draft(filing: Filing) -> None:
    """An authority's rejection leaves the filing rejected and the seal back in draft."""
    seal = await filing.seal({"name": "拒绝测试有限公司", "uscc": "9144030071526726XG"})
    submitted = await filing.file(seal["id"], "new", authority="sim")
    await filing.world.services.filings.process_pending()
    done = await filing.world.services.filings.get(submitted["id"])
    assert done["status"] == "rejected"
    assert done["decision"]["comment"]
    assert (await filing.world.services.seals.record(seal["id"])).data["status"] == "draft"


async def test_authority_outage_leaves_filing_submitted_then_completes_once(
    filing: Filing,
) -> None:
    """While the authority is down the filing waits; afterwards it completes exactly once."""
    state = filing.simulator.state
    seal = await filing.seal()
    state.faults = Faults("down")
    submitted = await filing.file(seal["id"], "new", authority="sim")
    assert submitted["status"] == "submitted"
    assert await filing.world.services.filings.process_pending() == 0
    assert (await filing.world.services.filings.get(submitted["id"]))["status"] == "submitted"
    state.faults = None
    await filing.world.services.filings.process_pending()
    await filing.world.services.filings.process_pending()
    done = await filing.world.services.filings.get(submitted["id"])
    assert done["status"] == "approved"
    assert len(state.filings_for(submitted["id"])) == 1


async def test_a_token_the_authority_refuses_leaves_the_filing_for_later(
    filing: Filing,
) -> None:
    """A 401 is the gateway's credentials, not a verdict on the application: the filing
    stays submitted, the seal pending, and it is handed over once the token is right."""
    token_file = Path(str(filing.world.services.settings.filing.http.token.file))
    token_file.write_text("rotated-on-the-authority-side-first")
    seal = await filing.seal()
    submitted = await filing.file(seal["id"], "new", authority="sim")
    assert submitted["status"] == "submitted"
    assert (await filing.world.services.seals.record(seal["id"])).data["status"] == (
        "pending_filing")
    token_file.write_text(AUTHORITY_TOKEN)
    filings = filing.world.services.filings
    assert await filings.process_pending() == 2  # handed over, then decided
    assert (await filings.get(submitted["id"]))["status"] == "approved"


async def test_a_filing_the_authority_refuses_to_show_does_not_hold_up_the_others(
    filing: Filing,
) -> None:
    """One filing whose reference the authority no longer knows (404), and one granted a
    validity past ten years, stay under review for a person to look at; the rest of the
    pass still collects its decisions."""
    state = filing.simulator.state
    state.review_delay_seconds = 3600.0
    submitted = [(await filing.file((await filing.seal())["id"], "new", authority="sim"))
                 for _ in range(3)]
    listed = [r.key for r in await filing.world.services.storage.list(
        "filing", where={"status": "under_review"})]
    lost = await filing.world.services.filings.get(listed[0])
    del state.filings[lost["reference"]]
    state.review_delay_seconds = 0.0
    assert await filing.world.services.filings.process_pending() == 2
    statuses = {f["id"]: (await filing.world.services.filings.get(f["id"]))["status"]
                for f in submitted}
    assert statuses.pop(lost["id"]) == "under_review"
    assert set(statuses.values()) == {"approved"}

    state.valid_days = 3651
    too_long = await filing.file((await filing.seal())["id"], "new", authority="sim")
    assert await filing.world.services.filings.process_pending() == 0
    assert (await filing.world.services.filings.get(too_long["id"]))["status"] == "under_review"


@pytest.mark.parametrize("decided", [
    {"outcome": "approved"},
    Decision("approve"),  # type: ignore[arg-type]
    Decision("approved", valid_days=0),
    Decision("approved", valid_days=-30),
    Decision("approved", valid_days=100_000),
    Decision("approved", valid_days="30"),  # type: ignore[arg-type]
    Decision("approved", reference=None),  # type: ignore[arg-type]
])
async def test_an_unusable_decision_from_a_plugin_leaves_the_filing_under_review(
    unruly: Unruly, decided: object
) -> None:
    """A decision that is no Decision, or names an unknown outcome or a validity outside
    1 to 3650 days, is not applied: the filing waits under review, the seal keeps its
    validity, and a proper decision later is applied."""
    submitted = await unruly.file()
    assert submitted["status"] == "under_review"
    filings = unruly.filing.world.services.filings
    seal_before = (await unruly.filing.world.services.seals.record(submitted["seal_id"])).data
    unruly.adapter.decided = decided
    assert await filings.process_pending() == 0
    assert (await filings.get(submitted["id"]))["status"] == "under_review"
    seal_after = (await unruly.filing.world.services.seals.record(submitted["seal_id"])).data
    assert seal_after["valid_to"] == seal_before["valid_to"]
    unruly.adapter.decided = Decision("approved", valid_days=30)
    assert await filings.process_pending() == 1
    assert (await filings.get(submitted["id"]))["status"] == "approved"


@pytest.mark.parametrize("reference", [None, "", 42])
async def test_a_submission_a_plugin_answers_without_a_reference_is_retried(
    unruly: Unruly, reference: object
) -> None:
    """No reference is no hand-over: the filing stays submitted until one comes."""
    unruly.adapter.reference = reference
    submitted = await unruly.file("suspend")
    assert submitted["status"] == "submitted"
    assert submitted["reference"] is None
    unruly.adapter.reference = ...
    assert await unruly.filing.world.services.filings.process_pending() == 1
    moved = await unruly.filing.world.services.filings.get(submitted["id"])
    assert moved["status"] == "under_review"
    assert moved["reference"] == f"unruly-{submitted['id']}"


async def test_a_plugin_that_hangs_is_given_up_on_in_time(
    unruly: Unruly, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submission or poll into an adapter that never answers ends at the adapter timeout;
    the filing waits for the next pass."""
    monkeypatch.setattr(authority_calls, "ADAPTER_TIMEOUT_SECONDS", 0.2)
    seal = await unruly.filing.active()
    unruly.adapter.hangs = True
    submitted = await asyncio.wait_for(
        unruly.filing.file(seal["id"], "suspend", authority="unruly"), 10)
    assert submitted["status"] == "submitted"
    filings = unruly.filing.world.services.filings
    assert await asyncio.wait_for(filings.process_pending(), 10) == 0
    unruly.adapter.hangs = False
    assert await filings.process_pending() == 1
    unruly.adapter.hangs = True
    assert await asyncio.wait_for(filings.process_pending(), 10) == 0
    assert (await filings.get(submitted["id"]))["status"] == "under_review"


async def test_a_plugin_that_raises_at_submission_leaves_the_filing_to_the_poller(
    unruly: Unruly,
) -> None:
    """The submission is committed before the adapter is called: a plugin's exception then
    answers 202 with the filing submitted (not 500), and the poller hands it over later."""
    unruly.adapter.fails = RuntimeError("a bug in the plugin")
    submitted = await unruly.file("suspend")
    assert submitted["status"] == "submitted"
    filings = unruly.filing.world.services.filings
    assert await filings.process_pending() == 0
    unruly.adapter.fails = None
    assert await filings.process_pending() == 1
    assert (await filings.get(submitted["id"]))["status"] == "under_review"


async def test_a_plugin_that_raises_does_not_hold_up_the_other_filings(unruly: Unruly) -> None:
    """One adapter raising on every filing it has leaves the other authorities' filings to
    advance in the same pass."""
    stuck = await unruly.file("suspend")
    seal = await unruly.filing.seal()
    remote = await unruly.filing.file(seal["id"], "new", authority="sim")
    unruly.adapter.fails = KeyError("reference")
    filings = unruly.filing.world.services.filings
    assert await filings.process_pending() == 1
    assert (await filings.get(remote["id"]))["status"] == "approved"
    assert (await filings.get(stuck["id"]))["status"] == "under_review"


async def test_a_hand_over_to_a_local_authority_left_unfinished_is_finished_by_the_poller(
    unruly: Unruly,
) -> None:
    """A filing for an authority whose reviewers decide in the gateway, left submitted
    (its worker died between the two commits of submit), is handed over by the next pass
    and can then be reviewed."""
    unruly.adapter.reviews_locally = True
    unruly.adapter.fails = RuntimeError("the worker died here")
    submitted = await unruly.file("suspend")
    assert submitted["status"] == "submitted"
    unruly.adapter.fails = None
    filings = unruly.filing.world.services.filings
    assert await filings.process_pending() == 1
    assert (await filings.get(submitted["id"]))["status"] == "under_review"
    assert await filings.process_pending() == 0
    approved = await unruly.filing.approve(submitted["id"])
    assert approved["status"] == "approved"


async def test_a_filing_whose_authority_is_no_longer_installed_is_a_conflict(
    settings: Settings, hsm: Hsm, dev_ca: DevCA, tmp_path: Path
) -> None:
    """A filing made for an authority plugin that is then removed is refused with 409 naming
    that authority, at submission and review alike; the poller passes it by."""
    async with filing_world(settings, hsm, dev_ca, tmp_path,
                            (UnrulyPlugin(UnrulyAuthority()),)) as world:
        seal = await world.active()
        under_review = await world.file(seal["id"], "suspend", authority="unruly")
        draft = await world.draft(seal["id"], "renew", "unruly")
    async with filing_world(settings, hsm, dev_ca, tmp_path) as world:
        review = await world.world.http.post(f"/v1/filings/{under_review['id']}/review",
                                             headers=world.reviewer, json={"decision": "reject"})
        body = await assert_problem(review, 409, "conflict")
        assert "'unruly' is not installed" in body["detail"]
        submit = await world.world.http.post(f"/v1/filings/{draft['id']}/submit",
                                             headers=world.filer)
        body = await assert_problem(submit, 409, "conflict")
        assert "'unruly' is not installed" in body["detail"]
        assert (await world.world.services.filings.get(draft["id"]))["status"] == "draft"
        assert await world.world.services.filings.process_pending() == 0


async def test_suspend_resume_loss_and_cancel_each_refuse_with_their_reason(
    filing: Filing,
) -> None:
    """Every status change refuses signing with its own reason, and resume restores it."""
    seal = await filing.active()
    suspend = await filing.file(seal["id"], "suspend")
    await filing.approve(suspend["id"])
    await assert_problem(await filing.sign(seal["id"]), 409, "seal-suspended")
    resume = await filing.file(seal["id"], "resume")
    await filing.approve(resume["id"])
    assert (await filing.sign(seal["id"])).status == 200
    loss = await filing.file(seal["id"], "report_loss")
    await assert_problem(await filing.sign(seal["id"]), 409, "seal-loss-reported")
    await filing.approve(loss["id"])
    await assert_problem(await filing.sign(seal["id"]), 409, "seal-lost")
    cancel = await filing.file(seal["id"], "cancel")
    approved = await filing.approve(cancel["id"])
    await assert_problem(await filing.sign(seal["id"]), 409, "seal-cancelled")
    first = await (await filing.world.http.get(f"/v1/receipts/{seal['receipt_number']}",
                                               headers=filing.filer)).json()
    verdict = await (await filing.world.http.post("/v1/receipts/verify", json=first)).json()
    assert verdict["status"] == "authentic_not_current"
    assert verdict["valid"] is False
    last = await filing.world.services.receipts.get(approved["receipt_number"])
    assert last["seal_status"] == "cancelled"
    assert last["supersedes"]


async def test_a_receipt_is_not_current_while_the_seal_s_loss_is_under_review(
    filing: Filing,
) -> None:
    """From the loss report's submission the receipt verifies as authentic but not current,
    saying why; a rejected report makes it current again."""
    seal = await filing.active()
    receipt = await filing.world.services.receipts.get(seal["receipt_number"])
    loss = await filing.file(seal["id"], "report_loss")
    verdict = await (await filing.world.http.post("/v1/receipts/verify", json=receipt)).json()
    assert verdict["status"] == "authentic_not_current"
    check = next(c for c in verdict["checks"] if c["name"] == "seal_status")
    assert check == {"name": "seal_status", "ok": False,
                     "detail": "the seal is active; its loss has been reported and is under review"}
    await reject(filing, loss["id"])
    verdict = await (await filing.world.http.post("/v1/receipts/verify", json=receipt)).json()
    assert verdict["status"] == "current"


async def reject(filing: Filing, filing_id: str) -> None:
    response = await filing.world.http.post(f"/v1/filings/{filing_id}/review",
                                            headers=filing.reviewer,
                                            json={"decision": "reject", "comment": "no"})
    assert response.status == 200, await response.text()


async def test_rejecting_an_older_filing_does_not_revive_a_cancelled_seal(
    filing: Filing,
) -> None:
    """A suspension still under review when a cancellation is approved, then rejected:
    the seal stays cancelled and refuses to sign."""
    seal = await filing.active()
    suspend = await filing.file(seal["id"], "suspend")
    cancel = await filing.file(seal["id"], "cancel")
    await filing.approve(cancel["id"])
    await reject(filing, suspend["id"])
    assert (await filing.world.services.seals.record(seal["id"])).data["status"] == "cancelled"
    await assert_problem(await filing.sign(seal["id"]), 409, "seal-cancelled")


@pytest.mark.parametrize("other", ["renew", "suspend"])
@pytest.mark.parametrize("decision", ["approve", "reject"])
async def test_a_loss_report_under_review_stops_signing_whatever_else_is_decided(
    filing: Filing, other: str, decision: str,
) -> None:
    """Only the loss report's own decision lifts its stop: approving or rejecting another
    filing for the seal meanwhile leaves the seal refusing to sign."""
    seal = await filing.active()
    first = await filing.file(seal["id"], other)
    loss = await filing.file(seal["id"], "report_loss")
    if decision == "approve":
        await filing.approve(first["id"])
    else:
        await reject(filing, first["id"])
    record = (await filing.world.services.seals.record(seal["id"])).data
    assert record["signing_stopped"] == {"reason": "loss-reported", "filing_id": loss["id"]}
    suspended = other == "suspend" and decision == "approve"
    refusal = "seal-suspended" if suspended else "seal-loss-reported"  # status is told first
    await assert_problem(await filing.sign(seal["id"]), 409, refusal)
    await reject(filing, loss["id"])
    assert (await filing.world.services.seals.record(seal["id"])).data["signing_stopped"] is None
    response = await filing.sign(seal["id"])
    if suspended:
        await assert_problem(response, 409, "seal-suspended")
    else:
        assert response.status == 200, await response.text()


async def test_expired_seal_refuses_and_renewal_restores_it(filing: Filing) -> None:
    """Past its validity a seal is expired and refuses; an approved renewal signs again."""
    seal = await filing.active()
    record = await filing.world.services.seals.record(seal["id"])
    await filing.world.services.seals.update(record, {
        "valid_from": isoformat(utcnow() - dt.timedelta(days=400)),
        "valid_to": isoformat(utcnow() - dt.timedelta(days=1))})
    shown = await (await filing.world.http.get(f"/v1/seals/{seal['id']}",
                                               headers=filing.filer)).json()
    assert shown["status"] == "expired"
    await assert_problem(await filing.sign(seal["id"]), 409, "seal-expired")
    renew = await filing.file(seal["id"], "renew")
    await filing.approve(renew["id"], valid_days=365)
    assert (await filing.sign(seal["id"])).status == 200


async def test_renewal_before_expiry_extends_without_a_gap(filing: Filing) -> None:
    """A renewal approved before expiry continues from the old end: no gap, no overlap."""
    seal = await filing.active()
    renew = await filing.file(seal["id"], "renew")
    await filing.approve(renew["id"], valid_days=10)
    renewed = (await filing.world.services.seals.record(seal["id"])).data
    assert renewed["valid_from"] == seal["valid_from"]
    assert parse(renewed["valid_to"]) == parse(seal["valid_to"]) + dt.timedelta(days=10)
    assert (await filing.sign(seal["id"])).status == 200


async def test_a_rotated_seal_s_receipt_is_not_current_until_a_change_files_the_new_key(
    filing: Filing,
) -> None:
    """The receipt files the seal's certificate. After a rotation the seal signs on (no gap),
    but its receipt no longer describes it; a change filing's receipt, which files the new
    certificate, is current."""
    world = filing.world
    seal = await filing.active()
    new_key = await world.key()
    rotated = await world.http.post(f"/v1/seals/{seal['id']}/rotate-key",
                                    json={"key_id": new_key["id"]},
                                    headers=(await world.client("key_officer"))[1])
    assert rotated.status == 200, await rotated.text()
    assert (await filing.sign(seal["id"])).status == 200
    receipt = await (await world.http.get(f"/v1/receipts/{seal['receipt_number']}",
                                          headers=filing.filer)).json()
    verdict = await (await world.http.post("/v1/receipts/verify", json=receipt)).json()
    assert verdict["status"] == "authentic_not_current"
    [check] = [c for c in verdict["checks"] if c["name"] == "seal_certificate"]
    assert not check["ok"]
    assert "change filing" in check["detail"]

    change = await filing.file(seal["id"], "change")
    decided = await filing.approve(change["id"])
    changed = await (await world.http.get(f"/v1/receipts/{decided['receipt_number']}",
                                          headers=filing.filer)).json()
    assert changed["certificate"]["sha256"] == new_key["certificate"]["sha256"]
    verdict = await (await world.http.post("/v1/receipts/verify", json=changed)).json()
    assert verdict["status"] == "current", verdict


async def test_two_reviewers_deciding_one_filing_at_once_get_one_200_and_one_409(
    filing: Filing,
) -> None:
    """Both read the filing under review; the second write finds it changed. That reviewer
    gets 409 (read it again), never a 500, and the filing is decided once."""
    for _ in range(5):
        seal = await filing.seal()
        submitted = await filing.file(seal["id"], "new")

        review = f"/v1/filings/{submitted['id']}/review"
        answers = await asyncio.gather(*(
            filing.world.http.post(review, headers=filing.reviewer, json={"decision": "approve"})
            for _ in range(2)))
        assert sorted(a.status for a in answers) == [200, 409], [a.status for a in answers]
        [loser] = [a for a in answers if a.status == 409]
        problem = await loser.json()
        assert problem["type"].rsplit("/", 1)[1] in ("conflict", "invalid-transition")


async def test_a_change_keeps_the_seal_s_validity(filing: Filing) -> None:
    """A change alters the filed details, never the validity: its receipt and the seal keep
    the period they had, whatever validity the reviewer names."""
    seal = await filing.seal()
    await filing.approve((await filing.file(seal["id"], "new"))["id"], valid_days=30)
    before = (await filing.world.services.seals.record(seal["id"])).data
    for extra in ({}, {"valid_days": 1}):
        change = await filing.file(seal["id"], "change")
        approved = await filing.approve(change["id"], **extra)
        after = (await filing.world.services.seals.record(seal["id"])).data
        assert (after["valid_from"], after["valid_to"]) == (before["valid_from"],
                                                            before["valid_to"])
        receipt = await filing.world.services.receipts.get(approved["receipt_number"])
        assert (receipt["valid_from"], receipt["valid_to"]) == (before["valid_from"],
                                                                before["valid_to"])
        assert receipt["action"] == "change"


async def certified_for(filing: Filing, days: int) -> dict[str, Any]:
    """A key whose dev-CA certificate is valid for ``days``."""
    key = await filing.world.services.keys.create("test-short", "rsa-2048", "test")
    return await filing.world.services.keys.certify(key, filing.world.ca, "测试合同专用章",
                                                    ORGANIZATION["name"], "test", days=days)


async def test_renewals_stack_no_further_than_ten_years_from_the_decision(
    filing: Filing,
) -> None:
    """A renewal of ten years approved on a seal with ten years left ends ten years from the
    approval, not twenty."""
    seal = await filing.seal(key=await certified_for(filing, 30 * 365))
    await filing.approve((await filing.file(seal["id"], "new"))["id"], valid_days=3650)
    renew = await filing.file(seal["id"], "renew")
    approved = await filing.approve(renew["id"], valid_days=3650)
    receipt = await filing.world.services.receipts.get(approved["receipt_number"])
    decided = parse(receipt["issued_at"])
    assert parse(receipt["valid_to"]) == decided + dt.timedelta(days=3650)
    seal_now = (await filing.world.services.seals.record(seal["id"])).data
    assert seal_now["valid_to"] == receipt["valid_to"]


async def test_a_receipt_ends_when_the_certificate_it_names_does(filing: Filing) -> None:
    """Validity granted past the seal certificate's end stops at it; once that certificate
    has expired, a new filing or renewal is refused until a new one is imported."""
    key = await certified_for(filing, 10)
    seal = await filing.seal(key=key)
    new = await filing.file(seal["id"], "new")
    approved = await filing.approve(new["id"], valid_days=365)
    receipt = await filing.world.services.receipts.get(approved["receipt_number"])
    assert parse(receipt["valid_to"]) == parse(key["certificate"]["not_after"])

    renew = await filing.file(seal["id"], "renew")
    record = await filing.world.services.storage.get("key", key["id"])
    assert record is not None
    expired = {**record.data["certificate"], "not_after": isoformat(utcnow())}
    await filing.world.services.storage.commit(
        [Write("key", key["id"], record.version, {**record.data, "certificate": expired})])
    response = await filing.world.http.post(f"/v1/filings/{renew['id']}/review",
                                            headers=filing.reviewer, json={"decision": "approve"})
    body = await assert_problem(response, 409, "conflict")
    assert "certificate expired" in body["detail"]
    assert (await filing.world.services.filings.get(renew["id"]))["status"] == "under_review"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"organization": {"name": "某公司", "uscc": "91350100M000100Y4Z"}},
         "organization.uscc"),
        ({"organization": {"name": "某公司", "uscc": "91350100M000100Y44"}},
         "organization.uscc"),
        ({"type": "07"}, "type"),
        ({"name": ""}, "name"),
        ({"image_png": "bm90IGEgcG5n"}, "image_png"),
        # Empty or not a string: refused, not taken for "no image" (the standard one was drawn).
        ({"image_png": ""}, "image_png"),
        ({"image_png": {}}, "image_png"),
        ({"image_png": []}, "image_png"),
        ({"image_png": 0}, "image_png"),
        ({"image_png": False}, "image_png"),
        ({"image_png": 12345678}, "image_png"),
    ],
)
async def test_bad_seal_fields_are_422_naming_the_field(
    filing: Filing, body: dict[str, Any], field: str
) -> None:
    """Seal creation names the invalid field, with the USCC checked by its checksum."""
    key = await filing.world.key()
    request = {"name": "合同专用章", "type": "04", "organization": ORGANIZATION,
               "key_id": key["id"], **body}
    response = await filing.world.http.post("/v1/seals", headers=filing.filer, json=request)
    problem = await assert_problem(response, 422, "validation-failed")
    assert problem["errors"][0]["field"] == field


async def test_a_null_image_png_is_the_standard_image(filing: Filing) -> None:
    """``"image_png": null`` is as if left out: the gateway draws the standard seal."""
    key = await filing.world.key()
    response = await filing.world.http.post("/v1/seals", headers=filing.filer, json={
        "name": "合同专用章", "type": "04", "organization": ORGANIZATION, "key_id": key["id"],
        "image_png": None})
    assert response.status == 201, await response.text()
    assert (await response.json())["image_size_mm"] == {"width": 40.0, "height": 40.0}


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` grey pixels, with almost no data:
    decoding it would take gigabytes, reading its header takes nothing."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(1 + width))) + chunk(b"IEND", b""))


@pytest.mark.parametrize(("width", "height"), [(6000, 6000), (30000, 30000)])
async def test_a_seal_picture_declaring_too_many_pixels_is_422(
    filing: Filing, width: int, height: int
) -> None:
    """Refused from the PNG header, before any pixel is decoded."""
    key = await filing.world.key()
    response = await filing.world.http.post("/v1/seals", headers=filing.filer, json={
        "name": "合同专用章", "type": "04", "organization": ORGANIZATION, "key_id": key["id"],
        "image_png": base64.b64encode(png_declaring(width, height)).decode()})
    problem = await assert_problem(response, 422, "validation-failed")
    assert problem["errors"][0]["field"] == "image_png"


async def test_a_seal_picture_of_unknown_resolution_is_taken_at_300_dpi(filing: Filing) -> None:
    """A pHYs chunk of 0 pixels per metre means "unknown", not a division by zero."""
    picture = io.BytesIO()
    Image.new("L", (472, 472), 255).save(picture, "PNG", dpi=(0, 0))
    key = await filing.world.key()
    response = await filing.world.http.post("/v1/seals", headers=filing.filer, json={
        "name": "合同专用章", "type": "04", "organization": ORGANIZATION, "key_id": key["id"],
        "image_png": base64.b64encode(picture.getvalue()).decode()})
    assert response.status == 201, await response.text()
    assert (await response.json())["image_size_mm"] == {"width": 40.0, "height": 40.0}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"legal_representative": {"name": "张三", "id_number": "110105194912310021"}},
         "legal_representative.id_number"),
        ({"legal_representative": {"name": "张三", "id_number": "11010519491331002X"}},
         "legal_representative.id_number"),
        ({"applicant": {"name": "李四", "phone": "12345"}}, "applicant.phone"),
        ({"applicant": {"name": "李四", "phone": "13８００１３８０００"}}, "applicant.phone"),
        ({"applicant": {"name": "李四", "phone": "010-١٢٣٤٥٦٧٨"}}, "applicant.phone"),
        ({"action": "destroy"}, "action"),
        ({"authority": "nowhere"}, "authority"),
    ],
)
async def test_bad_filing_fields_are_422_naming_the_field(
    filing: Filing, change: dict[str, Any], field: str
) -> None:
    """Filing creation names the invalid field: ID checksum and birth date included."""
    seal = await filing.seal()
    body = {"seal_id": seal["id"], "action": "new", "authority": "local",
            "applicant": APPLICANT, "legal_representative": LEGAL_REPRESENTATIVE, **change}
    response = await filing.world.http.post("/v1/filings", headers=filing.filer, json=body)
    problem = await assert_problem(response, 422, "validation-failed")
    assert problem["errors"][0]["field"] == field
    assert LEGAL_REPRESENTATIVE["id_number"][:10] not in json.dumps(problem)


async def test_invalid_transitions_are_409_naming_the_state(filing: Filing) -> None:
    """Submitting twice, reviewing a draft and suspending a draft seal are refused."""
    seal = await filing.seal()
    suspend = await filing.world.http.post("/v1/filings", headers=filing.filer, json={
        "seal_id": seal["id"], "action": "suspend", "authority": "local",
        "applicant": APPLICANT, "legal_representative": LEGAL_REPRESENTATIVE})
    body = await assert_problem(suspend, 409, "invalid-transition")
    assert "draft" in body["detail"]
    created = await filing.draft(seal["id"])
    review = await filing.world.http.post(f"/v1/filings/{created['id']}/review",
                                          headers=filing.reviewer, json={"decision": "approve"})
    body = await assert_problem(review, 409, "invalid-transition")
    assert "draft" in body["detail"]
    missing = await filing.world.http.post(f"/v1/filings/{created['id']}/submit",
                                           headers=filing.filer)
    problem = await assert_problem(missing, 422, "validation-failed")
    assert problem["errors"][0]["field"] == "materials.business_license"


async def test_bad_materials_are_refused(filing: Filing) -> None:
    """Materials must be PDF, PNG or JPEG by content, within the size limit, of a known kind."""
    seal = await filing.seal()
    created = await filing.draft(seal["id"])
    base = f"/v1/filings/{created['id']}/materials"
    text = await filing.world.http.put(f"{base}/business_license", data=b"just text",
                                       headers={**filing.filer, "Content-Type": "image/png"})
    await assert_problem(text, 415, "unsupported-media-type")
    huge = await filing.world.http.put(f"{base}/business_license",
                                       data=b"%PDF-" + bytes(11 * 1024 * 1024),
                                       headers=filing.filer)
    await assert_problem(huge, 413, "payload-too-large")
    unknown = await filing.world.http.put(f"{base}/selfie", data=seal_png(),
                                          headers=filing.filer)
    await assert_problem(unknown, 404, "not-found")


async def test_racing_uploads_of_one_material_send_the_authority_what_the_record_names(
    filing: Filing,
) -> None:
    """Two uploads of one material at once: whichever commits, the authority is sent the
    bytes whose digest the filing records (it rejects a material that does not match)."""
    filings = filing.world.services.filings
    seal = await filing.seal()
    filing_id = (await filing.draft(seal["id"], authority="sim"))["id"]
    for kind in ("business_license", "seal_impression"):
        await filings.put_material(filing_id, kind, seal_png(), "test")
    for _ in range(3):
        outcomes = await asyncio.gather(
            *(filings.put_material(filing_id, "legal_rep_id", document, "test")
              for document in (seal_png(), one_page_pdf())),
            return_exceptions=True)
        assert [type(o) for o in outcomes].count(dict) >= 1, outcomes
    submitted = await filing.world.http.post(f"/v1/filings/{filing_id}/submit",
                                             headers=filing.filer)
    assert (await submitted.json())["status"] == "under_review"
    await filings.process_pending()
    done = await filings.get(filing_id)
    assert done["status"] == "approved", done["decision"]


async def stored_by_an_earlier_release(storage: Any, filing_id: str,
                                       materials: dict[str, bytes]) -> None:
    """Materials as an earlier release kept them: plain, under the filing and kind, with no
    record yet that the encryption at start is done."""
    done = await storage.get(MIGRATION, MATERIALS_ENCRYPTED)
    if done is not None:
        await storage.commit([Write(MIGRATION, MATERIALS_ENCRYPTED, done.version, None)])
    kept = {}
    for kind, body in materials.items():
        await storage.put_blob(legacy_material_blob_key(filing_id, kind), body)
        kept[kind] = {"content_type": "image/png" if kind == "seal_impression"
                      else "application/pdf", "size": len(body),
                      "sha256": hashlib.sha256(body).hexdigest(),
                      "uploaded_at": isoformat(utcnow())}
    record = await storage.get("filing", filing_id)
    assert record is not None
    await storage.commit([Write("filing", filing_id, record.version,
                                {**record.data, "materials": kept})])


@pytest.mark.parametrize("encrypted_at_start", [False, True], ids=["as-stored", "encrypted"])
async def test_materials_stored_plain_before_an_upgrade_are_sent_whole(
    filing: Filing, encrypted_at_start: bool
) -> None:
    """A draft whose materials an earlier release stored as they came (under the filing and
    kind, no encryption), then one more uploaded after the upgrade with the same bytes as
    one of them: each is read from where its record says, and the authority gets bytes that
    match every digest. Encrypted at the next start, the plain copies are blanked."""
    filings, storage = filing.world.services.filings, filing.world.services.storage
    seal = await filing.seal()
    filing_id = (await filing.draft(seal["id"], authority="sim"))["id"]
    document = one_page_pdf()
    await stored_by_an_earlier_release(storage, filing_id, {
        "business_license": document, "seal_impression": seal_png()})
    await filings.put_material(filing_id, "legal_rep_id", document, "test")
    if encrypted_at_start:
        assert await filings.encrypt_stored_materials() == 2
        for kind in ("business_license", "seal_impression"):
            assert await storage.get_blob(legacy_material_blob_key(filing_id, kind)) == b""
        stored = await filings.get(filing_id)
        assert all(m["encrypted"] for m in stored["materials"].values())
        assert await filings.encrypt_stored_materials() == 0
    submitted = await filing.world.http.post(f"/v1/filings/{filing_id}/submit",
                                             headers=filing.filer)
    assert (await submitted.json())["status"] == "under_review"
    await filings.process_pending()
    assert (await filings.get(filing_id))["status"] == "approved"


async def test_personal_numbers_are_encrypted_at_rest_and_masked_everywhere(
    filing: Filing, settings: Settings
) -> None:
    """The full ID and phone numbers, and the ID card scan, are in no response and nowhere in
    the database file; the authority still gets them whole."""
    seal = await filing.active()
    filings = await (await filing.world.http.get(f"/v1/filings?seal_id={seal['id']}",
                                                  headers=filing.filer)).json()
    assert filings["filings"][0]["legal_representative"]["id_number"] == "110105********002X"
    assert filings["filings"][0]["applicant"] == {"name": "李四", "phone": "138****0000"}
    secrets = (LEGAL_REPRESENTATIVE["id_number"], APPLICANT["phone"])
    assert not any(secret in json.dumps(filings) for secret in secrets)
    # The simulated authority refuses a phone number it cannot dial (a masked one), and
    # a material whose digest is not the one filed: the ID card scan, which carries the
    # number, is sent whole.
    seal = await filing.seal()
    created = await filing.draft(seal["id"], authority="sim")
    id_card_scan = one_page_pdf() + f"\n% {LEGAL_REPRESENTATIVE['id_number']}\n".encode()
    for kind, document in (("business_license", seal_png()), ("seal_impression", seal_png()),
                           ("legal_rep_id", id_card_scan)):
        put = await filing.world.http.put(f"/v1/filings/{created['id']}/materials/{kind}",
                                          data=document, headers=filing.filer)
        assert put.status == 200, await put.text()
    remote = await filing.world.http.post(f"/v1/filings/{created['id']}/submit",
                                          headers=filing.filer)
    assert (await remote.json())["status"] == "under_review"
    database = Path(settings.storage.sqlite_path)
    for path in database.parent.glob(database.name + "*"):
        assert not any(secret.encode() in path.read_bytes() for secret in secrets)


async def test_only_reviewers_review(filing: Filing) -> None:
    """A filer cannot approve its own filing."""
    seal = await filing.seal()
    submitted = await filing.file(seal["id"], "new")
    response = await filing.world.http.post(f"/v1/filings/{submitted['id']}/review",
                                            headers=filing.filer, json={"decision": "approve"})
    await assert_problem(response, 403, "forbidden")


async def test_numbers_quoted_in_a_decision_comment_are_masked(filing: Filing) -> None:
    """Reviewers and authorities quote the numbers they object to; the decision keeps their
    words with the ID and phone numbers masked, as everywhere else."""
    seal = await filing.seal()
    submitted = await filing.file(seal["id"], "new")
    comment = (f"法定代表人身份证号{LEGAL_REPRESENTATIVE['id_number']}与姓名不符，"
               f"请联系{APPLICANT['phone']}")
    response = await filing.world.http.post(
        f"/v1/filings/{submitted['id']}/review", headers=filing.reviewer,
        json={"decision": "reject", "comment": comment})
    assert response.status == 200, await response.text()
    decided = await (await filing.world.http.get(f"/v1/filings/{submitted['id']}",
                                                 headers=filing.filer)).json()
    assert decided["decision"]["comment"] == \
        "法定代表人身份证号110105********002X与姓名不符，请联系138****0000"
    storage = filing.world.services.storage
    stored = await storage.get("filing", submitted["id"])
    assert stored is not None
    assert LEGAL_REPRESENTATIVE["id_number"] not in json.dumps(stored.data, ensure_ascii=False)
    # A decision kept unmasked by an earlier release is shown masked.
    await storage.commit([Write("filing", stored.key, stored.version, {
        **stored.data, "decision": {**stored.data["decision"], "comment": comment}})])
    shown = await (await filing.world.http.get(f"/v1/filings/{submitted['id']}",
                                               headers=filing.filer)).json()
    assert shown["decision"]["comment"] == decided["decision"]["comment"]


async def test_a_filing_its_authority_will_not_decide_is_withdrawn_by_a_reviewer(
    filing: Filing,
) -> None:
    """A new seal's filing at a remote authority that lost it kept the seal pending for
    good. A reviewer withdraws it with a reason: rejected, the seal a draft again, filed
    anew; the authority's later answer changes nothing."""
    seal = await filing.seal()
    remote = await filing.file(seal["id"], "new", authority="sim")
    assert remote["status"] == "under_review"
    filing.simulator.state.filings.clear()  # the authority lost it
    filing.simulator.state.references.clear()
    path = f"/v1/filings/{remote['id']}/withdraw"
    refused = await filing.world.http.post(path, headers=filing.filer, json={"reason": "x"})
    await assert_problem(refused, 403, "forbidden")
    unexplained = await filing.world.http.post(path, headers=filing.reviewer, json={})
    await assert_problem(unexplained, 422, "validation-failed")
    withdrawn = await filing.world.http.post(path, headers=filing.reviewer,
                                             json={"reason": "the authority has no record"})
    assert withdrawn.status == 200, await withdrawn.text()
    decided = await withdrawn.json()
    assert decided["status"] == "rejected"
    assert decided["decision"]["comment"] == "withdrawn: the authority has no record"
    shown = await (await filing.world.http.get(f"/v1/seals/{seal['id']}",
                                               headers=filing.filer)).json()
    assert shown["status"] == "draft"
    again = await filing.world.http.post(path, headers=filing.reviewer, json={"reason": "x"})
    await assert_problem(again, 409, "invalid-transition")
    await filing.world.services.filings.process_pending()
    assert (await filing.world.services.filings.get(remote["id"]))["status"] == "rejected"
    local = await filing.file(seal["id"], "new")
    await filing.approve(local["id"])
    assert (await filing.sign(seal["id"])).status == 200


async def test_a_loss_report_is_not_withdrawn(filing: Filing) -> None:
    """A seal reported lost signs nothing until the authority decides; a reviewer cannot
    lift that stop by withdrawing the report."""
    seal = await filing.active()
    report = await filing.file(seal["id"], "report_loss", authority="sim")
    await assert_problem(await filing.sign(seal["id"]), 409, "seal-loss-reported")
    refused = await filing.world.http.post(f"/v1/filings/{report['id']}/withdraw",
                                           headers=filing.reviewer, json={"reason": "slow"})
    await assert_problem(refused, 409, "invalid-transition")
    await assert_problem(await filing.sign(seal["id"]), 409, "seal-loss-reported")


async def test_the_authority_learns_each_material_s_facts_not_how_it_is_kept(
    filing: Filing,
) -> None:
    """What the application says of a material: its type, size, digest and upload time,
    and its bytes; not the gateway's storage details (it is encrypted here, not there)."""
    seal = await filing.seal()
    created = await filing.file(seal["id"], "new", authority="local")
    record = await filing.world.services.storage.get("filing", created["id"])
    assert record is not None
    application = await filing.world.services.filings._application(record.data)
    assert {m["kind"] for m in application["materials"]} == {
        "business_license", "legal_rep_id", "seal_impression"}
    for material in application["materials"]:
        assert set(material) == {"kind", "content_type", "size", "sha256", "uploaded_at",
                                 "content_b64"}
        content = base64.b64decode(material["content_b64"])
        assert hashlib.sha256(content).hexdigest() == material["sha256"]


async def test_a_storage_outage_ends_a_poller_pass_once(
    filing: Filing, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage gone while the poller advances filings: the pass ends with the outage (its
    caller says so once), not a traceback per filing as if each were a defect."""
    for _ in range(3):
        await filing.file((await filing.seal())["id"], "new", authority="sim")
    filings = filing.world.services.filings

    async def storage_gone(*_args: object) -> int:
        raise BackendUnavailable("storage is gone")

    monkeypatch.setattr(filings, "_advance", storage_gone)
    with pytest.raises(BackendUnavailable):
        await filings.process_pending()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_a_material_gone_from_storage_is_named_before_the_filing_is_submitted(
    filing: Filing,
) -> None:
    """A draft from an earlier release one of whose materials is gone from storage: the
    readable ones are encrypted all the same; its submission is refused (409 naming the
    material) while it is still a draft, and goes through once the filer uploads it again.
    With nothing plain left, the encryption at start is recorded as done."""
    filings, storage = filing.world.services.filings, filing.world.services.storage
    seal = await filing.seal()
    filing_id = (await filing.draft(seal["id"], authority="sim"))["id"]
    await stored_by_an_earlier_release(storage, filing_id, {
        "business_license": one_page_pdf(), "legal_rep_id": one_page_pdf() + b"%scan",
        "seal_impression": seal_png()})
    await storage.put_blob(legacy_material_blob_key(filing_id, "legal_rep_id"), b"")  # lost
    assert await filings.encrypt_stored_materials() == 2
    assert await storage.get(MIGRATION, MATERIALS_ENCRYPTED) is None
    submit = f"/v1/filings/{filing_id}/submit"
    refused = await filing.world.http.post(submit, headers=filing.filer)
    body = await assert_problem(refused, 409, "conflict")
    assert "material legal_rep_id" in body["detail"]
    assert (await filings.get(filing_id))["status"] == "draft"
    await filings.put_material(filing_id, "legal_rep_id", one_page_pdf(), "test")
    submitted = await filing.world.http.post(submit, headers=filing.filer)
    assert (await submitted.json())["status"] == "under_review"
    assert await filings.encrypt_stored_materials() == 0
    assert await storage.get(MIGRATION, MATERIALS_ENCRYPTED) is not None


async def test_a_plain_copy_left_by_an_interrupted_start_is_blanked_at_the_next(
    filing: Filing,
) -> None:
    """A start that encrypted a material and committed, then stopped before blanking the
    plain copy (storage gone, the worker killed): the next start blanks it."""
    filings, storage = filing.world.services.filings, filing.world.services.storage
    seal = await filing.seal()
    filing_id = (await filing.draft(seal["id"], authority="sim"))["id"]
    scan = one_page_pdf() + b"%ID card scan"
    await stored_by_an_earlier_release(storage, filing_id, {"legal_rep_id": scan})
    real_put_blob = storage.put_blob

    async def stopped_before_blanking(key: str, data: bytes) -> None:
        if key == legacy_material_blob_key(filing_id, "legal_rep_id") and not data:
            raise BackendUnavailable("storage went away")
        await real_put_blob(key, data)

    storage.put_blob = stopped_before_blanking  # type: ignore[method-assign]
    try:
        with pytest.raises(BackendUnavailable):
            await filings.encrypt_stored_materials()
    finally:
        storage.put_blob = real_put_blob  # type: ignore[method-assign]
    assert (await filings.get(filing_id))["materials"]["legal_rep_id"]["encrypted"]
    assert await storage.get_blob(legacy_material_blob_key(filing_id, "legal_rep_id")) == scan
    assert await filings.encrypt_stored_materials() == 1
    assert await storage.get_blob(legacy_material_blob_key(filing_id, "legal_rep_id")) == b""
    assert await storage.get(MIGRATION, MATERIALS_ENCRYPTED) is not None


async def test_two_workers_never_poll_the_same_filings_at_once(unruly: Unruly) -> None:
    """Every worker runs the poller; the lease lets one poll. A pass longer than the lease
    (a slow authority) let a second worker take it and poll the same filings beside the
    first: each approval was numbered twice and one number wasted."""
    for _ in range(3):
        await unruly.file("suspend")
    services = unruly.filing.world.services
    polling, most = 0, 0

    async def slow_decision(reference: str) -> Decision:
        nonlocal polling, most
        polling += 1
        most = max(most, polling)
        await asyncio.sleep(0.5)
        polling -= 1
        return Decision("approved")

    unruly.adapter.decision = slow_decision  # type: ignore[method-assign]
    quick = types.SimpleNamespace(
        settings=services.settings.replace(filing=dataclasses.replace(
            services.settings.filing, poll_interval_seconds=0.2)),
        storage=services.storage, filings=services.filings)
    workers = [asyncio.ensure_future(app._poll_filings(quick)) for _ in range(2)]  # type: ignore[arg-type]
    await asyncio.sleep(3.0)
    for worker in workers:
        worker.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    assert most == 1
    numbers = sorted(int(r.key[-6:]) for r in await services.storage.list("receipt"))
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
