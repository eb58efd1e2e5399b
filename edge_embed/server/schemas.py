"""Request and response bodies, declared once as pydantic models.

The same models validate requests (``parse``) and describe the API in ``/openapi.json``.
Responses are written straight to JSON in the routes (a 512 x 768 float list through
pydantic would cost more than the model), in exactly the shapes declared here; the
schemathesis test checks them against this schema.

Deliberately does not accept token-id arrays (they are another model's token ids) and
does not coerce types: ``"truncate": "no"`` is a 422, not False.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic import ValidationInfo as PydanticInfo
from pydantic_core import PydanticCustomError

from .errors import HTTPError, short

__all__ = ["EmbedRequest", "EmbeddingsRequest", "EmbeddingsResponse", "ErrorTEI", "ErrorOpenAI", "Health", "Info",
           "parse"]

M = TypeVar("M", bound=BaseModel)

# the status of a validation error, by its type; everything else is a 422
_STATUS = {"token_ids": 400, "too_many_inputs": 413}
# pydantic's own messages for the types used here, in this API's wording
_WORDING = {"bool_type": "expected true or false", "string_type": "expected a string",
            "int_type": "expected an integer", "missing": "missing"}


def _texts(value: Any, info: PydanticInfo) -> Any:
    """A string or a non-empty list of non-empty strings, each valid Unicode; token-id arrays are a 400."""
    key = info.field_name or "input"
    max_inputs = (info.context or {}).get("max_inputs")
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list):
        items = value
    elif value is None:
        raise PydanticCustomError("missing", f"{key}: missing; send a string or a list of strings")
    else:
        raise PydanticCustomError("texts_type", f"{key}: expected a string or a list of strings, "
                                                f"got {type(value).__name__}")
    if not items:
        raise PydanticCustomError("texts_empty", f"{key}: empty list; send at least one text")
    if max_inputs is not None and len(items) > max_inputs:
        raise PydanticCustomError("too_many_inputs", f"{key}: {len(items)} texts, over the limit of {max_inputs} "
                                                     "per request (--max-inputs); split the request")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in items) or all(isinstance(x, list) for x in items):
        raise PydanticCustomError("token_ids", f"{key}: token-id arrays are not supported (they are another model's "
                                               "token ids); send text (LangChain's OpenAIEmbeddings: set "
                                               "check_embedding_ctx_length=False)")
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise PydanticCustomError("text_type", f"{key}[{i}]: expected a string, got {type(t).__name__}")
        if not t.strip():
            raise PydanticCustomError("text_empty", f"{key}[{i}]: empty text; send at least one non-blank character")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate, as JSON's "\udce9" can carry
            raise PydanticCustomError("text_unicode", f"{key}[{i}]: not valid Unicode (a lone surrogate "
                                                      f"{t[e.start]!r} at character {e.start}); send UTF-8 text"
                                      ) from None
    return items


# a string is accepted as a list of one; the schema says so (pydantic would document list[str] only)
Texts = Annotated[
    list[str],
    BeforeValidator(_texts),
    WithJsonSchema({"description": "A text or a list of texts (not token ids).",
                    "anyOf": [{"type": "string", "pattern": r"\S"},
                              {"type": "array", "items": {"type": "string", "pattern": r"\S"}, "minItems": 1}]}),
]


class _Body(BaseModel):
    # clients send fields of their own (OpenAI's "user", LangChain's extras): ignored, not refused
    model_config = ConfigDict(extra="ignore")


class EmbeddingsRequest(_Body):
    """OpenAI's ``POST /v1/embeddings``."""

    input: Texts
    model: StrictStr | None = Field(None, description="Any name: this server serves one bundle.")
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="base64: little-endian float32 bytes per vector.")
    dimensions: StrictInt | None = Field(None, description="Must equal the bundle's dim (vectors are not shortened).")
    user: StrictStr | None = None
    truncate: StrictBool | None = Field(
        None, description="Extension: false makes a text over max_length a 422 instead of truncating it.")


class EmbedRequest(_Body):
    """Text Embeddings Inference's ``POST /embed``."""

    inputs: Texts
    normalize: StrictBool | None = Field(None, description="false only for bundles that do not normalize.")
    truncate: StrictBool | None = Field(None, description="false makes a text over max_length a 422.")
    truncation_direction: Literal["right", "Right"] | None = None
    prompt_name: StrictStr | None = Field(None, description="A prompt of the bundle's manifest, e.g. 'query'.")


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class EmbedResponse(RootModel[list[list[float]]]):
    pass


class Health(BaseModel):
    status: Literal["ok"]


class Info(BaseModel):
    model_id: str
    source: dict[str, Any] = Field(description="The source model's id and revision (no build-machine paths).")
    dim: int
    max_length: int
    pooling: str
    normalize: bool
    prompts: dict[str, str]
    quantization: dict[str, Any]
    format: str
    digest: str = Field(description="sha256 of the bundle's manifest.json, as `edge-embed info` prints it")
    versions: dict[str, str]
    limits: dict[str, Any]
    auth: bool


class _OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: int


class ErrorOpenAI(BaseModel):
    error: _OpenAIErrorDetail


class ErrorTEI(BaseModel):
    error: str
    error_type: str


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def parse(model: type[M], data: Any, **context: Any) -> M:
    """Validate a decoded JSON body; the first problem becomes an HTTPError (400, 413 or 422)."""
    if not isinstance(data, dict):
        raise HTTPError(400, f"body: expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data, context=context)
    except PydanticValidationError as e:
        err = e.errors(include_url=False, include_context=False)[0]
        kind, where = err["type"], _where(err["loc"])
        if kind in _WORDING or not err["msg"].startswith(where):
            text = _WORDING.get(kind, err["msg"][:1].lower() + err["msg"][1:])
            message = f"{where}: {text}" + ("" if kind == "missing" else f", got {short(err.get('input'))}")
        else:  # one of this module's messages, which name the field themselves
            message = err["msg"]
        raise HTTPError(_STATUS.get(kind, 422), message, param=str(err["loc"][0]) if err["loc"] else None) from None
