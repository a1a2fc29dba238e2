"""The filing receipt PDF: Chinese text that extracts, masked ID only, a readable QR, signable."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import qrcode
from PIL import Image

from gateway.filing.receipt_pdf import receipt_qr_text, render_receipt_pdf
from gateway.seals.image import render_round_seal

FULL_ID = "11010519491231002X"
MASKED_ID = "110105********002X"
ORGANIZATION = "北京某某科技有限公司"
NUMBER = "BA-110105-2025-000123"
CST = timezone(timedelta(hours=8))


def make_receipt(**overrides: Any) -> dict[str, Any]:
    """A complete receipt mapping as the filing module produces it."""
    seal_png = render_round_seal(ORGANIZATION, "合同专用章", "1101050012345")
    receipt: dict[str, Any] = {
        "number": NUMBER,
        "authority": {"id": "local", "name": "北京市电子印章备案中心"},
        "action": "new",
        "seal_status": "active",
        "seal": {"id": "seal-0001", "code": "1101050012345", "name": "合同专用章", "type": "04"},
        "organization": {"name": ORGANIZATION, "uscc": "91350100M000100Y43"},
        "legal_representative": {
            "name": "张三", "id_type": "resident_id", "id_number_masked": MASKED_ID,
            # A careless caller may pass the full number too; it must not reach the page.
            "id_number": FULL_ID,
        },
        "valid_from": datetime(2025, 11, 1, tzinfo=CST),
        "valid_to": "2028-10-31T23:59:59+08:00",
        "issued_at": datetime(2025, 11, 1, 9, 30, tzinfo=CST),
        "certificate": {
            "serial": "5f3a9c0e1d2b4a6f8e7d6c5b4a392817",
            "issuer": "CN=SealGate Development CA, O=SealGate, C=CN",
            "sha256": hashlib.sha256(b"certificate").hexdigest(),
        },
        "seal_image": {"sha256": hashlib.sha256(seal_png).hexdigest(),
                       "width_mm": 40, "height_mm": 40},
        "application_id": "app-0001",
        "supersedes": None,
        "content_digest": hashlib.sha256(b"signed receipt content").hexdigest(),
        "seal_image_png": seal_png,
    }
    receipt.update(overrides)
    return receipt


@pytest.fixture(scope="module")
def receipt() -> dict[str, Any]:
    return make_receipt()


@pytest.fixture(scope="module")
def pdf_file(receipt: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("receipt") / "receipt.pdf"
    path.write_bytes(render_receipt_pdf(receipt))
    return path


@pytest.fixture(scope="module")
def page_png(pdf_file: Path) -> Image.Image:
    """Page 1 rasterised by poppler at 150 dpi, enough for 2.6 pt QR modules."""
    prefix = pdf_file.with_suffix("")
    subprocess.run(["pdftoppm", "-png", "-r", "150", "-singlefile", str(pdf_file),
                    str(prefix)], check=True)
    image = Image.open(prefix.with_suffix(".png"))
    image.load()
    return image


def _text(pdf_file: Path) -> str:
    return subprocess.run(["pdftotext", str(pdf_file), "-"], check=True, capture_output=True,
                          text=True).stdout


def test_text_extracts_with_title_organisation_number_and_masked_id(pdf_file: Path) -> None:
    """pdftotext finds the Chinese title, organisation, receipt number and masked ID."""
    text = _text(pdf_file)
    for expected in ["电子印章备案回执", ORGANIZATION, NUMBER, MASKED_ID, "合同专用章",
                     "91350100M000100Y43", "2025-11-01 09:30:00+08:00", "正常（active）"]:
        assert expected in text


def test_full_id_number_never_reaches_the_page(pdf_file: Path) -> None:
    """Only the masked field is read: the full ID is neither in the text nor in the file."""
    assert FULL_ID not in _text(pdf_file)
    assert FULL_ID.encode() not in pdf_file.read_bytes()


def test_unmasked_number_in_the_masked_field_is_refused() -> None:
    """A full ID number passed as the masked one is a ValueError, not a published ID."""
    representative = {"name": "张三", "id_type": "resident_id", "id_number_masked": FULL_ID}
    with pytest.raises(ValueError, match="not masked"):
        render_receipt_pdf(make_receipt(legal_representative=representative))


def test_missing_field_is_named() -> None:
    """A receipt without a required field is refused with the field's dotted name."""
    receipt = make_receipt()
    receipt["certificate"] = {"serial": "01", "issuer": "CN=x"}
    with pytest.raises(ValueError, match=r"certificate\.sha256"):
        render_receipt_pdf(receipt)


def test_font_is_an_embedded_subset_with_unicode_map(pdf_file: Path) -> None:
    """The one font is embedded, subset and has a ToUnicode map (so text copies right)."""
    listing = subprocess.run(["pdffonts", str(pdf_file)], check=True, capture_output=True,
                             text=True).stdout.splitlines()[2:]
    assert len(listing) == 1
    columns = listing[0].split()
    assert "+" in columns[0]  # the subset tag
    assert columns[-5:-2] == ["yes", "yes", "yes"]  # emb, sub, uni


def test_seal_image_is_drawn_with_its_transparency(pdf_file: Path) -> None:
    """The seal PNG is embedded at full resolution with its alpha as a soft mask."""
    listing = subprocess.run(["pdfimages", "-list", str(pdf_file)], check=True,
                             capture_output=True, text=True).stdout.splitlines()[2:]
    kinds = sorted((row.split()[2], row.split()[3]) for row in listing)
    assert kinds == [("image", "472"), ("smask", "472")]


def test_receipt_without_seal_image_still_renders() -> None:
    """The seal picture is optional; the receipt renders without it."""
    receipt = make_receipt()
    del receipt["seal_image_png"]
    assert render_receipt_pdf(receipt).startswith(b"%PDF-")


def _drawn_qr(page: Image.Image, modules: int) -> list[list[bool]]:
    """Read a ``modules``-wide QR back from the black square at the page's lower right."""
    gray = page.convert("L")
    # Right of the notes (grey text) and below the field sections: only the QR is there.
    corner = gray.crop((gray.width * 3 // 4, gray.height * 3 // 4, gray.width, gray.height))
    box = corner.point(lambda v: 255 if v < 40 else 0).getbbox()
    assert box is not None
    x0, y0, x1, y1 = box
    assert abs((x1 - x0) - (y1 - y0)) <= 1
    step = (x1 - x0) / modules
    return [
        [corner.getpixel((int(x0 + (c + 0.5) * step), int(y0 + (r + 0.5) * step))) < 128
         for c in range(modules)]
        for r in range(modules)
    ]


def test_qr_code_draws_the_matrix_of_number_and_digest(
    receipt: dict[str, Any], page_png: Image.Image
) -> None:
    """The QR drawn on the page is, module for module, the code for number + digest."""
    text = receipt_qr_text(receipt)
    assert NUMBER in text and receipt["content_digest"] in text
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=0)
    qr.add_data(text)
    qr.make(fit=True)
    expected = qr.get_matrix()
    assert _drawn_qr(page_png, len(expected)) == expected


@pytest.mark.skipif(shutil.which("zbarimg") is None, reason="zbar-tools is not installed")
def test_qr_code_decodes_with_zbar(receipt: dict[str, Any], pdf_file: Path,
                                   page_png: Image.Image) -> None:
    """An independent reader (zbarimg) decodes the printed QR to number + digest."""
    png = pdf_file.with_name("page-for-zbar.png")
    page_png.save(png)
    decoded = subprocess.run(["zbarimg", "--quiet", "--raw", str(png)], check=True,
                             capture_output=True, text=True).stdout.strip()
    assert decoded == receipt_qr_text(receipt)


@pytest.mark.interop
def test_pades_signature_appends_as_an_intact_incremental_update(pdf_file: Path) -> None:
    """pyHanko signs the receipt as an incremental update that validates as intact."""
    from asn1crypto import keys as asn1_keys
    from asn1crypto import x509 as asn1_x509
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign import signers
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko_certvalidator import ValidationContext

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Receipt test signer")])
    now = datetime.now(UTC)
    cert = asn1_x509.Certificate.load(
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    )
    signer = signers.SimpleSigner(
        signing_cert=cert,
        signing_key=asn1_keys.PrivateKeyInfo.load(key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())),
        cert_registry=None,
    )
    original = pdf_file.read_bytes()
    signed = signers.sign_pdf(IncrementalPdfFileWriter(io.BytesIO(original)),
                              signers.PdfSignatureMetadata(field_name="Receipt"),
                              signer=signer).getvalue()
    assert signed.startswith(original)
    embedded = PdfFileReader(io.BytesIO(signed)).embedded_signatures[0]
    status = validate_pdf_signature(embedded, ValidationContext(trust_roots=[cert]))
    assert status.intact and status.valid
    assert status.coverage.name == "ENTIRE_FILE"
