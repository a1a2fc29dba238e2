"""The documents and request bodies of the benchmark, written under its var dir.

The 1-page and 50-page PDFs are the test suite's own samples (``tests.pdf_samples``), so the
benchmark seals what the interop tests verify. The large PDF is written here, streamed to
disk: one page showing one uncompressed grey image whose samples are random bytes, so that
nothing on the way (HTTP, PDF reader, hashing) can shrink it.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from tests import pdf_samples

_CHUNK = 1 << 20


def small_pdfs(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    made = {
        "pdf-1-page": pdf_samples.one_page_pdf(),
        "pdf-50-pages": pdf_samples.multi_page_pdf(50),
    }
    paths = {}
    for name, data in made.items():
        path = directory / f"{name}.pdf"
        path.write_bytes(data)
        paths[name] = path
    return paths


def large_pdf(path: Path, size: int) -> Path:
    """A valid one-page PDF of about ``size`` bytes, most of it one image stream."""
    side = max(int((size - 2048) ** 0.5), 1)
    content = b"q 595 0 0 842 0 0 cm /Im1 Do Q"
    offsets = []
    with path.open("wb") as out:
        out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")

        def begin(number: int) -> None:
            offsets.append(out.tell())
            out.write(b"%d 0 obj\n" % number)

        begin(1)
        out.write(b"<< /Type /Catalog /Pages 2 0 R >>\nendobj\n")
        begin(2)
        out.write(b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>\nendobj\n")
        begin(3)
        out.write(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
                  b"/Resources << /XObject << /Im1 5 0 R >> >> /Contents 4 0 R >>\nendobj\n")
        begin(4)
        out.write(b"<< /Length %d >>\nstream\n%s\nendstream\nendobj\n" % (len(content), content))
        begin(5)
        out.write(b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace "
                  b"/DeviceGray /BitsPerComponent 8 /Length %d >>\nstream\n"
                  % (side, side, side * side))
        left = side * side
        while left > 0:
            step = min(_CHUNK, left)
            out.write(os.urandom(step))
            left -= step
        out.write(b"\nendstream\nendobj\n")
        xref = out.tell()
        out.write(b"xref\n0 6\n0000000000 65535 f \n")
        for offset in offsets:
            out.write(b"%010d 00000 n \n" % offset)
        out.write(b"trailer\n<< /Size 6 /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % xref)
    return path


def cms_payloads(directory: Path, count: int = 8, size: int = 16 * 1024) -> list[Path]:
    """Arbitrary bytes for ``sign/cms``, a few different ones so answers differ."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        path = directory / f"payload-{n}.bin"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def hash_bodies(directory: Path, per_request: int, count: int = 16) -> list[Path]:
    """JSON bodies for ``sign/hash``: ``per_request`` random SHA-256 digests each."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        hashes = [base64.b64encode(os.urandom(32)).decode() for _ in range(per_request)]
        path = directory / f"hashes-{per_request}-{n}.json"
        path.write_text(json.dumps({"hash_algorithm": "sha256", "hashes": hashes}))
        paths.append(path)
    return paths
