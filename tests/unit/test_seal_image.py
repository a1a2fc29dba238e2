"""The round seal image (format, size, colour, text that really renders) and its CJK font."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFont

from gateway import fonts
from gateway.errors import ConfigError
from gateway.fonts import cjk_font
from gateway.seals.image import SEAL_RED, SEAL_TYPES, render_round_seal, seal_type_name

ORGANIZATION = "北京某某科技有限公司"
SEAL_CODE = "1101050012345"


def _image(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def _alpha(png: bytes) -> Image.Image:
    return _image(png).getchannel("A")


@pytest.fixture(scope="module")
def contract_seal() -> bytes:
    return render_round_seal(ORGANIZATION, "合同专用章", SEAL_CODE)


def test_seal_is_rgba_png_with_transparent_corners(contract_seal: bytes) -> None:
    """The seal is an RGBA PNG whose corners, outside the ring, are fully transparent."""
    image = _image(contract_seal)
    assert image.format == "PNG"
    assert image.mode == "RGBA"
    last = image.width - 1
    for corner in [(0, 0), (last, 0), (0, last), (last, last), (10, 10)]:
        assert image.getpixel(corner)[3] == 0


def test_ink_is_seal_red(contract_seal: bytes) -> None:
    """Every pixel carries the seal red and only alpha varies, so edges have no fringe."""
    image = _image(contract_seal)
    centre = image.getpixel((image.width // 2, image.height // 2))
    assert centre == (*SEAL_RED, 255)  # the star's middle
    for band, value in zip("RGB", SEAL_RED, strict=True):
        assert image.getchannel(band).getextrema() == (value, value)
    inked = sum(image.getchannel("A").histogram()[1:])
    assert inked > image.width * image.height // 20


@pytest.mark.parametrize(("diameter_mm", "dpi"), [(40.0, 300), (42.0, 600), (58.0, 150)])
def test_physical_size_matches_diameter_at_dpi(diameter_mm: float, dpi: int) -> None:
    """Pixels and the PNG's DPI metadata together give the requested diameter in mm."""
    image = _image(render_round_seal(ORGANIZATION, "", diameter_mm=diameter_mm, dpi=dpi))
    assert image.width == image.height == round(diameter_mm / 25.4 * dpi)
    x_dpi, y_dpi = image.info["dpi"]
    # PNG stores whole pixels per metre, so the DPI read back is off by up to 0.0127.
    assert x_dpi == pytest.approx(dpi, abs=0.02)
    assert y_dpi == pytest.approx(dpi, abs=0.02)
    assert image.width / x_dpi * 25.4 == pytest.approx(diameter_mm, abs=25.4 / dpi)


def test_same_inputs_give_identical_bytes(contract_seal: bytes) -> None:
    """Rendering is deterministic, so a stored image hash can be re-derived."""
    assert render_round_seal(ORGANIZATION, "合同专用章", SEAL_CODE) == contract_seal


def test_organisation_name_draws_on_the_upper_arc(contract_seal: bytes) -> None:
    """Changing the name changes pixels in the upper half only."""
    other = render_round_seal("上海某某贸易有限公司", "合同专用章", SEAL_CODE)
    diff = ImageChops.difference(_alpha(contract_seal), _alpha(other))
    size = diff.width
    assert diff.crop((0, 0, size, size // 3)).getbbox() is not None
    assert diff.crop((0, size * 3 // 4, size, size)).getbbox() is None


def test_type_text_and_code_draw_below_the_star(contract_seal: bytes) -> None:
    """The type text and the seal code each add ink in the lower part and nowhere else."""
    size = _image(contract_seal).width
    bare = _alpha(render_round_seal(ORGANIZATION, "", ""))
    with_type = _alpha(render_round_seal(ORGANIZATION, "合同专用章", ""))
    type_ink = ImageChops.difference(bare, with_type).getbbox()
    code_ink = ImageChops.difference(with_type, _alpha(contract_seal)).getbbox()
    assert type_ink is not None and code_ink is not None
    assert type_ink[1] > size * 0.6  # top of the type text is below the star
    assert code_ink[1] > type_ink[3]  # the code sits below the type text
    assert code_ink[3] < size  # and inside the ring


def test_chinese_glyphs_are_real_glyphs_not_notdef_boxes() -> None:
    """The seal font draws a Chinese character differently from its .notdef box."""
    font_file = cjk_font()
    font = ImageFont.truetype(str(font_file.path), 64, index=font_file.face_index)
    missing = "\U000f0000"  # a private-use plane code point no CJK font covers
    assert font_file.missing(missing) == missing

    def drawn(char: str) -> Image.Image:
        image = Image.new("L", (96, 96), 0)
        ImageDraw.Draw(image).text((48, 48), char, fill=255, font=font, anchor="mm")
        return image

    notdef = drawn(missing)
    for char in "北京科技印章":
        glyph = drawn(char)
        assert glyph.getbbox() is not None
        assert ImageChops.difference(glyph, notdef).getbbox() is not None


def test_name_with_a_character_the_font_lacks_is_refused() -> None:
    """A name the font cannot draw fully is refused rather than shown with a blank box."""
    with pytest.raises(ValueError, match="no glyph"):
        render_round_seal("北京\U000f0000有限公司", "合同专用章")


@pytest.mark.parametrize("organization", ["", "   "])
def test_empty_organisation_is_refused(organization: str) -> None:
    """An empty or blank organisation name is a ValueError."""
    with pytest.raises(ValueError, match="organization"):
        render_round_seal(organization, "合同专用章")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seal_code": "123"}, "13 digits"),
        ({"seal_code": "11010500123４5"}, "13 digits"),
        ({"diameter_mm": 120.0}, "diameter"),
        ({"dpi": 10}, "dpi"),
    ],
)
def test_bad_code_or_size_is_refused(kwargs: dict[str, object], message: str) -> None:
    """A seal code that is not 13 ASCII digits, or an impossible size, is a ValueError."""
    with pytest.raises(ValueError, match=message):
        render_round_seal(ORGANIZATION, "合同专用章", **kwargs)  # type: ignore[arg-type]


def test_seal_types_cover_the_domain_table() -> None:
    """Every type code of the domain table has a Chinese and an English name."""
    assert set(SEAL_TYPES) == {"01", "02", "03", "04", "05", "99"}
    assert SEAL_TYPES["04"] == ("合同专用章", "contract seal")
    assert all(chinese and english for chinese, english in SEAL_TYPES.values())


def test_impression_type_text_follows_real_seals() -> None:
    """A 公章 shows no type text; a contract, finance or invoice seal shows its type."""
    assert seal_type_name("01") == ""
    assert seal_type_name("02") == "财务专用章"
    assert seal_type_name("03") == "发票专用章"
    assert seal_type_name("04") == "合同专用章"
    with pytest.raises(ValueError, match="unknown seal type"):
        seal_type_name("42")


@pytest.fixture
def fresh_font_choice(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Forget the cached font before and after, so a test can change where it comes from."""
    cjk_font.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    cjk_font.cache_clear()


def test_font_override_picks_a_face_of_a_collection(
    fresh_font_choice: pytest.MonkeyPatch,
) -> None:
    """SEALGATE_CJK_FONT=path#N selects face N of a .ttc when it covers Chinese."""
    installed = cjk_font()
    cjk_font.cache_clear()
    fresh_font_choice.setenv(fonts.ENV_VAR, f"{installed.path}#{installed.face_index}")
    chosen = cjk_font()
    assert (chosen.path, chosen.face_index) == (installed.path, installed.face_index)
    assert chosen.missing("电子印章备案回执") == ""


def test_font_override_that_is_not_a_cjk_font_is_a_config_error(
    fresh_font_choice: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An override naming a file that is no font is refused, not silently replaced."""
    not_a_font = tmp_path / "font.ttf"
    not_a_font.write_bytes(b"not a font")
    fresh_font_choice.setenv(fonts.ENV_VAR, str(not_a_font))
    with pytest.raises(ConfigError, match=fonts.ENV_VAR):
        cjk_font()


@pytest.mark.parametrize("index", ["x", "²", "١"])
def test_font_override_face_index_that_is_no_number_is_a_config_error(
    fresh_font_choice: pytest.MonkeyPatch, index: str
) -> None:
    """The face index after '#' is ASCII digits; a superscript or Arabic-Indic digit was a
    ValueError instead of the config error naming the setting."""
    fresh_font_choice.setenv(fonts.ENV_VAR, f"{cjk_font().path}#{index}")
    cjk_font.cache_clear()
    with pytest.raises(ConfigError, match=fonts.ENV_VAR):
        cjk_font()


def test_no_cjk_font_names_the_debian_package(fresh_font_choice: pytest.MonkeyPatch) -> None:
    """With no font installed the error says which Debian package to install."""
    fresh_font_choice.delenv(fonts.ENV_VAR, raising=False)
    fresh_font_choice.setattr(fonts, "SEARCH_PATHS", (("/nonexistent/cjk.ttc", 0, "x"),))
    with pytest.raises(ConfigError, match="fonts-wqy-microhei"):
        cjk_font()
