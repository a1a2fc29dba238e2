"""GET /openapi.json describes what the app serves, and agrees with the contract in API.md."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gateway.hsm import Hsm
from gateway.pki.devca import DevCA
from gateway.settings import Settings
from tests.api.conftest import World
from tests.conftest import PROJECT_ROOT

API_MD = PROJECT_ROOT.parent / "shared" / "API.md"
_OPERATION = re.compile(r"`(GET|POST|PUT|DELETE|PATCH) (/[^`\s?]*)[^`]*`")
_CSC = re.compile(r"`(/csc/v1/[^`\s]+)`")


def contract_operations(text: str) -> set[tuple[str, str]]:
    """Every ``METHOD /path`` of API.md; the CSC endpoints are listed as bare POST paths."""
    found = {(m.group(1).lower(), m.group(2)) for m in _OPERATION.finditer(text)}
    found |= {("post", path) for path in _CSC.findall(text)}
    return found


async def test_openapi_document_lists_served_operations(world: World) -> None:
    """The document is OpenAPI 3.1 and names roles for protected operations."""
    response = await world.http.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.1")
    sign = document["paths"]["/v1/seals/{id}/sign/pdf"]["post"]
    assert "signer" in sign["x-roles"]
    assert [p["name"] for p in sign["parameters"]] == ["id", "Idempotency-Key"]
    assert "Idempotent-Replayed" in sign["responses"]["2XX"]["headers"]
    assert "headers" not in document["paths"]["/v1/keys"]["get"]["responses"]["2XX"]
    assert "security" not in document["paths"]["/healthz"]["get"]


@pytest.mark.skipif(
    not API_MD.exists(), reason="the shared contract API.md is not beside the project"
)
async def test_every_contract_operation_is_served(world: World) -> None:
    """Each operation API.md promises is in the served document (outside clients rely on it)."""
    document = await (await world.http.get("/openapi.json")).json()
    served = {
        (method, path) for path, operations in document["paths"].items() for method in operations
    }
    missing = sorted(contract_operations(API_MD.read_text()) - served)
    assert missing == [], f"API.md operations the gateway does not serve: {missing}"


def test_contract_parser_reads_known_lines() -> None:
    """The API.md parser finds plain, multi-operation and CSC lines."""
    text = (
        "| `GET /v1/keys`, `GET /v1/keys/{id}` | x |\n"
        "`POST /csc/v1/info`, `/csc/v1/credentials/list`\n"
    )
    assert contract_operations(text) == {
        ("get", "/v1/keys"),
        ("get", "/v1/keys/{id}"),
        ("post", "/csc/v1/info"),
        ("post", "/csc/v1/credentials/list"),
    }


def test_project_root_is_the_checkout() -> None:
    """PROJECT_ROOT points at the directory holding pyproject.toml."""
    assert (Path(PROJECT_ROOT) / "pyproject.toml").exists()


@pytest.mark.parametrize("anonymous", [False, True])
async def test_the_tsa_asks_for_a_token_in_the_document_only_when_it_does(
    settings: Settings, hsm: Hsm, dev_ca: DevCA, anonymous: bool
) -> None:
    """With [tsa] allow_anonymous the time-stamp authority is open to anyone, and the
    document says so (no security, no roles)."""
    opened = settings.replace(tsa=dataclasses.replace(settings.tsa, allow_anonymous=anonymous))
    async with World.running(opened, hsm, dev_ca) as world:
        document = await (await world.http.get("/openapi.json")).json()
    tsa = document["paths"]["/tsa"]["post"]
    assert ("security" in tsa, "x-roles" in tsa) == (not anonymous, not anonymous)
