"""Rendering a filing receipt (电子印章备案回执) as a human-readable, still unsigned A4 PDF.

The receipt's fields are DOMAIN.md §2 "What a filing receipt contains". The renderer takes
them as a plain mapping, so that it depends on no record class; missing required fields
raise :class:`ValueError` naming the field (``seal.code``), which the caller maps.

Receipt mapping (times are ISO 8601 strings or timezone-aware ``datetime``)::

    number                 str   receipt number (备案回执编号)
    authority              {id: str, name: str}          filing authority
    action                 str   new | renew | change | suspend | resume | report_loss | cancel
    seal_status            str   draft | pending_filing | active | suspended | lost |
                                 cancelled | expired (the seal's state after the action)
    seal                   {id: str, code: str, name: str, type: str (type code, e.g. "04")}
    organization           {name: str, uscc: str}
    legal_representative   {name: str, id_type: str (resident_id | passport | …),
                            id_number_masked: str (e.g. 110105********002X)}
    valid_from, valid_to   str | datetime   validity period
    issued_at              str | datetime   issue time
    certificate            {serial: str, issuer: str, sha256: str}   signing certificate
    seal_image             {sha256: str, width_mm: float, height_mm: float}
    application_id         str   the filing application this receipt answers
    supersedes             str | None   receipt number this one replaces (renew, change)
    content_digest         str   hex SHA-256 of the signed receipt content
    seal_image_png         bytes (optional)   the seal picture, drawn at its size in mm

Only ``legal_representative.id_number_masked`` is read, and it must be masked: a full ID
number never reaches the page, whatever else the mapping carries. The QR code holds
:func:`receipt_qr_text` — the receipt number and the content digest — so a phone can tie
the paper to the signed record.

The file is written with a classic cross-reference table and no object streams, so that the
PAdES signer (and any other tool) can append its signature as an incremental update. Chinese
text uses a subset of the CJK font from :mod:`gateway.fonts`, embedded as a CID font with a
ToUnicode map, so the text can be searched and copied.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import qrcode
from fontTools import subset
from fontTools.ttLib import TTFont
from fontTools.ttLib.scaleUpem import scale_upem
from PIL import Image, UnidentifiedImageError
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.font.opentype import GlyphAccumulator
from pyhanko.pdf_utils.images import pil_image
from pyhanko.pdf_utils.writer import PageObject, PdfFileWriter

from gateway.fonts import cjk_font
from gateway.seals.image import SEAL_TYPES

A4_WIDTH, A4_HEIGHT = 595.28, 841.89  # points
PT_PER_MM = 72 / 25.4
QR_PREFIX = "SGRCPT"

ACTION_NAMES = {
    "new": "新办备案", "renew": "续期", "change": "变更", "suspend": "停用",
    "resume": "恢复", "report_loss": "挂失", "cancel": "注销",
}
STATUS_NAMES = {
    "draft": "草稿", "pending_filing": "待备案", "active": "正常", "suspended": "已停用",
    "lost": "已挂失", "cancelled": "已注销", "expired": "已过期",
}
ID_TYPE_NAMES = {
    "resident_id": "居民身份证", "passport": "护照",
    "hk_macao_permit": "港澳居民来往内地通行证", "taiwan_permit": "台湾居民来往大陆通行证",
    "foreign_permanent_resident": "外国人永久居留身份证",
}

_MARGIN = 20 * PT_PER_MM
_LABEL_X = _MARGIN + 8
_VALUE_X = _MARGIN + 118
_ROW_SIZE = 10.0
_ROW_LEADING = 15.5
_SEAL_BOX_MM = 45.0  # larger seal pictures are shown scaled down; their size is printed
_QR_SIZE = 30 * PT_PER_MM
_QR_BOTTOM = 24 * PT_PER_MM
_TEXT_FLOOR = _QR_BOTTOM + _QR_SIZE + 12  # the field sections end above the QR block
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_FULL_ID = re.compile(r"\d{17}[\dX]")
_INK = b"0 0 0"
_GREY = b"0.35 0.35 0.35"
_RED = b"0.78 0 0.07"


def receipt_qr_text(receipt: Mapping[str, Any]) -> str:
    """The string the receipt's QR code encodes: receipt number and content digest."""
    return f"{QR_PREFIX}:{_field(receipt, 'number')};SHA256:{_digest(receipt)}"


class _Section(NamedTuple):
    heading: str
    rows: list[tuple[str, str]]
    shows_seal_image: bool = False


def render_receipt_pdf(receipt: Mapping[str, Any]) -> bytes:
    """The receipt as a one-page A4 PDF, ready for the platform's PAdES signature.

    Raises :class:`ValueError` naming the receipt field that is missing or malformed, or
    when the fields are too long to fit the page.
    """
    sections = _sections(receipt)
    qr_text = receipt_qr_text(receipt)
    seal_png = receipt.get("seal_image_png")
    if seal_png is not None and not isinstance(seal_png, bytes):
        raise ValueError("receipt field seal_image_png must be PNG bytes")

    # pyHanko's writer API carries no type annotations; its untyped calls are marked below.
    writer = PdfFileWriter(stream_xrefs=False)  # type: ignore[no-untyped-call]
    writer.document_meta.title = f"电子印章备案回执 {_field(receipt, 'number')}"
    writer.document_meta.creator = "SealGate"
    page = _Page(writer)

    y = A4_HEIGHT - 24 * PT_PER_MM
    page.text_centred(y, "电子印章备案回执", 22, colour=_RED, bold=True)
    y -= 18
    page.text_centred(y, "ELECTRONIC SEAL FILING RECEIPT", 9, colour=_GREY)
    y -= 26
    page.text(_MARGIN, y, f"回执编号：{_field(receipt, 'number')}", 10.5)
    issued = f"签发时间：{_when(receipt, 'issued_at')}"
    page.text(A4_WIDTH - _MARGIN - page.width(issued, 10.5), y, issued, 10.5)
    y -= 9
    page.rule(y, width=1.2, colour=_RED)

    for section in sections:
        y -= 24
        page.text(_MARGIN, y, section.heading, 12, bold=True)
        y -= 6
        value_width = A4_WIDTH - _MARGIN - _VALUE_X
        section_bottom = y
        if section.shows_seal_image and seal_png is not None:
            w, h = _draw_seal_image(page, seal_png, receipt, top=y - 4)
            value_width -= w + 12
            section_bottom = y - 4 - h
        for label, value in section.rows:
            y -= _ROW_LEADING
            page.text(_LABEL_X, y, label, _ROW_SIZE, colour=_GREY)
            y = page.wrapped(_VALUE_X, y, value, _ROW_SIZE, value_width)
        y = min(y, section_bottom) - 8
        page.rule(y, width=0.4, colour=_GREY)
    if y < _TEXT_FLOOR:
        raise ValueError("receipt fields are too long to fit on one page")

    _draw_verification(page, qr_text, _digest(receipt))
    page.finish()
    out = io.BytesIO()
    writer.write(out)  # type: ignore[no-untyped-call]
    return out.getvalue()


def _sections(receipt: Mapping[str, Any]) -> list[_Section]:
    seal_type = _field(receipt, "seal.type")
    if seal_type not in SEAL_TYPES:
        raise ValueError(f"receipt field seal.type: unknown seal type code {seal_type!r}")
    type_cn, type_en = SEAL_TYPES[seal_type]
    action = _field(receipt, "action")
    status = _field(receipt, "seal_status")
    id_type = _field(receipt, "legal_representative.id_type")
    width_mm = _number(receipt, "seal_image.width_mm")
    height_mm = _number(receipt, "seal_image.height_mm")
    authority = f"{_field(receipt, 'authority.name')}（{_field(receipt, 'authority.id')}）"
    return [
        _Section("一、备案信息", [
            ("备案机构", authority),
            ("备案事项", f"{ACTION_NAMES.get(action, action)}（{action}）"),
            ("印章状态", f"{STATUS_NAMES.get(status, status)}（{status}）"),
            ("有效期", f"{_when(receipt, 'valid_from')} 至 {_when(receipt, 'valid_to')}"),
            ("申请编号", _field(receipt, "application_id")),
            ("替代回执", str(receipt.get("supersedes") or "无")),
        ]),
        _Section("二、印章信息", [
            ("印章编号", _field(receipt, "seal.id")),
            ("印章编码", _field(receipt, "seal.code")),
            ("印章名称", _field(receipt, "seal.name")),
            ("印章类型", f"{type_cn}（{seal_type}，{type_en}）"),
            ("印模尺寸", f"{width_mm:g} mm × {height_mm:g} mm"),
            ("印模 SHA-256", _field(receipt, "seal_image.sha256")),
        ], shows_seal_image=True),
        _Section("三、用章单位", [
            ("单位名称", _field(receipt, "organization.name")),
            ("统一社会信用代码", _field(receipt, "organization.uscc")),
            ("法定代表人", _field(receipt, "legal_representative.name")),
            ("证件类型", ID_TYPE_NAMES.get(id_type, id_type)),
            ("证件号码", _masked_id(receipt)),
        ]),
        _Section("四、签章证书", [
            ("证书序列号", _field(receipt, "certificate.serial")),
            ("颁发者", _field(receipt, "certificate.issuer")),
            ("SHA-256 指纹", _field(receipt, "certificate.sha256")),
        ]),
    ]


def _draw_seal_image(
    page: _Page, png: bytes, receipt: Mapping[str, Any], top: float
) -> tuple[float, float]:
    try:
        image: Image.Image = Image.open(io.BytesIO(png))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError("receipt field seal_image_png is not a readable image") from exc
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA")
    width_mm = _number(receipt, "seal_image.width_mm")
    height_mm = _number(receipt, "seal_image.height_mm")
    scale = min(1.0, _SEAL_BOX_MM / max(width_mm, height_mm))
    w, h = width_mm * scale * PT_PER_MM, height_mm * scale * PT_PER_MM
    page.image(image, A4_WIDTH - _MARGIN - w, top - h, w, h)
    return w, h


def _draw_verification(page: _Page, qr_text: str, digest: str) -> None:
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=0)
    qr.add_data(qr_text)
    qr.make(fit=True)
    matrix: list[list[bool]] = qr.get_matrix()
    x, y = A4_WIDTH - _MARGIN - _QR_SIZE, _QR_BOTTOM
    page.qr(matrix, x, y, _QR_SIZE)

    text_width = x - _MARGIN - 14
    line = y + _QR_SIZE - 10
    page.text(_MARGIN, line, "核验说明", 11, bold=True)
    notes = (
        "本回执由备案机构以平台密钥进行电子签名（PAdES），签名覆盖本页全部内容；"
        "请以签名验证结果为准。右侧二维码包含回执编号与已签名内容的 SHA-256 摘要。",
        f"已签名内容摘要（SHA-256）：{digest}",
    )
    for note in notes:
        line = page.wrapped(_MARGIN, line - 15, note, 9, text_width, colour=_GREY) - 2


class _Page:
    """One page's content, laid out top to bottom; text is set once all of it is known.

    Setting waits for :meth:`finish` because the embedded font is cut down to the page's
    characters before pyHanko sees it (see :func:`_embeddable_font`); widths for the layout
    come from the full face's metrics, which the cut-down font keeps.
    """

    def __init__(self, writer: PdfFileWriter) -> None:
        self._writer = writer
        self._ops: list[bytes | _Text] = []
        self._images: dict[str, Any] = {}

    @staticmethod
    def width(text: str, size: float) -> float:
        return cjk_font().width_em(text) * size

    def text(self, x: float, y: float, text: str, size: float, *, colour: bytes = _INK,
             bold: bool = False) -> None:
        self._ops.append(_Text(x, y, text, size, colour, bold))

    def text_centred(self, y: float, text: str, size: float, *, colour: bytes = _INK,
                     bold: bool = False) -> None:
        self.text((A4_WIDTH - self.width(text, size)) / 2, y, text, size, colour=colour,
                  bold=bold)

    def wrapped(self, x: float, y: float, text: str, size: float, max_width: float, *,
                colour: bytes = _INK) -> float:
        """Draw ``text`` from baseline ``y``, broken to ``max_width``; the last baseline."""
        line, line_width = "", 0.0
        for ch in text:
            advance = self.width(ch, size)
            if line and line_width + advance > max_width:
                self.text(x, y, line, size, colour=colour)
                y -= size * 1.35
                line, line_width = "", 0.0
            line += ch
            line_width += advance
        self.text(x, y, line, size, colour=colour)
        return y

    def rule(self, y: float, *, width: float, colour: bytes) -> None:
        self._ops.append(b"q %s RG %g w %g %g m %g %g l S Q"
                         % (colour, width, _MARGIN, y, A4_WIDTH - _MARGIN, y))

    def image(self, image: Image.Image, x: float, y: float, w: float, h: float) -> None:
        name = f"Im{len(self._images) + 1}"
        self._images[name] = pil_image(image, self._writer)
        self._ops.append(b"q %g 0 0 %g %g %g cm /%s Do Q" % (w, h, x, y, name.encode()))

    def qr(self, matrix: list[list[bool]], x: float, y: float, size: float) -> None:
        """Dark modules as filled rectangles, row 0 at the top; runs merge into one each."""
        module = size / len(matrix)
        rects: list[bytes] = []
        for row, cells in enumerate(matrix):
            col = 0
            while col < len(cells):
                if not cells[col]:
                    col += 1
                    continue
                start = col
                while col < len(cells) and cells[col]:
                    col += 1
                rects.append(b"%d %d %d 1 re" % (start, len(matrix) - 1 - row, col - start))
        self._ops.append(b"q 0 g %g 0 0 %g %g %g cm %s f Q"
                         % (module, module, x, y, b" ".join(rects)))

    def finish(self) -> None:
        texts = [op for op in self._ops if isinstance(op, _Text)]
        font_file = _embeddable_font("".join(t.text for t in texts))
        font = GlyphAccumulator(self._writer, io.BytesIO(font_file), font_size=10)
        content = generic.StreamObject(stream_data=b"\n".join(
            op.render(font) if isinstance(op, _Text) else op for op in self._ops
        ))
        content.compress()  # type: ignore[no-untyped-call]
        resources = {"Font": _pdf_dict({"F1": font.as_resource()})}
        if self._images:
            resources["XObject"] = _pdf_dict(self._images)
        page = PageObject(  # type: ignore[no-untyped-call]
            contents=self._writer.add_object(content),
            media_box=(0, 0, A4_WIDTH, A4_HEIGHT),
            resources=_pdf_dict(resources),
        )
        self._writer.insert_page(page)  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class _Text:
    x: float
    y: float
    text: str
    size: float
    colour: bytes
    bold: bool

    def render(self, font: GlyphAccumulator) -> bytes:
        shaped = font.shape(self.text, with_actual_text=False)
        # No bold face ships with the CJK fonts; stroking the glyph outline thickens it.
        weight = b"2 Tr %g w " % (self.size * 0.03) if self.bold else b""
        return (b"q BT %s rg %s RG %s/F1 %g Tf 1 0 0 1 %g %g Tm %s ET Q"
                % (self.colour, self.colour, weight, self.size, self.x, self.y,
                   shaped.graphics_ops))


def _pdf_dict(entries: Mapping[str, Any]) -> Any:
    return generic.DictionaryObject(  # type: ignore[no-untyped-call]
        {generic.pdf_name("/" + key): value for key, value in entries.items()}
    )


def _embeddable_font(text: str) -> bytes:
    """The CJK face cut down to the glyphs of ``text``, rescaled to 1000 units per em.

    pyHanko's font engine writes glyph widths (/W) and TJ adjustments in the font's own
    units, where PDF wants thousandths of an em; that is only right for 1000-unit fonts, and
    TrueType CJK faces use 2048. Rescaling the whole face would touch ~50,000 glyphs, so the
    face is cut down to this page's characters first, which also makes pyHanko's own
    subsetting of it quick.
    """
    options = subset.Options()
    options.drop_tables += ["FFTM"]  # FontForge's timestamps: fontTools cannot subset them
    options.hinting = False  # PDF viewers scale the outlines themselves
    face = TTFont(io.BytesIO(cjk_font().sfnt_bytes))
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes={ord(ch) for ch in text})
    subsetter.subset(face)
    if face["head"].unitsPerEm != 1000:
        scale_upem(face, 1000)
    out = io.BytesIO()
    face.save(out)
    return out.getvalue()


def _field(receipt: Mapping[str, Any], path: str) -> str:
    node: Any = receipt
    for part in path.split("."):
        if not isinstance(node, Mapping) or node.get(part) in (None, ""):
            raise ValueError(f"receipt field {path} is missing")
        node = node[part]
    if isinstance(node, Mapping | list | bytes):
        raise ValueError(f"receipt field {path} must be text")
    return str(node)


def _number(receipt: Mapping[str, Any], path: str) -> float:
    try:
        value = float(_field(receipt, path))
    except ValueError as exc:
        raise ValueError(f"receipt field {path} must be a positive number") from exc
    if not value > 0:
        raise ValueError(f"receipt field {path} must be a positive number")
    return value


def _when(receipt: Mapping[str, Any], key: str) -> str:
    value = receipt.get(key)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return _field(receipt, key)


def _digest(receipt: Mapping[str, Any]) -> str:
    digest = _field(receipt, "content_digest").lower()
    if not _HEX_DIGEST.fullmatch(digest):
        raise ValueError("receipt field content_digest must be a hex SHA-256 digest")
    return digest


def _masked_id(receipt: Mapping[str, Any]) -> str:
    masked = _field(receipt, "legal_representative.id_number_masked")
    # A full ID number in the masked field is a caller's bug; printing it would publish it.
    if "*" not in masked or _FULL_ID.fullmatch(masked.upper()):
        raise ValueError("receipt field legal_representative.id_number_masked is not masked")
    return masked
