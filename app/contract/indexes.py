"""Index management: create, settings, describe, list, delete, stats."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from app.contract.common import ContractModel, ContractRequest, ContractResponse, omittable, reject

INDEX_NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
INDEX_NAME_RE = re.compile(INDEX_NAME_PATTERN)
VECTOR_TYPES = ("halfvec", "vector")

# Reverse image search tuning knobs: name -> (minimum, maximum, accepts "auto").
REVERSE_SEARCH_KNOB_RANGES: dict[str, tuple[int, int, bool]] = {
    "candidatePool": (10, 1000, False),
    # "auto": as many crops as the model's measured speed allows (domain.rerank.crops_for_model)
    "queryCrops": (1, 8, True),
    # early exit of verification: the first N hits are kept exactly as full verification ranks them
    "verifySettle": (0, 1000, False),
    # candidates fetched per query crop box by its colour descriptor (0: colour only scores the pool)
    "colourPool": (0, 200, False),
}

# Re-ranking knobs (`lookalike calibrate --apply` stores them): name -> (minimum, maximum, integer).
# Absent: the service's defaults (domain.rerank.RerankParams).
SCORING_KNOB_RANGES: dict[str, tuple[float, float, bool]] = {
    "aggregateWeight": (0.0, 32.0, False),
    "verifyWeight": (0.0, 32.0, False),
    "verifyTop": (0, 1000, True),
    "minInliers": (0, 100, True),
    "inlierSaturation": (0.5, 100.0, False),
    "matchWeight": (0.0, 32.0, False),
    "matchSaturation": (0.5, 100.0, False),
    "colourWeight": (0.0, 32.0, False),
    "prominenceArea": (0.0, 1.0, False),
    "regionMinInliers": (0, 100, True),
}

_SETTINGS = "invalid_settings"


def _scoring_knob(name: str) -> BeforeValidator:
    low, high, integer = SCORING_KNOB_RANGES[name]

    def check(value: Any) -> int | float:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not low <= value <= high or (integer and not float(value).is_integer()):
            kind = "an integer" if integer else "a number"
            raise reject(_SETTINGS, f"reverseImageSearch.{name} must be {kind} from {low:g} to {high:g}")
        return int(value) if integer else float(value)

    return BeforeValidator(check)


def _scoring_field(name: str, description: str) -> Any:
    low, high, integer = SCORING_KNOB_RANGES[name]
    schema = {"type": "integer" if integer else "number", "minimum": low, "maximum": high, "description": description}
    return Annotated[int if integer else float, _scoring_knob(name), WithJsonSchema(schema)]


def _knob(name: str) -> BeforeValidator:
    low, high, auto = REVERSE_SEARCH_KNOB_RANGES[name]

    def check(value: Any) -> int | str:
        if auto and value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            also = ' or "auto"' if auto else ""
            raise reject(_SETTINGS, f"reverseImageSearch.{name} must be an integer from {low} to {high}{also}")
        return value

    return BeforeValidator(check)


def _enabled(value: Any) -> bool:
    if not isinstance(value, bool):
        raise reject(_SETTINGS, "reverseImageSearch.enabled must be true or false")
    return value


class ReverseImageSearchSettings(ContractModel):
    """`reverseImageSearch`: the enable flag and tuning knobs. In a request, only the keys given change."""

    model_config = ConfigDict(extra="forbid")

    enabled: Annotated[bool, BeforeValidator(_enabled)] = False
    candidatePool: Annotated[
        int,
        Field(ge=10, le=1000, description="candidates re-ranked per query"),
        _knob("candidatePool"),
        WithJsonSchema({"type": "integer", "minimum": 10, "maximum": 1000}),
    ] = omittable()
    verifySettle: Annotated[
        int,
        _knob("verifySettle"),
        WithJsonSchema(
            {
                "type": "integer",
                "minimum": 0,
                "maximum": 1000,
                "description": "verification stops early once the first verifySettle hits provably rank as "
                "verifying all verifyTop candidates would; 0 (the default) = always verify all verifyTop",
            }
        ),
    ] = omittable()
    colourPool: Annotated[
        int,
        _knob("colourPool"),
        WithJsonSchema(
            {
                "type": "integer",
                "minimum": 0,
                "maximum": 200,
                "description": "candidates added to the pool per query crop box by the nearest colour "
                "descriptors; 0 = colour only scores the candidates found by embedding and keypoints",
            }
        ),
    ] = omittable()
    queryCrops: Annotated[
        int | Literal["auto"],
        _knob("queryCrops"),
        WithJsonSchema(
            {
                "description": "query crops embedded by the model, the whole photo included; 'auto' (the "
                "default) embeds as many (up to 4) as fit a 30 ms budget at the model's measured speed, those past "
                "the whole photo only when verifying the whole photo's pool leaves the answer open",
                "oneOf": [
                    {"type": "integer", "minimum": 1, "maximum": 8},
                    {"type": "string", "enum": ["auto"]},
                ],
            }
        ),
    ] = omittable()
    aggregateWeight: _scoring_field(  # type: ignore[valid-type]
        "aggregateWeight", "prior = embedding cosine + aggregateWeight x keypoint-aggregate cosine"
    ) = omittable()
    verifyWeight: _scoring_field(  # type: ignore[valid-type]
        "verifyWeight", "the largest bonus geometric verification adds to the prior"
    ) = omittable()
    verifyTop: _scoring_field(  # type: ignore[valid-type]
        "verifyTop", "candidates (best by prior) verified per query; 0 = all"
    ) = omittable()
    minInliers: _scoring_field(  # type: ignore[valid-type]
        "minInliers", "distinct inliers below which verification adds nothing"
    ) = omittable()
    inlierSaturation: _scoring_field(  # type: ignore[valid-type]
        "inlierSaturation", "inliers over minInliers at which the bonus reaches 63% of verifyWeight"
    ) = omittable()
    matchWeight: _scoring_field(  # type: ignore[valid-type]
        "matchWeight", "the largest bonus ratio-test matches add to a verified candidate (weak-texture evidence)"
    ) = omittable()
    matchSaturation: _scoring_field(  # type: ignore[valid-type]
        "matchSaturation", "ratio-test matches at which the match bonus reaches 63% of matchWeight"
    ) = omittable()
    colourWeight: _scoring_field(  # type: ignore[valid-type]
        "colourWeight", "prior += colourWeight x colour descriptors' Bhattacharyya coefficient (best over crop boxes)"
    ) = omittable()
    prominenceArea: _scoring_field(  # type: ignore[valid-type]
        "prominenceArea",
        "a verified match whose box covers less than this share of the photo earns proportionally "
        "less of the verification bonus (the photographed product fills the frame more than what "
        "lies around it); 0 = off; regions ignore it",
    ) = omittable()
    regionMinInliers: _scoring_field(  # type: ignore[valid-type]
        "regionMinInliers", "with regions: true, the minInliers of a region (a product found at a place)"
    ) = omittable()

    @model_validator(mode="before")
    @classmethod
    def _an_object_of_known_knobs(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise reject(_SETTINGS, 'reverseImageSearch must be an object, e.g. {"enabled": true}')
        known = ["enabled", *REVERSE_SEARCH_KNOB_RANGES, *SCORING_KNOB_RANGES]
        for key in value:
            if key not in known:
                raise reject(
                    _SETTINGS, f"unknown reverseImageSearch setting {key!r}; known settings: {', '.join(known)}"
                )
        return value

    def changes(self) -> dict[str, Any]:
        """The knobs this request sets (merged onto the current settings by the domain)."""
        return self.model_dump(exclude_unset=True)


# The `model` setting is checked by app.vision.model.ModelSpec (it knows timm's and open_clip's
# names and tags); the contract publishes its shape.
_MODEL_SCHEMA = {
    "description": "a timm model name with its pretrained tag, or an explicit spec "
    "(`pretrained: false` = deterministic random weights, fully offline); with "
    '`"library": "open_clip"` an image+text model (`ViT-B-32`, `ViT-B-16-SigLIP`, '
    "`hf-hub:Marqo/marqo-ecommerce-embeddings-B`, ...) whose text tower ranks products for text queries",
    "oneOf": [
        {"type": "string"},
        {
            "type": "object",
            "required": ["name"],
            "properties": {
                "library": {"enum": ["timm", "open_clip"], "default": "timm"},
                "name": {"type": "string"},
                "pretrained": {"type": ["boolean", "string"]},
                "imageSize": {"type": "integer", "description": "timm models only"},
                "seed": {"type": "integer"},
            },
            "additionalProperties": False,
        },
    ],
}
ModelSetting = Annotated[Any, WithJsonSchema(_MODEL_SCHEMA)]


def _vector_type(value: Any) -> str:
    if value not in VECTOR_TYPES:
        raise reject(_SETTINGS, "vectorType must be 'halfvec' or 'vector'")
    return str(value)


class CreateIndexRequest(ContractRequest):
    """POST /indexes/{index_name}; every setting is optional."""

    empty_is = {}
    unknown_parameter = "unknown index setting {key!r}; known settings: {known}"

    model: Annotated[
        Any,
        WithJsonSchema(
            {**_MODEL_SCHEMA, "oneOf": [*_MODEL_SCHEMA["oneOf"], {"type": "null"}]},  # type: ignore[dict-item]
        ),
        Field(description="absent or null: the default model (DINOv2 ViT-S/14, pretrained)"),
    ] = None
    vectorType: Annotated[Literal["halfvec", "vector"], BeforeValidator(_vector_type)] = "halfvec"
    reverseImageSearch: ReverseImageSearchSettings = Field(default_factory=ReverseImageSearchSettings)


class SettingsPatch(ContractRequest):
    """PATCH /settings: only `reverseImageSearch` changes after creation; `model` and `vectorType`
    may be repeated unchanged."""

    unknown_parameter = "unknown or read-only setting {key!r}; only reverseImageSearch can be changed"

    model: ModelSetting = omittable("must equal the index's model")
    vectorType: Annotated[Any, WithJsonSchema({"enum": list(VECTOR_TYPES)})] = omittable(
        "must equal the index's vectorType"
    )
    # Not Optional: a given null is refused like any non-object (absent = no change).
    reverseImageSearch: ReverseImageSearchSettings = omittable()


# --- responses -------------------------------------------------------------------------------


class StoredModel(ContractResponse):
    model_config = ConfigDict(extra="allow")

    library: Literal["open_clip"] | None = omittable("absent for timm models")
    name: str
    pretrained: bool | str
    imageSize: int | None = omittable()
    seed: int


class StoredReverseSearchSettings(ContractResponse):
    """The stored `reverseImageSearch` object: the flag and every knob's current value. Open to
    further keys: knobs written by newer versions or by `lookalike calibrate` are shown as stored."""

    model_config = ConfigDict(extra="allow")

    enabled: bool
    candidatePool: int | None = omittable(ge=1)
    queryCrops: int | Literal["auto"] | None = omittable()


class InferenceGuard(ContractResponse):
    """The int8 quality guard's verdict on the index's own images, with its numbers."""

    model_config = ConfigDict(extra="allow")

    status: Literal["pending", "passed", "failed", "off"]
    reason: str | None = omittable()
    sample: int | None = omittable(ge=0)
    cosine: float | None = omittable("mean cosine(fp32, int8) over the sample")
    cosineMin: float | None = omittable()
    overlap: float | None = omittable("mean share of top-k neighbours kept by int8", ge=0, le=1)
    neighbours: int | None = omittable(ge=0)
    thresholds: dict[str, float] | None = omittable()
    singleImageMs: dict[str, float] | None = omittable()


class InferenceSettings(ContractResponse):
    """Read-only: the backend and precision the index's model runs at (int8 only where the guard passed)."""

    model_config = ConfigDict(extra="allow")

    backend: Literal["onnx", "torch"] | None = omittable()
    precision: Literal["fp32", "int8"]
    guard: InferenceGuard | None = omittable()
    providers: list[str] | None = omittable("ONNX Runtime execution providers, or torch:<device>")
    graphKey: str | None = omittable("the exported graph's cache key")


class IndexSettings(ContractResponse):
    """Indexes created through the API carry all four; rows written by other means may not."""

    model: StoredModel | None = omittable()
    vectorType: Literal["halfvec", "vector"] | None = omittable()
    dimensions: int | None = omittable(ge=1)
    reverseImageSearch: StoredReverseSearchSettings | None = omittable()
    inference: InferenceSettings | None = omittable()


class CreateIndexResponse(ContractResponse):
    indexName: str
    indexId: str = Field(description="send as `x-marqo-index-id` on read endpoints")
    settings: IndexSettings


class IndexDescription(ContractResponse):
    indexName: str
    indexId: str
    settings: IndexSettings
    createdAt: datetime
    documentCount: int | None = omittable(ge=0)


class IndexList(ContractResponse):
    results: list[IndexDescription]


class DeleteIndexResponse(ContractResponse):
    acknowledged: Literal[True]
    indexName: str


class ReverseImageSearchStats(ContractResponse):
    enabled: bool
    featuresReady: int = Field(ge=0)
    featuresPending: int = Field(ge=0)
    featuresFailed: int = Field(ge=0)
    ready: bool


class EmbeddingStats(ContractResponse):
    """Queue mode (LOOKALIKE_INGEST_MODE=queue): products waiting for a worker, and those whose
    embedding failed (the reason is in get-documents' `_embedding` and the DBA views)."""

    pending: int = Field(ge=0)
    failed: int = Field(ge=0)


class IndexStats(ContractResponse):
    numberOfDocuments: int = Field(ge=0)
    numberOfVectors: int = Field(ge=0)
    vectorBytes: int = Field(ge=0)
    reverseImageSearch: ReverseImageSearchStats
    embeddings: EmbeddingStats
    inference: InferenceSettings | None = omittable()
