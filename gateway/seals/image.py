"""Drawing a seal's impression: the red round seal image as a transparent PNG, and seal types.

The layout follows the common shape of a Chinese organisation's round seal (DOMAIN.md §1,
"Seal image"): an outer ring; the organisation's name along the upper arc, each character
turned to face outward; a five-pointed star in the centre; the type text (合同专用章 …)
level below the star; the 13-digit seal code in small digits along the lower arc, read
left to right. Every measure is a fraction of the diameter, so a 40 mm seal at any DPI has
the same proportions.

The picture is drawn as a coverage mask at :data:`_SUPERSAMPLE` times the target size and
scaled down, which smooths the edges, then coloured a single red: every pixel is the same
red with a varying alpha, so the impression sits on any background without a fringe. Pillow
and FreeType draw the same pixels for the same inputs, and PNG carries no timestamp, so the
same inputs give the same bytes (a stored seal image hash stays true).
"""

from __future__ import annotations

import functools
import io
import math

from PIL import Image, ImageChops, ImageDraw, ImageFont

from gateway.fonts import cjk_font

# code → (Chinese name, English name); DOMAIN.md §1 "Seal types".
SEAL_TYPES: dict[str, tuple[str, str]] = {
    "01": ("法定名称章", "official legal-name seal"),
    "02": ("财务专用章", "finance seal"),
    "03": ("发票专用章", "invoice seal"),
    "04": ("合同专用章", "contract seal"),
    "05": ("法定代表人名章", "legal representative's name seal"),
    "99": ("其他业务专用章", "other business seal"),
}

# The text a round impression shows under the star. An organisation's official seal (公章)
# shows none; a legal representative's name seal shows the person's name, not its type; an
# "other" business seal shows its own name (人事专用章 …), which the caller passes instead.
_IMPRESSION_TEXT = {"01": "", "02": "财务专用章", "03": "发票专用章", "04": "合同专用章",
                    "05": "", "99": ""}

SEAL_RED = (230, 0, 18)
MAX_DIAMETER_MM = 100.0  # e-seal platforms cap a seal picture's width and height at 100 mm
MAX_ORGANIZATION_CHARS = 40
MAX_TYPE_NAME_CHARS = 12
SEAL_CODE_DIGITS = 13

_SUPERSAMPLE = 4
_MM_PER_INCH = 25.4

# Proportions of a standard 40–42 mm seal, as fractions of the diameter.
_RING_WIDTH = 0.03
_TEXT_GAP = 0.02  # between the ring's inner edge and the arc texts
_STAR_RADIUS = 0.165
_NAME_HEIGHT = 0.15
_NAME_MIN_ASPECT = 0.55  # name glyphs are squeezed sideways this far before they shrink
_TYPE_HEIGHT = 0.10
_TYPE_MAX_WIDTH = 0.45
_TYPE_CENTRE_BELOW = 0.255
_CODE_HEIGHT = 0.055
_CODE_PITCH = 0.62  # digit advance along the arc, in digit heights
_STROKE = 0.025  # extra glyph weight, in glyph heights


def seal_type_name(code: str) -> str:
    """The type text a round impression of seal type ``code`` shows (empty when none)."""
    if code not in SEAL_TYPES:
        raise ValueError(f"unknown seal type code {code!r}; known: {', '.join(SEAL_TYPES)}")
    return _IMPRESSION_TEXT[code]


def render_round_seal(
    organization: str,
    seal_type_name: str,
    seal_code: str = "",
    *,
    diameter_mm: float = 40.0,
    dpi: int = 300,
) -> bytes:
    """A transparent RGBA PNG of a red round seal, ``diameter_mm`` across at ``dpi``.

    Raises :class:`ValueError` when the organisation name is empty or too long, the seal code
    is not 13 digits, the size is out of range, or the font cannot draw a character.
    """
    organization = organization.strip()
    type_text = seal_type_name.strip()
    _validate(organization, type_text, seal_code, diameter_mm, dpi)

    size = round(diameter_mm / _MM_PER_INCH * dpi)
    canvas = size * _SUPERSAMPLE
    mask = Image.new("L", (canvas, canvas), 0)
    _draw_ring_and_star(mask)
    _draw_name(mask, organization)
    if type_text:
        _draw_type_text(mask, type_text)
    if seal_code:
        _draw_code(mask, seal_code)

    alpha = mask.resize((size, size), Image.Resampling.LANCZOS)
    image = Image.new("RGBA", (size, size), (*SEAL_RED, 0))
    image.putalpha(alpha)
    out = io.BytesIO()
    image.save(out, format="PNG", dpi=(dpi, dpi), optimize=True)
    return out.getvalue()


def _validate(
    organization: str, type_text: str, seal_code: str, diameter_mm: float, dpi: int
) -> None:
    if not organization:
        raise ValueError("organization name is empty")
    if len(organization) > MAX_ORGANIZATION_CHARS:
        raise ValueError(f"organization name is longer than {MAX_ORGANIZATION_CHARS} characters")
    if len(type_text) > MAX_TYPE_NAME_CHARS:
        raise ValueError(f"seal type name is longer than {MAX_TYPE_NAME_CHARS} characters")
    if seal_code and not (len(seal_code) == SEAL_CODE_DIGITS and seal_code.isascii()
                          and seal_code.isdigit()):
        raise ValueError(f"seal code must be {SEAL_CODE_DIGITS} digits")
    if not 10.0 <= diameter_mm <= MAX_DIAMETER_MM:
        raise ValueError(f"diameter must be between 10 and {MAX_DIAMETER_MM:g} mm")
    if not 72 <= dpi <= 1200:
        raise ValueError("dpi must be between 72 and 1200")
    missing = cjk_font().missing(organization + type_text)
    if missing:
        # A seal showing a blank box in a name is worse than no seal: refuse it.
        raise ValueError(f"the seal font has no glyph for {missing!r}")


def _font(size_px: float) -> ImageFont.FreeTypeFont:
    font = cjk_font()
    return _open_font(str(font.path), font.face_index, max(1, round(size_px)))


@functools.lru_cache(maxsize=16)
def _open_font(path: str, face_index: int, size_px: int) -> ImageFont.FreeTypeFont:
    # A seal uses three sizes; opening the font file once per glyph would dominate the time.
    return ImageFont.truetype(path, size_px, index=face_index)


def _draw_ring_and_star(mask: Image.Image) -> None:
    d = mask.width
    centre = d / 2
    ring = d * _RING_WIDTH
    draw = ImageDraw.Draw(mask)
    draw.ellipse((ring / 2, ring / 2, d - ring / 2, d - ring / 2), outline=255,
                 width=round(ring))
    outer = d * _STAR_RADIUS
    # A regular star's inner vertices sit at sin 18° / sin 54° of the outer radius.
    inner = outer * math.sin(math.radians(18)) / math.sin(math.radians(54))
    points = []
    for i in range(10):
        radius = outer if i % 2 == 0 else inner
        angle = math.radians(i * 36)
        points.append((centre + radius * math.sin(angle), centre - radius * math.cos(angle)))
    draw.polygon(points, fill=255)


def _glyph(char: str, height: float, width: float) -> Image.Image:
    """One character as a mask, ``height`` tall and squeezed sideways to ``width``."""
    cell = math.ceil(height * 1.2)
    image = Image.new("L", (cell, cell), 0)
    # Seal engravings are heavier than a screen font's regular weight; a thin stroke around
    # each glyph brings them closer.
    ImageDraw.Draw(image).text((cell / 2, cell / 2), char, fill=255, font=_font(height),
                               anchor="mm", stroke_width=round(height * _STROKE),
                               stroke_fill=255)
    if width < height:
        image = image.resize((max(1, round(cell * width / height)), cell),
                             Image.Resampling.BICUBIC)
    return image


def _stamp(mask: Image.Image, glyph: Image.Image, x: float, y: float, turn_deg: float) -> None:
    """Lay ``glyph`` centred at (x, y), turned clockwise by ``turn_deg``."""
    turned = glyph.rotate(-turn_deg, resample=Image.Resampling.BICUBIC, expand=True)
    left, top = round(x - turned.width / 2), round(y - turned.height / 2)
    box = (left, top, left + turned.width, top + turned.height)
    mask.paste(ImageChops.lighter(mask.crop(box), turned), box)


def _draw_name(mask: Image.Image, name: str) -> None:
    d = mask.width
    count = len(name)
    # Longer names use more of the circle, up to the point where the last characters would
    # crowd the type text; a short name keeps its characters about 35° apart rather than
    # scattering four of them over 210°.
    span = math.radians(min(210 + min(max(count - 10, 0), 10) * 2.5, count * 35))
    step = span / count

    def fit(height: float) -> tuple[float, float]:
        """Arc radius and glyph width for glyphs ``height`` tall, 8% of a slice kept free."""
        radius = d / 2 - d * (_RING_WIDTH + _TEXT_GAP) - height / 2
        return radius, min(height, radius * step * 0.92)

    height = d * _NAME_HEIGHT
    radius, width = fit(height)
    if width < height * _NAME_MIN_ASPECT:
        # Too many characters to squeeze: shrink them, which also moves the arc outward.
        height = width / _NAME_MIN_ASPECT
        radius, width = fit(height)
    for i, char in enumerate(name):
        # Characters sit in the middle of equal slices of the arc, clockwise from the left.
        angle = -span / 2 + step * (i + 0.5)
        x = d / 2 + radius * math.sin(angle)
        y = d / 2 - radius * math.cos(angle)
        _stamp(mask, _glyph(char, height, width), x, y, math.degrees(angle))


def _draw_type_text(mask: Image.Image, text: str) -> None:
    d = mask.width
    height = d * _TYPE_HEIGHT
    width = min(height, d * _TYPE_MAX_WIDTH / len(text))
    y = d / 2 + d * _TYPE_CENTRE_BELOW
    for i, char in enumerate(text):
        x = d / 2 + (i - (len(text) - 1) / 2) * width
        _stamp(mask, _glyph(char, height, width), x, y, 0.0)


def _draw_code(mask: Image.Image, code: str) -> None:
    d = mask.width
    height = d * _CODE_HEIGHT
    radius = d / 2 - d * (_RING_WIDTH + _TEXT_GAP) - height / 2
    step = height * _CODE_PITCH / radius
    for i, digit in enumerate(code):
        # Measured from the bottom of the circle, positive to the left: the code reads left
        # to right with the digits' tops toward the centre.
        angle = step * ((len(code) - 1) / 2 - i)
        x = d / 2 - radius * math.sin(angle)
        y = d / 2 + radius * math.cos(angle)
        _stamp(mask, _glyph(digit, height, height), x, y, math.degrees(angle))
