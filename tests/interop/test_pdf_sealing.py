"""Sealed PDFs as outside verifiers see them: poppler's pdfsig and pyHanko's validator."""

from __future__ import annotations

import asyncio
import io
import subprocess
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import async_validate_pdf_signature
from pyhanko.sign.validation.pdf_embedded import EmbeddedPdfSignature
from pyhanko.sign.validation.status import ModificationLevel, PdfSignatureStatus
from pyhanko_certvalidator import ValidationContext

from gateway.errors import HsmUnavailable
from gateway.hsm import Hsm, KeyAlgorithm, SignatureScheme
from gateway.pki.devca import DevCA
from gateway.settings import HsmSettings
from gateway.signing import (
    DEFAULT_MARGIN,
    DEFAULT_WIDTH,
    HsmSigner,
    PdfSealer,
    PdfSealOptions,
    Placement,
    SealKey,
)
from gateway.signing.seal_key import max_signature_size, to_asn1_certificate
from gateway.signing.verify import pades_level
from tests import pdf_samples

pytestmark = pytest.mark.interop

PNG = pdf_samples.seal_png()
ASPECT = 1.0  # seal_png() is square
A4_WIDTH, A4_HEIGHT = pdf_samples.A4


@pytest.fixture(scope="module")
def sealer() -> PdfSealer:
    return PdfSealer()


@pytest.fixture(scope="module", params=[KeyAlgorithm.RSA_2048, KeyAlgorithm.EC_P256], ids=str)
async def seal_key(
    request: pytest.FixtureRequest, hsm: Hsm, key_factory: Any, dev_ca: DevCA
) -> SealKey:
    algorithm: KeyAlgorithm = request.param
    key_id, cert = await key_factory(algorithm)
    return SealKey.create(hsm, key_id, algorithm, cert, [dev_ca.certificate])


SAMPLES: dict[str, Callable[[], bytes] | None] = {
    "one-page": pdf_samples.one_page_pdf,
    "fifty-pages": lambda: pdf_samples.multi_page_pdf(50),
    "object-streams": pdf_samples.object_stream_pdf,
    "already-signed": None,  # signed by pyHanko with the key under test
}


async def sample(kind: str, key: SealKey) -> tuple[bytes, int]:
    """The input document and how many signatures it has once sealed."""
    make = SAMPLES[kind]
    if make is None:
        return await pdf_samples.signed_pdf(key.signer), 2
    return make(), 1


def pdfsig_results(pdfsig: str, data: bytes, tmp_path: Path) -> tuple[int, list[str]]:
    """Number of signatures pdfsig lists, and its validation line for each."""
    path = tmp_path / "sealed.pdf"
    path.write_bytes(data)
    run = subprocess.run(
        [pdfsig, "-no-ocsp", str(path)], capture_output=True, text=True, check=True, timeout=60
    )
    lines = [line.strip() for line in run.stdout.splitlines()]
    count = sum(1 for line in lines if line.startswith("Signature #"))
    return count, [line for line in lines if line.startswith("- Signature Validation:")]


Validated = list[tuple[EmbeddedPdfSignature, PdfSignatureStatus]]


async def validate(data: bytes, dev_ca: DevCA) -> Validated:
    """pyHanko's verdict on every signature, trusting only the dev CA."""
    reader = PdfFileReader(io.BytesIO(data))
    results = []
    for signature in reader.embedded_signatures:
        context = ValidationContext(trust_roots=[to_asn1_certificate(dev_ca.certificate)])
        results.append((signature, await async_validate_pdf_signature(signature, context)))
    return results


def widget(data: bytes) -> tuple[generic.DictionaryObject, list[float], int]:
    """The newest signature's widget, its /Rect, and the index of the page that shows it."""
    reader = PdfFileReader(io.BytesIO(data))
    name = reader.embedded_signatures[-1].field_name
    for index in range(int(reader.root["/Pages"]["/Count"])):
        page_ref = reader.find_page_for_modification(index)[0]
        for annot_ref in page_ref.get_object().get("/Annots", []):
            annot = annot_ref.get_object()
            if annot.get("/T") == name:
                assert annot.raw_get("/P").reference == page_ref.reference
                return annot, [float(v) for v in annot["/Rect"]], index
    raise AssertionError(f"no page shows the widget of {name}")


@pytest.mark.parametrize("kind", list(SAMPLES))
async def test_pdfsig_finds_every_signature_valid(
    sealer: PdfSealer, seal_key: SealKey, poppler: str, tmp_path: Path, kind: str
) -> None:
    """pdfsig reports each signature of a sealed document (earlier ones too) as valid."""
    document, expected = await sample(kind, seal_key)
    sealed = await sealer.seal(document, seal_key, PNG, PdfSealOptions(reason="Approved"))
    assert sealed.startswith(document), "the seal must be an incremental update"
    count, validations = pdfsig_results(poppler, sealed, tmp_path)
    assert count == expected
    assert validations == ["- Signature Validation: Signature is Valid."] * expected


@pytest.mark.parametrize("kind", list(SAMPLES))
async def test_pyhanko_validates_seal_as_trusted_pades_b_b(
    sealer: PdfSealer, seal_key: SealKey, dev_ca: DevCA, kind: str
) -> None:
    """pyHanko finds the seal intact, valid, trusted and PAdES B-B, earlier signatures intact."""
    document, expected = await sample(kind, seal_key)
    options = PdfSealOptions(reason="合同审批通过", location="北京")
    results = await validate(await sealer.seal(document, seal_key, PNG, options), dev_ca)
    assert len(results) == expected
    signature, status = results[-1]
    assert status.intact and status.valid and status.trusted
    assert status.coverage is not None and status.coverage.name == "ENTIRE_FILE"
    assert pades_level(signature, status, [to_asn1_certificate(dev_ca.certificate)]) == "B-B"
    assert signature.sig_object["/Reason"] == "合同审批通过"
    assert signature.sig_object["/Location"] == "北京"
    for each, _status in results:
        certificates = [c.chosen.dump() for c in each.signed_data["certificates"]]
        assert sorted(certificates) == sorted(
            [seal_key.certificate.dump(), to_asn1_certificate(dev_ca.certificate).dump()]
        ), "the leaf and its issuer are embedded once each"
    for _earlier, earlier_status in results[:-1]:
        assert earlier_status.intact and earlier_status.valid and earlier_status.trusted
        level = earlier_status.modification_level
        assert level is not None and level <= ModificationLevel.FORM_FILLING


async def test_stamp_lands_where_asked(sealer: PdfSealer, seal_key: SealKey) -> None:
    """page, x, y and width put the seal's widget on that page at that rectangle."""
    options = PdfSealOptions(placement=Placement(page=7, x=100, y=200, width=150))
    sealed = await sealer.seal(pdf_samples.multi_page_pdf(50), seal_key, PNG, options)
    _field, rect, page_index = widget(sealed)
    assert page_index == 6
    assert rect == pytest.approx([100, 200, 250, 200 + 150 * ASPECT])


async def test_default_placement_is_bottom_right_of_last_page(
    sealer: PdfSealer, seal_key: SealKey
) -> None:
    """Without a placement the seal sits in the last page's bottom right corner, inset."""
    sealed = await sealer.seal(pdf_samples.multi_page_pdf(5), seal_key, PNG)
    _field, rect, page_index = widget(sealed)
    assert page_index == 4
    right, bottom = A4_WIDTH - DEFAULT_MARGIN, DEFAULT_MARGIN
    assert rect == pytest.approx(
        [right - DEFAULT_WIDTH, bottom, right, bottom + DEFAULT_WIDTH * ASPECT]
    )


async def test_stamp_is_the_seal_image_without_border_or_text(
    sealer: PdfSealer, seal_key: SealKey
) -> None:
    """The widget's appearance draws the transparent seal picture and nothing else."""
    sealed = await sealer.seal(pdf_samples.one_page_pdf(), seal_key, PNG)
    field, rect, _page = widget(sealed)
    appearance = field["/AP"]["/N"]
    assert list(appearance["/Resources"]) == ["/XObject"]
    operators = appearance.data.split()
    assert operators[0] == b"q" and operators[5:] == [b"0", b"0", b"cm", b"/Seal", b"Do", b"Q"]
    width, height = float(operators[1]), float(operators[4])
    assert (width, height) == pytest.approx((rect[2] - rect[0], rect[3] - rect[1]), abs=1e-3)
    image = appearance["/Resources"]["/XObject"]["/Seal"]
    assert image["/Subtype"] == "/Image" and "/SMask" in image
    assert (image["/Width"], image["/Height"]) == (160, 160)


async def test_invisible_seal_is_valid_and_has_no_area(
    sealer: PdfSealer, seal_key: SealKey, poppler: str, dev_ca: DevCA, tmp_path: Path
) -> None:
    """visible=false adds a valid signature whose widget covers no area and draws nothing."""
    options = PdfSealOptions(visible=False)
    sealed = await sealer.seal(pdf_samples.one_page_pdf(), seal_key, None, options)
    assert pdfsig_results(poppler, sealed, tmp_path)[1] == [
        "- Signature Validation: Signature is Valid."
    ]
    [(signature, status)] = await validate(sealed, dev_ca)
    assert status.bottom_line
    assert pades_level(signature, status, [to_asn1_certificate(dev_ca.certificate)]) == "B-B"
    rect = [float(v) for v in signature.sig_field["/Rect"]]
    assert rect[0] == rect[2] and rect[1] == rect[3]


async def test_pss_key_seals_validly(
    sealer: PdfSealer, hsm: Hsm, key_factory: Any, dev_ca: DevCA, poppler: str, tmp_path: Path
) -> None:
    """An RSA seal key set to PSS produces signatures pdfsig and pyHanko accept."""
    key_id, cert = await key_factory(KeyAlgorithm.RSA_2048)
    key = SealKey.create(
        hsm, key_id, KeyAlgorithm.RSA_2048, cert, [dev_ca.certificate], scheme=SignatureScheme.PSS
    )
    sealed = await sealer.seal(pdf_samples.one_page_pdf(), key, PNG)
    assert pdfsig_results(poppler, sealed, tmp_path)[1] == [
        "- Signature Validation: Signature is Valid."
    ]
    [(signature, status)] = await validate(sealed, dev_ca)
    assert status.bottom_line
    assert signature.signer_info["signature_algorithm"]["algorithm"].native == "rsassa_pss"


async def test_concurrent_seals_are_all_valid(
    sealer: PdfSealer, seal_key: SealKey, dev_ca: DevCA
) -> None:
    """Many seals in flight at once on one key each come out valid, the image decoded once."""
    png = pdf_samples.seal_png(size=120)
    before = sealer.image_cache_info()
    sealed = await asyncio.gather(
        *(sealer.seal(pdf_samples.one_page_pdf(), seal_key, png) for _ in range(8))
    )
    for document in sealed:
        [(_signature, status)] = await validate(document, dev_ca)
        assert status.bottom_line
    after = sealer.image_cache_info()
    assert after.misses - before.misses <= 8 and after.hits - before.hits >= 1


async def test_pdf_work_runs_in_the_given_executor_unless_the_document_is_small(
    seal_key: SealKey, dev_ca: DevCA
) -> None:
    """Reading, writing and CMS assembly go to the sealer's executor, twice per seal; a
    document of at most INLINE_MAX_OBJECTS objects is sealed on the loop. Both validate."""

    class CountingExecutor(ThreadPoolExecutor):
        submitted = 0

        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
            CountingExecutor.submitted += 1
            return super().submit(fn, *args, **kwargs)

    with CountingExecutor(max_workers=2, thread_name_prefix="pdf") as executor:
        small = await PdfSealer(executor).seal(pdf_samples.one_page_pdf(), seal_key, PNG)
        assert CountingExecutor.submitted == 0
        large = await PdfSealer(executor).seal(pdf_samples.multi_page_pdf(50), seal_key, PNG)
        assert CountingExecutor.submitted == 2
    for sealed in (small, large):
        [(_signature, status)] = await validate(sealed, dev_ca)
        assert status.bottom_line


async def test_dry_run_signature_is_sized_without_the_hsm(
    hsm_settings: HsmSettings, dev_ca: DevCA, seal_key: SealKey
) -> None:
    """A dry run returns a placeholder as long as a real signature and never calls the HSM."""
    stopped = Hsm(hsm_settings)  # never started: any token call raises HsmUnavailable
    signer = HsmSigner(stopped, seal_key.key_id, seal_key.algorithm, seal_key.certificate)
    placeholder = await signer.async_sign_raw(b"to be signed", "sha256", dry_run=True)
    assert len(placeholder) == max_signature_size(seal_key.algorithm)
    with pytest.raises(HsmUnavailable):
        await signer.async_sign_raw(b"to be signed", "sha256")
