"""Sealing PDFs: a PAdES baseline signature added as an incremental update, visible or not.

A seal runs in three steps so that neither the event loop nor the HSM thread does the other's
work:

1. in a worker thread, pyHanko's interrupted signing API reads the document, adds the field,
   the seal's appearance and a signature placeholder of a size known in advance, and digests
   the byte range; the signed attributes come from the key's :class:`CmsTemplate`;
2. on the event loop, the digest of the signed attributes is signed by the HSM (which has its
   own thread);
3. in a worker thread, the CMS structure is joined from the template and written into the
   placeholder.

A small document (at most ``INLINE_MAX_OBJECTS`` objects in ``INLINE_MAX_BYTES``, none of
them in an object stream) does steps 1 and 3 on the event loop instead. pyHanko holds the
GIL, so the worker thread never ran beside the loop anyway: it held it for up to a switch
interval (5 ms) at a time, and the two hops cost a thread wake-up and a loop wake-up each.
A 1-page document takes about 1 ms. At half the 1-page peak rate, three alternating runs
each: p50 5.2-5.8 ms against 8.4-15.4 ms, p99 13-15 ms against 32-39 ms, and 15 % less
worker CPU per document. pyHanko's work grows with the objects it reads (about 7 ms for a
flat 50-page document), which the trailer's ``/Size`` bounds, so larger documents keep to
the worker thread, and with what it parses, which an object stream can inflate a
thousandfold. The byte limit bounds what a document whose trailer understates its objects
can cost the loop.

A document too large to hold in memory arrives as a file and is sealed where it lies
(:meth:`PdfSealer.seal_file`): the same steps, with the update appended to that file.

Levels above B-B continue from there with :class:`LongTermSigning`: a time-stamp over the
signature value goes into the CMS before it is written (B-T), then the DSS (B-LT) and a
document time-stamp (B-LTA) follow as further incremental updates. B-B never touches it.

Everything client-supplied is checked on the way in: a body that is not a PDF is
:class:`UnsupportedMediaType`, one that cannot be read is :class:`BadDocument`, and foreign
exceptions never escape this module.
"""

# pyHanko's PDF object layer (generic, rw_common) has no annotations.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import asyncio
import decimal
import enum
import functools
import io
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, TypeVar

from asn1crypto import cms
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.decode_limits import DecodeLimits, StreamDecodeLimits
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.misc import PdfDecodeLimitError, PdfError
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import fields, signers
from pyhanko.sign.general import SigningError
from pyhanko.sign.signers.pdf_byterange import PreparedByteRangeDigest

from gateway.errors import BadDocument, SealGateError, UnsupportedMediaType, ValidationFailed
from gateway.signing.ltv import LongTermSigning, add_signature_timestamp, token_certificates
from gateway.signing.pdf_limits import (
    SEALING_HEADROOM,
    check_object_streams,
    check_readable,
    declared_objects,
)
from gateway.signing.pdf_stamp import Placement, Rect, SealImage, SealStampStyle
from gateway.signing.seal_key import SealKey

log = logging.getLogger(__name__)
T = TypeVar("T")
BeforeSigning = Callable[[], Awaitable[None]] | None

# PDF readers look for the header within the first 1024 bytes (ISO 32000-2 §7.5.2 note).
_HEADER_WINDOW = 1024
# Page-tree levels a page box is inherited through; balanced trees of any real document are
# a handful deep.
MAX_PAGE_TREE_DEPTH = 256
# Digest reads of a document sealed in place (pyHanko's default of 4 KiB means 25,000 reads
# for a 100 MB file).
_FILE_CHUNK = 1024 * 1024
_LEADING_BYTES = b"\xef\xbb\xbf \t\r\n\f\x00"
_INVISIBLE = SealStampStyle()
# Documents with at most this many objects are sealed on the event loop (module docstring):
# up to about 3 ms of pyHanko work, less than the GIL switch interval.
INLINE_MAX_OBJECTS = 64
INLINE_MAX_BYTES = 64 * 1024
# An object stream's /Type is /ObjStm, which a name may also spell with #xx escapes.
_NAME_ESCAPE = re.compile(rb"/[^\x00\t\n\x0c\r ()<>\[\]{}/%]*#[0-9A-Fa-f]{2}")
# Reading only the cross-references of a small document decodes no more than this.
_PROBE_LIMITS = DecodeLimits(per_stream=StreamDecodeLimits(max_output_size=INLINE_MAX_BYTES))


class SignatureLevel(enum.StrEnum):
    """PAdES baseline levels (ETSI EN 319 142-1), as the API names them."""

    B_B = "B-B"
    B_T = "B-T"
    B_LT = "B-LT"
    B_LTA = "B-LTA"

    @classmethod
    def parse(cls, value: object, field: str = "level") -> SignatureLevel:
        try:
            return cls(str(value).upper())
        except ValueError:
            allowed = ", ".join(level.value for level in cls)
            raise ValidationFailed.one(field, f"must be one of {allowed}") from None


SUPPORTED_LEVELS = frozenset(SignatureLevel)


@dataclass(frozen=True)
class PdfSealOptions:
    """How to seal one document: where the seal goes, what the signature says, which level."""

    placement: Placement = field(default_factory=Placement)
    reason: str | None = None
    location: str | None = None
    visible: bool = True
    level: SignatureLevel | str = SignatureLevel.B_B


def check_pdf_header(document: bytes) -> None:
    """Raise UnsupportedMediaType unless the body starts like a PDF, and BadDocument for a
    PDF with a byte-order mark or whitespace before its header: pyHanko does not read it,
    and the sealed copy must begin with the bytes as sent, so it cannot be mended here."""
    head = document[:_HEADER_WINDOW].lstrip(_LEADING_BYTES)
    if not head.startswith(b"%PDF-"):
        raise UnsupportedMediaType("the body is not a PDF document (no %PDF- header)")
    if len(head) != len(document[:_HEADER_WINDOW]):
        raise BadDocument("the PDF has bytes before its %PDF- header (a byte-order mark or "
                          "whitespace); send the file as it was written, without them")


def reserved_size(key: SealKey, level: SignatureLevel, timestamp_size: int = 0) -> int:
    """Placeholder size for the signature: twice the DER bound, as it is written in hex.

    Known from the key alone, so no dry-run signature is built per document (DOMAIN.md §6);
    levels with a signature time-stamp add ``timestamp_size``, the most its unsigned
    attribute can add (:meth:`LongTermSigning.signature_timestamp_size`).
    """
    assert level in SUPPORTED_LEVELS
    assert (level is SignatureLevel.B_B) == (timestamp_size == 0)
    return 2 * (key.cms.max_size + timestamp_size)


class PdfSealer:
    """Seals PDFs with any seal; caches each seal picture's encoded form.

    ``executor`` runs the PDF and CMS work (the loop's default executor when ``None``); it
    must not be the HSM's thread. ``long_term`` is where levels above B-B get their
    time-stamps and CRLs; without it only B-B is offered.
    """

    def __init__(
        self,
        executor: Executor | None = None,
        image_cache_size: int = 128,
        long_term: LongTermSigning | None = None,
    ) -> None:
        self._executor = executor
        self._long_term = long_term
        # Keyed by the PNG bytes themselves: equal pictures share one entry, whatever seal
        # they belong to, and a changed picture can never hit a stale one.
        self._seal_image = functools.lru_cache(maxsize=image_cache_size)(SealImage.from_png)

    def image_cache_info(self) -> functools._CacheInfo:
        """Hits and misses of the seal-picture cache, for metrics and tests."""
        return self._seal_image.cache_info()

    async def seal(
        self,
        document: bytes,
        key: SealKey,
        image_png: bytes | None,
        options: PdfSealOptions | None = None,
        before_signing: BeforeSigning = None,
    ) -> bytes:
        """Return ``document`` with one more signature, appended as an incremental update.

        ``before_signing`` is awaited once the document is prepared and right before the HSM
        signs: a document that cannot be sealed is refused without it (a key's usage budget
        is reserved there).
        """
        options = options or PdfSealOptions()
        level, long_term = self._checked(options, image_png)
        check_pdf_header(document)
        if long_term is None:
            run = _here if is_small(document) else self._in_executor
            prepared = await run(self._prepare, document, key, image_png, options, level, 0)
            await _call(before_signing)
            signature = await key.sign_digest(prepared.digest_to_sign)
            return await run(prepared.finish, key, signature)
        return await self._seal_long_term(
            document, key, image_png, options, level, long_term, before_signing)

    async def seal_file(
        self,
        file: BinaryIO,
        key: SealKey,
        image_png: bytes | None,
        options: PdfSealOptions | None = None,
        before_signing: BeforeSigning = None,
    ) -> None:
        """Seal the document in a seekable read-write ``file`` where it lies (``before_signing``
        as for :meth:`seal`).

        For documents too large to hold in memory: pyHanko reads the file, the incremental
        update is appended to it and the signature written into its placeholder, so the
        document is never copied. B-LT and B-LTA add their validation data to a document in
        memory, so those levels read the file whole.
        """
        options = options or PdfSealOptions()
        level, long_term = self._checked(options, image_png)
        if level in (SignatureLevel.B_LT, SignatureLevel.B_LTA):
            document = await self._in_executor(_read_all, file)
            sealed = await self.seal(document, key, image_png, options, before_signing)
            await self._in_executor(_append, file, sealed[len(document):])
            return
        timestamp_size = (
            0 if long_term is None else await long_term.signature_timestamp_size(key.hash_name)
        )
        prepared = await self._in_executor(
            self._prepare, file, key, image_png, options, level, timestamp_size
        )
        await _call(before_signing)
        signature = await key.sign_digest(prepared.digest_to_sign)
        token = (
            None if long_term is None
            else await long_term.signature_timestamp(signature, key.hash_name)
        )
        await self._in_executor(prepared.fill, key, signature, token)

    async def _in_executor(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _checked(
        self, options: PdfSealOptions, image_png: bytes | None
    ) -> tuple[SignatureLevel, LongTermSigning | None]:
        """The level and, above B-B, where its time-stamps come from; 422 for bad options."""
        level = SignatureLevel.parse(options.level)
        long_term = None if level is SignatureLevel.B_B else self._long_term
        if level is not SignatureLevel.B_B and long_term is None:
            raise ValidationFailed.one(
                "level", f"{level} needs a time-stamp authority and none is set up; use B-B"
            )
        if options.visible:
            if image_png is None:
                raise ValidationFailed.one("visible", "a visible seal needs the seal's image")
            options.placement.check_numbers()
        return level, long_term

    async def _seal_long_term(
        self,
        document: bytes,
        key: SealKey,
        image_png: bytes | None,
        options: PdfSealOptions,
        level: SignatureLevel,
        long_term: LongTermSigning,
        before_signing: BeforeSigning,
    ) -> bytes:
        timestamp_size = await long_term.signature_timestamp_size(key.hash_name)
        prepared = await self._in_executor(
            self._prepare, document, key, image_png, options, level, timestamp_size
        )
        await _call(before_signing)
        signature = await key.sign_digest(prepared.digest_to_sign)
        token = await long_term.signature_timestamp(signature, key.hash_name)
        sealed = await self._in_executor(prepared.finish, key, signature, token)
        if level is SignatureLevel.B_T:
            return sealed
        sealed = await long_term.add_validation_data(
            sealed, [(key.certificate, *key.chain), token_certificates(token)], self._executor
        )
        if level is SignatureLevel.B_LT:
            return sealed
        return await long_term.add_document_timestamp(sealed, key.hash_name, self._executor)

    # -- in a worker thread --------------------------------------------------------------------

    def _prepare(
        self,
        document: bytes | BinaryIO,
        key: SealKey,
        image_png: bytes | None,
        options: PdfSealOptions,
        level: SignatureLevel,
        timestamp_size: int,
    ) -> _PreparedSeal:
        image = self._seal_image(image_png) if options.visible and image_png else None
        if not isinstance(document, bytes):
            document.seek(0)
            check_pdf_header(document.read(_HEADER_WINDOW))
        writer = _open(document)
        try:
            check_object_streams(writer.prev)
            _check_numbering(writer)
            _check_signature_fields(writer)
            page_index = _page_index(writer, options.placement.page)
            if image is not None:
                rect = options.placement.rect(_page_box(writer, page_index), image.aspect_ratio)
                style = SealStampStyle(image=image, size=(rect[2] - rect[0], rect[3] - rect[1]))
            else:
                rect, style = None, _INVISIBLE
            field_name = f"Seal-{uuid.uuid4().hex[:12]}"
            pdf_signer = signers.PdfSigner(
                signers.PdfSignatureMetadata(
                    field_name=field_name,
                    md_algorithm=key.hash_name,
                    subfilter=fields.SigSeedSubFilter.PADES,
                    reason=options.reason,
                    location=options.location,
                ),
                key.signer,
                stamp_style=style,
                new_field_spec=fields.SigFieldSpec(
                    field_name,
                    on_page=page_index,
                    # pyHanko annotates the box as ints but writes any real number.
                    box=rect,  # type: ignore[arg-type]
                ),
            )
            session = pdf_signer.init_signing_session(writer)
            tbs = session.prepare_tbs_document(
                validation_info=None,
                bytes_reserved=reserved_size(key, level, timestamp_size),
            )
            output: IO[bytes]
            if isinstance(document, bytes):
                output = io.BytesIO()
                byte_range, _ = tbs.digest_tbs_document(output=output)
            else:
                byte_range, output = tbs.digest_tbs_document(
                    in_place=True, chunk_size=_FILE_CHUNK
                )
        except SealGateError:
            raise
        except SigningError as exc:
            # pyHanko refuses documents whose existing signatures forbid more changes.
            raise BadDocument(f"the PDF cannot be sealed: {exc}") from exc
        except Exception as exc:
            raise _damaged(exc) from exc
        finally:
            _discard(writer)
        signed_attributes = key.cms.signed_attributes(byte_range.document_digest)
        return _PreparedSeal(
            byte_range, output, signed_attributes, key.cms.digest_to_sign(signed_attributes)
        )


@dataclass(frozen=True)
class _PreparedSeal:
    """A document in its final pre-signing state and what the key has to sign for it."""

    byte_range: PreparedByteRangeDigest
    output: IO[bytes]  # a BytesIO, or the file of a document sealed in place
    signed_attributes: bytes
    digest_to_sign: bytes

    def fill(
        self, key: SealKey, signature: bytes, timestamp: cms.ContentInfo | None = None
    ) -> None:
        """Write the signature into its placeholder."""
        signed_data = key.cms.signed_data(self.signed_attributes, signature)
        if timestamp is not None:
            signed_data = add_signature_timestamp(signed_data, timestamp)
        self.byte_range.fill_with_cms(self.output, signed_data)

    def finish(
        self, key: SealKey, signature: bytes, timestamp: cms.ContentInfo | None = None
    ) -> bytes:
        """Write the signature and return the sealed document (documents in memory)."""
        assert isinstance(self.output, io.BytesIO)
        self.fill(key, signature, timestamp)
        return self.output.getvalue()


async def _call(hook: BeforeSigning) -> None:
    if hook is not None:
        await hook()


async def _here(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` on the calling thread (the event loop), for small documents."""
    return fn(*args)


def is_small(document: bytes) -> bool:
    """Whether the document is within ``INLINE_MAX_BYTES``, declares at most
    ``INLINE_MAX_OBJECTS`` objects (every ``/Size`` and cross-reference stream ``/Index``
    counts: pyHanko makes up the entries an index declares) and keeps none in an object
    stream. A declaration that is not found or misread only moves the work to the worker
    thread; it decides nothing else."""
    if len(document) > INLINE_MAX_BYTES:
        return False
    return 0 < declared_objects(document) <= INLINE_MAX_OBJECTS and not _uses_object_streams(
        document)


def _uses_object_streams(document: bytes) -> bool:
    """Whether any revision keeps objects in object streams, read from the cross-references
    only (a fraction of a millisecond for a small document).

    What an object stream inflates to (up to 4 MiB, from a few kilobytes) is parsed at about
    a microsecond a byte: a 4 KB document whose page held an array of two million numbers
    held the event loop for 9.5 s. A document the reader refuses is not small either way;
    one whose cross-reference stream inflates beyond ``INLINE_MAX_BYTES`` counts as using them.
    """
    if b"/ObjStm" not in document and not _NAME_ESCAPE.search(document):
        return False  # the reader is not needed to tell (it takes 0.2 ms)
    reader = None
    try:
        reader = PdfFileReader(io.BytesIO(document), strict=False, decode_limits=_PROBE_LIMITS)
        xrefs = reader.xrefs
        return any(xrefs.object_streams_used_in(revision)
                   for revision in range(xrefs.total_revisions))
    except PdfDecodeLimitError:
        return True
    except Exception:  # the sealing reads it again, and says what is wrong
        return False
    finally:
        if reader is not None:
            vars(reader).clear()  # its cycles, as in _discard


def _damaged(exc: Exception) -> BadDocument:
    # Malformed input makes pyHanko raise anything from PdfReadError to KeyError; none of it
    # is a gateway fault, and its own message only helps when it is a PDF syntax error.
    log.info("unreadable PDF: %s: %s", type(exc).__name__, exc)
    if isinstance(exc, PdfError):
        return BadDocument(f"the PDF is damaged and cannot be read: {exc}")
    return BadDocument("the PDF is damaged: its object structure cannot be read")


def _read_all(file: BinaryIO) -> bytes:
    file.seek(0)
    return file.read()


def _append(file: BinaryIO, data: bytes) -> None:
    file.seek(0, io.SEEK_END)
    file.write(data)
    file.flush()


def _open(document: bytes | BinaryIO) -> IncrementalPdfFileWriter:
    check_readable(document, headroom=SEALING_HEADROOM)
    stream = io.BytesIO(document) if isinstance(document, bytes) else document
    try:
        # Not strict: hybrid-reference files (common from office suites) must seal too.
        writer = IncrementalPdfFileWriter(stream, strict=False)
        encrypted = writer.prev.encrypted
    except Exception as exc:
        raise _damaged(exc) from exc
    if encrypted:
        raise BadDocument(
            "the PDF is encrypted (password protected); remove the encryption before sealing",
            type_slug="encrypted-document",
        )
    return writer


def _discard(writer: IncrementalPdfFileWriter) -> None:
    """Drop what pyHanko's writer and its reader hold, once the document is written.

    Both sit in reference cycles with the objects they hold (each object's IndirectObject
    points back at them), so nothing of a document is freed when the sealing returns: a
    1-page document left about 290 objects to Python's cyclic collector. In a worker
    sealing a few hundred documents a second, each young-generation pass then found about
    20,000 of them at once and held the GIL for about 10 ms, which every request in flight
    waited out. Cleared here, the objects are freed by reference counting as the sealing ends.
    The objects of the update are all made for this document (the seal picture's streams
    too), so clearing their attributes touches nothing shared.
    """
    reader = writer.prev
    for written in writer.objects.values():
        # Attributes beside the PDF data, e.g. a signature field that is its own widget
        # annotation (``annot_dict`` is the field itself).
        if hasattr(written, "__dict__"):
            vars(written).clear()
    vars(writer).clear()
    vars(reader).clear()


def _check_numbering(writer: IncrementalPdfFileWriter) -> None:
    """Refuse a trailer /Size that does not exceed every object number in the document.

    pyHanko numbers the objects of the update from /Size on, so a /Size that understates
    the objects made the seal's update replace the document's own (its page, fonts,
    contents): the sealed PDF showed something else than the document sent, under a valid
    seal.
    """
    size = writer.prev.trailer["/Size"]
    xrefs = writer.prev.xrefs
    highest = max(
        (ref.idnum
         for revision in range(xrefs.total_revisions)
         for ref in xrefs.explicit_refs_in_revision(revision)
         | xrefs.refs_freed_in_revision(revision)),
        default=0,
    )
    if not isinstance(size, int) or isinstance(size, bool) or size <= highest:
        raise BadDocument(
            f"the PDF's trailer /Size ({size}) does not count its objects, which are "
            f"numbered up to {highest}; a seal would replace some of them")


def _check_signature_fields(writer: IncrementalPdfFileWriter) -> None:
    """Walk the form's signature fields as a validator will (raising what pyHanko raises).

    pyHanko seals a document whose form tree loops back on itself without walking it, and
    every validator walking it afterwards then refused the sealed document as unreadable.
    """
    for _ in fields.enumerate_sig_fields(writer.prev):
        pass


def _page_index(writer: IncrementalPdfFileWriter, page: int | None) -> int:
    count = writer.root["/Pages"]["/Count"]
    if not isinstance(count, int) or count < 1:
        raise BadDocument("the PDF has no pages")
    if page is None:
        return count - 1
    if not 1 <= page <= count:
        raise ValidationFailed.one(
            "page", f"must be between 1 and {count}: the document has {count} pages"
        )
    return page - 1


def _inherited(page: generic.DictionaryObject, key: str) -> Any:
    """``key`` of the page or of the nearest page-tree node above it that has it.

    pyHanko's own walk follows ``/Parent`` without end, so a page whose parent chain loops
    back (a few bytes of a hostile document) would hold the event loop for good.
    """
    node: Any = page
    seen: set[int] = set()
    for _ in range(MAX_PAGE_TREE_DEPTH):
        if not isinstance(node, generic.DictionaryObject) or id(node) in seen:
            break
        seen.add(id(node))
        if key in node:
            return node[key]
        parent = node.get("/Parent")
        if parent is None:
            return None
        node = parent.get_object() if hasattr(parent, "get_object") else parent
    raise BadDocument("the PDF's page tree loops back on itself or is too deep")


def _page_box(writer: IncrementalPdfFileWriter, page_index: int) -> Rect:
    """The visible area of the page (crop box, else media box), normalised to (ll, ur)."""
    page = writer.find_page_for_modification(page_index)[0].get_object()
    box = _inherited(page, "/CropBox")
    if box is None:
        box = _inherited(page, "/MediaBox")
    corners = _numbers(box)
    if corners is None:
        raise BadDocument(f"page {page_index + 1} has no valid /MediaBox")
    x1, y1, x2, y2 = corners
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def _numbers(box: Any) -> tuple[float, float, float, float] | None:
    """A page box's four finite numbers, each possibly an indirect object (as the standard
    allows; iterating the array would yield the references), or None."""
    if not isinstance(box, generic.ArrayObject) or len(box) != 4:
        return None
    # Indexing dereferences; strings, names or huge numbers are no box.
    values = [box[i] for i in range(4)]
    if not all(isinstance(v, int | float | decimal.Decimal) and not isinstance(v, bool)
               for v in values):
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in values)
    except OverflowError:
        return None
    return (x1, y1, x2, y2) if all(map(math.isfinite, (x1, y1, x2, y2))) else None
