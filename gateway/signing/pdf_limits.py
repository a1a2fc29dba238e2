"""What a PDF from outside may hold before pyHanko reads it: bounds its parser lacks.

pyHanko trusts a cross-reference stream's ``/Size`` and ``/Index``: when the stream's data
ends early it makes up the missing entries one by one, so a few hundred bytes declaring two
billion objects held the reader (and, for a small document, the event loop) for good, and a
``/Size`` of 2^31 gave sealed output with object numbers no other reader accepts.

Its lexer also reads a token a byte at a time: a name or hex string costs about 80 bytes of
memory per byte (a 10 MB name took 840 MB), and a number is re-joined 16 bytes at a time (a
2 MB number took 15 s of CPU, and the time grows with its square). No real document has
a name or number of even a kilobyte, or a hex string of megabytes.

Both are found by a scan of the raw bytes, every revision at once, before any of it is
parsed; the tokens also in each object stream, decoded, once the cross-references are
read. The scan does not tell stream data from the rest (a forged ``stream`` keyword in a
string would otherwise hide what follows), so the token limits are set where compressed
data never reaches them; uncompressed data that does is refused along with it.
"""

# pyHanko's cross-reference layer (xref) has no annotations.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.decode_limits import DecodePurpose
from pyhanko.pdf_utils.reader import PdfFileReader

from gateway.errors import BadDocument

# Far above any real document (a 100 MB PDF of ordinary pages has a few hundred thousand
# objects), and what pyHanko indexes in a few seconds. Below that, a document may declare
# one object per byte it has (every real object takes many), or ``OBJECTS_ALWAYS``: the
# entries pyHanko makes up for a short document cost about 3 us each, so a few hundred
# bytes declaring a million took 3 s for each reading (sealing, then verifying).
MAX_OBJECTS = 1_000_000
OBJECTS_ALWAYS = 65_536
# Sealing leaves room below the limits for the objects a seal and its validation data add
# (a few dozen for B-LTA), so that every document sealed can also be verified.
SEALING_HEADROOM = 1024
_DECLARED = re.compile(rb"/Size\s+(\d+)|/Index\s*\[([\d\s]*)")
# Digits beyond these say "too many" whatever they are (and int() refuses 4,300 of them).
_DIGITS = 18

_WHITESPACE = b"\x00\t\n\x0c\r "
_DELIMITERS = b"()<>[]{}/%"
_MEMBER = ord("a")


@dataclass(frozen=True)
class _TokenLimit:
    """A run of ``members`` (after ``opener``, if any) longer than ``limit`` bytes."""

    kind: str
    members: bytes
    opener: bytes
    limit: int

    def table(self) -> bytes:
        """Maps members to ``a``, the opener to itself and everything else to a space, so
        that an over-long token is one plain substring search."""
        table = bytearray(b" " * 256)
        for byte in self.members:
            table[byte] = _MEMBER
        if self.opener:
            table[self.opener[0]] = self.opener[0]
        return bytes(table)

    def needle(self) -> bytes:
        return self.opener + bytes([_MEMBER]) * (self.limit + 1)


_TOKEN_LIMITS = (
    _TokenLimit("number", b"0123456789+-.", b"", 64 * 1024),
    _TokenLimit("name", bytes(b for b in range(256) if b not in _WHITESPACE + _DELIMITERS),
                b"/", 1024 * 1024),
    # A signature's /Contents is the largest hex string a document has: a few kilobytes,
    # a few hundred with revocation data inside.
    _TokenLimit("hex string", b"0123456789abcdefABCDEF" + _WHITESPACE, b"<", 2 * 1024 * 1024),
)
_TABLES = tuple((limit, limit.table(), limit.needle()) for limit in _TOKEN_LIMITS)
# The document is scanned in windows that overlap by more than the longest token limit, so
# every over-long token starts whole in one window; a window's translated copies are what
# the scan holds in memory.
_OVERLAP = max(limit.limit for limit in _TOKEN_LIMITS) + 64
_WINDOW = 16 * 1024 * 1024


def check_readable(document: bytes | BinaryIO, headroom: int = 0) -> None:
    """Raise BadDocument for a document that declares more objects than it may (see
    ``MAX_OBJECTS``; ``headroom`` fewer) or holds an over-long name, number or hex string;
    read in windows, never whole."""
    declared = size = 0
    for start, window in _windows(document):
        declared = max(declared, _declared_in_window(window, start))
        _check_tokens(window, start)
        size = start + len(window)
    allowed = min(MAX_OBJECTS, max(OBJECTS_ALWAYS, size)) - headroom
    if declared > allowed:
        raise BadDocument(
            f"the PDF declares {declared} objects in its cross-reference data; at most "
            f"{allowed} are read from a document of {size} bytes"
        )


def declared_objects(document: bytes) -> int:
    """The highest object number plus one that any trailer or cross-reference stream
    declares (0 if none): each ``/Size``, and each subsection end of an ``/Index``."""
    return _declared_in_window(document, 0)


def _declared_in_window(window: bytes, start: int) -> int:
    highest = 0
    for match in _DECLARED.finditer(window):
        size, index = match.groups()
        if size is not None:
            highest = max(highest, _number(size))
            continue
        if match.end() == len(window) and len(index) > _OVERLAP:
            # Longer than any window can show whole: its last subsections go unseen.
            raise BadDocument(
                f"the PDF's cross-reference index at byte {start + match.start()} is "
                f"over {_OVERLAP} bytes long")
        numbers = [_number(n) for n in index.split()]
        ends = (first + count
                for first, count in zip(numbers[::2], numbers[1::2], strict=False))
        highest = max(highest, *ends, 0)
    return highest


def _number(digits: bytes) -> int:
    significant = digits.lstrip(b"0")
    return int(significant or b"0") if len(significant) <= _DIGITS else 10**_DIGITS


def check_object_streams(reader: PdfFileReader) -> None:
    """The token limits inside every object stream, decoded as pyHanko decodes them: a
    compressed name is no run in the file's bytes (a 16 MiB one in 12 MB of file took
    1.4 GB), and sealing writes the object it is in out again, uncompressed."""
    xrefs = reader.xrefs
    for revision in range(xrefs.total_revisions):
        for ref in xrefs.object_streams_used_in(revision):
            stream = ref.get_object()
            if isinstance(stream, generic.StreamObject):
                _check_tokens(stream.read_data(DecodePurpose.OBJECT_STREAM),
                              f"in object stream {ref.idnum}")


def _check_tokens(data: bytes, where: str | int) -> None:
    """``where`` is the offset of ``data`` in the file, or what it is."""
    for limit, table, needle in _TABLES:
        found = data.translate(table).find(needle)
        if found >= 0:
            at = f"at byte {where + found}" if isinstance(where, int) else where
            raise BadDocument(
                f"the PDF holds a {limit.kind} of over {limit.limit} bytes {at}; "
                "no readable document has one")


def _windows(document: bytes | BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of each window of the document, the file's position left at 0."""
    step = _WINDOW - _OVERLAP
    if isinstance(document, bytes):
        for start in range(0, max(len(document), 1), step):
            yield start, document[start:start + _WINDOW]
            if start + _WINDOW >= len(document):
                return
        return
    start = 0
    try:
        while True:
            document.seek(start)
            window = document.read(_WINDOW)
            yield start, window
            if len(window) < _WINDOW:
                return
            start += step
    finally:
        document.seek(0)
