"""Self-calibration (`POST /indexes/{index}/calibrate`, `lookalike calibrate`): the request and
the report (SPEC "Beyond the seed": `{"before": {...}, "after": {...}, "knobs": {...}}`), and the
lines of its NDJSON progress stream."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from app.contract.common import ContractRequest, ContractResponse, integral, omittable, reject

MAX_CALIBRATION_QUERIES = 1000
MAX_SEED = 2**31 - 1
NDJSON = "application/x-ndjson"


def _queries(value: Any) -> int:
    n = integral("queries")(value)
    if not 2 <= n <= MAX_CALIBRATION_QUERIES:
        raise reject("invalid_queries", f"queries must be between 2 and {MAX_CALIBRATION_QUERIES}")
    return n


def _seed(value: Any) -> int:
    seed = integral("seed")(value)
    if not 0 <= seed <= MAX_SEED:
        raise reject("invalid_seed", f"seed must be between 0 and {MAX_SEED}")
    return seed


def _apply(value: Any) -> bool:
    if not isinstance(value, bool):
        raise reject("invalid_apply", "apply must be true or false")
    return value


class CalibrateRequest(ContractRequest):
    """POST /calibrate; every key is optional (no body: 100 photos, seed 0, report only)."""

    empty_is = {}

    queries: Annotated[
        int,
        Field(ge=2, le=MAX_CALIBRATION_QUERIES, description="calibration photos, made from this many sampled "
              "products (fewer when the index has fewer); half tune the knobs, half are held out"),
        BeforeValidator(_queries),
    ] = 100
    seed: Annotated[
        int, Field(ge=0, le=MAX_SEED, description="which products and photos"), BeforeValidator(_seed)
    ] = 0
    apply: Annotated[
        bool, Field(description="store the best knobs in the index's reverseImageSearch settings"),
        BeforeValidator(_apply),
    ] = False


# --- the report ---------------------------------------------------------------------------------


class RecallMetrics(ContractResponse):
    recallAt1: float = Field(ge=0, le=1)
    recallAt10: float = Field(ge=0, le=1)
    mrrAt10: float = Field(ge=0, le=1)


class ScoringKnobs(ContractResponse):
    """The re-ranking knobs (the index settings' reverseImageSearch names)."""

    aggregateWeight: float
    verifyWeight: float
    verifyTop: int = Field(ge=0)
    minInliers: int = Field(ge=0)
    inlierSaturation: float
    matchWeight: float
    matchSaturation: float
    colourWeight: float
    prominenceArea: float = Field(ge=0, le=1)


class CalibrationSide(RecallMetrics):
    """Recall of one set of knobs: on every photo (the top-level numbers), on the photos it tuned
    on, and on the held-out ones."""

    tuned: RecallMetrics
    heldOut: RecallMetrics | None = omittable("absent when no photo was held out")
    knobs: ScoringKnobs


class GuardThresholds(ContractResponse):
    cosine: float
    overlap: float


class GuardTimings(ContractResponse):
    fp32: float = Field(ge=0)
    int8: float = Field(ge=0)


class Int8GuardCheck(ContractResponse):
    """The int8 quality guard, checked again on the calibration sample; with `apply` its verdict is
    stored in the index settings' `inference` (`checkedOn: calibration`). `off`: no int8 graph here."""

    precision: Literal["fp32", "int8"] = Field(description="the precision this verdict picks")
    status: Literal["passed", "failed", "off"]
    reason: str | None = omittable()
    sample: int | None = omittable(ge=0)
    cosine: float | None = omittable(description="mean cosine(fp32, int8) over the sample")
    cosineMin: float | None = omittable()
    overlap: float | None = omittable(description="mean top-k neighbour overlap within the sample")
    neighbours: int | None = omittable(ge=0)
    thresholds: GuardThresholds | None = omittable()
    singleImageMs: GuardTimings | None = omittable()


class CalibrationReport(ContractResponse):
    before: CalibrationSide = Field(description="the index's current knobs")
    after: CalibrationSide = Field(description="the best knobs of the sweep")
    knobs: ScoringKnobs = Field(description="the best knobs (what apply stores)")
    index: str
    queries: int = Field(ge=0, description="photos measured")
    tunedOn: int = Field(ge=0)
    heldOut: int = Field(ge=0)
    skipped: int = Field(ge=0, description="sampled products whose image could not be fetched or decoded")
    sweepPoints: int = Field(ge=1)
    int8Guard: Int8GuardCheck
    seconds: float = Field(ge=0)
    applied: bool = Field(description="whether the knobs were stored in the index settings")


# --- the NDJSON stream (Accept: application/x-ndjson) ------------------------------------------


class CalibrationProgress(ContractResponse):
    stage: Literal["start", "fetch", "search", "sweep", "apply"]
    done: int = Field(ge=0)
    total: int = Field(ge=0)
    message: str


class CalibrationProgressLine(ContractResponse):
    """A progress line: at least one per photo searched."""

    progress: CalibrationProgress


class CalibrationReportLine(ContractResponse):
    """The last line of a run that succeeded (a failed run ends with an `{"error", "code"}` line)."""

    report: CalibrationReport


CALIBRATION_STREAM_LINES = (CalibrationProgressLine, CalibrationReportLine)
