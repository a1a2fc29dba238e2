"""Named hostile documents: the structures the fuzzer starts from and mutates."""

from __future__ import annotations

import random
import string
import zlib
from collections.abc import Callable

from tests import pdf_samples
from tests.fuzz.hostile import (
    PAGE_TREE_ROOT,
    flate_bomb,
    one_page,
    page,
    raw_pdf,
    stream,
    xref_stream_pdf,
)

GB = 1 << 30


def _objstm(members: dict[int, bytes], data_filter: Callable[[bytes], bytes] = zlib.compress
            ) -> bytes:
    bodies = b""
    pairs = []
    for number, body in members.items():
        pairs.append(b"%d %d" % (number, len(bodies)))
        bodies += body + b"\n"
    header = b" ".join(pairs) + b"\n"
    raw = header + bodies
    data = data_filter(raw)
    return stream(b"/Type /ObjStm /N %d /First %d " % (len(members), len(header)), data)


def objstm_pdf(bomb: bool = False) -> bytes:
    """Catalog, pages and page in an object stream, indexed by an xref stream."""
    members = {1: b"<< /Type /Catalog /Pages 2 0 R >>",
               2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", 3: page()}
    # The object stream is 4; objects 1-3 are its members (type 2 rows).
    body = _objstm(members, (lambda raw: flate_bomb(2 * GB)) if bomb else zlib.compress)
    out = bytearray(b"%PDF-1.7\n")
    at4 = len(out)
    out += b"4 0 obj\n" + body + b"\nendobj\n"
    at5 = len(out)
    rows = [b"\x00\x00\x00\x00\xff\xff"]
    rows += [b"\x02" + (4).to_bytes(4, "big") + bytes([i]) for i in range(3)]
    rows += [b"\x01" + at4.to_bytes(4, "big") + b"\x00", b"\x01" + at5.to_bytes(4, "big") + b"\x00"]
    data = zlib.compress(b"".join(rows))
    out += (b"5 0 obj\n<< /Type /XRef /Size 6 /W [1 4 1] /Root 1 0 R /Filter /FlateDecode "
            b"/Length %d >>\nstream\n" % len(data)) + data + b"\nendstream\nendobj\n"
    out += b"startxref\n%d\n%%%%EOF\n" % at5
    return bytes(out)


def _deep(depth: int, open_: bytes, close: bytes) -> bytes:
    return open_ * depth + close * depth


CASES: dict[str, Callable[[], bytes]] = {
    "plain": lambda: one_page(),
    "sample-one-page": pdf_samples.one_page_pdf,
    "sample-objstm": pdf_samples.object_stream_pdf,
    "objstm-xrefstm": objstm_pdf,
    "objstm-bomb": lambda: objstm_pdf(bomb=True),
    "xref-stream": lambda: xref_stream_pdf({1: b"<< /Type /Catalog /Pages 2 0 R >>",
                                            2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                                            3: page()}),
    "xref-stream-bomb": lambda: xref_stream_pdf(
        {1: b"<< /Type /Catalog /Pages 2 0 R >>",
         2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", 3: page()},
        data=flate_bomb(2 * GB)),
    "xref-stream-huge-w": lambda: xref_stream_pdf(
        {1: b"<< /Type /Catalog /Pages 2 0 R >>",
         2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", 3: page()},
        widths=(1, 4, 2), extra=b"/Index [0 2147483647]"),
    "xref-stream-w-1e9": lambda: xref_stream_pdf(
        {1: b"<< /Type /Catalog /Pages 2 0 R >>",
         2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", 3: page()}).replace(
        b"/W [1 4 2]", b"/W [1 999999999 2]"),
    "size-2-31": lambda: one_page(size=2**31),
    "size-2-63": lambda: one_page(size=2**63),
    "count-huge": lambda: one_page(pages=b"<< /Type /Pages /Kids [3 0 R] /Count 2000000000 >>"),
    "count-negative": lambda: one_page(pages=b"<< /Type /Pages /Kids [3 0 R] /Count -5 >>"),
    "count-real": lambda: one_page(pages=b"<< /Type /Pages /Kids [3 0 R] /Count 1.5 >>"),
    "kids-cycle": lambda: one_page(pages=b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>"),
    "kids-cycle-2": lambda: raw_pdf({1: b"<< /Type /Catalog /Pages 2 0 R >>",
                                     2: b"<< /Type /Pages /Kids [4 0 R] /Count 3 >>",
                                     3: page(),
                                     4: b"<< /Type /Pages /Parent 2 0 R /Kids [2 0 R 3 0 R] "
                                        b"/Count 3 >>"}),
    "kids-self-page": lambda: one_page(page_body=page(b"/Kids [3 0 R] /Count 1")),
    "parent-cycle": pdf_samples.looping_parent_pdf,
    "resources-cycle": lambda: raw_pdf({1: b"<< /Type /Catalog /Pages 2 0 R >>",
                                        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                                        3: page(b"/Resources 4 0 R"),
                                        4: b"<< /XObject 4 0 R /Font << /F 4 0 R >> >>"}),
    "length-loop": lambda: raw_pdf({1: b"<< /Type /Catalog /Pages 2 0 R >>",
                                    2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                                    3: page(b"/Contents 4 0 R"),
                                    4: b"<< /Length 5 0 R >>\nstream\nBT ET\nendstream",
                                    5: b"6 0 R", 6: b"5 0 R"}),
    "length-self": lambda: raw_pdf({1: b"<< /Type /Catalog /Pages 2 0 R >>",
                                    2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                                    3: page(b"/Contents 4 0 R"),
                                    4: b"<< /Length 4 0 R >>\nstream\nBT ET\nendstream"}),
    "ref-chain-loop": lambda: raw_pdf({1: b"<< /Type /Catalog /Pages 5 0 R >>",
                                       2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                                       3: page(), 5: b"6 0 R", 6: b"5 0 R"}),
    "deep-arrays": lambda: one_page(page_body=page(b"/X " + _deep(100000, b"[", b"]"))),
    "deep-dicts": lambda: one_page(page_body=page(b"/X " + _deep(50000, b"<< /A ", b">>"))),
    "deep-arrays-trailer": lambda: one_page(trailer=b"/Root 1 0 R /X " +
                                            _deep(100000, b"[", b"]")),
    "deep-arrays-catalog": lambda: one_page(
        catalog=b"<< /Type /Catalog /Pages 2 0 R /X " + _deep(100000, b"[", b"]") + b" >>"),
    "deep-arrays-objstm": lambda: objstm_pdf().replace(b"/Count 1 >>", b"/Count 1 /X [[[[ >>"),
    "content-bomb": lambda: raw_pdf({1: b"<< /Type /Catalog /Pages 2 0 R >>",
                                     2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                                     3: page(b"/Contents 4 0 R"),
                                     4: stream(b"", flate_bomb(2 * GB))}),
    "rotate-odd": lambda: one_page(page_body=page(b"/Rotate 45")),
    "rotate-huge": lambda: one_page(page_body=page(b"/Rotate 99999999999999999999")),
    "rotate-string": lambda: one_page(page_body=page(b"/Rotate (x)")),
    "mediabox-nan": lambda: one_page(page_body=page(box=b"/MediaBox [0 0 nan 842]")),
    "mediabox-huge": lambda: one_page(page_body=page(box=b"/MediaBox [0 0 1e400 842]")),
    "mediabox-huge-digits": lambda: one_page(page_body=page(
        box=b"/MediaBox [0 0 " + b"9" * 400 + b" 842]")),
    "mediabox-huge-real": lambda: one_page(page_body=page(
        box=b"/MediaBox [0 0 " + b"9" * 400 + b".5 842]")),
    "mediabox-negative-huge": lambda: one_page(page_body=page(
        box=b"/MediaBox [-" + b"9" * 40 + b" 0 595 842]")),
    "mediabox-strings": lambda: one_page(page_body=page(box=b"/MediaBox [(a) 0 595 842]")),
    "mediabox-refs": lambda: raw_pdf({1: b"<< /Type /Catalog /Pages 2 0 R >>",
                                      2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                                      3: page(box=b"/MediaBox [0 0 4 0 R 842]"), 4: b"595"}),
    "mediabox-ref-loop": lambda: raw_pdf({1: b"<< /Type /Catalog /Pages 2 0 R >>",
                                          2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                                          3: page(box=b"/MediaBox 4 0 R"), 4: b"4 0 R"}),
    "no-mediabox": lambda: one_page(page_body=page(box=b"")),
    "mediabox-on-tree": lambda: one_page(
        pages=b"<< /Type /Pages /Kids [3 0 R] /Count 1 /MediaBox [0 0 595 842] >>",
        page_body=page(box=b"")),
    "cropbox-tiny": lambda: one_page(page_body=page(b"/CropBox [0 0 1 1]")),
    "acroform-same-name": lambda: raw_pdf({
        1: b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [4 0 R] /SigFlags 3 >> >>",
        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", 3: page(b"/Annots [4 0 R]"),
        4: b"<< /FT /Sig /T (Seal-000000000000) /Type /Annot /Subtype /Widget "
           b"/Rect [0 0 0 0] /P 3 0 R >>"}),
    "acroform-kids-cycle": lambda: raw_pdf({
        1: b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [4 0 R] >> >>",
        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", 3: page(),
        4: b"<< /T (a) /Kids [5 0 R] >>", 5: b"<< /T (b) /Parent 4 0 R /Kids [4 0 R] >>"}),
    "acroform-fields-self": lambda: raw_pdf({
        1: b"<< /Type /Catalog /Pages 2 0 R /AcroForm 4 0 R >>",
        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", 3: page(),
        4: b"<< /Fields [4 0 R] >>"}),
    "acroform-sig-v-garbage": lambda: raw_pdf({
        1: b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [4 0 R] /SigFlags 3 >> >>",
        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", 3: page(b"/Annots [4 0 R]"),
        4: b"<< /FT /Sig /T (Sig) /V 5 0 R /Type /Annot /Subtype /Widget /Rect [0 0 0 0] >>",
        5: b"<< /Type /Sig /Filter /Adobe.PPKLite /SubFilter /ETSI.CAdES.detached "
           b"/ByteRange [0 99999999999 99999999999 99999999999] /Contents <3082> >>"}),
    "acroform-sig-byterange-neg": lambda: raw_pdf({
        1: b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [4 0 R] /SigFlags 3 >> >>",
        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", 3: page(b"/Annots [4 0 R]"),
        4: b"<< /FT /Sig /T (Sig) /V 5 0 R /Type /Annot /Subtype /Widget /Rect [0 0 0 0] >>",
        5: b"<< /Type /Sig /Filter /Adobe.PPKLite /SubFilter /adbe.pkcs7.detached "
           b"/ByteRange [0 -5 10 -20] /Contents <3082> >>"}),
    "acroform-many-sig-refs": lambda: raw_pdf({
        1: b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [" + b"4 0 R " * 200000
           + b"] >> >>",
        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", 3: page(),
        4: b"<< /FT /Sig /T (Sig) >>"}),
    "annots-cycle": lambda: raw_pdf({1: b"<< /Type /Catalog /Pages 2 0 R >>",
                                     2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                                     3: page(b"/Annots 4 0 R"), 4: b"4 0 R"}),
    "annots-not-array": lambda: one_page(page_body=page(b"/Annots 5")),
    "encrypted-empty-user": lambda: _encrypted(""),
    "encrypted-sample": pdf_samples.encrypted_pdf,
    "pdf-2.0": lambda: one_page(header=b"%PDF-2.0\n"),
    "junk-before-header": lambda: b"JUNK" * 200 + one_page(),
    "junk-before-header-1020": lambda: b"\n" * 1015 + one_page(),
    "no-eof": lambda: one_page(eof=b""),
    "truncated-trailer": lambda: one_page()[:-30],
    "broken-startxref": lambda: one_page().replace(b"startxref\n", b"startxref\n9999999"),
    "startxref-huge": lambda: one_page().rsplit(b"startxref", 1)[0]
    + b"startxref\n99999999999999999999999\n%%EOF\n",
    "startxref-negative": lambda: one_page().rsplit(b"startxref", 1)[0]
    + b"startxref\n-5\n%%EOF\n",
    "xref-prev-loop": lambda: one_page(trailer=b"/Root 1 0 R /Prev 9"),
    "xref-prev-self": lambda: _prev_self(),
    "incremental": lambda: _incremental(one_page(), 3),
    "incremental-many": lambda: _incremental(one_page(), 2000),
    "xref-subsection-huge": lambda: one_page().replace(b"xref\n0 4\n", b"xref\n0 2000000000\n"),
    "xref-subsection-start-huge": lambda: one_page().replace(b"xref\n0 4\n",
                                                           b"xref\n2147483640 4\n"),
    "many-objects": lambda: _many_objects(200000),
    "obj-number-huge": lambda: raw_pdf({1: b"<< /Type /Catalog /Pages 2 0 R >>",
                                        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                                        3: page(b"/X 2147483647 0 R /Y 99999999999999 0 R")}),
    "long-string": lambda: one_page(page_body=page(b"/X (" + b"a" * 30_000_000 + b")")),
    "long-name": lambda: one_page(page_body=page(b"/" + b"a" * 10_000_000 + b" 1")),
    "long-hexstring": lambda: one_page(page_body=page(b"/X <" + b"ab" * 10_000_000 + b">")),
    "stream-length-huge": lambda: raw_pdf({1: b"<< /Type /Catalog /Pages 2 0 R >>",
                                           2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                                           3: page(b"/Contents 4 0 R"),
                                           4: b"<< /Length 99999999999999 >>\nstream\nBT ET\n"
                                              b"endstream"}),
    "filter-chain": lambda: raw_pdf({1: b"<< /Type /Catalog /Pages 2 0 R >>",
                                     2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                                     3: page(b"/Contents 4 0 R"),
                                     4: stream(b"/DecodeParms << /Predictor 15 /Columns "
                                               b"99999999 /Colors 255 /BitsPerComponent 16 >> ",
                                               zlib.compress(b"\x00" * 1000))}),
}


def _encrypted(user: str) -> bytes:
    import io

    from pyhanko.pdf_utils.writer import PdfFileWriter
    writer = PdfFileWriter()
    writer.encrypt(owner_pass="owner", user_pass=user)
    pdf_samples._write_pages(writer, 1)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _prev_self() -> bytes:
    data = one_page()
    xref_at = int(data.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    return data.replace(b"/Root 1 0 R >>", b"/Root 1 0 R /Prev %d >>" % xref_at)


def _incremental(base: bytes, count: int) -> bytes:
    """``count`` incremental updates, each rewriting the page (diff analysis per revision)."""
    data = bytearray(base)
    prev = int(base.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    for n in range(count):
        at = len(data)
        data += b"3 0 obj\n" + page(b"/N %d" % n) + b"\nendobj\n"
        xref_at = len(data)
        data += b"xref\n3 1\n%010d 00000 n \ntrailer\n<< /Size 4 /Root 1 0 R /Prev %d >>\n" \
                b"startxref\n%d\n%%%%EOF\n" % (at, prev, xref_at)
        prev = xref_at
    return bytes(data)


def _many_objects(count: int) -> bytes:
    objects = {1: b"<< /Type /Catalog /Pages 2 0 R >>",
               2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", 3: page()}
    for n in range(4, count):
        objects[n] = b"null"
    return raw_pdf(objects)

CASES.update({
    "long-number": lambda: one_page(page_body=page(b"/X " + b"1" * 2_000_000)),
    "long-keyword": lambda: one_page(page_body=page(b"/X " + b"t" * 2_000_000)),
    "index-no-w": lambda: xref_stream_pdf(
        {1: b"<< /Type /Catalog /Pages 2 0 R >>",
         2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", 3: page()},
        size=2_000_000_000).replace(b"/W [1 4 2]", b"/W [0 0 0]"),
})

CASES.update({
    "index-at-limit": lambda: xref_stream_pdf(
        {1: b"<< /Type /Catalog /Pages 2 0 R >>",
         2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", 3: page()},
        size=1_000_000).replace(b"/W [1 4 2]", b"/W [0 0 0]"),
})



def _objstm_name(length: int) -> bytes:
    """An object stream whose page holds a name of ``length`` random letters: compressed,
    it is no run in the file's bytes, and it is too random for the decoder's ratio limit."""
    letters = bytes(random.Random(1).choices(string.ascii_letters.encode(), k=length))
    return _objstm_pdf_with(page(b"/X /" + letters))


def _objstm_pdf_with(page_body: bytes) -> bytes:
    """Catalog, pages and ``page_body`` in an object stream, indexed by an xref stream."""
    members = {1: PAGE_TREE_ROOT, 2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               3: page_body}
    body = _objstm(members)
    out = bytearray(b"%PDF-1.7\n")
    at4 = len(out)
    out += b"4 0 obj\n" + body + b"\nendobj\n"
    at5 = len(out)
    rows = [b"\x00" * 6 + b"\xff\xff"]
    rows += [b"\x02" + (4).to_bytes(5, "big") + bytes([0, i]) for i in range(3)]
    rows += [b"\x01" + at4.to_bytes(5, "big") + b"\x00\x00",
             b"\x01" + at5.to_bytes(5, "big") + b"\x00\x00"]
    data = zlib.compress(b"".join(rows))
    out += (b"5 0 obj\n<< /Type /XRef /Size 6 /W [1 5 2] /Root 1 0 R /Filter /FlateDecode "
            b"/Length %d >>\nstream\n" % len(data)) + data + b"\nendstream\nendobj\n"
    out += b"startxref\n%d\n%%%%EOF\n" % at5
    return bytes(out)


CASES["objstm-long-name"] = lambda: _objstm_name(16 * 1024 * 1024)
