"""USCC and resident ID validation: the worked examples of DOMAIN.md §3, every rule, masking."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from gateway.errors import ValidationFailed
from gateway.identifiers import (
    RESIDENT_ID_CHECK,
    RESIDENT_ID_WEIGHTS,
    USCC_ALPHABET,
    USCC_WEIGHTS,
    is_valid_resident_id,
    is_valid_uscc,
    mask_id_number,
    mask_personal_numbers,
    mask_phone,
    resident_id_check_character,
    uscc_check_character,
    validate_resident_id,
    validate_uscc,
)

TODAY = dt.date(2025, 11, 1)
STANDARD_ID = "11010519491231002X"


def message(exc: pytest.ExceptionInfo[ValidationFailed]) -> str:
    """The one field error's message."""
    [error] = exc.value.errors
    return error.message


# -- USCC ---------------------------------------------------------------------------------


def test_uscc_tables_match_the_standard() -> None:
    """The alphabet has 31 symbols without I O S V Z, and weights are 3^(i-1) mod 31."""
    assert len(USCC_ALPHABET) == 31
    assert not set("IOSVZ") & set(USCC_ALPHABET)
    assert tuple(pow(3, i, 31) for i in range(17)) == USCC_WEIGHTS


def test_uscc_worked_example_sum_and_check_character() -> None:
    """91350100M000100Y4 sums to 1640, 1640 mod 31 = 28, so the check character is 3."""
    body = "91350100M000100Y4"
    total = sum(USCC_ALPHABET.index(c) * w for c, w in zip(body, USCC_WEIGHTS, strict=True))
    assert total == 1640
    assert uscc_check_character(body) == "3"


@pytest.mark.parametrize("code", ["91350100M000100Y43", "9144030071526726XG"])
def test_uscc_valid_examples_pass(code: str) -> None:
    """The valid USCCs of DOMAIN.md §3 validate and come back unchanged."""
    assert validate_uscc(code) == code
    assert is_valid_uscc(code)


def test_uscc_worked_counter_example_fails_on_its_last_character() -> None:
    """91350100M000100Y4Z is invalid: Z is not even a USCC symbol, and the error says so."""
    with pytest.raises(ValidationFailed) as exc:
        validate_uscc("91350100M000100Y4Z", "organization.uscc")
    assert exc.value.errors[0].field == "organization.uscc"
    assert message(exc).startswith("character 18 ('Z') is not allowed")


def test_uscc_wrong_check_character_names_expected_and_given() -> None:
    """A wrong check symbol from the alphabet fails with the given and expected ones named."""
    with pytest.raises(ValidationFailed) as exc:
        validate_uscc("91350100M000100Y44", "organization.uscc")
    assert message(exc) == "check character is '4' but the first 17 characters give '3'"


def test_uscc_is_normalised_to_upper_case_without_surrounding_space() -> None:
    """Lower-case letters and surrounding whitespace are accepted and normalised."""
    assert validate_uscc("  9144030071526726xg\n") == "9144030071526726XG"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("91350100M000100Y4", "must be 18 characters, got 17"),
        ("91350100M000100Y433", "must be 18 characters, got 19"),
        ("", "must be 18 characters, got 0"),
        ("9135010OM000100Y43", "character 8 ('O') is not allowed"),
        ("91350100M000100Y4I", "character 18 ('I') is not allowed"),
        ("91350100M000-00Y43", "character 13 ('-') is not allowed"),
        ("９1350100M000100Y43", "character 1 ('９') is not allowed"),
    ],
)
def test_uscc_errors_name_the_rule_broken(value: str, expected: str) -> None:
    """Length and character-set errors say which rule, and which position, failed."""
    with pytest.raises(ValidationFailed) as exc:
        validate_uscc(value, "uscc")
    assert message(exc).startswith(expected)


def test_uscc_non_string_is_refused() -> None:
    """A number or null instead of a string is a validation error, not a crash."""
    with pytest.raises(ValidationFailed) as exc:
        validate_uscc(91350100, "uscc")
    assert message(exc) == "must be a string"
    assert not is_valid_uscc(None)


def test_uscc_ligature_does_not_upper_case_into_a_valid_code() -> None:
    """'ﬀ' upper-cases to "FF" in Python; it must be refused, not become two letters."""
    valid_body = "91350100M000100Y4"
    assert not is_valid_uscc("ﬀ" + valid_body)


def test_uscc_property_only_the_computed_check_character_is_valid() -> None:
    """For random 17-symbol bodies, the computed check makes a valid code, all others fail."""
    rng = random.Random(32100)
    for _ in range(300):
        body = "".join(rng.choice(USCC_ALPHABET) for _ in range(17))
        check = uscc_check_character(body)
        assert validate_uscc(body + check) == body + check
        for other in USCC_ALPHABET.replace(check, ""):
            assert not is_valid_uscc(body + other)


def test_uscc_property_single_symbol_substitution_is_detected() -> None:
    """Changing any one of the first 17 symbols of a valid code makes it invalid."""
    rng = random.Random(2015)
    for _ in range(50):
        body = "".join(rng.choice(USCC_ALPHABET) for _ in range(17))
        code = body + uscc_check_character(body)
        position = rng.randrange(17)
        replacement = rng.choice(USCC_ALPHABET.replace(code[position], ""))
        assert not is_valid_uscc(code[:position] + replacement + code[position + 1 :])


# -- resident identity number -------------------------------------------------------------


def test_resident_id_weights_are_iso_7064_mod_11_2() -> None:
    """Weights are 2^(18-i) mod 11 and R = 0..10 maps to 1 0 X 9 8 7 6 5 4 3 2."""
    assert tuple(pow(2, 17 - i, 11) for i in range(17)) == RESIDENT_ID_WEIGHTS
    assert RESIDENT_ID_CHECK == "10X98765432"


def test_resident_id_standard_example_sums_to_167_and_checks_x() -> None:
    """11010519491231002X: sum 167, R = 2, check character X."""
    body = STANDARD_ID[:17]
    total = sum(int(c) * w for c, w in zip(body, RESIDENT_ID_WEIGHTS, strict=True))
    assert total == 167
    assert total % 11 == 2
    assert resident_id_check_character(body) == "X"
    assert validate_resident_id(STANDARD_ID, today=TODAY) == STANDARD_ID


def test_resident_id_lower_case_x_is_normalised() -> None:
    """A lower-case x check character is accepted and stored upper-case."""
    assert validate_resident_id(" 11010519491231002x ", today=TODAY) == STANDARD_ID
    assert is_valid_resident_id("11010519491231002x", today=TODAY)


def test_resident_id_wrong_check_character_names_expected_and_given() -> None:
    """A wrong check character fails with both characters in the message, on the field."""
    with pytest.raises(ValidationFailed) as exc:
        validate_resident_id("110105194912310021", "legal_representative.id_number", today=TODAY)
    assert exc.value.errors[0].field == "legal_representative.id_number"
    assert message(exc) == "check character is '1' but the first 17 digits give 'X'"


def with_check(body: str) -> str:
    """A body of 17 digits completed with its correct check character."""
    return body + resident_id_check_character(body)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1101051949123100", "must be 18 characters, got 16"),
        ("11010519491231002XX", "must be 18 characters, got 19"),
        ("1101051949123100X2", "character 17 must be a digit"),
        ("A1010519491231002X", "character 1 must be a digit"),
        ("11010519491231002Y", "character 18 must be a digit or X"),
        ("１1010519491231002X", "character 1 must be a digit"),
        (with_check("11010519490230002"), "characters 7–14 must be a real birth date (YYYYMMDD)"),
        (with_check("11010519491301002"), "characters 7–14 must be a real birth date (YYYYMMDD)"),
        (with_check("11010519000229002"), "characters 7–14 must be a real birth date (YYYYMMDD)"),
        (with_check("11010500000101002"), "characters 7–14 must be a real birth date (YYYYMMDD)"),
        (with_check("11010520251102002"), "the birth date in characters 7–14 is in the future"),
    ],
)
def test_resident_id_errors_name_the_rule_broken(value: str, expected: str) -> None:
    """Length, digits, impossible dates and future dates each fail with their own message."""
    with pytest.raises(ValidationFailed) as exc:
        validate_resident_id(value, "id_number", today=TODAY)
    assert message(exc) == expected


def test_resident_id_messages_never_contain_the_number() -> None:
    """No error message repeats the ID number or its birth date (personal data)."""
    for bad in (
        "110105194912310021",
        with_check("11010519490230002"),
        with_check("11010520251102002"),
    ):
        with pytest.raises(ValidationFailed) as exc:
            validate_resident_id(bad, today=TODAY)
        assert bad[:17] not in str(exc.value)
        assert bad[6:14] not in str(exc.value)


def test_resident_id_leap_day_and_today_are_accepted() -> None:
    """29 February of a leap year (2000) and a birth date equal to today are real and past."""
    assert is_valid_resident_id(with_check("11010520000229002"), today=TODAY)
    assert is_valid_resident_id(with_check("11010520251101002"), today=TODAY)


def test_resident_id_default_today_is_the_real_date() -> None:
    """Without ``today``, a date far in the past passes and one far in the future fails."""
    assert is_valid_resident_id(STANDARD_ID)
    assert not is_valid_resident_id(with_check("11010530000101002"))


def test_resident_id_property_only_the_computed_check_character_is_valid() -> None:
    """For random bodies with real birth dates, only the computed check character validates."""
    rng = random.Random(11643)
    start = dt.date(1900, 1, 1).toordinal()
    for _ in range(300):
        region = f"{rng.randrange(110000, 660000):06d}"
        born = dt.date.fromordinal(rng.randrange(start, TODAY.toordinal() + 1))
        body = f"{region}{born:%Y%m%d}{rng.randrange(1000):03d}"
        check = resident_id_check_character(body)
        assert validate_resident_id(body + check, today=TODAY) == body + check
        for other in RESIDENT_ID_CHECK.replace(check, ""):
            assert not is_valid_resident_id(body + other, today=TODAY)


# -- masking ------------------------------------------------------------------------------


def test_mask_keeps_first_six_and_last_four() -> None:
    """The standard's example masks to 110105********002X, hiding the birth date."""
    assert mask_id_number(STANDARD_ID) == "110105********002X"


def test_mask_refuses_other_lengths_without_echoing_the_value() -> None:
    """Masking something not 18 characters long fails, and the error does not show it."""
    with pytest.raises(ValueError, match="18 characters") as exc:
        mask_id_number("1101051949123100")
    assert "1101051949123100" not in str(exc.value)


@pytest.mark.parametrize(("phone", "masked"), [
    ("13800000000", "138****0000"),
    ("010-12345678", "010*****5678"),
    ("02112345678", "021****5678"),
])
def test_phone_numbers_are_masked_to_their_first_three_and_last_four(
    phone: str, masked: str
) -> None:
    assert mask_phone(phone) == masked
    assert len(mask_phone(phone)) == len(phone)


def test_personal_numbers_are_masked_in_text() -> None:
    """ID-shaped runs lose their birth date, mobile numbers their middle; longer digit runs
    and other text stay."""
    assert mask_personal_numbers("身份证号11010519491231002X与姓名不符，请联系13800000000") == \
        "身份证号110105********002X与姓名不符，请联系138****0000"
    assert mask_personal_numbers("1" * 20) == "1" * 20
    assert mask_personal_numbers("reference SIM-20250101-000001") == \
        "reference SIM-20250101-000001"
    assert mask_personal_numbers("order 12345678901234") == "order 12345678901234"


@pytest.mark.parametrize(("written", "masked"), [
    ("ID11010519491231002X", "ID110105********002X"),
    ("ID 110105 19491231 002X", "ID 110105********002X"),
    ("110105-19491231-002x", "110105********002x"),
    ("+8613800000000", "138****0000"),
    ("tel:008613800000000", "tel:138****0000"),
    ("电话 138 0000 0000。", "电话 138****0000。"),
    ("138-0000-0000", "138****0000"),
    ("身份证号１１０１０５１９４９１２３１００２X不符", "身份证号110105********002X不符"),
    ("联系13８0000０000", "联系138****0000"),
])
def test_personal_numbers_are_masked_as_people_write_them(written: str, masked: str) -> None:
    assert mask_personal_numbers(written) == masked


@pytest.mark.parametrize("text", [
    "filing 3b9ea138-1234-5678-9abc-def012345678",
    "sha256 ab13912345678cd",
    "ref 330106-20261127-0001",
    "ID 110105 19491231 0021",  # grouped, but its check character is wrong: no ID number
    "订单号 2026112700000000001",
])
def test_what_only_looks_like_a_personal_number_is_left_as_written(text: str) -> None:
    assert mask_personal_numbers(text) == text
