"""What a PDF from outside may declare before pyHanko reads it: bounds its parser lacks.

pyHanko trusts a cross-reference stream's ``/Size`` and ``/Index``: when the stream's data
ends early it makes up the missing entries one by one, so a few hundred bytes declaring two
billion objects held the reader (and, for a small document, the event loop) for good, and a
``/Size`` of 2^31 gave sealed output with object numbers no other reader accepts. The
declarations are found by a scan of the raw bytes, every revision at once, before any of it
is parsed.
"""

from __future__ import annotations

import contextlib
import mmap
import re
from collections.abc import Iterator
from typing import BinaryIO

from gateway.errors import BadDocument

# Far above any real document (a 100 MB PDF of ordinary pages has a few hundred thousand),
# and what pyHanko indexes in a few seconds.
MAX_OBJECTS = 1_000_000
_DECLARED = re.compile(rb"/Size\s+(\d+)|/Index\s*\[([\d\s]*)")
# Digits beyond these say "too many" whatever they are (and int() refuses 4,300 of them).
_DIGITS = 18


def declared_objects(document: bytes | mmap.mmap) -> int:
    """The highest object number plus one that any trailer or xref stream declares (0 if
    none): each ``/Size``, and each subsection end of an ``/Index``."""
    highest = 0
    for match in _DECLARED.finditer(document):
        size, index = match.groups()
        if size is not None:
            highest = max(highest, _number(size))
        else:
            numbers = [_number(n) for n in index.split()]
            ends = (start + count
                    for start, count in zip(numbers[::2], numbers[1::2], strict=False))
            highest = max(highest, *ends, 0)
    return highest


def _number(digits: bytes) -> int:
    significant = digits.lstrip(b"0")
    return int(significant or b"0") if len(significant) <= _DIGITS else 10**_DIGITS


def check_declared_objects(document: bytes | mmap.mmap) -> None:
    """Raise BadDocument when the document declares more than ``MAX_OBJECTS`` objects."""
    declared = declared_objects(document)
    if declared > MAX_OBJECTS:
        raise BadDocument(
            f"the PDF declares {declared} objects in its cross-reference data; "
            f"at most {MAX_OBJECTS} are read"
        )


def check_declared_objects_in_file(file: BinaryIO) -> None:
    """:func:`check_declared_objects` on a document in a file, without reading it into memory."""
    with _view(file) as view:
        check_declared_objects(view)


@contextlib.contextmanager
def _view(file: BinaryIO) -> Iterator[bytes | mmap.mmap]:
    try:
        view = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # not a real file, or empty
        file.seek(0)
        yield file.read()
        return
    with view:
        yield view
