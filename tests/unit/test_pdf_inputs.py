"""What PDF sealing answers to bad input: each request error names its cause, nothing escapes."""

from __future__ import annotations

import asyncio
import gc
import math
import random
from typing import Any

import pytest
from pyhanko.pdf_utils import generic

from gateway.errors import (
    BadDocument,
    ClientError,
    UnsupportedMediaType,
    ValidationFailed,
)
from gateway.hsm import Hsm, KeyAlgorithm
from gateway.pki.devca import DevCA
from gateway.signing import (
    PdfSealer,
    PdfSealOptions,
    Placement,
    SealKey,
    check_pdf_header,
    pdf_limits,
)
from gateway.signing.pdf import INLINE_MAX_BYTES, is_small
from gateway.signing.verify import validate_pdf_signatures
from tests import pdf_samples

PNG = pdf_samples.seal_png()


@pytest.fixture(scope="module")
async def seal_key(hsm: Hsm, key_factory: Any, dev_ca: DevCA) -> SealKey:
    key_id, cert = await key_factory(KeyAlgorithm.EC_P256)
    return SealKey.create(hsm, key_id, KeyAlgorithm.EC_P256, cert, [dev_ca.certificate])


@pytest.fixture(scope="module")
def sealer() -> PdfSealer:
    return PdfSealer()


def field_names(exc: ValidationFailed) -> list[str]:
    return [error.field for error in exc.errors]


@pytest.mark.parametrize(
    "body",
    [b"", b"Hello, world", PNG, b"PK\x03\x04" + bytes(64), b" " * 1024 + b"%PDF-1.7\n"],
    ids=["empty", "text", "png", "zip", "header-after-1024-bytes"],
)
async def test_body_that_is_not_a_pdf_is_unsupported_media_type(
    sealer: PdfSealer, seal_key: SealKey, body: bytes
) -> None:
    """A body without a %PDF- header near its start is refused as the wrong media type."""
    with pytest.raises(UnsupportedMediaType):
        await sealer.seal(body, seal_key, PNG)


@pytest.mark.parametrize("prefix", [b"\xef\xbb\xbf", b"\r\n  \t"])
def test_a_bom_or_whitespace_before_the_header_is_a_pdf_refused_with_the_reason(
    prefix: bytes,
) -> None:
    """A UTF-8 BOM or whitespace before %PDF- still counts as a PDF (not another media
    type), which pyHanko cannot read: refused naming the bytes before the header."""
    check_pdf_header(pdf_samples.one_page_pdf())
    with pytest.raises(BadDocument, match="bytes before its %PDF- header"):
        check_pdf_header(prefix + pdf_samples.one_page_pdf())


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "make", [pdf_samples.truncated_pdf, pdf_samples.garbage_pdf, pdf_samples.pageless_pdf,
             pdf_samples.looping_parent_pdf, pdf_samples.looping_form_pdf]
)
async def test_damaged_pdf_is_bad_document(
    sealer: PdfSealer, seal_key: SealKey, make: object
) -> None:
    """A PDF that cannot be read (cut short, garbage, no page tree, a page that is its own
    parent, a form tree that loops: sealed, no validator could read it) is a bad-document
    error, and it comes back at once."""
    assert callable(make)
    with pytest.raises(BadDocument) as caught:
        await sealer.seal(make(), seal_key, PNG)
    assert caught.value.type_slug == "bad-document"
    assert caught.value.status == 422


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "document",
    [pdf_samples.overindexed_pdf(), pdf_samples.oversized_pdf(),
     pdf_samples.oversized_pdf(2**63), pdf_samples.one_page_pdf().replace(
         b"/Size 7", b"/Size " + b"0" * 5000 + b"7" * 5000),
     pdf_samples.oversized_pdf(pdf_limits.OBJECTS_ALWAYS + 1)],
    ids=["index-2e9", "size-2e31", "size-2e63", "size-10000-digits", "size-over-its-bytes"],
)
async def test_pdf_declaring_too_many_objects_is_refused_before_it_is_read(
    sealer: PdfSealer, seal_key: SealKey, document: bytes, tmp_path: Any
) -> None:
    """A cross-reference stream whose /Index declares two billion entries held pyHanko's
    reader for good (it makes up each missing one), a /Size of 2^31 was sealed into a PDF
    that pdfsig rejects, and a million declared in a few hundred bytes cost seconds per
    reading: each is a bad document, in memory and in a spool file."""
    with pytest.raises(BadDocument) as caught:
        await sealer.seal(document, seal_key, PNG)
    assert "declares" in caught.value.detail
    with (tmp_path / "spooled.pdf").open("w+b") as file:
        file.write(document)
        with pytest.raises(BadDocument):
            await sealer.seal_file(file, seal_key, PNG)
        file.seek(0)
        assert file.read() == document


@pytest.mark.parametrize("size", [b"2", b"6", b"-0.0", b"6.5"])
async def test_a_trailer_size_that_does_not_count_the_objects_is_refused(
    sealer: PdfSealer, seal_key: SealKey, size: bytes
) -> None:
    """The seal's objects are numbered from /Size on: one that counts fewer objects than
    the document has made the update replace its font, contents and page, so the sealed
    PDF showed something else under a valid seal."""
    with pytest.raises(BadDocument) as caught:
        await sealer.seal(pdf_samples.understated_size_pdf(size), seal_key, PNG)
    assert "numbered up to 6" in caught.value.detail


async def test_what_is_sealed_within_the_object_limit_can_be_verified(
    sealer: PdfSealer, seal_key: SealKey
) -> None:
    """A seal adds objects, so sealing stops short of what verification reads: a short
    document declaring ``OBJECTS_ALWAYS`` objects was sealed, and the verifier then refused
    the sealed document for declaring a few more."""
    at_limit = pdf_samples.oversized_pdf(pdf_limits.OBJECTS_ALWAYS)
    with pytest.raises(BadDocument):
        await sealer.seal(at_limit, seal_key, PNG)
    document = pdf_samples.oversized_pdf(pdf_limits.OBJECTS_ALWAYS - pdf_limits.SEALING_HEADROOM)
    sealed = await sealer.seal(document, seal_key, PNG)
    [report] = await asyncio.to_thread(validate_pdf_signatures, sealed, [])
    assert report.intact


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("value", "kind"),
    [(b"0." + b"1" * (64 * 1024), "number"), (b"/" + b"n" * (1024 * 1024 + 1), "name"),
     (b"<" + b"0f" * (1024 * 1024 + 1) + b">", "hex string")],
    ids=["number", "name", "hex-string"],
)
async def test_over_long_tokens_are_refused_before_they_are_read(
    sealer: PdfSealer, seal_key: SealKey, value: bytes, kind: str
) -> None:
    """pyHanko reads a name or hex string into about 80 bytes per byte (a 10 MB name took
    840 MB) and a number in time growing with its square (a 2 MB number took 15 s); one
    longer than any real document holds is a bad document, also for the verifier."""
    document = pdf_samples.catalog_entry_pdf(value)
    with pytest.raises(BadDocument) as caught:
        await sealer.seal(document, seal_key, PNG)
    assert f"holds a {kind} of over" in caught.value.detail
    with pytest.raises(BadDocument):
        validate_pdf_signatures(document, [])


async def test_an_over_long_name_in_an_object_stream_is_refused(
    sealer: PdfSealer, seal_key: SealKey
) -> None:
    """Compressed in an object stream, a name is no run in the file's bytes; it was read
    (a 16 MiB one in 12 MB took 1.4 GB) and sealed, written out again uncompressed."""
    document = pdf_samples.object_stream_name_pdf(1024 * 1024 + 1)
    with pytest.raises(BadDocument) as caught:
        await sealer.seal(document, seal_key, PNG)
    assert "holds a name of over 1048576 bytes in object stream" in caught.value.detail
    with pytest.raises(BadDocument):
        validate_pdf_signatures(document, [])


async def test_tokens_within_the_limits_seal(sealer: PdfSealer, seal_key: SealKey) -> None:
    """Long but bounded values (a 64 KiB real number, a 1 MiB name, a 2 MiB hex string) seal
    (pyHanko itself refuses integers of over 4,300 digits)."""
    number = b"0." + b"1" * (64 * 1024 - 2)
    name = b"/" + b"n" * (1024 * 1024)
    hex_string = b"<" + b"0f" * (1024 * 1024) + b">"
    document = pdf_samples.catalog_entry_pdf(b"[%s %s %s]" % (number, name, hex_string))
    assert (await sealer.seal(document, seal_key, PNG)).startswith(document)


def test_a_long_cross_reference_index_is_read_across_windows() -> None:
    """The scan reads a document in overlapping windows; a declaration that straddles one's
    end is seen whole in the next, and an /Index no window can show whole is refused."""
    padding = b" " * (pdf_limits._WINDOW - pdf_limits._OVERLAP - 20)
    straddling = b"%PDF-1.7\n" + padding + b"/Index [0 5 10 2000000]"
    with pytest.raises(BadDocument, match="declares 2000010 objects"):
        pdf_limits.check_readable(straddling)
    endless = b"%PDF-1.7\n/Index [" + b"0 1 " * (pdf_limits._WINDOW // 4)
    with pytest.raises(BadDocument, match="index"):
        pdf_limits.check_readable(endless)


async def test_a_page_box_of_indirect_numbers_is_read(sealer: PdfSealer, seal_key: SealKey) -> None:
    """The standard lets a box's numbers be indirect objects; such a page was refused as
    damaged."""
    document = pdf_samples.boxed_pdf(lambda writer: [
        generic.NumberObject(0), generic.NumberObject(0),
        writer.add_object(generic.NumberObject(595)), writer.add_object(generic.NumberObject(842))])
    assert (await sealer.seal(document, seal_key, PNG)).startswith(document)


@pytest.mark.parametrize(
    "corners",
    [[0, 0, generic.pdf_string("wide"), 842], [0, 0, 10**400, 842],
     [0, 0, generic.NameObject("/A4"), 842]],
    ids=["string", "beyond-float", "name"],
)
async def test_a_page_box_that_is_not_four_numbers_is_named(
    sealer: PdfSealer, seal_key: SealKey, corners: list[Any]
) -> None:
    """A box of strings, names or numbers no float holds is a bad document naming the box
    (it was "its object structure cannot be read")."""
    document = pdf_samples.boxed_pdf(lambda writer: [
        generic.NumberObject(v) if isinstance(v, int) else v for v in corners])
    with pytest.raises(BadDocument) as caught:
        await sealer.seal(document, seal_key, PNG)
    assert caught.value.detail == "page 1 has no valid /MediaBox"


async def test_encrypted_pdf_is_encrypted_document(sealer: PdfSealer, seal_key: SealKey) -> None:
    """An encrypted PDF is refused with the encrypted-document type, saying why."""
    with pytest.raises(BadDocument) as caught:
        await sealer.seal(pdf_samples.encrypted_pdf(), seal_key, PNG)
    assert caught.value.type_slug == "encrypted-document"
    assert "encrypted" in caught.value.detail


async def test_pdf_whose_certification_forbids_changes_is_bad_document(
    sealer: PdfSealer, seal_key: SealKey
) -> None:
    """A document certified with 'no changes allowed' cannot take a seal and says so."""
    locked = await pdf_samples.signed_pdf(seal_key.signer, lock_document=True)
    with pytest.raises(BadDocument) as caught:
        await sealer.seal(locked, seal_key, PNG)
    assert "cannot be sealed" in caught.value.detail


@pytest.mark.parametrize("page", [0, -1, 4])
async def test_page_out_of_range_names_page_and_count(
    sealer: PdfSealer, seal_key: SealKey, page: int
) -> None:
    """A page outside 1..N is a validation error on 'page' that states the page count."""
    options = PdfSealOptions(placement=Placement(page=page))
    with pytest.raises(ValidationFailed) as caught:
        await sealer.seal(pdf_samples.multi_page_pdf(3), seal_key, PNG, options)
    assert field_names(caught.value) == ["page"]
    assert "has 3 pages" in caught.value.errors[0].message


async def test_invisible_seal_still_checks_page(sealer: PdfSealer, seal_key: SealKey) -> None:
    """The page of an invisible seal's field is checked like a visible one's."""
    options = PdfSealOptions(placement=Placement(page=2), visible=False)
    with pytest.raises(ValidationFailed) as caught:
        await sealer.seal(pdf_samples.one_page_pdf(), seal_key, None, options)
    assert field_names(caught.value) == ["page"]


@pytest.mark.parametrize("level", ["B-X", "", "PAdES", "B-T", "B-LTA"])
async def test_unknown_or_unsupported_level_names_level(
    sealer: PdfSealer, seal_key: SealKey, level: str
) -> None:
    """An unknown level, or one above B-B from a sealer given no TSA, is an error on 'level'."""
    with pytest.raises(ValidationFailed) as caught:
        await sealer.seal(pdf_samples.one_page_pdf(), seal_key, PNG, PdfSealOptions(level=level))
    assert field_names(caught.value) == ["level"]


@pytest.mark.parametrize(
    ("placement", "field"),
    [
        (Placement(width=0), "width"),
        (Placement(width=0.5), "width"),
        (Placement(width=-10), "width"),
        (Placement(width=math.nan), "width"),
        (Placement(x=math.inf), "x"),
        (Placement(width=2000), "width"),
        (Placement(x=560, y=10, width=100), "x"),
        (Placement(x=10, y=800, width=100), "y"),
        (Placement(x=-5), "x"),
    ],
)
async def test_placement_off_the_page_names_the_field(
    sealer: PdfSealer, seal_key: SealKey, placement: Placement, field: str
) -> None:
    """A stamp that would not fit on the page is a validation error on the offending field."""
    with pytest.raises(ValidationFailed) as caught:
        await sealer.seal(
            pdf_samples.one_page_pdf(), seal_key, PNG, PdfSealOptions(placement=placement)
        )
    assert field_names(caught.value) == [field]


async def test_visible_seal_without_image_names_visible(
    sealer: PdfSealer, seal_key: SealKey
) -> None:
    """Asking for a visible seal without a seal image is a validation error on 'visible'."""
    with pytest.raises(ValidationFailed) as caught:
        await sealer.seal(pdf_samples.one_page_pdf(), seal_key, None)
    assert field_names(caught.value) == ["visible"]


async def test_unreadable_seal_image_names_image(sealer: PdfSealer, seal_key: SealKey) -> None:
    """A seal image that is not a PNG is a validation error on 'image_png'."""
    with pytest.raises(ValidationFailed) as caught:
        await sealer.seal(pdf_samples.one_page_pdf(), seal_key, b"\x89PNG\r\n\x1a\nbroken")
    assert field_names(caught.value) == ["image_png"]


async def test_corrupted_pdfs_end_in_client_errors_or_seals(
    sealer: PdfSealer, seal_key: SealKey
) -> None:
    """Truncating or scrambling a PDF anywhere gives a sealed PDF or a 4xx error, never a crash."""
    original = pdf_samples.object_stream_pdf()
    rng = random.Random(20251009)
    variants = [original[:cut] for cut in range(8, len(original), max(len(original) // 25, 1))]
    for _ in range(40):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        variants.append(bytes(data))
    for variant in variants:
        try:
            sealed = await sealer.seal(variant, seal_key, PNG)
        except ClientError:
            continue
        assert sealed.startswith(variant)


async def test_a_sealed_documents_objects_are_freed_without_the_cyclic_collector(
    sealer: PdfSealer, seal_key: SealKey
) -> None:
    """pyHanko's writer and reader sit in reference cycles with every object they hold, and
    a signature field is its own annotation; the sealer breaks these, so a document's objects
    go when the sealing ends instead of piling up for a collector pass that stalls the
    worker. What is left per document (15 objects: recursive closures inside pyHanko's
    page-tree walk, holding no PDF objects) was about 290."""
    document = pdf_samples.one_page_pdf()
    await sealer.seal(document, seal_key, PNG)  # caches filled
    gc.collect()
    gc.disable()
    try:
        for _ in range(10):
            await sealer.seal(document, seal_key, PNG)
        left_per_document = gc.collect() / 10
    finally:
        gc.enable()
    assert left_per_document < 40


@pytest.mark.parametrize(
    ("tail", "small"),
    [
        (b"trailer\n<< /Size 7 /Root 1 0 R >>\nstartxref\n9\n%%EOF\n", True),
        (b"trailer\n<< /Size 64 >>\nstartxref\n9\n%%EOF\n", True),
        (b"trailer\n<< /Size 65 >>\nstartxref\n9\n%%EOF\n", False),
        (b"<< /Type /XRef /Size 12 /W [1 2 1] >>\nstream\n...\nendstream\n%%EOF\n", True),
        (b"<< /Type /XRef /Size 12 /Index [0 4 900 2] >>\nstream\n...\nendstream\n", False),
        (b"<< /Size 100 >>\n...\ntrailer\n<< /Size 9 >>\nstartxref\n9\n%%EOF\n", False),
        (b"trailer\n<< /Root 1 0 R >>\n%%EOF\n", False),
    ],
    ids=["trailer", "at-limit", "over-limit", "xref-stream", "index-over-limit",
         "earlier-size-over-limit", "no-size"],
)
def test_small_means_a_declared_size_within_the_limits(tail: bytes, small: bool) -> None:
    assert is_small(b"%PDF-1.7\n" + tail) is small
    assert not is_small(b"%PDF-1.7\n" + b" " * INLINE_MAX_BYTES + tail)


@pytest.mark.parametrize(
    "make", [pdf_samples.object_stream_pdf,
             lambda: pdf_samples.object_stream_name_pdf(2 * 1024 * 1024),
             lambda: pdf_samples.object_stream_pdf().replace(b"/ObjStm", b"/Obj#53tm")],
    ids=["object-stream", "inflating-object-stream", "escaped-type"],
)
def test_a_pdf_using_object_streams_is_not_small(make: Any) -> None:
    """What an object stream inflates to is parsed at about a microsecond a byte, so a few
    kilobytes of document can take seconds (4 KB held the event loop for 9.5 s): never on
    the loop, however few bytes and objects."""
    document = make()
    assert len(document) < INLINE_MAX_BYTES
    assert not is_small(document)
