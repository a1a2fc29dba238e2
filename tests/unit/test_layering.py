"""Dependencies point one way (DESIGN.md): api → filing → seals → keys → signing → pki → hsm."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

GATEWAY = PROJECT_ROOT / "gateway"

# What each part of the core must never import. The base modules (settings, errors, clock,
# storage, metrics, identifiers) may be used from anywhere below the API.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "gateway.hsm": ("gateway.pki", "gateway.signing", "gateway.keys", "gateway.seals",
                    "gateway.filing", "gateway.api", "gateway.audit", "gateway.auth",
                    "gateway.storage", "aiohttp"),
    "gateway.pki": ("gateway.signing", "gateway.keys", "gateway.seals", "gateway.filing",
                    "gateway.api", "gateway.storage", "aiohttp"),
    "gateway.signing": ("gateway.keys", "gateway.seals", "gateway.filing", "gateway.api",
                        "gateway.audit", "gateway.auth", "gateway.storage", "aiohttp"),
    "gateway.audit": ("gateway.signing", "gateway.keys", "gateway.seals", "gateway.filing",
                      "gateway.api", "aiohttp"),
    "gateway.auth": ("gateway.keys", "gateway.seals", "gateway.filing", "gateway.api",
                     "aiohttp"),
    "gateway.keys": ("gateway.seals", "gateway.filing", "gateway.api", "aiohttp"),
    "gateway.seals": ("gateway.filing", "gateway.api", "aiohttp"),
    "gateway.filing": ("gateway.api", "aiohttp"),
    "gateway.csc": ("gateway.filing", "gateway.api", "aiohttp"),
    "gateway.custody": ("gateway.filing", "gateway.api", "gateway.csc", "aiohttp"),
    "gateway.storage": ("gateway.",),
    "gateway.settings": ("gateway.hsm", "gateway.signing", "gateway.api", "gateway.storage"),
    "gateway.errors": ("gateway.",),
}
EVERYWHERE_FORBIDDEN = ("plugins",)


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[str]:
    """Every module a file imports, at top level or inside functions."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def violations() -> list[str]:
    found = []
    for path in sorted(GATEWAY.rglob("*.py")):
        name = module_name(path)
        rules = [bad for owner, bads in FORBIDDEN.items()
                 if name == owner or name.startswith(owner + ".") for bad in bads]
        for imported in imports(path):
            if imported == name or imported.startswith(name + "."):
                continue
            if any(_matches(imported, bad) for bad in (*rules, *EVERYWHERE_FORBIDDEN)):
                found.append(f"{name} imports {imported}")
    return sorted(set(found))


def _matches(imported: str, forbidden: str) -> bool:
    """``gateway.pki`` forbids it and its submodules; ``gateway.`` forbids the whole core."""
    if forbidden.endswith("."):
        return imported.startswith(forbidden)
    return imported == forbidden or imported.startswith(forbidden + ".")


def test_matching_covers_submodules_only() -> None:
    """A rule forbids a package and its submodules, not packages sharing a name prefix."""
    assert _matches("gateway.pki.devca", "gateway.pki")
    assert _matches("gateway.pki", "gateway.pki")
    assert not _matches("gateway.pkix", "gateway.pki")
    assert _matches("gateway.hsm", "gateway.")


def test_core_dependencies_point_one_way() -> None:
    """No module imports a layer above it, and the core never imports plugins/."""
    assert violations() == []


@pytest.mark.parametrize(("name", "expected"), [
    ("gateway/signing/pdf.py", "gateway.signing.pdf"),
    ("gateway/hsm/__init__.py", "gateway.hsm"),
])
def test_module_names_are_derived_from_paths(name: str, expected: str) -> None:
    """The checker names modules as Python imports them."""
    assert module_name(PROJECT_ROOT / name) == expected
