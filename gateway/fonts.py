"""Finding the CJK font that the seal-image and receipt-PDF renderers draw Chinese text with.

The search needs no settings: ``SEALGATE_CJK_FONT`` (a ``.ttf``/``.otf``/``.ttc`` path, with
``#N`` to pick face N of a collection) wins when set; otherwise the first installed font of
:data:`SEARCH_PATHS` is used. The project installs the Debian package ``fonts-wqy-microhei``,
which is first in the list, so every machine draws seals with the same font unless told
otherwise. The choice is made once per process and cached: seal images must be identical for
identical inputs, which a font that changed under a running gateway would break.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from fontTools.ttLib import TTCollection, TTFont, TTLibError

from gateway.errors import ConfigError

ENV_VAR = "SEALGATE_CJK_FONT"
DEBIAN_PACKAGE = "fonts-wqy-microhei"

# (path, face index, Debian package): the project's own font first, then those of Debian's
# other common CJK font packages.
SEARCH_PATHS: tuple[tuple[str, int, str], ...] = (
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0, "fonts-wqy-microhei"),
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0, "fonts-wqy-zenhei"),
    # Noto CJK collections hold JP, KR, SC, TC, HK faces in that order; SC draws simplified
    # characters the way mainland seals show them.
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2, "fonts-noto-cjk"),
    ("/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc", 2, "fonts-noto-cjk"),
)

# A font that lacks these cannot draw a receipt title or a seal type, whatever it claims.
_PROBE = "电子印章备案回执合同专用章公司"


@dataclass(frozen=True)
class CjkFont:
    """One face of an installed font file that covers Chinese text."""

    path: Path
    face_index: int
    advances: Mapping[int, float]  # code point → advance width in em

    def missing(self, text: str) -> str:
        """The characters of ``text`` this face has no glyph for (whitespace ignored)."""
        return "".join(
            dict.fromkeys(ch for ch in text if not ch.isspace() and ord(ch) not in self.advances)
        )

    def width_em(self, text: str) -> float:
        """The advance of ``text`` set in this face, in em (a missing glyph counts as 1 em).

        CJK faces neither kern nor ligate Chinese, so the sum of advances is the width.
        """
        return sum(self.advances.get(ord(ch), 1.0) for ch in text)

    @functools.cached_property
    def sfnt_bytes(self) -> bytes:
        """The face as a standalone TrueType/OpenType file (a ``.ttc`` holds several).

        PDF embedding wants a single font program; extracting it costs one copy of the face
        in memory, kept for the process.
        """
        with _open_face(self.path, self.face_index) as face:
            buffer = io.BytesIO()
            face.save(buffer)
            return buffer.getvalue()


@functools.cache
def cjk_font() -> CjkFont:
    """The CJK font every renderer uses: the env override, else the first one installed.

    Raises :class:`ConfigError` naming the Debian package to install when there is none, or
    when the override points at a file that is missing or cannot draw Chinese.
    """
    override = os.environ.get(ENV_VAR, "").strip()
    if override:
        return _from_override(override)
    for path, index, _package in SEARCH_PATHS:
        font = _load(Path(path), index)
        if font is not None:
            return font
    looked = ", ".join(path for path, _, _ in SEARCH_PATHS)
    others = ", ".join(sorted({package for _, _, package in SEARCH_PATHS} - {DEBIAN_PACKAGE}))
    raise ConfigError(
        f"no CJK font found (looked at {looked}); install the Debian package {DEBIAN_PACKAGE} "
        f"(apt-get install {DEBIAN_PACKAGE}; {others} also work) or set {ENV_VAR} to a "
        ".ttf/.otf/.ttc file"
    )


def _from_override(override: str) -> CjkFont:
    path, _, index = override.partition("#")
    if index and not (index.isascii() and index.isdigit()):  # isdigit alone takes '²'
        raise ConfigError(f"{ENV_VAR}: face index after '#' must be a number, not {index!r}")
    font = _load(Path(path), int(index or 0))
    if font is None:
        raise ConfigError(f"{ENV_VAR}={override} is not a readable font that covers Chinese text")
    return font


def _load(path: Path, face_index: int) -> CjkFont | None:
    if not path.is_file():
        return None
    try:
        with _open_face(path, face_index) as face:
            cmap = face.getBestCmap() or {}
            if any(ord(ch) not in cmap for ch in _PROBE):
                return None
            metrics = face["hmtx"].metrics
            em = face["head"].unitsPerEm
            advances = {cp: metrics[glyph][0] / em for cp, glyph in cmap.items()}
    except (OSError, TTLibError, IndexError, KeyError):
        return None
    return CjkFont(path, face_index, MappingProxyType(advances))


@contextlib.contextmanager
def _open_face(path: Path, face_index: int) -> Iterator[TTFont]:
    # Tables are read lazily from the open file: a CJK face has tens of thousands of glyphs,
    # and neither the cmap check nor copying the face needs them decoded.
    with path.open("rb") as fh:
        is_collection = fh.read(4) == b"ttcf"
    if is_collection:
        with TTCollection(str(path)) as collection:
            yield collection.fonts[face_index]
    elif face_index:
        raise IndexError(f"{path} is a single font, it has no face {face_index}")
    else:
        with TTFont(str(path)) as face:
            yield face
