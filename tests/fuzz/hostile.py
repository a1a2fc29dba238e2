"""Hostile PDFs built byte by byte: every offset right, every structure as bad as asked."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

PAGE_TREE_ROOT = b"<< /Type /Catalog /Pages 2 0 R >>"


def raw_pdf(
    objects: Mapping[int, bytes],
    trailer: bytes = b"/Root 1 0 R",
    *,
    header: bytes = b"%PDF-1.7\n",
    size: int | None = None,
    eof: bytes = b"%%EOF\n",
) -> bytes:
    """A PDF of these object bodies with a classic xref table whose offsets hold."""
    out = bytearray(header)
    offsets: dict[int, int] = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    top = max(objects) + 1
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % top
    for number in range(1, top):
        if number in offsets:
            out += b"%010d 00000 n \n" % offsets[number]
        else:
            out += b"0000000000 65535 f \n"
    out += b"trailer\n<< /Size %d %s >>\nstartxref\n%d\n" % (size or top, trailer, xref_at)
    return bytes(out + eof)


def xref_stream_pdf(
    objects: Mapping[int, bytes],
    *,
    widths: Sequence[int] = (1, 4, 2),
    extra: bytes = b"",
    data: bytes | None = None,
    size: int | None = None,
) -> bytes:
    """A PDF indexed by a cross-reference stream (Flate), or by ``data`` given as is."""
    out = bytearray(b"%PDF-1.7\n")
    offsets: dict[int, int] = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    xref_number = max(objects) + 1
    offsets[xref_number] = len(out)
    if data is None:
        rows = [_row(widths, 0, 0, 65535)]
        for number in range(1, xref_number + 1):
            if number in offsets:
                rows.append(_row(widths, 1, offsets[number], 0))
            else:
                rows.append(_row(widths, 0, 0, 65535))
        data = zlib.compress(b"".join(rows))
    w = b" ".join(b"%d" % n for n in widths)
    out += (b"%d 0 obj\n<< /Type /XRef /Size %d /W [%s] /Root 1 0 R /Filter /FlateDecode "
            b"/Length %d %s >>\nstream\n" % (xref_number, size or xref_number + 1, w,
                                            len(data), extra))
    out += data + b"\nendstream\nendobj\nstartxref\n%d\n%%%%EOF\n" % offsets[xref_number]
    return bytes(out)


def _row(widths: Sequence[int], kind: int, field2: int, field3: int) -> bytes:
    return b"".join(value.to_bytes(width, "big")
                    for value, width in zip((kind, field2, field3), widths, strict=True))


def page(extra: bytes = b"", box: bytes = b"/MediaBox [0 0 595 842]", parent: int = 2) -> bytes:
    return b"<< /Type /Page /Parent %d 0 R %s %s >>" % (parent, box, extra)


def one_page(page_body: bytes | None = None, pages: bytes | None = None,
             catalog: bytes = PAGE_TREE_ROOT, **kw: object) -> bytes:
    objects = {
        1: catalog,
        2: pages or b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        3: page_body or page(),
    }
    return raw_pdf(objects, **kw)  # type: ignore[arg-type]


def flate_bomb(inflated: int) -> bytes:
    """Flate data that inflates to ``inflated`` zero bytes (about 1000:1)."""
    compressor = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    parts = []
    left = inflated
    while left > 0:
        parts.append(compressor.compress(chunk[:min(left, len(chunk))]))
        left -= len(chunk)
    parts.append(compressor.flush())
    return b"".join(parts)


def stream(body: bytes, data: bytes, flate: bool = True) -> bytes:
    filt = b"/Filter /FlateDecode " if flate else b""
    return b"<< %s%s/Length %d >>\nstream\n%s\nendstream" % (filt, body, len(data), data)

