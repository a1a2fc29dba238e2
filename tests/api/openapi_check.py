"""Every answer the API tests receive, checked against the served OpenAPI document.

``World``'s HTTP client is a :class:`DocumentedClient`: after each request it finds the
operation the app routed it to and fails the test when the status is not one the document
lists for it, when the answer's media type is not documented for that status, or when a JSON
answer does not match its schema. A request the gateway accepted (2xx) must match the
documented request body and query parameters too, so that the document never refuses what
the gateway takes.
Requests to paths without a route (404, 405) have no operation and are not checked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.client import ClientResponse
from aiohttp.test_utils import TestClient, make_mocked_request
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.api.openapi import build_document, openapi_path

BASE = "urn:sealgate:openapi"


class Nonconformance(AssertionError):
    """An answer or accepted request that the OpenAPI document does not describe."""


class Conformance:
    """The app's OpenAPI document and validators for its schemas."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.document = build_document(app)
        self._registry: Registry[Any] = Registry().with_resource(
            BASE, Resource.from_contents(self.document, DRAFT202012))
        self._validators: dict[str, Draft202012Validator] = {}

    async def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
        """The document's path template and operation the app routes this request to."""
        request = make_mocked_request(method, path.split("?", 1)[0], app=self.app)
        match = await self.app.router.resolve(request)
        resource = match.route.resource
        if match.http_exception is not None or resource is None:
            return None
        template = openapi_path(resource.canonical)
        operation = self.document["paths"].get(template, {}).get(method.lower())
        return (template, operation) if operation is not None else None

    def check_answer(self, where: str, operation: Mapping[str, Any], status: int,
                     media_type: str, body: bytes) -> None:
        responses = operation["responses"]
        if str(status) not in responses:
            raise Nonconformance(f"{where}: status {status} is not documented "
                                 f"(documented: {sorted(responses)}); body: {body[:300]!r}")
        content = responses[str(status)].get("content")
        if not content:
            return
        if media_type not in content:
            raise Nonconformance(f"{where} {status}: {media_type!r} is not documented "
                                 f"(documented: {sorted(content)})")
        if media_type.endswith("json"):
            pointer = self._pointer(where, "responses", str(status), "content", media_type)
            self._validate(f"{where} {status}", pointer, _parsed(where, body))

    def check_accepted(self, where: str, operation: Mapping[str, Any],
                       media_type: str | None, sent_json: Any) -> None:
        """A request the gateway took: its media type and JSON body are documented ones."""
        content = operation.get("requestBody", {}).get("content", {})
        if not content or (media_type is None and sent_json is None):
            return  # a body sent where none is taken is ignored, not taken
        media = media_type or "application/json"
        if media not in content and "*/*" not in content:
            raise Nonconformance(f"{where}: the gateway took {media!r}, documented: "
                                 f"{sorted(content)}")
        if sent_json is not None and media in content:
            pointer = self._pointer(where, "requestBody", "content", media)
            self._validate(f"{where} request", pointer, sent_json)

    def check_query(self, where: str, operation: Mapping[str, Any],
                    query: Mapping[str, str]) -> None:
        """The query parameters of a request the gateway took are documented, and their
        values (read as the schema's type) match the schema."""
        documented = {p["name"]: (index, p) for index, p in enumerate(operation["parameters"])
                      if p["in"] == "query"}
        for name, value in query.items():
            if name not in documented:
                raise Nonconformance(f"{where}: the gateway took query parameter {name!r}, "
                                     f"documented: {sorted(documented)}")
            index, parameter = documented[name]
            if value == "" and parameter.get("allowEmptyValue"):
                continue
            pointer = self._pointer(where, "parameters", str(index))
            self._validate(f"{where} ?{name}=", pointer, _typed(value, parameter["schema"]))

    def _validate(self, where: str, pointer: str, instance: Any) -> None:
        validator = self._validators.get(pointer)
        if validator is None:
            validator = Draft202012Validator(
                {"$ref": f"{BASE}#{pointer}/schema"}, registry=self._registry,
                format_checker=Draft202012Validator.FORMAT_CHECKER)
            self._validators[pointer] = validator
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        if errors:
            found = "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                              for e in errors[:5])
            raise Nonconformance(f"{where} does not match the document: {found}")

    @staticmethod
    def _pointer(where: str, *parts: str) -> str:
        method, template = where.split(" ", 1)
        steps = ["paths", template, method.lower(), *parts]
        return "/" + "/".join(s.replace("~", "~0").replace("/", "~1") for s in steps)


class DocumentedClient(TestClient):  # type: ignore[type-arg]
    """aiohttp's test client, checking each answer against the app's OpenAPI document."""

    _conformance: Conformance | None = None

    @property
    def conformance(self) -> Conformance:
        if self._conformance is None:
            self._conformance = Conformance(self.app)
        return self._conformance

    async def _request(self, method: str, path: Any, **kwargs: Any) -> ClientResponse:
        response = await super()._request(method, path, **kwargs)
        found = await self.conformance.operation(method, str(path))
        if found is None:
            return response
        template, operation = found
        where = f"{method.upper()} {template}"
        body = await response.read()  # kept by the response for the test to read again
        self.conformance.check_answer(where, operation, response.status,
                                      response.content_type, body)
        if 200 <= response.status < 300:
            self.conformance.check_accepted(where, operation, _sent_media_type(kwargs),
                                            kwargs.get("json"))
            self.conformance.check_query(where, operation, response.url.query)
        return response


def _sent_media_type(kwargs: Mapping[str, Any]) -> str | None:
    headers = {str(k).lower(): str(v) for k, v in dict(kwargs.get("headers") or {}).items()}
    if "content-type" in headers:
        return headers["content-type"].split(";", 1)[0].strip().lower()
    if kwargs.get("json") is not None:
        return "application/json"
    if isinstance(kwargs.get("data"), bytes | bytearray):
        return "application/octet-stream"  # what aiohttp sends for bytes of no named type
    return None


def _typed(value: str, schema: Mapping[str, Any]) -> Any:
    """A query value read as its schema's type; left as text when it is not one."""
    readers: dict[str, Any] = {"integer": int, "number": float,
                               "boolean": {"true": True, "false": False}.__getitem__}
    reader = readers.get(str(schema.get("type")))
    try:
        return value if reader is None else reader(value)
    except (KeyError, ValueError):
        return value


def _parsed(where: str, body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise Nonconformance(f"{where}: the JSON answer is not JSON: {exc}") from None
