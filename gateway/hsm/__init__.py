"""PKCS#11 access: one session and one thread per process, keys that never leave the token."""

from gateway.hsm.algorithms import (
    HASHES,
    HashAlgorithm,
    KeyAlgorithm,
    SignatureScheme,
    ecdsa_raw_to_der,
    hash_algorithm,
)
from gateway.hsm.keys import DATA_KEY_WRAPPING_LABEL, Hsm

__all__ = [
    "DATA_KEY_WRAPPING_LABEL",
    "HASHES",
    "HashAlgorithm",
    "Hsm",
    "KeyAlgorithm",
    "SignatureScheme",
    "ecdsa_raw_to_der",
    "hash_algorithm",
]
