"""Request and response models of the HTTP API (the JSON contract of the service).

An image is a string: base64 of the file's bytes, or a data URI (`data:image/png;base64,...`).
Fields may be added; the contract fields are never renamed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator
from pydantic_core import PydanticCustomError

ImageString = str


def _valid_unicode(value: str) -> str:
    """Refuse lone UTF-16 surrogates (JSON "\\ud800"): no tokenizer can encode them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text contains a lone UTF-16 surrogate (not valid Unicode)") from None
    return value


Text = Annotated[str, AfterValidator(_valid_unicode)]
"""A text field of a request: any valid Unicode string."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hint(BaseModel):
    """`text` says how class `a` differs from class `b`."""

    model_config = ConfigDict(extra="forbid")
    a: Text
    b: Text
    text: Text


# -- embed ---------------------------------------------------------------------------------
class EmbedRequest(_Request):
    texts: Optional[list[Text]] = None
    images: Optional[list[ImageString]] = None


class EmbedResponse(BaseModel):
    model: str
    dim: int
    text_embeddings: list[list[float]]
    image_embeddings: list[list[float]]


TOKEN_IDS_MESSAGE = ("token-id input is not supported: pcclip tokenizes with its own model's tokenizer, "
                     "so give the texts themselves (a string or a list of strings)")


def _refuse_token_ids(value):
    """Token ids (a list of ints, or of lists of ints) get a clear error instead of a bare type error."""
    items = value if isinstance(value, list) else []
    if any(isinstance(v, int) and not isinstance(v, bool) or isinstance(v, list) for v in items):
        raise PydanticCustomError("token_ids_not_supported", TOKEN_IDS_MESSAGE)
    return value


class OpenAIEmbeddingsRequest(BaseModel):
    input: Annotated[Union[str, list[str]], BeforeValidator(_refuse_token_ids)]
    model: Optional[str] = Field(None, description="the served model's id (GET /v1/models), or left out")
    encoding_format: Optional[Literal["float", "base64"]] = None
    dimensions: Optional[int] = Field(None, description="only the model's own dimension: embeddings are not shortened")
    user: Optional[str] = None


    @field_validator("input")
    @classmethod
    def _input_is_valid_unicode(cls, value):
        for i, text in enumerate([value] if isinstance(value, str) else value):
            try:
                _valid_unicode(text)
            except ValueError as err:
                raise ValueError(f"{err} (input item {i})") from None
        return value


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


class OpenAIModel(BaseModel):
    id: str
    object: str = "model"
    created: int = Field(description="when this process loaded the model (Unix time)")
    owned_by: str = "pcclip"


class OpenAIModelList(BaseModel):
    object: str = "list"
    data: list[OpenAIModel]


# -- rank / compare / explain ----------------------------------------------------------------
class RankRequest(_Request):
    attribute: Text
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
    difference: Text


class CompareResponse(BaseModel):
    score: float
    holds: bool
    probability: float
    model: str
    calibration: dict


class ExplainRequest(_Request):
    image_a: ImageString
    image_b: ImageString
    candidates: Optional[list[Text]] = None
    subject: Optional[str] = Field(
        None, min_length=1, max_length=40, pattern=r"^[A-Za-z][A-Za-z '-]*$",
        description="noun of the built-in sentences ('animal': 'The first animal is larger than the second.'); "
                    "default PCCLIP_EXPLAIN_SUBJECT, else subject-neutral ('The first image shows something larger ...')")
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
    classes: Optional[list[Text]] = None
    store: Optional[Text] = None
    templates: Optional[list[Text]] = None
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
    classes: list[Text] = Field(min_length=1)
    templates: Optional[list[Text]] = None
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


# -- collections -------------------------------------------------------------------------------
ItemId = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$", description="the caller's id of the item")]
FilterValue = Union[StrictBool, StrictInt, StrictFloat, StrictStr, None]
MetadataFilter = dict[str, Union[FilterValue, list[FilterValue]]]
FILTER_DOC = "items whose metadata has, for every key, this value (or one of the values of a list)"


class CollectionRequest(_Request):
    description: Optional[str] = Field(None, max_length=1000)


class CollectionInfo(BaseModel):
    name: str
    model: str
    fingerprint: str
    dim: int
    count: int
    created_at: float
    description: str
    dtype: str = Field(description="the replica's matrix: float32 or float16")
    index: str = Field(description="the replica's search: int8 (an int8 first pass, then exact scores) or flat (PCCLIP_COLLECTION_INDEX)")


class CollectionList(BaseModel):
    model: str
    collections: list[str]


class CollectionItem(_Request):
    id: ItemId
    image: ImageString
    metadata: Optional[dict[str, Any]] = None


class AddItemsRequest(_Request):
    items: list[CollectionItem] = Field(min_length=1)


class AddItemsResponse(BaseModel):
    collection: str
    added: int
    ids: list[str]
    count: int


class DeleteItemsRequest(_Request):
    ids: list[ItemId] = Field(min_length=1)


class DeleteItemsResponse(BaseModel):
    collection: str
    deleted: int
    count: int


class ItemInfo(BaseModel):
    id: str
    metadata: Optional[dict[str, Any]] = None
    embedding: Optional[list[float]] = None


class ItemList(BaseModel):
    collection: str
    count: int
    offset: int
    ids: list[str]


class CollectionCount(BaseModel):
    collection: str
    count: int


class CollectionRankRequest(_Request):
    attribute: str
    top_k: int = Field(10, ge=1)
    ascending: bool = Field(False, description="lowest scores first (least of the attribute)")
    filter: Optional[MetadataFilter] = Field(None, description=FILTER_DOC)


# The default step of a search modifier: the smallest weight whose composed search moves the asked
# way on >= 80% of queries on a validation split (seen-class CUB test photos), never on the reserved
# test photos: `python -m bench.collection_quality`, docs/collections.md.
DEFAULT_MODIFIER_WEIGHT = 2.5


class Modifier(_Request):
    text: str
    weight: float = Field(DEFAULT_MODIFIER_WEIGHT, ge=-10.0, le=10.0, allow_inf_nan=False,
                          description="> 0: more of the text, < 0: less of it; the default was chosen on a validation split (docs/collections.md)")


class CollectionSearchRequest(_Request):
    image: Optional[ImageString] = None
    item_id: Optional[ItemId] = None
    text: Optional[str] = None
    modifiers: list[Modifier] = Field(default_factory=list)
    top_k: int = Field(10, ge=1)
    filter: Optional[MetadataFilter] = Field(None, description=FILTER_DOC)


class CollectionHit(BaseModel):
    id: str
    score: float
    metadata: Optional[dict[str, Any]] = None


class CollectionResults(BaseModel):
    model: str
    collection: str
    count: int = Field(description="items in the collection")
    results: list[CollectionHit]


# -- health / errors -------------------------------------------------------------------------
class ErrorBody(BaseModel):
    code: str
    message: str
    field: Optional[str] = None
    index: Optional[int] = None


class ErrorResponse(BaseModel):
    error: ErrorBody
