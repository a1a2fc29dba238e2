"""What each endpoint accepts and answers, declared beside its handler for the OpenAPI document.

A handler's ``@documented(...)`` mark names its query parameters, its request bodies by media
type, its answers by status and the errors particular to it; ``openapi.py`` reads the marks
as it reads the role marks, and adds what every operation shares (a token's 401/403/429, a
body's 400/408/413/415, 500, 503). Schemas are JSON Schema 2020-12 (OpenAPI 3.1) dicts; a
:class:`Component` anywhere in one becomes a ``$ref`` to ``components/schemas``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from gateway.api.context import Handler

Schema = Mapping[str, Any]
SPEC_ATTR = "__sealgate_spec__"


@dataclass(frozen=True)
class Component:
    """A named schema, shown once under ``components/schemas`` and referenced elsewhere."""

    name: str
    schema: Schema


SchemaLike = Schema | Component


@dataclass(frozen=True)
class Query:
    name: str
    schema: Schema
    description: str = ""
    empty_is_absent: bool = True
    """The handler reads ``?name=`` as if the parameter were left out."""


@dataclass(frozen=True)
class Answer:
    """One success answer: its status, what it carries by media type, and its headers."""

    status: int
    description: str
    content: Mapping[str, SchemaLike] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    """Header name to what it says."""


@dataclass(frozen=True)
class ErrorForm:
    """How an endpoint's errors leave: media type, schema, and the status each gateway error
    status becomes (CSC endpoints fold most of them into 400)."""

    media_type: str
    schema: Component
    status_of: Callable[[int], int] = lambda status: status
    descriptions: Mapping[int, str] = field(default_factory=dict)
    """What a status means here where it is not what it means elsewhere."""


@dataclass(frozen=True)
class Spec:
    answers: tuple[Answer, ...]
    query: tuple[Query, ...] = ()
    body: Mapping[str, SchemaLike] | None = None
    body_required: bool = True
    errors: tuple[int, ...] = ()
    error_form: ErrorForm | None = None
    """None: the problem documents of every other endpoint."""


def documented(
    *answers: Answer,
    query: Iterable[Query] = (),
    body: Mapping[str, SchemaLike] | None = None,
    body_required: bool = True,
    errors: Iterable[int] = (),
    error_form: ErrorForm | None = None,
) -> Callable[[Handler], Handler]:
    """Mark a handler with what it accepts and answers; ``errors`` are the statuses its own
    checks give (404, 409, 422, ...), beyond those every endpoint of its kind shares."""
    spec = Spec(tuple(answers), tuple(query), body, body_required,
                tuple(sorted(set(errors))), error_form)

    def mark(handler: Handler) -> Handler:
        setattr(handler, SPEC_ATTR, spec)
        return handler

    return mark


def spec_of(handler: object) -> Spec | None:
    spec = getattr(handler, SPEC_ATTR, None)
    return spec if isinstance(spec, Spec) else None


# -- schema shorthands ----------------------------------------------------------------------

TEXT: Schema = {"type": "string"}
TIME: Schema = {"type": "string", "format": "date-time"}
BOOLEAN: Schema = {"type": "boolean"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BASE64: Schema = {"type": "string", "contentEncoding": "base64"}
BINARY: Schema = {"type": "string", "format": "binary"}
ANY_OBJECT: Schema = {"type": "object"}
JSON = "application/json"


def obj(properties: Mapping[str, SchemaLike], *, optional: Iterable[str] = (),
        required: Iterable[str] | None = None) -> Schema:
    """An object with these properties: all required but ``optional``, or exactly
    ``required``. Other properties are allowed, so that adding one breaks no client."""
    needed = list(required) if required is not None else [
        name for name in properties if name not in set(optional)]
    return {"type": "object", "required": needed, "properties": dict(properties)}


def array(items: SchemaLike, **limits: int) -> Schema:
    return {"type": "array", "items": items, **limits}


def text(*, min_length: int = 1, max_length: int | None = None) -> Schema:
    schema: dict[str, Any] = {"type": "string", "minLength": min_length}
    if max_length is not None:
        schema["maxLength"] = max_length
    return schema


def one_of(values: Iterable[str] | type[Enum]) -> Schema:
    names = [str(v.value) for v in values] if isinstance(values, type) else list(values)
    return {"type": "string", "enum": names}


def example(schema: Schema, *values: Any) -> Schema:
    """``schema`` with example values (JSON Schema ``examples``): each one the gateway takes,
    so that a client or a test tool generated from the document can send it as it is."""
    return {**schema, "examples": list(values)}


def nullable(schema: SchemaLike) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def json_answer(status: int, description: str, schema: SchemaLike,
                headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(status, description, {JSON: schema}, headers or {})


def json_body(schema: SchemaLike) -> dict[str, SchemaLike]:
    return {JSON: schema}
