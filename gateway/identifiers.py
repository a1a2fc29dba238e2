"""Identifier rules: USCC and resident ID checksums, and masking ID numbers.

The algorithms are those of DOMAIN.md §3: GB 32100-2015 for the unified social credit code
(USCC) and GB 11643-1999 (ISO 7064 MOD 11-2) for the resident identity number. Validators
return the normalised form (surrounding whitespace removed, letters upper-case) so that one
organisation or person never ends up stored under two spellings.

ID numbers are personal data: error messages name positions and rules, never the number,
so that a rejected request cannot leak one into logs. The one exception is the check
character the caller sent and the one expected, which is what a person retyping a number
needs and reveals nothing about them.
"""

from __future__ import annotations

import datetime as dt
import re

from gateway.errors import ValidationFailed

USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
"""The 31 USCC symbols (no I, O, S, V, Z), in value order 0..30."""

USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
"""Weights of USCC positions 1–17: 3^(i−1) mod 31."""

RESIDENT_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
"""Weights of resident ID positions 1–17: 2^(18−i) mod 11 (ISO 7064 MOD 11-2)."""

RESIDENT_ID_CHECK = "10X98765432"
"""Check character for R = Σ(digit·weight) mod 11, indexed by R."""

IDENTIFIER_LENGTH = 18
_DIGITS = "0123456789"
_CHINA_STANDARD_TIME = dt.timezone(dt.timedelta(hours=8), "CST")
_USCC_VALUES = {symbol: value for value, symbol in enumerate(USCC_ALPHABET)}


def _normalise(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise ValidationFailed.one(field, "must be a string")
    text = value.strip()
    if len(text) != IDENTIFIER_LENGTH:
        raise ValidationFailed.one(
            field, f"must be {IDENTIFIER_LENGTH} characters, got {len(text)}"
        )
    # Upper-case ASCII only: str.upper() maps some non-ASCII letters to one or more ASCII
    # ones (U+FB00 'ﬀ' → "FF"), which would turn an invalid value into a different valid one.
    return "".join(c.upper() if c.isascii() else c for c in text)


def uscc_check_character(body: str) -> str:
    """The check character (position 18) for the first 17 characters of a USCC.

    ``body`` must already consist of 17 characters of :data:`USCC_ALPHABET`.
    """
    if len(body) != IDENTIFIER_LENGTH - 1:
        raise ValueError(f"a USCC body has {IDENTIFIER_LENGTH - 1} characters, not {len(body)}")
    total = sum(_USCC_VALUES[c] * w for c, w in zip(body, USCC_WEIGHTS, strict=True))
    return USCC_ALPHABET[(31 - total % 31) % 31]


def validate_uscc(value: object, field: str = "organization.uscc") -> str:
    """Return the USCC upper-cased and stripped, or raise ValidationFailed naming ``field``."""
    code = _normalise(value, field)
    for position, char in enumerate(code, start=1):
        if char not in _USCC_VALUES:
            raise ValidationFailed.one(
                field,
                f"character {position} ({char!r}) is not allowed; a USCC uses the digits "
                "and the letters A–Z except I, O, S, V, Z",
            )
    expected = uscc_check_character(code[:17])
    if code[17] != expected:
        raise ValidationFailed.one(
            field,
            f"check character is {code[17]!r} but the first 17 characters give {expected!r}",
        )
    return code


def is_valid_uscc(value: object) -> bool:
    """Whether ``value`` passes :func:`validate_uscc`."""
    try:
        validate_uscc(value)
    except ValidationFailed:
        return False
    return True


def resident_id_check_character(body: str) -> str:
    """The check character (position 18) for the first 17 digits of a resident ID number."""
    if len(body) != IDENTIFIER_LENGTH - 1 or any(c not in _DIGITS for c in body):
        raise ValueError(f"a resident ID body is {IDENTIFIER_LENGTH - 1} ASCII digits")
    total = sum(int(c) * w for c, w in zip(body, RESIDENT_ID_WEIGHTS, strict=True))
    return RESIDENT_ID_CHECK[total % 11]


def validate_resident_id(
    value: object,
    field: str = "legal_representative.id_number",
    *,
    today: dt.date | None = None,
) -> str:
    """Return the ID number stripped with an upper-case ``X``, or raise ValidationFailed.

    Checked in order: length, digits in positions 1–17 (``0–9`` or ``X`` in 18), the birth
    date in positions 7–14 (a real date, not after ``today``, by default today in China), and the
    check character.
    """
    number = _normalise(value, field)
    for position, char in enumerate(number[:17], start=1):
        if char not in _DIGITS:
            raise ValidationFailed.one(field, f"character {position} must be a digit")
    if number[17] not in _DIGITS and number[17] != "X":
        raise ValidationFailed.one(field, "character 18 must be a digit or X")
    birth = number[6:14]
    try:
        born = dt.date(int(birth[:4]), int(birth[4:6]), int(birth[6:]))
    except ValueError:
        raise ValidationFailed.one(
            field, "characters 7–14 must be a real birth date (YYYYMMDD)"
        ) from None
    if today is None:
        # Birth dates are Chinese calendar days; a server clock in UTC must not push "today"
        # back a day for eight hours of each day.
        today = dt.datetime.now(_CHINA_STANDARD_TIME).date()
    if born > today:
        raise ValidationFailed.one(field, "the birth date in characters 7–14 is in the future")
    expected = resident_id_check_character(number[:17])
    if number[17] != expected:
        raise ValidationFailed.one(
            field,
            f"check character is {number[17]!r} but the first 17 digits give {expected!r}",
        )
    return number


def is_valid_resident_id(value: object, *, today: dt.date | None = None) -> bool:
    """Whether ``value`` passes :func:`validate_resident_id`."""
    try:
        validate_resident_id(value, today=today)
    except ValidationFailed:
        return False
    return True


def mask_id_number(value: str) -> str:
    """Show an 18-character ID number as its first 6, eight asterisks, and its last 4.

    The region code and the last four stay readable because that is what people compare
    when they check a receipt (``110105********002X``); the birth date is hidden.
    """
    if len(value) != IDENTIFIER_LENGTH:
        # The message must not carry the value: masking exists to keep it out of sight.
        raise ValueError(f"an ID number to mask has {IDENTIFIER_LENGTH} characters")
    return value[:6] + "*" * 8 + value[-4:]


def mask_phone(value: str) -> str:
    """Show a phone number as its first 3 and last 4 characters (``138****0000``), the rest
    as asterisks: enough to recognise one's own number, not to call it."""
    if len(value) < 8:
        raise ValueError("a phone number to mask has at least 8 characters")
    return value[:3] + "*" * (len(value) - 7) + value[-4:]


# Numbers as people write them: run together, or grouped by a space or hyphen (6-8-4 for
# an ID number, 3-4-4 for a mobile, which may follow +86 or 0086), in ASCII or full-width
# digits (a Chinese input method's full-width mode), between non-alphanumerics. A grouped
# ID-shaped run, or one right after a letter ("ID11010…"), is masked only when it is a valid
# ID number: hex digests, UUIDs and references look like those often enough.
_GAP = r"[ \-]?"
_ID_WRITTEN = re.compile(
    rf"(?<![0-9])[0-9]{{6}}{_GAP}[0-9]{{8}}{_GAP}[0-9]{{3}}[0-9Xx](?![0-9A-Za-z])")
_MOBILE = re.compile(
    rf"(?<![0-9A-Za-z])(?:(?:\+|00)86{_GAP})?1[3-9][0-9]{_GAP}[0-9]{{4}}{_GAP}[0-9]{{4}}"
    rf"(?![0-9A-Za-z])")
# Full-width digits and X as ASCII, one character for one: matches found in the ASCII view
# of a text are at the same places in the text.
_ASCII_VIEW = str.maketrans({chr(0xFF10 + d): str(d) for d in range(10)} | {"Ｘ": "X", "ｘ": "x"})


def mask_personal_numbers(text: str) -> str:
    """``text`` (an authority's or a reviewer's words) with every resident ID number and
    mainland mobile number in it masked as :func:`mask_id_number` and :func:`mask_phone`
    do (its grouping dropped). Never raises: it runs on words kept and shown."""
    view = text.translate(_ASCII_VIEW)
    spans: list[tuple[int, int, str]] = []
    for match in _ID_WRITTEN.finditer(view):
        digits = _digits(match.group(0))
        before = view[match.start() - 1] if match.start() else " "
        bare = len(match.group(0)) == len(digits) and not (before.isascii() and before.isalpha())
        if bare or is_valid_resident_id(digits):
            spans.append((match.start(), match.end(), mask_id_number(digits)))
    for match in _MOBILE.finditer(view):
        if not any(start < match.end() and match.start() < end for start, end, _ in spans):
            spans.append((match.start(), match.end(), mask_phone(_digits(match.group(0))[-11:])))
    for start, end, masked in sorted(spans, reverse=True):
        text = text[:start] + masked + text[end:]
    return text


def _digits(text: str) -> str:
    return re.sub(r"[^0-9Xx]", "", text)


__all__ = [
    "RESIDENT_ID_CHECK",
    "RESIDENT_ID_WEIGHTS",
    "USCC_ALPHABET",
    "USCC_WEIGHTS",
    "is_valid_resident_id",
    "is_valid_uscc",
    "mask_id_number",
    "mask_personal_numbers",
    "mask_phone",
    "resident_id_check_character",
    "uscc_check_character",
    "validate_resident_id",
    "validate_uscc",
]
