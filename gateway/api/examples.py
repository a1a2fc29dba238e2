"""Example values for the OpenAPI document: identifiers with valid check characters, a seal
picture, digests and a one-page PDF.

A client generated from the document, and a tool that tests the API from it, send these as
they are, so each is one the gateway takes: the USCC and the resident ID number are those of
DOMAIN.md §3, the picture is a PNG and the PDF is one pyHanko and poppler read.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib

USCC = "91350100M000100Y43"
RESIDENT_ID = "11010519491231002X"
PHONE = "13800000000"
SHA256_BASE64 = base64.b64encode(hashlib.sha256(b"SealGate").digest()).decode()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def seal_png(size: int = 24) -> bytes:
    """A red square ring on a transparent background, as an RGBA PNG of ``size`` pixels."""
    red, clear = b"\xdc\x14\x1e\xff", b"\x00\x00\x00\x00"
    rows = []
    for y in range(size):
        edge = y < 2 or y >= size - 2
        row = b"".join(red if edge or x < 2 or x >= size - 2 else clear for x in range(size))
        rows.append(b"\x00" + row)  # filter type 0 for each scanline
    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"".join(rows))) + _png_chunk(b"IEND", b""))


def one_page_pdf() -> bytes:
    """An A4 page saying "SealGate", with a cross-reference table at the right offsets."""
    content = b"BT /F1 24 Tf 72 760 Td (SealGate) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


SEAL_PNG_BASE64 = base64.b64encode(seal_png()).decode()
PDF = one_page_pdf().decode("latin-1")
"""The PDF as the document's text: every byte of it is ASCII."""
