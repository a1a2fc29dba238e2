"""Canonical JSON (RFC 8785) and detached JWS signed with real SoftHSM keys, checked by joserfc."""

from __future__ import annotations

import base64
import dataclasses
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from joserfc import jws as joserfc_jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import ECKey, RSAKey

from gateway.hsm import Hsm, KeyAlgorithm, SignatureScheme
from gateway.pki.devca import DevCA
from gateway.signing.jcs import MAX_SAFE_INTEGER, canonicalize
from gateway.signing.jws import (
    HsmDigestSigner,
    JwsAlgorithm,
    JwsInvalid,
    b64url_decode,
    b64url_encode,
    protected_header,
    sign_detached,
    verify_detached,
)

KeyFactory = Callable[..., Awaitable[tuple[bytes, x509.Certificate]]]

RECEIPT = {
    "receipt_number": "BA-2025-000123",
    "seal_name": "测试有限公司合同专用章",
    "seal_type": "04",
    "organization": {"name": "测试有限公司", "uscc": "91350100M000100Y43"},
    "legal_representative": {
        "name": "张三",
        "id_type": "resident_id",
        "id_number": "110105********002X",
    },
    "valid_from": "2025-11-01T00:00:00+08:00",
    "image_size_mm": {"width": 40, "height": 40},
    "supersedes": None,
}
PAYLOAD = canonicalize(RECEIPT)

# -- RFC 8785 canonical JSON --------------------------------------------------------------

# RFC 8785 §3.2.2, with the "numbers" member left out (receipts have no floats).
RFC8785_INPUT = r"""{
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}"""
RFC8785_OUTPUT = '{"literals":[null,true,false],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'

# RFC 8785 §3.2.3: property sorting by UTF-16 code units.
RFC8785_SORTING = r"""{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}"""


def test_jcs_rfc8785_example_without_numbers() -> None:
    """The RFC's §3.2.2 example (minus floats) canonicalises to the RFC's output, in UTF-8."""
    output = canonicalize(json.loads(RFC8785_INPUT))
    assert output == RFC8785_OUTPUT.encode("utf-8")
    assert output.startswith(b'{"literals":[null,true,false],"string":"\xe2\x82\xac$\\u000f')


def test_jcs_rfc8785_example_with_numbers_is_refused() -> None:
    """The full §3.2.2 example has floats, which are refused with a ValueError."""
    value = json.loads(RFC8785_INPUT)
    value["numbers"] = [333333333.33333329, 1e30, 4.50, 2e-3, 1e-27]
    with pytest.raises(ValueError, match="floats"):
        canonicalize(value)


def test_jcs_rfc8785_sorting_example() -> None:
    """§3.2.3: members come out in the RFC's order, the emoji before U+FB33."""
    output = json.loads(canonicalize(json.loads(RFC8785_SORTING)))
    assert list(output.values()) == [
        "Carriage Return",
        "One",
        "Control",
        "Latin Small Letter O With Diaeresis",
        "Euro Sign",
        "Emoji: Grinning Face",
        "Hebrew Letter Dalet With Dagesh",
    ]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # The float-free cases of the RFC authors' test data (cyberphone/json-canonicalization).
        ('[56, {"d": true, "10": null, "1": [ ]}]', '[56,{"1":[],"10":null,"d":true}]'),
        (
            '{"peach": "This sorting order", "péché": "is wrong according to French", '
            '"pêche": "but canonicalization MUST", "sin": "ingnore locale"}',
            '{"peach":"This sorting order","péché":"is wrong according to French",'
            '"pêche":"but canonicalization MUST","sin":"ingnore locale"}',
        ),
        ('{"Unnormalized Unicode": "\\u1e0d\\u0307"}', '{"Unnormalized Unicode":"\u1e0d\u0307"}'),
        (
            '{"\\u20ac": "Euro Sign", "1": "One", "\\u0080": "Control\\u007f", '
            '"\\ud83d\\ude02": "Smiley", "\\u00f6": "Latin Small Letter O With Diaeresis", '
            '"\\ufb33": "Hebrew Letter Dalet With Dagesh", "</script>": "Browser Challenge"}',
            '{"1":"One","</script>":"Browser Challenge","\u0080":"Control\u007f",'
            '"ö":"Latin Small Letter O With Diaeresis","€":"Euro Sign","😂":"Smiley",'
            '"\ufb33":"Hebrew Letter Dalet With Dagesh"}',
        ),
    ],
    ids=["arrays", "french", "unicode", "weird"],
)
def test_jcs_reference_test_data(source: str, expected: str) -> None:
    """The reference implementation's float-free test vectors give its expected output."""
    assert canonicalize(json.loads(source)) == expected.encode("utf-8")


def test_jcs_orders_keys_by_utf16_not_code_points() -> None:
    """A non-BMP key sorts before U+E000..U+FFFF keys, unlike Python's sort_keys."""
    value = {"\ue000": 1, "\U0001f600": 2, "\uff21": 3, "z": 4}
    assert canonicalize(value) == '{"z":4,"\U0001f600":2,"\ue000":1,"\uff21":3}'.encode()
    python_order = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert python_order == '{"z":4,"\ue000":1,"\uff21":3,"\U0001f600":2}'


def test_jcs_keeps_chinese_text_as_utf8() -> None:
    """Chinese keys and values are written as UTF-8, not \\u escapes, and sorted by code unit."""
    value = {"类型": "04", "名称": "测试有限公司合同专用章", "编码": "3201000000001"}
    output = canonicalize(value)
    assert output.decode("utf-8") == (
        '{"名称":"测试有限公司合同专用章","类型":"04","编码":"3201000000001"}'
    )
    assert b"\\u" not in output


def test_jcs_escapes_exactly_like_json_stringify() -> None:
    """C0 controls use \\b \\f \\n \\r \\t or lower-case \\u00xx; DEL, '/', U+2028 stay raw."""
    for code in range(0x20):
        short = {8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}.get(code)
        escaped = short or f"\\u{code:04x}"
        assert canonicalize(chr(code)) == f'"{escaped}"'.encode()
    assert canonicalize('"\\') == b'"\\"\\\\"'
    assert canonicalize("\x7f/\u2028") == '"\x7f/\u2028"'.encode()


def test_jcs_string_escaping_matches_python_json_for_random_text() -> None:
    """For random strings (no lone surrogates), escaping equals json.dumps(ensure_ascii=False)."""
    rng = random.Random(8785)
    alphabet = [chr(c) for c in (*range(0x00, 0x80), 0x80, 0x2028, 0x4E2D, 0xFFFF, 0x1F600)]
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(20)))
        assert canonicalize(text) == json.dumps(text, ensure_ascii=False).encode()


def test_jcs_integers_limited_to_exact_doubles() -> None:
    """Integers up to ±(2^53 − 1) pass; beyond that they would be rounded, so are refused."""
    assert canonicalize([MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, 0, -1]) == (
        b"[9007199254740991,-9007199254740991,0,-1]"
    )
    for big in (MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1):
        with pytest.raises(ValueError, match="2\\^53"):
            canonicalize({"n": big})


def test_jcs_booleans_are_literals_not_integers() -> None:
    """True and False are written as true and false, though Python counts them as ints."""
    assert canonicalize({"a": True, "b": False, "c": None, "d": 1}) == (
        b'{"a":true,"b":false,"c":null,"d":1}'
    )


def test_jcs_refuses_lone_surrogates_in_keys_and_values() -> None:
    """Strings that are not valid Unicode are refused (RFC 8785 requires I-JSON)."""
    with pytest.raises(ValueError, match="lone surrogate"):
        canonicalize("a\ud800")
    with pytest.raises(ValueError, match="lone surrogate"):
        canonicalize({"\udc00": 1, "b": 2})


@pytest.mark.parametrize("value", [{1: "a"}, b"bytes", {"a": {1, 2}}, dataclasses])
def test_jcs_refuses_non_json_types(value: object) -> None:
    """Non-string keys, bytes, sets and other objects have no JSON form: TypeError."""
    with pytest.raises(TypeError):
        canonicalize(value)


def test_jcs_empty_and_nested_structures_round_trip() -> None:
    """Empty containers, tuples as arrays and nesting survive a parse of the output."""
    value = {"b": [], "a": {}, "c": ({"y": [1, [2, []]], "x": ""},)}
    output = canonicalize(value)
    assert output == b'{"a":{},"b":[],"c":[{"x":"","y":[1,[2,[]]]}]}'
    assert canonicalize(json.loads(output)) == output


# -- base64url ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["a+b", "YQ==", "YR", "Y", "a b"])
def test_base64url_decoding_is_strict(text: str) -> None:
    """Padding, the standard alphabet, impossible lengths and stray bits are all refused."""
    with pytest.raises(JwsInvalid, match="base64url"):
        b64url_decode(text, "thing")


def test_base64url_round_trips_every_length() -> None:
    """Encoding then decoding gives the bytes back for lengths 0..5."""
    for length in range(6):
        data = bytes(range(250, 250 + length)) if length else b""
        assert b64url_decode(b64url_encode(data), "data") == data


# -- signing with HSM keys ----------------------------------------------------------------

CASES = [
    (KeyAlgorithm.RSA_2048, JwsAlgorithm.RS256),
    (KeyAlgorithm.RSA_2048, JwsAlgorithm.PS256),
    (KeyAlgorithm.EC_P256, JwsAlgorithm.ES256),
    (KeyAlgorithm.EC_P384, JwsAlgorithm.ES384),
]


@dataclasses.dataclass(frozen=True)
class PlatformKey:
    """An HSM key with its dev-CA certificate, as the receipt signer holds it."""

    signer: HsmDigestSigner
    certificate: x509.Certificate
    chain: list[bytes]


@pytest.fixture(scope="module")
async def platform_keys(
    hsm: Hsm, key_factory: KeyFactory, dev_ca: DevCA
) -> dict[KeyAlgorithm, PlatformKey]:
    """One HSM key per algorithm, shared by this module's tests (RSA generation is slow)."""
    keys = {}
    for algorithm in {a for a, _ in CASES}:
        key_id, cert = await key_factory(algorithm, common_name="SealGate Receipts")
        chain = [
            cert.public_bytes(serialization.Encoding.DER),
            dev_ca.certificate.public_bytes(serialization.Encoding.DER),
        ]
        keys[algorithm] = PlatformKey(HsmDigestSigner(hsm, key_id, algorithm), cert, chain)
    return keys


async def sign(key: PlatformKey, alg: JwsAlgorithm, payload: bytes = PAYLOAD) -> str:
    """Sign ``payload`` with ``key`` as the receipt service does."""
    return await sign_detached(payload, key.signer, alg=alg, kid="platform-2025", x5c=key.chain)


def joserfc_registry(alg: str) -> joserfc_jws.JWSRegistry:
    """joserfc's registry for one algorithm, with room for an x5c chain in the header.

    joserfc refuses headers over 512 bytes by default; two certificates in x5c make ours
    about 2 KiB. Clients verifying receipts with joserfc need the same setting.
    """
    registry = joserfc_jws.JWSRegistry(algorithms=[alg])
    registry.max_header_length = 16 * 1024
    return registry


def joserfc_key(certificate: x509.Certificate) -> RSAKey | ECKey:
    """The certificate's public key as a joserfc JWK, via PEM (no gateway code involved)."""
    pem = certificate.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if isinstance(certificate.public_key(), rsa.RSAPublicKey):
        return RSAKey.import_key(pem)
    return ECKey.import_key(pem)


def attach(detached: str, payload: bytes) -> str:
    """The attached compact form: the payload put back between the dots."""
    header, empty, signature = detached.split(".")
    assert empty == ""
    return f"{header}.{b64url_encode(payload)}.{signature}"


def replace_part(jws: str, index: int, value: str) -> str:
    """The JWS with one of its three parts replaced."""
    parts = jws.split(".")
    parts[index] = value
    return ".".join(parts)


def encode_header(header: dict[str, Any]) -> str:
    """A protected header in base64url, as a forger would write it."""
    return b64url_encode(json.dumps(header, separators=(",", ":")).encode())


@pytest.mark.parametrize(("algorithm", "alg"), CASES, ids=[a for _, a in CASES])
async def test_signed_receipt_verifies_with_x5c_leaf_and_with_certificate(
    platform_keys: dict[KeyAlgorithm, PlatformKey], algorithm: KeyAlgorithm, alg: JwsAlgorithm
) -> None:
    """An HSM-signed detached JWS verifies with the x5c leaf and with the given certificate."""
    key = platform_keys[algorithm]
    token = await sign(key, alg)
    _, payload_part, _ = token.split(".")
    assert payload_part == ""
    expected_header = {
        "alg": str(alg),
        "kid": "platform-2025",
        "x5c": [base64.b64encode(der).decode() for der in key.chain],
    }
    assert verify_detached(token, PAYLOAD) == expected_header
    assert verify_detached(token, PAYLOAD, key.certificate) == expected_header


@pytest.mark.parametrize(("algorithm", "alg"), CASES, ids=[a for _, a in CASES])
async def test_joserfc_verifies_the_attached_form(
    platform_keys: dict[KeyAlgorithm, PlatformKey], algorithm: KeyAlgorithm, alg: JwsAlgorithm
) -> None:
    """joserfc, an independent JOSE library, verifies the signature and reads the payload."""
    key = platform_keys[algorithm]
    token = await sign(key, alg)
    jwk = joserfc_key(key.certificate)
    registry = joserfc_registry(str(alg))
    result = joserfc_jws.deserialize_compact(attach(token, PAYLOAD), jwk, registry=registry)
    assert result.payload == PAYLOAD
    assert result.protected["alg"] == str(alg)
    assert json.loads(result.payload) == RECEIPT
    # joserfc's own detached-content path agrees.
    detached = joserfc_jws.deserialize_compact(token, jwk, registry=registry, payload=PAYLOAD)
    assert detached.payload == PAYLOAD


async def test_joserfc_rejects_a_tampered_payload(
    platform_keys: dict[KeyAlgorithm, PlatformKey],
) -> None:
    """The independent check is not vacuous: joserfc refuses a changed payload too."""
    key = platform_keys[KeyAlgorithm.EC_P256]
    token = await sign(key, JwsAlgorithm.ES256)
    with pytest.raises(BadSignatureError):
        joserfc_jws.deserialize_compact(
            attach(token, PAYLOAD + b" "),
            joserfc_key(key.certificate),
            registry=joserfc_registry("ES256"),
        )


async def test_protected_header_is_canonical_and_minimal(
    platform_keys: dict[KeyAlgorithm, PlatformKey],
) -> None:
    """The header is exactly alg, kid, x5c in JCS form, x5c in padded standard base64."""
    key = platform_keys[KeyAlgorithm.EC_P256]
    token = await sign(key, JwsAlgorithm.ES256)
    raw = b64url_decode(token.split(".")[0], "header")
    assert raw == protected_header("ES256", "platform-2025", key.chain)
    leaf = base64.b64encode(key.chain[0]).decode()
    assert raw.decode().startswith(f'{{"alg":"ES256","kid":"platform-2025","x5c":["{leaf}",')
    assert canonicalize(json.loads(raw)) == raw
    assert all("-" not in c and "_" not in c for c in json.loads(raw)["x5c"])


async def test_rs256_signing_is_deterministic(
    platform_keys: dict[KeyAlgorithm, PlatformKey],
) -> None:
    """PKCS#1 v1.5 over the same canonical input gives the same JWS twice, byte for byte."""
    key = platform_keys[KeyAlgorithm.RSA_2048]
    assert await sign(key, JwsAlgorithm.RS256) == await sign(key, JwsAlgorithm.RS256)


@pytest.mark.parametrize(
    ("algorithm", "alg", "size"),
    [
        (KeyAlgorithm.EC_P256, JwsAlgorithm.ES256, 64),
        (KeyAlgorithm.EC_P384, JwsAlgorithm.ES384, 96),
    ],
)
async def test_ecdsa_signature_is_raw_r_s_of_fixed_length(
    platform_keys: dict[KeyAlgorithm, PlatformKey],
    algorithm: KeyAlgorithm,
    alg: JwsAlgorithm,
    size: int,
) -> None:
    """ES256/ES384 signatures are r‖s (64/96 bytes), not the HSM's DER, every time."""
    key = platform_keys[algorithm]
    for index in range(8):
        token = await sign(key, alg, PAYLOAD + str(index).encode())
        assert len(b64url_decode(token.split(".")[2], "signature")) == size


async def test_signing_refuses_alg_that_does_not_fit_the_key(
    platform_keys: dict[KeyAlgorithm, PlatformKey],
) -> None:
    """ES256 with an RSA key, RS256 with an EC key, ES384 with a P-256 key: ValueError."""
    rsa_key, p256 = platform_keys[KeyAlgorithm.RSA_2048], platform_keys[KeyAlgorithm.EC_P256]
    for key, alg in ((rsa_key, "ES256"), (p256, "RS256"), (p256, "ES384")):
        with pytest.raises(ValueError, match="cannot be made"):
            await sign(key, JwsAlgorithm(alg))
    with pytest.raises(ValueError):
        await sign(rsa_key, "HS256")  # type: ignore[arg-type]


async def test_signing_requires_kid_and_x5c(
    platform_keys: dict[KeyAlgorithm, PlatformKey],
) -> None:
    """An empty kid or an empty chain is refused before the HSM is asked."""
    key = platform_keys[KeyAlgorithm.EC_P256]
    with pytest.raises(ValueError, match="kid"):
        await sign_detached(PAYLOAD, key.signer, alg="ES256", kid="", x5c=key.chain)
    with pytest.raises(ValueError, match="x5c"):
        await sign_detached(PAYLOAD, key.signer, alg="ES256", kid="k", x5c=[])


# -- verification failures ----------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "alg"), CASES, ids=[a for _, a in CASES])
async def test_tampering_is_detected(
    platform_keys: dict[KeyAlgorithm, PlatformKey], algorithm: KeyAlgorithm, alg: JwsAlgorithm
) -> None:
    """A changed payload, header or signature fails with reason bad-signature."""
    key = platform_keys[algorithm]
    token = await sign(key, alg)
    tampered_receipt = canonicalize({**RECEIPT, "seal_type": "01"})
    header = json.loads(b64url_decode(token.split(".")[0], "header"))
    forged_header = replace_part(token, 0, encode_header({**header, "kid": "other"}))
    signature = bytearray(b64url_decode(token.split(".")[2], "signature"))
    signature[len(signature) // 2] ^= 0x01
    forged_signature = replace_part(token, 2, b64url_encode(bytes(signature)))
    for candidate, payload in (
        (token, tampered_receipt),
        (token, PAYLOAD[:-1]),
        (forged_header, PAYLOAD),
        (forged_signature, PAYLOAD),
    ):
        with pytest.raises(JwsInvalid) as exc:
            verify_detached(candidate, payload)
        assert exc.value.reason == "bad-signature"


async def test_changing_alg_between_rsa_schemes_fails(
    platform_keys: dict[KeyAlgorithm, PlatformKey],
) -> None:
    """A PS256 signature relabelled RS256 (or the reverse) does not verify."""
    key = platform_keys[KeyAlgorithm.RSA_2048]
    for signed, claimed in (("PS256", "RS256"), ("RS256", "PS256")):
        token = await sign(key, JwsAlgorithm(signed))
        header = json.loads(b64url_decode(token.split(".")[0], "header"))
        relabelled = replace_part(token, 0, encode_header({**header, "alg": claimed}))
        with pytest.raises(JwsInvalid, match="does not verify"):
            verify_detached(relabelled, PAYLOAD)


async def test_truncated_ecdsa_signature_is_refused_by_length(
    platform_keys: dict[KeyAlgorithm, PlatformKey],
) -> None:
    """An ES256 signature that is not 64 bytes is refused, naming both lengths."""
    token = await sign(platform_keys[KeyAlgorithm.EC_P256], JwsAlgorithm.ES256)
    signature = b64url_decode(token.split(".")[2], "signature")
    short = replace_part(token, 2, b64url_encode(signature[:-1]))
    with pytest.raises(JwsInvalid, match="64 bytes, not 63"):
        verify_detached(short, PAYLOAD)


async def test_another_certificate_does_not_verify(
    platform_keys: dict[KeyAlgorithm, PlatformKey],
    key_factory: KeyFactory,
) -> None:
    """Verifying with a different key's certificate of the same type fails."""
    token = await sign(platform_keys[KeyAlgorithm.EC_P256], JwsAlgorithm.ES256)
    _, other = await key_factory(KeyAlgorithm.EC_P256)
    with pytest.raises(JwsInvalid) as exc:
        verify_detached(token, PAYLOAD, other)
    assert exc.value.reason == "bad-signature"


async def test_certificate_key_type_must_match_alg(
    platform_keys: dict[KeyAlgorithm, PlatformKey],
) -> None:
    """ES256 checked against an RSA or P-384 certificate is a key mismatch, named as such."""
    token = await sign(platform_keys[KeyAlgorithm.EC_P256], JwsAlgorithm.ES256)
    with pytest.raises(
        JwsInvalid, match="ES256 needs a secp256r1 key; the certificate has an RSA-2048 key"
    ) as exc:
        verify_detached(token, PAYLOAD, platform_keys[KeyAlgorithm.RSA_2048].certificate)
    assert exc.value.reason == "key-mismatch"
    with pytest.raises(JwsInvalid, match="an EC secp384r1 key"):
        verify_detached(token, PAYLOAD, platform_keys[KeyAlgorithm.EC_P384].certificate)
    rs256 = await sign(platform_keys[KeyAlgorithm.RSA_2048], JwsAlgorithm.RS256)
    with pytest.raises(JwsInvalid, match="RS256 needs an RSA key"):
        verify_detached(rs256, PAYLOAD, platform_keys[KeyAlgorithm.EC_P256].certificate)


def test_short_rsa_keys_are_refused(dev_ca: DevCA) -> None:
    """RS256 with a 1024-bit certificate key is refused (RFC 7518 asks for 2048 or more)."""
    private = rsa.generate_private_key(65537, 1024)  # noqa: S505 - a weak key is the point
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    cert = dev_ca.issue(spki, "Weak Key")
    header = b64url_encode(
        protected_header("RS256", "weak", [cert.public_bytes(serialization.Encoding.DER)])
    )
    signing_input = f"{header}.{b64url_encode(PAYLOAD)}".encode()
    signature = private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(JwsInvalid, match="at least 2048 bits, not 1024"):
        verify_detached(f"{header}..{b64url_encode(signature)}", PAYLOAD)


async def test_attached_payload_is_refused(
    platform_keys: dict[KeyAlgorithm, PlatformKey],
) -> None:
    """The attached form is not a receipt signature: reason not-detached."""
    token = await sign(platform_keys[KeyAlgorithm.EC_P256], JwsAlgorithm.ES256)
    with pytest.raises(JwsInvalid) as exc:
        verify_detached(attach(token, PAYLOAD), PAYLOAD)
    assert exc.value.reason == "not-detached"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"alg": "none", "kid": "k"}, "alg 'none' is not accepted"),
        ({"alg": "HS256", "kid": "k"}, "alg 'HS256' is not accepted"),
        ({"alg": ["ES256"], "kid": "k"}, "is not accepted"),
        ({"kid": "k"}, "alg None is not accepted"),
        ({"alg": "ES256", "crit": ["b64"], "b64": False}, "critical header extensions"),
        ({"alg": "ES256", "kid": 7}, "kid is not a string"),
        ({"alg": "ES256", "x5c": "MIIB"}, "x5c is not a non-empty list"),
        ({"alg": "ES256", "x5c": []}, "x5c is not a non-empty list"),
        ({"alg": "ES256", "x5c": ["bm90IGEgY2VydA=="]}, "not a base64 DER certificate"),
        ({"alg": "ES256", "x5c": ["***"]}, "not a base64 DER certificate"),
        ({"alg": "ES256", "kid": "k"}, "no certificate given and the header has no x5c"),
    ],
)
def test_bad_headers_are_refused(header: dict[str, Any], message: str) -> None:
    """Unaccepted algorithms, crit, badly typed members and missing keys are each named."""
    token = f"{encode_header(header)}..{b64url_encode(b'x' * 64)}"
    with pytest.raises(JwsInvalid, match=message):
        verify_detached(token, PAYLOAD)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("abc", "3 dot-separated parts, not 1"),
        ("a.b", "3 dot-separated parts, not 2"),
        ("a...b", "3 dot-separated parts, not 4"),
        ("!!..AAAA", "protected header is not base64url"),
        (f"{b64url_encode(b'{not json')}..AAAA", "not UTF-8 JSON"),
        (f"{b64url_encode(bytes([0xFF, 0xFE]))}..AAAA", "not UTF-8 JSON"),
        (f"{b64url_encode(b'[1]')}..AAAA", "not a JSON object"),
        (b64url_encode(b'{"alg":"ES256","alg":"none"}') + "..AAAA", "repeats a member"),
    ],
)
def test_malformed_tokens_are_refused(token: str, message: str) -> None:
    """Wrong part counts, bad base64url, non-JSON, non-object and duplicate members fail."""
    with pytest.raises(JwsInvalid, match=message) as exc:
        verify_detached(token, PAYLOAD)
    assert exc.value.reason == "malformed"


def test_non_string_token_is_refused() -> None:
    """Bytes or null instead of the compact string is malformed, not a crash."""
    with pytest.raises(JwsInvalid, match="is a string"):
        verify_detached(b"a..b", PAYLOAD)  # type: ignore[arg-type]


async def test_bad_signature_encoding_is_refused(
    platform_keys: dict[KeyAlgorithm, PlatformKey],
) -> None:
    """A signature part that is not base64url is malformed."""
    token = await sign(platform_keys[KeyAlgorithm.EC_P256], JwsAlgorithm.ES256)
    with pytest.raises(JwsInvalid, match="signature is not base64url"):
        verify_detached(replace_part(token, 2, "a+b/"), PAYLOAD)


# -- the other direction, and ECDSA padding -------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SoftwareDigestSigner:
    """A DigestSigner over a software EC key, for many signatures quickly (ECDSA only)."""

    private: ec.EllipticCurvePrivateKey
    key_algorithm: KeyAlgorithm

    async def sign_digest(self, digest: bytes, hash_name: str, scheme: SignatureScheme) -> bytes:
        assert scheme is SignatureScheme.ECDSA
        chosen = hashes.SHA256() if hash_name == "sha256" else hashes.SHA384()
        return self.private.sign(digest, ec.ECDSA(Prehashed(chosen)))


async def test_short_r_and_s_are_left_padded(dev_ca: DevCA) -> None:
    """Signatures whose r or s is shorter than 32 bytes are zero-padded and still verify."""
    private = ec.generate_private_key(ec.SECP256R1())
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    cert = dev_ca.issue(spki, "Software Key")
    signer = SoftwareDigestSigner(private, KeyAlgorithm.EC_P256)
    chain = [cert.public_bytes(serialization.Encoding.DER)]
    padded = 0
    # About one signature in 128 has a leading zero byte in r or s; 5,000 tries find one
    # with certainty for practical purposes (failure odds below 1e-17).
    for index in range(5000):
        payload = b"receipt %d" % index
        token = await sign_detached(payload, signer, alg="ES256", kid="soft", x5c=chain)
        signature = b64url_decode(token.split(".")[2], "signature")
        assert len(signature) == 64
        if signature[0] == 0 or signature[32] == 0:
            verify_detached(token, payload)
            padded += 1
            if padded == 3:
                break
    assert padded == 3


def test_joserfc_signed_detached_jws_verifies_here(dev_ca: DevCA) -> None:
    """A detached JWS made by joserfc with a software key passes verify_detached."""
    private = ec.generate_private_key(ec.SECP256R1())
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    cert = dev_ca.issue(spki, "Outside Signer")
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    header = {
        "alg": "ES256",
        "kid": "outside",
        "x5c": [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()],
    }
    attached = joserfc_jws.serialize_compact(header, PAYLOAD, ECKey.import_key(pem))
    detached = joserfc_jws.detach_content(attached)
    assert verify_detached(detached, PAYLOAD)["kid"] == "outside"
