"""Values made from a stored record, kept per process until the part they came from changes.

Signing material is made from a key's stored certificate chain, a seal picture read from its
blob: both are read or built once, and made again when the record says they changed (a
renewed certificate, a new picture), so every worker follows a change on its next request.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Kept(Generic[K, V]):
    """One value per key, with the version it was made from."""

    def __init__(self) -> None:
        self._kept: dict[K, tuple[object, V]] = {}

    def get(self, key: K, version: object) -> V | None:
        """The value kept for ``key`` when it was made from ``version``, else None."""
        kept = self._kept.get(key)
        return kept[1] if kept is not None and kept[0] == version else None

    def keep(self, key: K, version: object, value: V) -> V:
        self._kept[key] = (version, value)
        return value
