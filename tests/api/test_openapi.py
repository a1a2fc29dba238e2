"""GET /openapi.json describes what the app serves, and agrees with the contract in API.md."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from gateway.api.spec import spec_of
from gateway.hsm import Hsm
from gateway.pki.devca import DevCA
from gateway.settings import Settings
from tests.api.conftest import World
from tests.api.openapi_check import Conformance, Nonconformance
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
    assert [p["name"] for p in sign["parameters"] if p["in"] != "query"] == [
        "id", "Idempotency-Key"]
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


async def test_the_document_is_valid_openapi_3_1(world: World) -> None:
    """The served document passes the OpenAPI 3.1 validator (schemas, refs, parameters)."""
    document = await (await world.http.get("/openapi.json")).json()
    validate(document)


def test_every_route_describes_its_body_and_answers(world: World) -> None:
    """Each served operation carries its @documented mark, so none falls back to a bare
    "Success"."""
    undocumented = sorted(
        f"{route.method} {route.resource.canonical}" for route in world.http.app.router.routes()
        if route.resource is not None and route.method not in ("HEAD", "OPTIONS")
        and spec_of(route.handler) is None
    )
    assert undocumented == []


async def test_the_document_describes_queries_bodies_and_answers(world: World) -> None:
    """sign/pdf lists its query parameters and raw PDF body; sign/hash its JSON schemas,
    base64 marked; errors point at the Problem schema, CSC errors at the CSC one."""
    document = await (await world.http.get("/openapi.json")).json()
    pdf = document["paths"]["/v1/seals/{id}/sign/pdf"]["post"]
    query = {p["name"]: p["schema"] for p in pdf["parameters"] if p["in"] == "query"}
    assert query["level"]["enum"] == ["B-B", "B-T", "B-LT", "B-LTA"]
    assert set(query) == {"page", "x", "y", "width", "level", "reason", "location", "visible"}
    assert set(pdf["requestBody"]["content"]) == {"application/pdf", "application/octet-stream"}
    assert list(pdf["responses"]["200"]["content"]) == ["application/pdf"]
    assert "Sealgate-Receipt" in pdf["responses"]["200"]["headers"]
    hashes = document["paths"]["/v1/seals/{id}/sign/hash"]["post"]
    body = hashes["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["hash_algorithm", "hashes"]
    assert body["properties"]["hashes"]["items"]["contentEncoding"] == "base64"
    problem = {"$ref": "#/components/schemas/Problem"}
    assert hashes["responses"]["422"]["content"]["application/problem+json"]["schema"] == problem
    sign_hash = document["paths"]["/csc/v1/signatures/signHash"]["post"]["responses"]
    assert sign_hash["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CscError"}
    assert "422" not in sign_hash  # CSC clients get 400 for every request error
    assert document["paths"]["/metrics"]["get"]["responses"]["200"]["content"] == {
        "text/plain": {"schema": {"type": "string"}}}


async def test_the_check_refuses_what_the_document_does_not_say(world: World) -> None:
    """The check around the test client fails an undocumented status, an undocumented media
    type, an answer breaking its schema, and an accepted request breaking its schema."""
    conformance = Conformance(world.http.app)
    found = await conformance.operation("POST", "/v1/seals/x/sign/hash?y=1")
    assert found is not None
    template, operation = found
    where = f"POST {template}"
    answer = b'{"signatures": [], "signature_algorithm": "1.2", "certificate_chain": [], ' \
             b'"sealing_receipt": "r"}'
    conformance.check_answer(where, operation, 200, "application/json", answer)
    with pytest.raises(Nonconformance, match="status 418 is not documented"):
        conformance.check_answer(where, operation, 418, "application/json", answer)
    with pytest.raises(Nonconformance, match="'text/html' is not documented"):
        conformance.check_answer(where, operation, 200, "text/html", answer)
    with pytest.raises(Nonconformance, match="signatures: 'no' is not of type 'array'"):
        conformance.check_answer(where, operation, 200, "application/json",
                                 answer.replace(b'"signatures": []', b'"signatures": "no"'))
    with pytest.raises(Nonconformance, match="'hashes' is a required property"):
        conformance.check_accepted(where, operation, "application/json",
                                   {"hash_algorithm": "sha256"})
    with pytest.raises(Nonconformance, match="took 'text/plain'"):
        conformance.check_accepted(where, operation, "text/plain", None)
    assert await conformance.operation("GET", "/no/such/path") is None


async def test_the_check_refuses_query_parameters_the_document_does_not_take(
    world: World,
) -> None:
    """Query parameters of an accepted request must be documented and match their schema read
    as its type; an empty one passes where the document says it counts as left out."""
    conformance = Conformance(world.http.app)
    found = await conformance.operation("GET", "/v1/audit")
    assert found is not None
    where, operation = f"GET {found[0]}", found[1]
    conformance.check_query(where, operation, {"limit": "10", "until": "", "after": "3"})
    with pytest.raises(Nonconformance, match="0 is less than the minimum of 1"):
        conformance.check_query(where, operation, {"limit": "0"})
    with pytest.raises(Nonconformance, match="'ten' is not of type 'integer'"):
        conformance.check_query(where, operation, {"limit": "ten"})
    with pytest.raises(Nonconformance, match="query parameter 'page'"):
        conformance.check_query(where, operation, {"page": "2"})


def _examples(value: object, where: str = "") -> list[tuple[str, dict[str, object]]]:
    """Every schema of the document that carries ``examples``, with where it is."""
    found: list[tuple[str, dict[str, object]]] = []
    if isinstance(value, dict):
        if "examples" in value and isinstance(value["examples"], list):
            found.append((where, value))
        for key, item in value.items():
            found += _examples(item, f"{where}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _examples(item, f"{where}/{index}")
    return found


async def test_every_example_matches_its_schema(world: World) -> None:
    """Each example in the document is an instance of the schema that shows it."""
    document = await (await world.http.get("/openapi.json")).json()
    examples = _examples(document)
    assert len(examples) >= 8
    for where, schema in examples:
        validator = Draft202012Validator(
            {k: v for k, v in schema.items() if k != "examples"},
            format_checker=Draft202012Validator.FORMAT_CHECKER)
        for value in schema["examples"]:  # type: ignore[attr-defined]
            assert not list(validator.iter_errors(value)), where


async def test_the_examples_make_a_seal_file_it_and_sign(world: World) -> None:
    """The document's examples are what the gateway takes: a seal of the example
    organisation and picture, a filing of the example people and materials, an example
    digest and the example PDF signed."""
    document = await (await world.http.get("/openapi.json")).json()
    # A nullable schema's example is in its first choice: looked up as if it were not.
    shown = {re.sub(r"/anyOf/0", "", where): schema["examples"][0]
             for where, schema in _examples(document)}

    def example(path: str, method: str, *pointer: str) -> object:
        prefix = f"/paths/{path}/{method}/requestBody/content/"
        return shown[prefix + "/".join(pointer)]

    key = await world.key()
    _, filer = await world.client("filer")
    seal_body = "application/json/schema/properties/"
    seal = await world.http.post("/v1/seals", headers=filer, json={
        "name": example("/v1/seals", "post", seal_body + "name"), "type": "05",
        "key_id": key["id"],
        "image_png": example("/v1/seals", "post", seal_body + "image_png"),
        "organization": {
            "name": example("/v1/seals", "post", seal_body + "organization/properties/name"),
            "uscc": example("/v1/seals", "post", seal_body + "organization/properties/uscc")}})
    assert seal.status == 201, await seal.text()
    seal_id = (await seal.json())["id"]
    people = "/v1/filings", "post", "application/json/schema/properties/"
    filing = await world.http.post("/v1/filings", headers=filer, json={
        "seal_id": seal_id, "action": "new",
        "applicant": {"name": example(*people[:2], people[2] + "applicant/properties/name"),
                      "phone": example(*people[:2], people[2] + "applicant/properties/phone")},
        "legal_representative": {
            "name": example(*people[:2], people[2] + "legal_representative/properties/name"),
            "id_number": example(*people[:2],
                                 people[2] + "legal_representative/properties/id_number")}})
    assert filing.status == 201, await filing.text()
    material = example("/v1/filings/{id}/materials/{kind}", "put", "application/pdf/schema")
    assert isinstance(material, str)
    put = await world.http.put(f"/v1/filings/{(await filing.json())['id']}/materials/"
                               "business_license", headers={**filer,
                               "Content-Type": "application/pdf"}, data=material.encode("latin-1"))
    assert put.status == 200, await put.text()

    active = await world.active_seal()
    _, signer = await world.client("signer", [active["id"]])
    digests = example("/v1/seals/{id}/sign/hash", "post", "application/json/schema")
    signed = await world.http.post(f"/v1/seals/{active['id']}/sign/hash", headers=signer,
                                   json=digests)
    assert signed.status == 200, await signed.text()
    pdf = example("/v1/seals/{id}/sign/pdf", "post", "application/pdf/schema")
    assert isinstance(pdf, str)
    sealed = await world.http.post(f"/v1/seals/{active['id']}/sign/pdf",
                                   headers={**signer, "Content-Type": "application/pdf"},
                                   data=pdf.encode("latin-1"))
    assert sealed.status == 200, await sealed.text()
    verified = await world.http.post("/v1/verify", data=await sealed.read(),
                                     headers={"Content-Type": "application/pdf"})
    assert (await verified.json())["valid"] is True
