"""Request and response bodies of the web app's POST endpoints, and how they are read and documented.

The bodies are msgspec Structs (:class:`RefineRequest`, :class:`SearchRequest`, :class:`SqlRequest`)
and the JSON answers :class:`ResultResponse` and :class:`SqlResponse`. :class:`BodyRequest` decodes
a body sent as JSON or as a form into its Struct and turns a validation error into a 400 naming the
field and what it takes; the ``operation_class`` values (:data:`FORM`, :data:`JSON_OR_FORM`,
:data:`JSON_OR_UPLOAD`) and :func:`_document_bodies` make the OpenAPI schema say which encodings an
endpoint takes and show msgspec's own schemas of the Structs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_type_hints

import msgspec
from litestar import Litestar
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, Schema
from litestar.plugins.htmx import HTMXRequest
from litestar.status_codes import HTTP_415_UNSUPPORTED_MEDIA_TYPE
from msgspec import Meta, Struct

import engine
from engine.errors import InvalidArgument
from engine.learn import refine as rf
from engine.limits import (
    DEFAULT_K,
    DEFAULT_SAMPLED_NEGATIVES,
    MAX_QUERY_CHARS,
    MAX_QUERY_TEXT,
    MAX_SEED,
    MAX_SUGGESTIONS,
)
from engine.limits import WEB_MAX_K as MAX_K
from engine.limits import WEB_MAX_NEGATIVE_WEIGHT as MAX_NEGATIVE_WEIGHT
from engine.limits import WEB_MAX_SAMPLED as MAX_SAMPLED

# A text query of up to WEB_QUERY_TEXT_CAP characters is read at all; the engine refuses more than
# MAX_QUERY_CHARS with its own message.
from engine.limits import WEB_QUERY_TEXT_CAP as QUERY_TEXT_CAP

ImageId = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
IdList = Annotated[
    list[ImageId] | str,
    Meta(
        description=(
            "a list of integer image ids (a form sends one string of comma-separated ids); positives and negatives "
            "together at most the server's max_labels (2000 by default)"
        )
    ),
]
CatalogName = Annotated[str | None, Meta(description="a catalog's name (default: the first one served)")]
ResultCount = Annotated[int, Meta(ge=1, le=MAX_K, description=f"an integer in 1..{MAX_K}: how many results")]


class RefineRequest(Struct, forbid_unknown_fields=True):
    """A fine-tuning round: the labelled image ids and the options of the page's Fine-tune panel."""

    positives: IdList
    negatives: IdList = msgspec.field(default_factory=list)
    model: Annotated[Literal[rf.MODELS], Meta(description=f"one of {', '.join(rf.MODELS)}")] = "ensemble"
    sampled_negatives: Annotated[
        int,
        Meta(
            ge=0,
            le=MAX_SAMPLED,
            description=(f"an integer in 0..{MAX_SAMPLED}: catalog rows sampled as negatives"),
        ),
    ] = DEFAULT_SAMPLED_NEGATIVES
    negative_weight: Annotated[
        float,
        Meta(
            ge=1,
            le=MAX_NEGATIVE_WEIGHT,
            description=(
                f"a number in 1..{MAX_NEGATIVE_WEIGHT}: the weight of a labelled negative against a sampled one"
            ),
        ),
    ] = 1.0
    seed: Annotated[
        int,
        Meta(ge=0, le=MAX_SEED, description=(f"an integer in 0..{MAX_SEED}: the model's random seed")),
    ] = 0
    suggestions: Annotated[
        Annotated[int, Meta(ge=0, le=MAX_SUGGESTIONS)] | None,
        Meta(
            description=(
                f"an integer in 0..{MAX_SUGGESTIONS}: unlabelled ids to suggest for labelling next "
                "(default: the page size)"
            )
        ),
    ] = None
    guide: Annotated[
        bool,
        Meta(
            description=(
                "true or false: whether a linear guide adds pseudo-positives and sets the vote threshold"
            )
        ),
    ] = True
    catalog: CatalogName = None


class SearchRequest(Struct, forbid_unknown_fields=True):
    """A search by exactly one of: a text query ``q``, an image ``image_base64`` (in a multipart form,
    an image ``file``), or the ``id`` of an image to find more like."""

    q: Annotated[
        Annotated[str, Meta(max_length=QUERY_TEXT_CAP)] | None,
        Meta(description=(f"a text query of at most {MAX_QUERY_CHARS} characters")),
    ] = None
    image_base64: Annotated[
        str | None,
        Meta(
            description=(
                "an image file (PNG, JPEG, ...) in base64, or a data: URL of one; at most the server's "
                "max_upload_bytes (20 MB by default) once decoded"
            )
        ),
    ] = None
    id: Annotated[ImageId | None, Meta(description="an integer image id: images like it")] = None
    k: ResultCount = DEFAULT_K
    catalog: CatalogName = None


class SqlRequest(Struct, forbid_unknown_fields=True):
    """One read-only console query; with ``result``, the result it names is the table
    ``last_result(id, score, rank)``."""

    sql: Annotated[
        str,
        Meta(
            max_length=MAX_QUERY_TEXT,
            description=(f"one read-only SELECT of at most {MAX_QUERY_TEXT} characters"),
        ),
    ]
    result: Annotated[
        Annotated[str, Meta(max_length=100)] | None,
        Meta(
            description=(
                "a result token, as the `result` field of /api/refine and /api/search gives it; needed by a query "
                "that reads last_result or calls result_images() or in_last_result()"
            )
        ),
    ] = None
    catalog: CatalogName = None


class ResultResponse(Struct):
    """A search or fine-tuning result, best first, and its token."""

    ids: Annotated[list[int], Meta(description="image ids, best first (a fine-tune's first `limit`)")]
    scores: Annotated[
        list[int],
        Meta(
            description=(
                "per id: a search's squared distance between codes (lower is nearer), a fine-tune's member votes"
            )
        ),
    ]
    sql: Annotated[
        str, Meta(description="a SELECT that returns the same ids in the same order on the catalog")
    ]
    stats: Annotated[dict[str, Any], Meta(description="times per phase (ms), rows touched, options, ...")]
    results: Annotated[int, Meta(description="how many images the result holds in all")]
    suggestions: Annotated[list[int], Meta(description="a fine-tune's unlabelled ids to label next")]
    result: Annotated[
        str,
        Meta(
            description=(
                "the result's token: pass it as `result` to POST /api/sql to query the whole result as the table "
                "last_result(id, score, rank); the server keeps only its latest results (results_kept)"
            )
        ),
    ]

    @classmethod
    def of(cls, result: engine.Result, token: str, limit: int | None = None) -> ResultResponse:
        return cls(**result.to_json(limit=limit), result=token)


class SqlResponse(Struct):
    """A console query's rows (within the row and byte limits) and whether, and by which limit, more
    were cut."""

    columns: list[str]
    rows: list[dict[str, Any]]
    truncated: bool
    cut: Literal["", "rows", "bytes"]
    time_ms: float


def _field_help(kind: type[Struct], name: str) -> str:
    """What field ``name`` of ``kind`` takes: its description (of the field, or of its non-null type)."""
    stack = [get_type_hints(kind, include_extras=True).get(name)]
    while stack:
        hint = stack.pop()
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, Meta) and meta.description:
                return meta.description
        stack.extend(get_args(hint))
    return "a valid value"


_AT = re.compile(r"(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.S)


def _body_error(kind: type[Struct], text: str, media: str) -> InvalidArgument:
    """A msgspec validation error of a ``kind`` body as a message naming the field and what it takes."""
    m = _AT.fullmatch(text)
    message, path = m["message"], m["path"] or ""
    fields = ", ".join(kind.__struct_fields__)
    if field := re.match(r"\.(\w+)", path):
        name = field[1]
        if message.startswith("Invalid enum value"):
            return InvalidArgument(
                f"unknown {name} {message.removeprefix('Invalid enum value ')}; "
                f"{name} must be {_field_help(kind, name)}"
            )
        return InvalidArgument(f"{name} must be {_field_help(kind, name)} ({path[1:]}: {message})")
    if missing := re.search(r"missing required field `(\w+)`", message):
        return InvalidArgument(f"{missing[1]} is required: {_field_help(kind, missing[1])}")
    if unknown := re.search(r"unknown field `(.*)`", message, re.S):
        hint = (
            "; send JSON with Content-Type: application/json"
            if media != RequestEncodingType.JSON and unknown[1].lstrip().startswith(("{", "["))
            else ""
        )
        return InvalidArgument(f"unknown field {unknown[1][:100]!r}; the fields are {fields}{hint}")
    return InvalidArgument(
        f"the body must be one JSON object (or a form) with the fields {fields} ({message})"
    )


class BodyRequest(HTMXRequest):
    """A request whose body, the handler's ``data`` (a Struct above), comes as JSON or as a form.

    JSON, taken only as ``application/json``, is decoded strictly (``true`` is no integer, ``"5"``
    no number). A form, url-encoded as the page's forms send it or multipart, has text values,
    converted as msgspec converts text (``"500"`` to 500); a field given more than once is a list.
    A multipart ``file`` goes to ``upload`` (at most ``max_upload_bytes`` + 1 bytes read) where the
    body type takes an image. Errors are 400s naming the field and what it takes; any other
    Content-Type is a 415."""

    upload: bytes | None = None

    async def json(self) -> Any:
        kind = self.route_handler.parsed_fn_signature.parameters["data"].annotation
        media, _ = self.content_type
        if media not in (
            RequestEncodingType.JSON,
            RequestEncodingType.URL_ENCODED,
            RequestEncodingType.MULTI_PART,
        ):
            # text/plain above all: a browser posts it cross-site without asking first
            raise HTTPException(
                status_code=HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                detail=(
                    f"a body of Content-Type {media[:100] or '(none)'!r} is not taken; send JSON with "
                    "Content-Type: application/json, or a form"
                ),
            )
        try:
            if media != RequestEncodingType.JSON:
                return msgspec.convert(await self._form_fields(kind), kind, strict=False)
            return msgspec.json.decode(await self.body(), type=kind)
        except msgspec.ValidationError as e:
            raise _body_error(kind, str(e), media) from None
        except msgspec.DecodeError as e:
            raise InvalidArgument(
                f"the body is not valid JSON ({e}); send one JSON object with the fields "
                f"{', '.join(kind.__struct_fields__)}"
            ) from None

    async def _form_fields(self, kind: type[Struct]) -> dict[str, Any]:
        form = await self.form()
        fields: dict[str, Any] = {}
        for key in dict.fromkeys(form.keys()):
            values = form.getall(key)
            if not any(isinstance(v, UploadFile) for v in values):
                fields[key] = values[0] if len(values) == 1 else values
            elif key == "file" and len(values) == 1 and "image_base64" in kind.__struct_fields__:
                self.upload = await values[0].read(self.app.state.cb.settings.max_upload_bytes + 1)
            else:
                raise InvalidArgument(
                    f"unexpected file {key!r}; only a search takes a file, as the field file"
                )
        return fields


def _accepting(media: dict[str, Schema | None]) -> type[Operation]:
    """An Operation class documenting the request body under each media type of ``media``, with the
    body type's own schema (None) or the one given."""

    @dataclass
    class Accepting(Operation):
        def __post_init__(self) -> None:
            if self.request_body is not None:
                own = next(iter(self.request_body.content.values())).schema
                self.request_body.content = {
                    t: OpenAPIMediaType(schema=given or own) for t, given in media.items()
                }

    return Accepting


UPLOAD_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["file"],
    properties={
        "file": Schema(
            type=OpenAPIType.STRING,
            format=OpenAPIFormat.BINARY,
            description=(
                "an image file (PNG, JPEG, ...) of at most the server's max_upload_bytes (20 MB by default)"
            ),
        ),
        "k": Schema(
            type=OpenAPIType.INTEGER,
            minimum=1,
            maximum=MAX_K,
            default=DEFAULT_K,
            description="how many results",
        ),
        "catalog": Schema(
            type=OpenAPIType.STRING, description="a catalog's name (default: the first one served)"
        ),
    },
)
FORM = _accepting({RequestEncodingType.URL_ENCODED: None})
JSON_OR_FORM = _accepting({RequestEncodingType.JSON: None, RequestEncodingType.URL_ENCODED: None})
JSON_OR_UPLOAD = _accepting({RequestEncodingType.JSON: None, RequestEncodingType.MULTI_PART: UPLOAD_SCHEMA})


def _document_bodies(app: Litestar, kinds: tuple[type[Struct], ...]) -> None:
    """Put msgspec's own JSON schemas of the body Structs ``kinds`` in ``app``'s OpenAPI components, in
    place of Litestar's: Litestar 2.25 loses the bounds of a nullable field's type and does not say that
    unknown fields are refused, while msgspec's schema is exactly what msgspec accepts."""
    _, components = msgspec.json.schema_components(kinds, ref_template="#/components/schemas/{name}")
    schemas = app.openapi_schema.components.schemas
    for name, schema in components.items():
        schemas[name] = schema
