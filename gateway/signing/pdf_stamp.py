"""The visible seal on a page: where it goes, and its appearance built from a pre-encoded image.

The seal picture is decoded and Flate-compressed once (:class:`SealImage`); for each document
only two stream objects holding those bytes are added, so sealing never re-encodes pixels.
The appearance is the picture alone, scaled to the widget rectangle: no border, no text.
"""

# pyHanko's PDF object layer (generic) has no annotations.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from pyhanko.pdf_utils import generic, layout
from pyhanko.pdf_utils.content import ResourceType
from pyhanko.pdf_utils.generic import pdf_name
from pyhanko.pdf_utils.writer import BasePdfFileWriter, init_xobject_dictionary
from pyhanko.stamp import BaseStamp, BaseStampStyle

from gateway.errors import FieldError, ValidationFailed

# A seal impression is about 40 mm across (DOMAIN.md §1); 1 mm = 72 / 25.4 pt.
DEFAULT_WIDTH = 40 * 72 / 25.4
DEFAULT_MARGIN = 36.0
# A stamp smaller than these (3.5 mm, and 1 pt high) shows nothing anyone could recognise,
# and pyHanko cannot draw an appearance that rounds down to nothing.
MIN_WIDTH = 10.0
MIN_HEIGHT = 1.0
Rect = tuple[float, float, float, float]


@dataclass(frozen=True)
class Placement:
    """Where the seal goes on a page, in points; ``None`` asks for the default.

    ``page`` is 1-based (default: the last page). ``x`` and ``y`` place the stamp's lower left
    corner, measured from the lower left corner of the visible page (default: the bottom
    right corner, ``DEFAULT_MARGIN`` from the edges). ``width`` defaults to ``DEFAULT_WIDTH``;
    the height follows from the picture's aspect ratio.
    """

    page: int | None = None
    x: float | None = None
    y: float | None = None
    width: float | None = None

    def check_numbers(self) -> None:
        """Reject what no page can accept, before the document is even read."""
        errors = [
            FieldError(name, "must be a finite number")
            for name, value in (("x", self.x), ("y", self.y), ("width", self.width))
            if value is not None and not math.isfinite(value)
        ]
        if self.width is not None and math.isfinite(self.width) and self.width < MIN_WIDTH:
            errors.append(FieldError("width", f"must be at least {MIN_WIDTH:g} pt"))
        if errors:
            raise ValidationFailed(errors)

    def rect(self, page_box: Rect, aspect_ratio: float) -> Rect:
        """The stamp rectangle in user space; it must lie on the page."""
        left, bottom, right, top = page_box
        width = DEFAULT_WIDTH if self.width is None else self.width
        height = width * aspect_ratio
        x = right - DEFAULT_MARGIN - width if self.x is None else left + self.x
        y = bottom + DEFAULT_MARGIN if self.y is None else bottom + self.y
        size = f"the page is {right - left:g} x {top - bottom:g} pt"
        if height < MIN_HEIGHT:
            raise ValidationFailed.one(
                "width", f"a seal {width:g} pt wide would be {height:g} pt high for this "
                         f"picture; it must be at least {MIN_HEIGHT:g} pt")
        if width > right - left or height > top - bottom:
            raise ValidationFailed.one(
                "width", f"a seal {width:g} pt wide ({height:g} pt high) does not fit: {size}"
            )
        errors = []
        if x < left or x + width > right:
            errors.append(FieldError("x", f"the seal must lie on the page: {size}"))
        if y < bottom or y + height > top:
            errors.append(FieldError("y", f"the seal must lie on the page: {size}"))
        if errors:
            raise ValidationFailed(errors)
        return (x, y, x + width, y + height)


@dataclass(frozen=True)
class SealImage:
    """A seal picture as Flate-compressed samples for an image XObject (alpha in an SMask)."""

    width: int
    height: int
    color: bytes
    alpha: bytes | None

    @classmethod
    def from_png(cls, png: bytes) -> SealImage:
        try:
            with Image.open(io.BytesIO(png)) as image:
                image.load()
                rgba = image.convert("RGBA")
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
            raise ValidationFailed.one("image_png", "is not a readable PNG image") from exc
        alpha_channel = rgba.getchannel("A")
        opaque = alpha_channel.getextrema() == (255, 255)
        return cls(
            width=rgba.width,
            height=rgba.height,
            color=zlib.compress(rgba.convert("RGB").tobytes(), 9),
            alpha=None if opaque else zlib.compress(alpha_channel.tobytes(), 9),
        )

    @property
    def aspect_ratio(self) -> float:
        return self.height / self.width

    def add_to(self, writer: BasePdfFileWriter) -> generic.IndirectObject:
        """Add the picture to one document: two streams of already encoded bytes."""
        fields = {
            pdf_name("/Type"): pdf_name("/XObject"),
            pdf_name("/Subtype"): pdf_name("/Image"),
            pdf_name("/Width"): generic.NumberObject(self.width),
            pdf_name("/Height"): generic.NumberObject(self.height),
            pdf_name("/BitsPerComponent"): generic.NumberObject(8),
            pdf_name("/Filter"): pdf_name("/FlateDecode"),
        }
        image = generic.DictionaryObject(fields)
        image[pdf_name("/ColorSpace")] = pdf_name("/DeviceRGB")
        if self.alpha is not None:
            mask = generic.DictionaryObject(fields)
            mask[pdf_name("/ColorSpace")] = pdf_name("/DeviceGray")
            image[pdf_name("/SMask")] = writer.add_object(
                generic.StreamObject(mask, encoded_data=self.alpha)
            )
        return writer.add_object(generic.StreamObject(image, encoded_data=self.color))


@dataclass(frozen=True)
class SealStampStyle(BaseStampStyle):
    """pyHanko stamp style that draws only the seal picture, filling a ``size`` (w, h) widget.

    pyHanko rounds the widget box down to whole points; the exact size is carried here so
    that the picture is not stretched when a viewer maps the appearance onto the rectangle.
    """

    image: SealImage | None = None
    size: tuple[float, float] = (0.0, 0.0)
    border_width: int = 0

    def create_stamp(
        self, writer: BasePdfFileWriter, box: layout.BoxConstraints, text_params: dict[str, str]
    ) -> SealStamp:
        return SealStamp(writer, self, box)


class SealStamp(BaseStamp):
    """One document's seal appearance: a form XObject that paints the picture."""

    def render(self) -> bytes:
        style, writer = self.style, self.writer
        assert isinstance(style, SealStampStyle) and style.image is not None
        assert writer is not None
        self.set_resource(
            category=ResourceType.XOBJECT,
            name=pdf_name("/Seal"),
            value=style.image.add_to(writer),
        )
        # Four decimals, as pyHanko writes the widget rectangle.
        return b"q %.4f 0 0 %.4f 0 0 cm /Seal Do Q" % style.size

    def as_form_xobject(self) -> generic.StreamObject:
        content = self.render()
        width, height = self.style.size
        return init_xobject_dictionary(content, width, height, self.resources.as_pdf_object())
