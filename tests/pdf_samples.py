"""Test documents built locally: plain, long, object-stream, encrypted, damaged and signed PDFs.

Every sample is made with pyHanko's own writer (or Pillow, for the seal picture), so the
suites need no fixtures on disk and no network. The functions are public so that other suites
(API, benchmarks) build the same documents.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from PIL import Image, ImageDraw
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.generic import pdf_name
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import PdfFileWriter
from pyhanko.pdf_utils.xref import ObjectStream
from pyhanko.sign import fields, signers

A4 = (595, 842)
USER_PASSWORD = "open-sesame"


def _write_pages(writer: PdfFileWriter, count: int, obj_stream: ObjectStream | None = None) -> None:
    """Add ``count`` A4 text pages; with ``obj_stream`` every page and font dictionary in it."""
    font = writer.add_object(
        generic.DictionaryObject(
            {
                pdf_name("/Type"): pdf_name("/Font"),
                pdf_name("/Subtype"): pdf_name("/Type1"),
                pdf_name("/BaseFont"): pdf_name("/Helvetica"),
            }
        ),
        obj_stream=obj_stream,
    )
    tree_ref = writer.root.raw_get("/Pages")
    tree = tree_ref.get_object()
    for number in range(1, count + 1):
        text = f"BT /F1 24 Tf 72 760 Td (Test page {number} of {count}) Tj ET".encode()
        page = generic.DictionaryObject(
            {
                pdf_name("/Type"): pdf_name("/Page"),
                pdf_name("/Parent"): tree_ref,
                pdf_name("/MediaBox"): generic.ArrayObject(
                    [generic.NumberObject(n) for n in (0, 0, *A4)]
                ),
                pdf_name("/Resources"): generic.DictionaryObject(
                    {pdf_name("/Font"): generic.DictionaryObject({pdf_name("/F1"): font})}
                ),
                pdf_name("/Contents"): writer.add_object(generic.StreamObject(stream_data=text)),
            }
        )
        tree["/Kids"].append(writer.add_object(page, obj_stream=obj_stream))
    tree[pdf_name("/Count")] = generic.NumberObject(count)


def _to_bytes(writer: PdfFileWriter) -> bytes:
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def one_page_pdf() -> bytes:
    """An A4 page of text with a classic cross-reference table."""
    writer = PdfFileWriter(stream_xrefs=False)
    _write_pages(writer, 1)
    return _to_bytes(writer)


def multi_page_pdf(pages: int = 50) -> bytes:
    """``pages`` A4 pages of text with a classic cross-reference table."""
    writer = PdfFileWriter(stream_xrefs=False)
    _write_pages(writer, pages)
    return _to_bytes(writer)


def object_stream_pdf(pages: int = 3) -> bytes:
    """Page and font dictionaries inside an object stream (/ObjStm), indexed by an /XRef stream."""
    writer = PdfFileWriter(stream_xrefs=True)
    _write_pages(writer, pages, obj_stream=writer.prepare_object_stream())
    data = _to_bytes(writer)
    assert b"/ObjStm" in data and b"/XRef" in data
    return data


def object_stream_name_pdf(length: int) -> bytes:
    """An object-stream PDF whose page has a name of ``length`` bytes, compressed inside the
    object stream (no long run in the file's own bytes)."""
    writer = PdfFileWriter(stream_xrefs=True)
    _write_pages(writer, 1, obj_stream=writer.prepare_object_stream())
    page = writer.root["/Pages"]["/Kids"][0].get_object()
    page[pdf_name("/X")] = pdf_name("/" + "n" * length)
    data = _to_bytes(writer)
    assert b"nnnn" not in data
    return data


def encrypted_pdf(password: str = USER_PASSWORD) -> bytes:
    """A one-page PDF encrypted with AES-256 (PDF 2.0 standard security handler)."""
    writer = PdfFileWriter()
    writer.encrypt(owner_pass=password + "-owner", user_pass=password)
    _write_pages(writer, 1)
    return _to_bytes(writer)


def truncated_pdf() -> bytes:
    """The first half of a valid PDF: header present, cross-reference section missing."""
    data = one_page_pdf()
    return data[: len(data) // 2]


def garbage_pdf() -> bytes:
    """A PDF header followed by bytes that are not PDF syntax at all."""
    return b"%PDF-1.7\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"


def pageless_pdf() -> bytes:
    """Well-formed syntax, but the catalog has no page tree (same length, so offsets hold)."""
    data = one_page_pdf().replace(b"/Pages", b"/Pagez")
    assert b"/Pages" not in data
    return data


def looping_parent_pdf() -> bytes:
    """The page has no box of its own and names itself as its parent, so looking its box up
    the page tree never ends (same length, so offsets hold)."""
    data = one_page_pdf().replace(b"/Parent 2 0 R", b"/Parent 5 0 R")
    data = data.replace(b"/MediaBox [", b"/MediaBix [")
    assert b"/Parent 5 0 R" in data and b"/MediaBox" not in data
    return data


def overindexed_pdf() -> bytes:
    """An object-stream PDF whose cross-reference stream declares two billion entries in its
    /Index while its data holds a dozen (the stream is last, so offsets hold)."""
    data = object_stream_pdf().replace(b"/Index [ 0 1 1 12 ]", b"/Index [ 0 1 1 2000000000 ]")
    assert b"/Index [ 0 1 1 2000000000 ]" in data
    return data


def oversized_pdf(size: int = 2**31) -> bytes:
    """A one-page PDF whose trailer declares ``size`` objects (offsets hold: the trailer is
    after the cross-reference table)."""
    data = one_page_pdf().replace(b"/Size 7", b"/Size %d" % size)
    assert data.count(b"/Size %d" % size) == 1
    return data


def boxed_pdf(corners: Callable[[PdfFileWriter], list[generic.PdfObject]]) -> bytes:
    """A one-page PDF whose page's /MediaBox holds the values ``corners`` makes."""
    writer = PdfFileWriter(stream_xrefs=False)
    _write_pages(writer, 1)
    page = writer.root["/Pages"]["/Kids"][0].get_object()
    page[pdf_name("/MediaBox")] = generic.ArrayObject(corners(writer))
    return _to_bytes(writer)


def _with_form_fields(make_fields: Callable[[PdfFileWriter], list[generic.PdfObject]]) -> bytes:
    """A one-page PDF whose form holds the fields ``make_fields`` adds to the writer."""
    writer = PdfFileWriter(stream_xrefs=False)
    _write_pages(writer, 1)
    writer.root[pdf_name("/AcroForm")] = generic.DictionaryObject(
        {pdf_name("/Fields"): generic.ArrayObject(make_fields(writer))}
    )
    return _to_bytes(writer)


def looping_form_pdf() -> bytes:
    """A form field whose child names the field as its own child: the form tree loops."""

    def fields(writer: PdfFileWriter) -> list[generic.PdfObject]:
        parent = writer.add_object(generic.DictionaryObject(
            {pdf_name("/T"): generic.pdf_string("parent")}))
        child = writer.add_object(generic.DictionaryObject(
            {pdf_name("/T"): generic.pdf_string("child"), pdf_name("/Parent"): parent,
             pdf_name("/Kids"): generic.ArrayObject([parent])}))
        parent.get_object()[pdf_name("/Kids")] = generic.ArrayObject([child])
        return [parent]

    return _with_form_fields(fields)


def unreadable_signature_pdf() -> bytes:
    """A signature field whose value claims PAdES but holds two bytes that are no CMS."""

    def fields(writer: PdfFileWriter) -> list[generic.PdfObject]:
        value = writer.add_object(generic.DictionaryObject({
            pdf_name("/Type"): pdf_name("/Sig"),
            pdf_name("/Filter"): pdf_name("/Adobe.PPKLite"),
            pdf_name("/SubFilter"): pdf_name("/ETSI.CAdES.detached"),
            pdf_name("/ByteRange"): generic.ArrayObject(
                [generic.NumberObject(n) for n in (0, 10, 20, 10)]),
            pdf_name("/Contents"): generic.ByteStringObject(b"\x30\x82"),
        }))
        return [writer.add_object(generic.DictionaryObject({
            pdf_name("/FT"): pdf_name("/Sig"), pdf_name("/T"): generic.pdf_string("Broken"),
            pdf_name("/V"): value,
        }))]

    return _with_form_fields(fields)


def understated_size_pdf(size: bytes = b"2") -> bytes:
    """A one-page PDF whose trailer's /Size counts fewer objects than it has (6)."""
    data = one_page_pdf().replace(b"/Size 7", b"/Size " + size)
    assert data.count(b"/Size " + size) == 1
    return data


def catalog_entry_pdf(value: bytes) -> bytes:
    """A one-page PDF whose catalog, rewritten in an appended revision, has ``/X value``
    (raw PDF syntax, which pyHanko's writer could not produce for hostile values)."""
    base = one_page_pdf()
    reader = PdfFileReader(io.BytesIO(base))
    root = reader.trailer.raw_get("/Root")
    pages = reader.root.raw_get("/Pages")
    at = len(base)
    update = b"%d 0 obj\n<< /Type /Catalog /Pages %d 0 R /X " % (root.idnum, pages.idnum)
    update += value + b" >>\nendobj\n"
    xref_at = at + len(update)
    update += (b"xref\n%d 1\n%010d 00000 n \ntrailer\n<< /Size %d /Root %d 0 R /Prev %d >>\n"
               b"startxref\n%d\n%%%%EOF\n" % (root.idnum, at, reader.trailer["/Size"],
                                               root.idnum, reader.last_startxref, xref_at))
    return base + update


async def signed_pdf(
    signer: signers.Signer, field_name: str = "Signature1", *, lock_document: bool = False
) -> bytes:
    """A one-page PDF with one invisible PAdES signature made by ``signer`` through pyHanko.

    With ``lock_document`` it is a certification signature that permits no further change.
    """
    writer = IncrementalPdfFileWriter(io.BytesIO(one_page_pdf()))
    fields.append_signature_field(writer, fields.SigFieldSpec(field_name))
    meta = signers.PdfSignatureMetadata(
        field_name=field_name,
        subfilter=fields.SigSeedSubFilter.PADES,
        certify=lock_document,
        docmdp_permissions=fields.MDPPerm.NO_CHANGES,
    )
    out = await signers.PdfSigner(meta, signer).async_sign_pdf(writer)
    data: bytes = out.getvalue()
    return data


def seal_png(size: int = 160) -> bytes:
    """A round red seal on a transparent background, as a PNG (RGBA)."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    ring = max(size // 20, 2)
    draw.ellipse((ring, ring, size - ring, size - ring), outline=(220, 20, 30, 255), width=ring)
    c, r = size / 2, size / 6
    star = [
        (c, c - r),
        (c + r * 0.3, c - r * 0.3),
        (c + r, c - r * 0.2),
        (c + r * 0.45, c + r * 0.25),
        (c + r * 0.6, c + r),
        (c, c + r * 0.55),
        (c - r * 0.6, c + r),
        (c - r * 0.45, c + r * 0.25),
        (c - r, c - r * 0.2),
        (c - r * 0.3, c - r * 0.3),
    ]
    draw.polygon(star, fill=(220, 20, 30, 255))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
