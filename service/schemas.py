"""Request and response models of the HTTP API (the JSON contract of the service).

An image is a string: base64 of the file's bytes, or a data URI (`data:image/png;base64,...`).
Fields may be added; the contract fields are never renamed.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

ImageString = str


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hint(BaseModel):
    """`text` says how class `a` differs from class `b`."""

    model_config = ConfigDict(extra="forbid")
    a: str
    b: str
    text: str


# -- embed ---------------------------------------------------------------------------------
class EmbedRequest(_Request):
    texts: Optional[list[str]] = None
    images: Optional[list[ImageString]] = None


class EmbedResponse(BaseModel):
    model: str
    dim: int
    text_embeddings: list[list[float]]
    image_embeddings: list[list[float]]


class OpenAIEmbeddingsRequest(BaseModel):
    input: Union[str, list[str]]
    model: Optional[str] = None
    encoding_format: Optional[Literal["float", "base64"]] = None
    user: Optional[str] = None


class OpenAIEmbedding(BaseModel):
    object: str = "embedding"
    index: int
    embedding: Union[list[float], str] = Field(description="floats, or base64 of little-endian float32 with encoding_format=base64")


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingsResponse(BaseModel):
    object: str = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


# -- rank / compare / explain ----------------------------------------------------------------
class RankRequest(_Request):
    attribute: str
    images: list[ImageString] = Field(min_length=1)
    top_k: Optional[int] = Field(None, ge=1)


class RankItem(BaseModel):
    index: int
    score: float


class RankResponse(BaseModel):
    model: str
    attribute: str
    ranking: list[RankItem]


class CompareRequest(_Request):
    image_a: ImageString
    image_b: ImageString
    difference: str


class CompareResponse(BaseModel):
    score: float
    holds: bool
    probability: float
    model: str
    calibration: dict


class ExplainRequest(_Request):
    image_a: ImageString
    image_b: ImageString
    candidates: Optional[list[str]] = None
    top_k: Optional[int] = Field(None, ge=1)


class Difference(BaseModel):
    text: str
    score: float


class ExplainResponse(BaseModel):
    differences: list[Difference]
    model: str
    vocabulary: str = Field(description="'candidates' or 'built-in'")


# -- classify / stores -----------------------------------------------------------------------
class ClassifyRequest(_Request):
    images: list[ImageString] = Field(min_length=1)
    classes: Optional[list[str]] = None
    store: Optional[str] = None
    templates: Optional[list[str]] = None
    hints: Optional[list[Hint]] = None
    alpha: Optional[float] = Field(None, ge=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=1)


class Label(BaseModel):
    label: str
    probability: float


class ClassifyResult(BaseModel):
    labels: list[Label]


class ClassifyResponse(BaseModel):
    model: str
    results: list[ClassifyResult]
    store: Optional[str] = None


class StoreRequest(_Request):
    classes: list[str] = Field(min_length=1)
    templates: Optional[list[str]] = None
    hints: Optional[list[Hint]] = None
    alpha: Optional[float] = Field(None, ge=0.0, le=1.0)


class StoreInfo(BaseModel):
    name: str
    model: str
    fingerprint: str
    classes: list[str]
    templates: list[str]
    hints: list[Hint]
    alpha: float
    dim: int
    created_at: float


class StoreList(BaseModel):
    model: str
    stores: list[str]


# -- health / errors -------------------------------------------------------------------------
class ErrorBody(BaseModel):
    code: str
    message: str
    field: Optional[str] = None
    index: Optional[int] = None


class ErrorResponse(BaseModel):
    error: ErrorBody
