"""Property-based fuzzing of every endpoint, with and without credentials, on the real app.

Hypothesis draws a request (endpoint, index name, credentials, body) from strategies that
mix near-valid bodies (the right keys with values of any type) with arbitrary JSON and raw
bytes. The oracle (`check`) holds for every request:

- never a 5xx, and every 4xx is the SPEC error body {"error", "code"};
- a 401 body is exactly {"error": "Unauthorized", "code": "unauthorized"};
- credentials that can never be valid (none, a wrong key, another index's id) get 401 on
  every API endpoint, whatever the body: there is no unauthenticated path;
- per-item statuses in batch responses are never 5xx;
- reads of one index never return another index's products.

After the run, the sentinel index (read-only for the fuzzer) still holds exactly its
products, and every product row has its vector row. The CI run is bounded
(FUZZ_EXAMPLES examples); `python -m benchmarks.fuzz_long` runs the same strategies much
longer against `lookalike serve`.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ADMIN, ADMIN_KEY
from tests.helpers import TEST_MODEL, product, product_image
from tests.imageserver import ImageServer
from tests.test_bad_inputs import assert_catalog_consistent

FUZZ_EXAMPLES = int(os.environ.get("LOOKALIKE_FUZZ_EXAMPLES", "200"))
REQUEST_BUDGET_S = 30.0  # a single request taking longer than this counts as a hang

# -- the world the fuzzer acts on ---------------------------------------------------------


@dataclass
class World:
    """Names, ids and URLs the strategies draw from; filled in once the indexes exist."""

    sentinel: str = ""
    sentinel_id: str = ""
    sentinel_docs: dict[str, Any] = field(default_factory=dict)
    scratch: str = ""
    scratch_id: str = ""
    image_urls: list[str] = field(default_factory=list)


SMALL_JPEG = product_image(401, size=24)
SMALL_DATA_URL = "data:image/jpeg;base64," + base64.b64encode(SMALL_JPEG).decode()

# -- strategies ------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)
# What a careless or hostile client sends where a string is expected.
weird_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "*", "\x00", "a\x00b", "🚀", "‮", "\\", "%00", "' OR 1=1 --", "NaN", "null"]),
)


def image_refs(world: World) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(
            [
                SMALL_DATA_URL,
                *world.image_urls,
                "data:image/png;base64,",
                "data:image/png;base64,@@@",
                "data:image/png;base64,aGVsbG8=",
                "data:text/plain;base64,aGVsbG8=",
                "http://10.0.0.1/x.jpg",
                "http://169.254.169.254/latest/meta-data/x.png",
                "http://[::1]/x.webp",
                "ftp://example.com/x.jpg",
                "http://127.0.0.1:1/refused.jpg",
            ]
        ),
        weird_text.map(lambda t: "http://127.0.0.1/" + t + ".jpg"),
        st.binary(max_size=64).map(lambda b: "data:image/jpeg;base64," + base64.b64encode(b).decode()),
    )


# Near-valid filters: grammar pieces glued together in random order, plus free text.
FILTER_PIECES = [
    "brand:Nike",
    "price:[1 TO 20]",
    "price:[* TO 5]",
    "NOT ",
    " AND ",
    " OR ",
    "(",
    ")",
    "color:(Light Blue)",
    "_id:p1",
    "brand IN (a, (b c))",
    "inStock:true",
    "[",
    "]",
    "{",
    ":",
    "\\",
    " TO ",
    "*",
    "\x00",
    "🚀:x",
]
filters = st.one_of(
    weird_text,
    st.lists(st.sampled_from(FILTER_PIECES), max_size=8).map("".join),
    json_values,
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The right kind of value most of the time, any JSON value otherwise."""
    return st.one_of(strategy, strategy, json_values)


def documents(world: World) -> st.SearchStrategy[Any]:
    doc = st.fixed_dictionaries(
        {
            "_id": maybe(st.one_of(st.sampled_from(["fz-1", "fz-2", "fz-3"]), weird_text)),
            "productTitle": maybe(weird_text),
            "price": maybe(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False))),
            "variantImageUrl": maybe(image_refs(world)),
        },
        optional={
            "productCollections": maybe(st.lists(weird_text, max_size=3)),
            "collections": maybe(st.lists(weird_text, max_size=3)),
            "brand": json_values,
            "description": maybe(weird_text),
        },
    ).flatmap(lambda d: st.dictionaries(weird_text, json_values, max_size=3).map(lambda extra: {**extra, **d}))
    return st.one_of(st.lists(st.one_of(doc, doc, doc, json_values), max_size=4), json_values)


facet_names = st.one_of(st.sampled_from(["brand", "price", "productCollections", "collections"]), weird_text)
facet_fields = st.fixed_dictionaries(
    {"type": maybe(st.sampled_from(["string", "number", "array", "text"]))},
    optional={
        "ranges": maybe(
            st.lists(
                st.fixed_dictionaries(
                    {}, optional={"from": maybe(st.floats()), "to": maybe(st.floats()), "name": maybe(weird_text)}
                ),
                max_size=3,
            )
        ),
        "maxResults": maybe(st.integers(min_value=-2, max_value=20_000)),
        "order": maybe(st.sampled_from(["asc", "desc", "up"])),
        "excludeTerms": maybe(st.lists(st.one_of(weird_text, st.just("brand:Acme")), max_size=2)),
    },
)
facet_bodies = st.one_of(
    st.fixed_dictionaries(
        {"fields": st.dictionaries(facet_names, st.one_of(facet_fields, json_values), max_size=3)},
        optional={"maxResults": maybe(st.integers(-2, 20_000)), "order": maybe(st.sampled_from(["asc", "x"]))},
    ),
    json_values,
)
sort_fields = st.fixed_dictionaries(
    {"fieldName": maybe(st.one_of(weird_text, st.sampled_from(["price", "_id", "brand"])))},
    optional={"order": maybe(st.sampled_from(["asc", "desc", "x"])), "missing": maybe(st.sampled_from(["first", "x"]))},
)
sort_bodies = st.one_of(
    st.fixed_dictionaries(
        {"fields": st.lists(sort_fields, max_size=4)},
        optional={"sortDepth": maybe(st.integers(-1, 20_000)), "minSortCandidates": maybe(st.integers(-1, 20_000))},
    ),
    json_values,
)
collapse_item = st.fixed_dictionaries(
    {"name": maybe(st.one_of(weird_text, st.just("parentProductId")))}, optional={"sortBy": maybe(sort_bodies)}
)


def bodies(world: World, kind: str) -> st.SearchStrategy[Any]:
    """A JSON body for an endpoint kind, as a Python value (serialised by the runner)."""
    if kind == "search":
        return st.fixed_dictionaries(
            {},
            optional={
                "q": maybe(st.one_of(weird_text, image_refs(world))),
                "limit": maybe(st.integers(min_value=-(10**20), max_value=10**20)),
                "offset": maybe(st.integers(min_value=-5, max_value=20_000)),
                "filter": filters,
                "attributesToRetrieve": maybe(st.lists(weird_text, max_size=4)),
                "facets": maybe(facet_bodies),
                "sortBy": maybe(sort_bodies),
                "collapseFields": maybe(st.one_of(st.lists(collapse_item, max_size=2), json_values)),
            },
        )
    if kind == "collections":
        return st.fixed_dictionaries(
            {"collectionName": maybe(st.one_of(weird_text, st.sampled_from(["shoes", "sale"])))},
            optional={
                "limit": maybe(st.integers(min_value=-5, max_value=2000)),
                "offset": maybe(st.integers(min_value=-5, max_value=20_000)),
                "filter": filters,
                "facets": maybe(facet_bodies),
                "sortBy": maybe(sort_bodies),
            },
        )
    if kind == "similar":
        known_ids = sorted(world.sentinel_docs) or ["none"]
        return st.fixed_dictionaries(
            {"documentIds": maybe(st.lists(st.one_of(weird_text, st.sampled_from(known_ids)), max_size=12))},
            optional={"limit": maybe(st.integers(min_value=-5, max_value=200)), "filter": filters},
        )
    if kind == "reverse":
        return st.fixed_dictionaries(
            {"q": maybe(image_refs(world))},
            optional={
                "limit": maybe(st.integers(min_value=-(10**20), max_value=10**20)),
                "filter": filters,
                "attributesToRetrieve": maybe(st.lists(weird_text, max_size=4)),
            },
        )
    if kind == "calibrate":
        # small runs (the scratch index holds a few products): a run of minutes would read as a hang
        return st.fixed_dictionaries(
            {},
            optional={
                "queries": maybe(st.integers(min_value=-3, max_value=6)),
                "seed": maybe(st.integers(min_value=-(2**40), max_value=2**40)),
                "apply": maybe(st.booleans()),
            },
        )
    if kind in ("add", "update"):
        return st.fixed_dictionaries({"documents": documents(world)})
    if kind == "get":
        return st.fixed_dictionaries({"documentIds": maybe(st.lists(weird_text, max_size=5))})
    if kind == "delete-docs":
        return st.fixed_dictionaries({"ids": maybe(st.lists(weird_text, max_size=5))})
    if kind in ("create", "settings"):
        model = st.one_of(
            st.just(TEST_MODEL),
            st.builds(
                lambda key, value: {**TEST_MODEL, key: value},
                st.sampled_from(list(TEST_MODEL)),
                st.one_of(json_scalars, st.sampled_from([0, 15, 16, 17, 1025, -1, 2**63, 1.5])),
            ),
            json_values,
        )
        reverse = maybe(
            st.dictionaries(
                st.one_of(st.sampled_from(["enabled", "candidatePool", "queryCrops"]), weird_text),
                st.one_of(json_scalars, st.sampled_from([True, False, 9, 10, 1000, 1001, 0, 8, 9])),
                max_size=3,
            )
        )
        return st.fixed_dictionaries(
            {},
            optional={
                "model": model,
                "vectorType": maybe(st.sampled_from(["halfvec", "vector", "float8", ""])),
                "reverseImageSearch": reverse,
            },
        ).flatmap(lambda d: st.dictionaries(weird_text, json_values, max_size=1).map(lambda e: {**e, **d}))
    return st.none()


@dataclass(frozen=True)
class Endpoint:
    method: str
    suffix: str | None  # None: not under an index; "" = the index itself
    kind: str
    access: str  # "admin", "read" or "open"
    writes: bool = False


ENDPOINTS = [
    Endpoint("GET", None, "list", "admin"),
    Endpoint("POST", "", "create", "admin", writes=True),
    Endpoint("GET", "", "none", "admin"),
    Endpoint("DELETE", "", "none", "admin", writes=True),
    Endpoint("GET", "/settings", "none", "admin"),
    Endpoint("PATCH", "/settings", "settings", "admin", writes=True),
    Endpoint("GET", "/stats", "none", "admin"),
    Endpoint("POST", "/calibrate", "calibrate", "admin", writes=True),
    Endpoint("POST", "/documents", "add", "admin", writes=True),
    Endpoint("PATCH", "/documents", "update", "admin", writes=True),
    Endpoint("DELETE", "/documents", "delete-docs", "admin", writes=True),
    Endpoint("POST", "/get-documents", "get", "read"),
    Endpoint("POST", "/search", "search", "read"),
    Endpoint("POST", "/reverse-image-search", "reverse", "read"),
    Endpoint("POST", "/collections", "collections", "read"),
    Endpoint("POST", "/recommendations/similar", "similar", "read"),
    Endpoint("GET", None, "health", "open"),
]
CREDENTIALS = ["admin", "own-id", "none", "wrong-bearer", "basic", "sentinel-id", "scratch-id", "garbage"]
NEVER_VALID = {"none", "wrong-bearer", "basic", "garbage"}


@dataclass
class Case:
    endpoint: Endpoint
    index: str
    credentials: str
    body: Any  # a JSON value, raw bytes, or None for no body
    content_type: str | None

    def path(self) -> str:
        if self.endpoint.suffix is None:
            return "/api/v1/indexes" if self.endpoint.kind == "list" else "/health"
        return f"/api/v1/indexes/{urllib.parse.quote(self.index, safe='')}{self.endpoint.suffix}"

    def headers(self, world: World) -> dict[str, str]:
        # The id of the index in the path (a made-up one for made-up names).
        own_id = {world.sentinel: world.sentinel_id, world.scratch: world.scratch_id}.get(self.index, "no-such-id")
        headers = {
            "admin": dict(ADMIN),
            "none": {},
            "wrong-bearer": {"Authorization": "Bearer lk_" + "x" * 43},
            "basic": {"Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN_KEY}".encode()).decode()},
            "sentinel-id": {"x-marqo-index-id": world.sentinel_id},
            "scratch-id": {"x-marqo-index-id": world.scratch_id},
            "own-id": {"x-marqo-index-id": own_id},
            "garbage": {"Authorization": "Bearer", "x-marqo-index-id": "\t"},
        }[self.credentials]
        if self.content_type is not None:
            headers["content-type"] = self.content_type
        return headers

    def content(self) -> bytes | None:
        if self.body is None or isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()

    def describe(self) -> str:
        body = self.content() or b""
        return f"{self.endpoint.method} {self.path()!r} creds={self.credentials} body={body[:300]!r}"


def _addresses_an_index(name: str) -> bool:
    """Names that keep the path's shape: "" , "/", "." and ".." would move the request to another route."""
    return name not in ("", ".", "..") and "/" not in name


def cases(world: World) -> st.SearchStrategy[Case]:
    def for_endpoint(endpoint: Endpoint) -> st.SearchStrategy[Case]:
        # The sentinel is only ever read; writes go to the scratch index, and creating or deleting
        # whole indexes only to made-up names (so the scratch index stays for the other requests).
        if endpoint.suffix == "":
            names = ["fz-new", "fz-x_1", world.scratch] if endpoint.method == "GET" else ["fz-new", "fz-x_1"]
        elif endpoint.writes:
            names = [world.scratch]
        else:
            names = [world.scratch, world.sentinel, world.sentinel]
        index = st.one_of(*[st.sampled_from(names)] * 4, weird_text).filter(
            lambda name: _addresses_an_index(name) and (name != world.sentinel or not endpoint.writes)
        )
        # Mostly credentials that open the endpoint, so that most requests get past authentication.
        valid = st.sampled_from(["admin", "own-id", "own-id"] if endpoint.access == "read" else ["admin"])
        body: st.SearchStrategy[Any] = st.one_of(
            bodies(world, endpoint.kind),
            bodies(world, endpoint.kind),
            bodies(world, endpoint.kind),
            json_values,
            st.binary(max_size=80),
            st.none(),
        )
        return st.builds(
            Case,
            st.just(endpoint),
            index,
            st.one_of(valid, valid, st.sampled_from(CREDENTIALS)),
            body,
            st.sampled_from([None, "application/json", "text/plain", "multipart/form-data; boundary=x", "\x7f"]),
        )

    return st.sampled_from(ENDPOINTS).flatmap(for_endpoint)


# -- the oracle ----------------------------------------------------------------------------


class Finding(AssertionError):
    pass


STATS: Counter[tuple[str, int]] = Counter()  # (endpoint, status) -> responses, for the run's summary


def check(case: Case, world: World, status: int, headers: httpx.Headers, raw: bytes, elapsed: float) -> None:
    """The properties every response must have (see the module docstring)."""
    STATS[(f"{case.endpoint.method} {case.endpoint.suffix or case.endpoint.kind}", status)] += 1
    where = case.describe()
    if status >= 500:
        raise Finding(f"{status} for {where}: {raw[:500]!r}")
    if elapsed > REQUEST_BUDGET_S:
        raise Finding(f"took {elapsed:.1f} s: {where}")
    try:
        body = json.loads(raw)
    except ValueError:
        raise Finding(f"{status} body is not JSON for {where}: {raw[:200]!r}") from None
    if status >= 400:
        if not (isinstance(body, dict) and set(body) == {"error", "code"}):
            raise Finding(f"{status} error body {body!r} for {where}")
        if not all(isinstance(body[k], str) and body[k] for k in ("error", "code")):
            raise Finding(f"{status} error body {body!r} for {where}")
    if status == 401 and body != {"error": "Unauthorized", "code": "unauthorized"}:
        raise Finding(f"401 body {body!r} for {where}")
    endpoint = case.endpoint
    if endpoint.access != "open":
        never = case.credentials in NEVER_VALID
        # An index id opens only reads of its own index.
        wrong_id = case.credentials == "sentinel-id" and (endpoint.access == "admin" or case.index != world.sentinel)
        if (never or wrong_id) and status != 401:
            raise Finding(f"{status} (not 401) without valid credentials: {where}: {raw[:200]!r}")
    if status == 200 and isinstance(body, dict):
        for item in body.get("items", []) if isinstance(body.get("items"), list) else []:
            if not isinstance(item, dict) or not isinstance(item.get("status"), int) or item["status"] >= 500:
                raise Finding(f"batch item {item!r} for {where}")
        found = [h.get("_id") for h in body.get("hits", [])] + [
            r.get("_id") for r in body.get("results", []) if isinstance(r, dict) and r.get("_found")
        ]
        if case.index != world.sentinel and any(i in world.sentinel_docs for i in found):
            raise Finding(f"index {case.index!r} returned sentinel products {found}: {where}")


# -- the CI run -------------------------------------------------------------------------------


async def make_world(api: httpx.AsyncClient, images: ImageServer) -> World:
    world = World()
    token = secrets.token_hex(3)
    world.image_urls = [
        images.add(f"/fuzz-{token}/ok.jpg", SMALL_JPEG),
        images.add(f"/fuzz-{token}/ok.png", product_image(402, size=24, fmt="PNG"), "image/png"),
        images.add(f"/fuzz-{token}/text.jpg", b"not an image"),
        images.url(f"/fuzz-{token}/missing.jpg"),
        images.add_redirect(f"/fuzz-{token}/to-private.jpg", "http://10.0.0.1/x.jpg"),
    ]
    for role in ("sentinel", "scratch"):
        name = f"fuzz-{role}-{token}"
        r = await api.post(
            f"/api/v1/indexes/{name}",
            json={"model": TEST_MODEL, "reverseImageSearch": {"enabled": True}},
            headers=ADMIN,
        )
        assert r.status_code == 200, r.text
        setattr(world, role, name)
        setattr(world, f"{role}_id", r.json()["indexId"])
    docs = [product(f"sentinel-{i}", world.image_urls[i % 2], brand="Nike") for i in range(3)]
    r = await api.post(f"/api/v1/indexes/{world.sentinel}/documents", json={"documents": docs}, headers=ADMIN)
    assert r.json()["errors"] is False, r.text
    got = await api.post(
        f"/api/v1/indexes/{world.sentinel}/get-documents",
        json={"documentIds": [d["_id"] for d in docs]},
        headers=ADMIN,
    )
    world.sentinel_docs = {d["_id"]: d for d in got.json()["results"]}
    return world


async def send(client: httpx.AsyncClient, case: Case, world: World) -> None:
    started = time.monotonic()
    response = await client.request(
        case.endpoint.method, case.path(), content=case.content(), headers=case.headers(world)
    )
    check(case, world, response.status_code, response.headers, response.content, time.monotonic() - started)


@pytest.fixture(scope="module")
async def world(api: httpx.AsyncClient, images: ImageServer) -> World:
    return await make_world(api, images)


def test_strategies_reach_every_endpoint_and_credential() -> None:
    world = World("s", "sid", {}, "t", "tid", ["http://127.0.0.1:1/a.jpg"])
    seen: set[tuple[str, str | None, str]] = set()

    # 400: with the storefront endpoints, 200 examples missed a credential now and then
    @settings(max_examples=400, database=None, suppress_health_check=list(HealthCheck))
    @given(cases(world))
    def collect(case: Case) -> None:
        seen.add((case.endpoint.method, case.endpoint.suffix, case.credentials))

    collect()
    assert {(e.method, e.suffix) for e in ENDPOINTS} == {(m, s) for m, s, _ in seen}
    assert {c for _, _, c in seen} == set(CREDENTIALS)


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ in the repo; a failure prints its reproducing example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(data=st.data())
async def test_fuzz_every_endpoint(api: httpx.AsyncClient, world: World, data: st.DataObject) -> None:
    await send(api, data.draw(cases(world), label="case"), world)


async def test_fuzzing_lost_nothing(api: httpx.AsyncClient, images: ImageServer, pool: Any) -> None:
    """On its own world, whatever ran before: fuzz, then the sentinel and the catalog are intact."""
    world = await make_world(api, images)
    drawn: list[Case] = []

    @settings(max_examples=max(20, FUZZ_EXAMPLES // 4), database=None, suppress_health_check=list(HealthCheck))
    @given(cases(world))
    def collect(case: Case) -> None:
        drawn.append(case)

    collect()
    assert any(case.endpoint.writes for case in drawn)  # the scratch index took writes
    for case in drawn:
        await send(api, case, world)
    r = await api.post(
        f"/api/v1/indexes/{world.sentinel}/get-documents",
        json={"documentIds": list(world.sentinel_docs)},
        headers=ADMIN,
    )
    assert {d["_id"]: d for d in r.json()["results"]} == world.sentinel_docs
    await assert_catalog_consistent(pool)
    print("fuzz responses by endpoint and status:", sorted(STATS.items()))


# -- schemathesis: requests generated from /openapi.json ---------------------------------------

SCHEMATHESIS_EXAMPLES = int(os.environ.get("LOOKALIKE_SCHEMATHESIS_EXAMPLES", "5"))


def run_schemathesis(base_url: str, index: str, examples: int) -> dict[tuple[str, str], str]:
    """Every operation of /openapi.json, schema-valid and schema-violating, with the admin key.

    Half the cases address `index` (an existing index) so that requests get past the 404.
    Checks: no 5xx, and status code, content type, headers and body as /openapi.json
    describes them. (Schemathesis' negative_data_rejection is left out: batch endpoints
    answer 200 with per-item 400s by contract.) Returns {(operation, mode): failure}.
    """
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode, checks

    from app.http.openapi import openapi_document

    selected = [
        checks.not_a_server_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_schema_conformance,
        checks.response_headers_conformance,
    ]
    schema = schemathesis.openapi.from_dict(openapi_document())
    failures: dict[tuple[str, str], str] = {}

    def fuzz(operation: Any, mode: Any) -> None:
        @settings(max_examples=examples, database=None, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode), existing=st.booleans())
        def run(case: Any, existing: bool) -> None:
            if existing and case.path_parameters and "index_name" in case.path_parameters:
                if case.method != "DELETE" or case.path.endswith("/documents"):
                    case.path_parameters["index_name"] = index
            try:
                case.call_and_validate(base_url=base_url, headers=dict(ADMIN), timeout=60, checks=selected)
            except AssertionError as exc:  # schemathesis' FailureGroup
                failures.setdefault((operation.label, mode.value), str(exc)[:2000])

        try:
            run()
        except Unsatisfiable:
            pass  # e.g. no schema-violating request exists for GET /health

    for result in schema.get_all_operations():
        for mode in GenerationMode:
            fuzz(result.ok(), mode)
    return failures


def test_schemathesis_against_openapi(live_server: Any) -> None:
    pytest.importorskip("schemathesis")
    name = f"st-{secrets.token_hex(3)}"
    r = httpx.post(
        f"{live_server.url}/api/v1/indexes/{name}",
        json={"model": TEST_MODEL, "reverseImageSearch": {"enabled": True}},
        headers=ADMIN,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    failures = run_schemathesis(live_server.url, name, SCHEMATHESIS_EXAMPLES)
    assert not failures, "\n\n".join(f"{op} ({mode}):\n{text}" for (op, mode), text in failures.items())
