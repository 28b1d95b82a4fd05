"""The contract models on their own (no database): exact SPEC messages and codes, unknown keys,
integral numbers, per-item product checks, and that the published schema is the validated one."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from app.contract.common import ContractRequest
from app.contract.documents import DocumentError, Product, documents_request, get_documents_request
from app.contract.indexes import CreateIndexRequest, SettingsPatch
from app.contract.search import Q_ERROR, ReverseImageSearchRequest, SearchRequest
from app.contract.storefront import CollectionsRequest, parse_body
from app.errors import ApiError

IMAGE = "https://shop.example/p.jpg"
ATTRIBUTES_ERROR = "attributesToRetrieve must be an array of strings"


def refused(model: type[ContractRequest], body: Any) -> tuple[str, str]:
    with pytest.raises(ApiError) as caught:
        model.parse(body)
    assert caught.value.status == 400
    return caught.value.code, caught.value.message


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (None, "invalid_query", Q_ERROR),
        ({}, "invalid_query", Q_ERROR),
        ({"q": 5}, "invalid_query", Q_ERROR),
        ({"q": "red shoes"}, "invalid_query", Q_ERROR),
        ({"q": "http://127.0.0.1/a.gif"}, "invalid_query", Q_ERROR),
        ({"q": "data:image/png;base64,@@"}, "invalid_query", Q_ERROR),
        ({"q": IMAGE, "filter": 5}, "invalid_filter", "filter must be a string"),
        ({"q": IMAGE, "attributesToRetrieve": "x"}, "invalid_attributes", ATTRIBUTES_ERROR),
        ({"q": IMAGE, "attributesToRetrieve": None}, "invalid_attributes", ATTRIBUTES_ERROR),
        ({"q": IMAGE, "limit": True}, "invalid_limit", "limit must be an integer"),
        ({"q": IMAGE, "limit": 1.5}, "invalid_limit", "limit must be an integer"),
        ({"q": IMAGE, "limit": "5"}, "invalid_limit", "limit must be an integer"),
        ({"q": IMAGE, "tensorFields": []}, "unknown_parameter", None),
    ],
)
def test_reverse_search_refusals_are_exact(body: Any, code: str, message: str | None) -> None:
    got_code, got_message = refused(ReverseImageSearchRequest, body)
    assert got_code == code
    if message is not None:
        assert got_message == message
    else:
        assert "'tensorFields'" in got_message


@pytest.mark.parametrize(
    "paging",
    [{"limit": 0}, {"limit": 1001}, {"limit": True}, {"limit": 2.5}, {"offset": -1}, {"offset": 0.5},
     {"offset": "3"}, {"offset": 20_000}, {"limit": 1000, "offset": 9001}],
)
def test_collections_paging_errors_are_the_search_ones(paging: dict[str, Any]) -> None:
    """The same misuse of limit/offset gets the same code and message on /search and /collections."""
    with pytest.raises(ApiError) as collections:
        parse_body(CollectionsRequest, {"collectionName": "shoes", **paging})
    assert collections.value.status == 400
    assert (collections.value.code, collections.value.message) == refused(SearchRequest, {"q": "*", **paging})


@pytest.mark.parametrize(("given", "effective"), [(0, 1), (-3, 1), (5, 5), (5.0, 5), (50, 10), (10**20, 10)])
def test_reverse_search_limit_is_clamped(given: Any, effective: int) -> None:
    assert ReverseImageSearchRequest.parse({"q": IMAGE, "limit": given}).limit == effective


def test_search_parameters() -> None:
    assert SearchRequest.parse(None).q is None  # no body: browse
    assert SearchRequest.parse({"q": " * "}).q is None
    assert SearchRequest.parse({"q": " shoes "}).q == "shoes"
    parsed = SearchRequest.parse({"q": IMAGE, "limit": 20.0, "offset": 3.0})
    assert (parsed.is_image, parsed.limit, parsed.offset) == (True, 20, 3)
    ignored = SearchRequest.parse({"q": "x", "userId": "u", "sessionId": "s", "profileId": "p"})
    assert ignored.q == "x"
    cases = [
        ({"limit": 0}, "invalid_limit", "limit must be between 1 and 1000"),
        ({"limit": 1001}, "invalid_limit", "limit must be between 1 and 1000"),
        ({"limit": False}, "invalid_limit", "limit must be an integer"),
        ({"offset": -1}, "invalid_offset", "offset must not be negative"),
        ({"offset": 0.5}, "invalid_offset", "offset must be an integer"),
        ({"limit": 1000, "offset": 9001}, "invalid_offset", "limit + offset must not exceed 10000"),
        ({"q": "a\x00b"}, "invalid_query", "q must not contain NUL characters"),
        ({"q": ["x"]}, "invalid_query", "q must be a string: text, an image URL or data URL, or '*' to browse"),
        ([], "invalid_request", "request body must be a JSON object"),
    ]
    for body, code, message in cases:
        assert refused(SearchRequest, body) == (code, message), body
    code, message = refused(SearchRequest, {"q": "w " * 3000})
    assert code == "invalid_query" and "at most 4096 characters" in message
    code, message = refused(SearchRequest, {"q": "*", "searchableAttributes": ["a"]})
    assert code == "unknown_parameter" and message.startswith("unknown parameter 'searchableAttributes'")


def test_products_fail_per_item_with_their_own_message() -> None:
    good = {"_id": "a", "productTitle": "T", "price": 5, "variantImageUrl": IMAGE, "n": 7, "f": 1.5, "b": True}
    doc = Product.check_item({**good, "collections": ["x"]})
    # values keep their JSON types (7 stays an integer), the alias is stored as productCollections
    assert doc == {**good, "productCollections": ["x"]} and type(doc["n"]) is int and type(doc["price"]) is int
    cases = [
        ("nope", "each document must be a JSON object"),
        ({**good, "_id": None}, "_id is required"),
        ({**good, "_id": 5}, "_id must be a string"),
        ({k: v for k, v in good.items() if k != "price"}, "price is required"),
        ({**good, "price": True}, "price must be a number"),
        ({**good, "productTitle": " "}, "productTitle must not be empty"),
        ({**good, "variantImageUrl": "ftp://x/a.jpg"},
         "variantImageUrl must be an http(s) URL or a data:image/...;base64, URL"),
        ({**good, "specs": {"w": 1}}, "field 'specs' is a nested object; nested objects are not supported — "
         "flatten it into top-level fields"),
        ({**good, "color": None}, "field 'color' is null; omit the field instead"),
        ({**good, "collections": ["a"], "productCollections": ["b"]},
         "give either productCollections or its alias collections, not both"),
    ]
    for raw, message in cases:
        with pytest.raises(DocumentError) as caught:
            Product.check_item(raw)
        assert str(caught.value) == message, raw


def test_batches_and_limits_follow_the_settings() -> None:
    seven = documents_request("add", 7)
    assert documents_request("add", 7) is seven  # built once per limit
    assert len(seven.parse({"documents": [{}] * 7}).documents) == 7  # items are checked later, one by one
    assert refused(seven, {"documents": [{}] * 8}) == (
        "too_many_documents", "at most 7 documents per call (got 8); split the batch"
    )
    assert refused(seven, {"documents": []}) == ("invalid_documents", "documents must not be empty")
    assert refused(seven, {}) == ("invalid_documents", 'body must be {"documents": [ ... ]}')
    assert seven.model_json_schema()["properties"]["documents"]["maxItems"] == 7
    three = get_documents_request(3)
    assert refused(three, {"documentIds": ["a"] * 4}) == ("invalid_request", "documentIds may hold at most 3 ids")
    assert refused(three, {"documentIds": [1]}) == ("invalid_request", "documentIds must be an array of strings")


def test_index_settings() -> None:
    assert CreateIndexRequest.parse(None).vectorType == "halfvec"
    code, message = refused(CreateIndexRequest, {"colour": "blue"})
    assert code == "unknown_parameter" and message.startswith("unknown index setting 'colour'")
    assert refused(CreateIndexRequest, {"reverseImageSearch": {"candidatePool": 5}}) == (
        "invalid_settings", "reverseImageSearch.candidatePool must be an integer from 10 to 1000"
    )
    assert refused(CreateIndexRequest, {"reverseImageSearch": {"queryCrops": 9}}) == (
        "invalid_settings", 'reverseImageSearch.queryCrops must be an integer from 1 to 8 or "auto"'
    )
    assert refused(SettingsPatch, {"reverseImageSearch": []}) == (
        "invalid_settings", 'reverseImageSearch must be an object, e.g. {"enabled": true}'
    )
    patch = SettingsPatch.parse({"reverseImageSearch": {"queryCrops": "auto"}})
    assert patch.reverseImageSearch.changes() == {"queryCrops": "auto"}  # only what was given changes


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (SearchRequest, {"q": "*", "limit": 10, "offset": 0, "filter": None, "attributesToRetrieve": ["a"]}),
        (ReverseImageSearchRequest, {"q": IMAGE, "limit": 5, "regions": True}),
        (CreateIndexRequest, {"model": {"name": "resnet18", "pretrained": False}, "vectorType": "vector"}),
        (SettingsPatch, {"reverseImageSearch": {"enabled": True, "candidatePool": 100}}),
    ],
)
def test_what_the_model_accepts_its_schema_accepts(model: type[ContractRequest], body: dict[str, Any]) -> None:
    model.parse(body)
    jsonschema.validate(body, model.model_json_schema())
    with pytest.raises(jsonschema.ValidationError):  # and an unknown key is refused by both
        jsonschema.validate({**body, "zz": 1}, model.model_json_schema())
