"""PAdES B-T, B-LT and B-LTA seals as pyHanko's validator, pdfsig and openssl see them."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import DocumentSecurityStore, async_validate_pdf_signature
from pyhanko.sign.validation.ades import ades_lta_validation, ades_with_time_validation
from pyhanko.sign.validation.pdf_embedded import EmbeddedPdfSignature
from pyhanko.sign.validation.policy_decl import (
    LocalKnowledge,
    PdfSignatureValidationSpec,
    RevinfoOnlineFetchingRule,
    RevocationInfoGatheringSpec,
    SignatureValidationSpec,
)
from pyhanko_certvalidator import ValidationContext
from pyhanko_certvalidator.context import CertValidationPolicySpec
from pyhanko_certvalidator.fetchers.aiohttp_fetchers import AIOHttpFetcherBackend
from pyhanko_certvalidator.ltv.types import ValidationTimingInfo
from pyhanko_certvalidator.policy_decl import REQUIRE_REVINFO, CertRevTrustPolicy
from pyhanko_certvalidator.registry import SimpleTrustManager
from pyhanko_certvalidator.revinfo.archival import CRLContainer

from gateway.hsm import Hsm
from gateway.pki.certs import chain_to_pem
from gateway.pki.devca import CRL_PATH, DevCA, crl_url
from gateway.settings import Settings
from gateway.signing.seal_key import to_asn1_certificate
from gateway.signing.tsa import token_info
from gateway.signing.verify import SignatureReport, validate_pdf_signatures
from tests.api.conftest import APPLICANT, LEGAL_REPRESENTATIVE, ORGANIZATION, World
from tests.pdf_samples import one_page_pdf

pytestmark = pytest.mark.interop

PDF = {"Content-Type": "application/pdf"}
LEVELS = ["B-B", "B-T", "B-LT", "B-LTA"]


@pytest.fixture
async def world(settings: Settings, hsm: Hsm, dev_ca: DevCA) -> AsyncIterator[World]:
    async with World.running(settings, hsm, dev_ca) as running:
        yield running


async def seal_at(world: World, level: str, seal: dict[str, Any] | None = None) -> bytes:
    """A one-page PDF sealed over HTTP at ``level`` by a signer granted an active seal."""
    seal = seal or await world.active_seal()
    _, headers = await world.client("signer", [seal["id"]])
    response = await world.http.post(f"/v1/seals/{seal['id']}/sign/pdf?level={level}",
                                     data=one_page_pdf(), headers={**headers, **PDF})
    assert response.status == 200, await response.text()
    return await response.read()


async def reports(document: bytes, dev_ca: DevCA) -> list[SignatureReport]:
    """The gateway's own verdict (gateway.signing.verify) on every signature."""
    roots = [(dev_ca.directory / "ca.pem").read_bytes()]
    return await asyncio.to_thread(validate_pdf_signatures, document, roots)


def seal_signature(document: bytes) -> EmbeddedPdfSignature:
    return PdfFileReader(io.BytesIO(document)).embedded_signatures[0]


def revocation_required(dev_ca: DevCA, knowledge: LocalKnowledge) -> SignatureValidationSpec:
    """pyHanko's AdES policy: trust only the dev CA, require revocation data, fetch nothing."""
    return SignatureValidationSpec(
        cert_validation_policy=CertValidationPolicySpec(
            trust_manager=SimpleTrustManager.build([to_asn1_certificate(dev_ca.certificate)]),
            revinfo_policy=CertRevTrustPolicy(REQUIRE_REVINFO),
        ),
        revinfo_gathering_policy=RevocationInfoGatheringSpec(
            online_fetching_rule=RevinfoOnlineFetchingRule.LOCAL_ONLY),
        local_knowledge=knowledge,
    )


def dss_knowledge(document: bytes) -> tuple[list[asn1_x509.Certificate],
                                             list[asn1_crl.CertificateList]]:
    """Certificates and CRLs in the document's DSS (none when it has no DSS)."""
    reader = PdfFileReader(io.BytesIO(document))
    if "/DSS" not in reader.root:
        return [], []
    dss = DocumentSecurityStore.read_dss(reader)
    crls = [asn1_crl.CertificateList.load(ref.get_object().data) for ref in dss.crls]
    return list(dss.load_certs()), crls


def pdfsig_lines(document: bytes, tmp_path: Path) -> list[str]:
    path = tmp_path / "sealed.pdf"
    path.write_bytes(document)
    run = subprocess.run(["pdfsig", "-no-ocsp", str(path)], capture_output=True, text=True,
                         check=True, timeout=60)
    return [line.strip() for line in run.stdout.splitlines()
            if line.strip().startswith("- Signature Validation:")]


@pytest.mark.parametrize("level", LEVELS)
async def test_each_level_is_reached_and_pdfsig_finds_the_seal_valid(
    world: World, dev_ca: DevCA, poppler: str, tmp_path: Path, level: str
) -> None:
    """pades_level reports the level asked for; pdfsig still says the seal is valid."""
    document = await seal_at(world, level)
    found = await reports(document, dev_ca)
    seal = found[0]
    assert (seal.kind, seal.level, seal.intact, seal.trusted, seal.valid) == (
        "signature", level, True, True, True), seal
    assert seal.problems == []
    assert pdfsig_lines(document, tmp_path)[0] == "- Signature Validation: Signature is Valid."
    if level == "B-LTA":
        [archive] = found[1:]
        assert (archive.kind, archive.intact, archive.trusted, archive.valid) == (
            "document_timestamp", True, True, True)
        assert "Time-Stamping Authority" in archive.signer
    else:
        assert len(found) == 1


@pytest.mark.parametrize("level", ["B-T", "B-LT"])
async def test_pyhanko_validates_with_time_only_once_the_dss_has_revocation_data(
    world: World, dev_ca: DevCA, level: str
) -> None:
    """AdES validation requiring revocation data fails at B-T, passes at B-LT from the DSS."""
    document = await seal_at(world, level)
    signature = seal_signature(document)
    certificates, crls = dss_knowledge(document)
    knowledge = LocalKnowledge(known_certs=certificates,
                               known_crls=[CRLContainer(c) for c in crls])
    result = await ades_with_time_validation(
        signature.signed_data, revocation_required(dev_ca, knowledge),
        raw_digest=signature.compute_digest())
    if level == "B-T":
        assert result.ades_subindic.name == "CERTIFICATE_CHAIN_GENERAL_FAILURE"
        return
    assert result.ades_subindic.name == "OK", result.failure_msg
    [attribute] = [a for a in signature.signer_info["unsigned_attrs"]
                   if a["type"].native == "signature_time_stamp_token"]
    assert result.best_signature_time == token_info(attribute["values"][0])["gen_time"].native


async def test_pyhanko_ades_lta_validation_passes_for_b_lta(world: World, dev_ca: DevCA) -> None:
    """pyHanko's PAdES-LTA validation (DSS plus document time-stamp) passes, nothing fetched."""
    document = await seal_at(world, "B-LTA")
    spec = PdfSignatureValidationSpec(revocation_required(dev_ca, LocalKnowledge()))
    result = await ades_lta_validation(seal_signature(document), spec,
                                       ValidationTimingInfo.now(tz=dt.UTC))
    assert result.ades_subindic.name == "OK", result.failure_msg
    assert result.oldest_evidence_record_timestamp is not None


async def test_dss_holds_both_chains_and_a_crl_issued_after_the_time_stamp(
    world: World, dev_ca: DevCA
) -> None:
    """B-LT's DSS has the seal and TSA certificates and a dev-CA CRL newer than the stamp."""
    document = await seal_at(world, "B-LT")
    signature = seal_signature(document)
    certificates, crls = dss_knowledge(document)
    subjects = {c.subject.native["common_name"] for c in certificates}
    assert {"测试合同专用章", "SealGate Time-Stamping Authority",
            "SealGate Development CA"} <= subjects
    [revocation_list] = crls
    tbs = revocation_list["tbs_cert_list"]
    assert tbs["issuer"] == to_asn1_certificate(dev_ca.certificate).subject
    [attribute] = [a for a in signature.signer_info["unsigned_attrs"]
                   if a["type"].native == "signature_time_stamp_token"]
    stamped = token_info(attribute["values"][0])["gen_time"].native
    # The CRL's times are whole seconds; the token's time has milliseconds.
    assert tbs["this_update"].native >= stamped.replace(microsecond=0)
    assert tbs["next_update"].native > dt.datetime.now(dt.UTC)


async def test_outside_tsa_from_settings_time_stamps_b_t_seals(
    settings: Settings, hsm: Hsm, dev_ca: DevCA, tmp_path: Path
) -> None:
    """With [signing] tsa_url set, B-T tokens come from that TSA (here another gateway)."""
    outside_settings = settings.replace(
        tsa=dataclasses.replace(settings.tsa, allow_anonymous=True, policy_oid="1.2.3.4.99"),
        storage=dataclasses.replace(settings.storage, sqlite_path=str(tmp_path / "outside.db")),
    )
    async with World.running(outside_settings, hsm, dev_ca) as outside:
        url = str(outside.http.make_url("/tsa"))
        inside = settings.replace(signing=dataclasses.replace(settings.signing, tsa_url=url))
        async with World.running(inside, hsm, dev_ca) as world:
            document = await seal_at(world, "B-T")
    signature = seal_signature(document)
    [attribute] = [a for a in signature.signer_info["unsigned_attrs"]
                   if a["type"].native == "signature_time_stamp_token"]
    info = token_info(attribute["values"][0])
    assert info["policy"].dotted == "1.2.3.4.99"
    assert info["nonce"].native is not None
    [report] = await reports(document, dev_ca)
    assert report.level == "B-T" and report.valid


async def test_crl_is_served_for_anyone_and_verifies_with_openssl(
    world: World, dev_ca: DevCA, tmp_path: Path
) -> None:
    """GET /pki/crl/dev-ca.crl is a DER CRL signed by the dev CA with a nextUpdate."""
    response = await world.http.get(CRL_PATH)
    assert response.status == 200
    assert response.content_type == "application/pkix-crl"
    path = tmp_path / "dev-ca.crl"
    path.write_bytes(await response.read())
    run = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(path), "-noout",
                          "-nextupdate", "-CAfile", str(dev_ca.directory / "ca.pem")],
                         capture_output=True, text=True, check=True)
    assert "verify OK" in run.stderr + run.stdout
    assert "nextUpdate=" in run.stdout


def test_certificates_issued_from_now_on_name_the_crl_url(dev_ca: DevCA) -> None:
    """A dev CA opened with the gateway's public URL writes it as CRL distribution point."""
    url = crl_url("https://seals.example.org/")
    ca = DevCA.open(dev_ca.directory, crl_url=url)
    assert ca is not None
    public_key = dev_ca.certificate.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    issued = ca.issue(public_key, "Test Seal", "测试有限公司")
    points = issued.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [p.full_name[0].value for p in points if p.full_name] == [
        "https://seals.example.org/pki/crl/dev-ca.crl"]


async def test_validators_find_the_crl_through_the_certificates_distribution_point(
    world: World, dev_ca: DevCA
) -> None:
    """pyHanko fetches the CRL a new certificate points to and validates with revocation."""
    ca = DevCA.open(dev_ca.directory, crl_url=str(world.http.make_url(CRL_PATH)))
    assert ca is not None
    services = world.services
    key = await services.keys.create("crl-dp-key", "ec-p256", "test")
    cert = ca.issue(services.keys.public_key_der(key), "测试合同专用章", ORGANIZATION["name"])
    await services.keys.import_certificate(
        key["id"], chain_to_pem([cert, ca.certificate]).encode(), "test")
    seal = await services.seals.create(
        {"name": "合同专用章", "type": "04", "organization": ORGANIZATION, "key_id": key["id"]},
        "test")
    await services.filings.file_and_approve_locally(
        seal["id"], APPLICANT, LEGAL_REPRESENTATIVE, "test")
    document = await seal_at(world, "B-B", seal)
    fetching = AIOHttpFetcherBackend()
    try:
        context = ValidationContext(
            trust_roots=[to_asn1_certificate(dev_ca.certificate)], allow_fetching=True,
            revocation_mode="require", fetcher_backend=fetching)
        status = await async_validate_pdf_signature(seal_signature(document), context)
    finally:
        await fetching.close()
    assert status.trusted and status.bottom_line
    assert len(context.crls) == 1


async def test_long_term_levels_refuse_seals_whose_ca_has_no_revocation_data(
    world: World, tmp_path: Path
) -> None:
    """A seal certified by another CA can be sealed at B-T but not at B-LT (422 on level)."""
    other_ca = DevCA.open_or_create(tmp_path / "other-ca", "Another CA")
    services = world.services
    key = await services.keys.create("foreign-ca-key", "rsa-2048", "test")
    cert = other_ca.issue(services.keys.public_key_der(key), "外部证书印章", ORGANIZATION["name"])
    await services.keys.import_certificate(
        key["id"], chain_to_pem([cert, other_ca.certificate]).encode(), "test")
    seal = await services.seals.create(
        {"name": "合同专用章", "type": "04", "organization": ORGANIZATION, "key_id": key["id"]},
        "test")
    await services.filings.file_and_approve_locally(
        seal["id"], APPLICANT, LEGAL_REPRESENTATIVE, "test")
    await seal_at(world, "B-T", seal)
    _, headers = await world.client("signer", [seal["id"]])
    response = await world.http.post(f"/v1/seals/{seal['id']}/sign/pdf?level=B-LT",
                                     data=one_page_pdf(), headers={**headers, **PDF})
    assert response.status == 422
    body = await response.json()
    assert body["errors"][0]["field"] == "level"
    assert "Another CA" in body["errors"][0]["message"]
