"""RFC 8785 (JCS) canonical JSON for the float-free subset that receipts and JWS headers use.

Receipts are signed over these bytes, and a verifier elsewhere re-creates them from the JSON
it received, so every choice here is the RFC's, not Python's: object members sorted by their
UTF-16 code units (``json.dumps(sort_keys=True)`` sorts by code points, which differs once a
key has characters above U+FFFF), strings escaped as ECMAScript ``JSON.stringify`` does, no
whitespace, UTF-8 output.

Numbers are limited to integers an IEEE 754 double holds exactly (|n| ≤ 2^53 − 1, I-JSON):
larger ones would be rounded by any ECMAScript-based verifier and no longer match. Floats are
refused rather than formatted, because receipts have none and ECMAScript number formatting is
a large piece of code to get exactly right for no use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

MAX_SAFE_INTEGER = 2**53 - 1

# JSON.stringify's QuoteJSONString: the two-character escapes it knows, \u00xx (lower-case
# hex) for the other C0 controls, and nothing else — not DEL, not non-ASCII, not "/".
_ESCAPES: dict[int, str] = {i: f"\\u{i:04x}" for i in range(0x20)}
_ESCAPES.update(
    {
        ord('"'): '\\"',
        ord("\\"): "\\\\",
        ord("\b"): "\\b",
        ord("\f"): "\\f",
        ord("\n"): "\\n",
        ord("\r"): "\\r",
        ord("\t"): "\\t",
    }
)


def canonicalize(value: object) -> bytes:
    """The RFC 8785 canonical UTF-8 serialisation of ``value``.

    Accepts dicts with string keys, lists and tuples, str, int, True, False and None.
    Raises ValueError for floats, integers outside ±(2^53 − 1) and strings with lone
    surrogates (not valid Unicode, so not I-JSON); TypeError for any other type.
    """
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts).encode("utf-8")


def _write(value: object, out: list[str]) -> None:
    # bool first: True and False are ints to Python.
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError(
                f"integer {value} is outside ±(2^53 − 1) and cannot be represented exactly"
            )
        out.append(str(int(value)))
    elif isinstance(value, float):
        raise ValueError("floats are not supported in canonical JSON here (receipts have none)")
    elif isinstance(value, str):
        out.append(_quote(value))
    elif isinstance(value, Mapping):
        out.append("{")
        for index, key in enumerate(_sorted_keys(value)):
            if index:
                out.append(",")
            out.append(_quote(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} has no canonical JSON form")


def _sorted_keys(mapping: Mapping[object, object]) -> list[str]:
    keys: list[str] = []
    for key in mapping:
        if not isinstance(key, str):
            raise TypeError(f"object member names must be strings, not {type(key).__name__}")
        keys.append(key)
    # Big-endian UTF-16 bytes compare in the same order as their 16-bit code units. A lone
    # surrogate fails this encoding, which is the refusal RFC 8785 asks for.
    try:
        return sorted(keys, key=lambda k: k.encode("utf-16-be"))
    except UnicodeEncodeError:
        raise ValueError("an object member name contains a lone surrogate") from None


def _quote(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string contains a lone surrogate") from None
    return '"' + text.translate(_ESCAPES) + '"'


__all__ = ["MAX_SAFE_INTEGER", "canonicalize"]
