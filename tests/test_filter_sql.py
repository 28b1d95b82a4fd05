"""Filter AST -> SQL against a real PostgreSQL: the meaning table, a differential test
against the reference evaluator, hostile input, and the query plans at catalog scale."""

from __future__ import annotations

import contextlib
import math
import random
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.filters import (
    And,
    FilterError,
    FilterNode,
    In,
    Not,
    Or,
    Range,
    Term,
    escape,
    format_filter,
    index_terms,
    parse_filter,
)
from app.storage.filter_sql import compile_filter
from app.storage.params import SqlParams
from benchmarks.bulk import copy_products, product_row
from tests.filter_reference import matches

# ------------------------------------------------------------------- helpers

INSERT_INDEX = """
INSERT INTO indexes (name, index_id, settings, model, dimensions, vector_type)
VALUES ($1, $2, '{}', '{}', 4, 'halfvec') RETURNING pk
"""

# doc goes in as text and is cast in SQL, so the test does not depend on which jsonb
# codec (if any) the pool registers.
INSERT_PRODUCT = """
INSERT INTO products (index_pk, product_id, product_title, variant_title, description, price,
                      parent_product_id, product_collections, variant_image_url, doc, filter_terms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::jsonb, $11)
"""


async def create_index(conn: asyncpg.Connection, prefix: str = "flt") -> int:
    name = f"{prefix}-{secrets.token_hex(6)}"
    return await conn.fetchval(INSERT_INDEX, name, secrets.token_hex(16))


async def insert_products(conn: asyncpg.Connection, index_pk: int, docs: Sequence[dict[str, Any]]) -> None:
    await conn.executemany(INSERT_PRODUCT, [product_row(index_pk, doc) for doc in docs])


async def matching_ids(conn: asyncpg.Connection, index_pk: int, node: FilterNode | None) -> set[str]:
    params = SqlParams([index_pk])
    where = compile_filter(node, params, "p")
    rows = await conn.fetch(
        f"SELECT p.product_id FROM products p WHERE p.index_pk = $1 AND {where}",  # noqa: S608 - placeholders only
        *params.values,
    )
    return {r["product_id"] for r in rows}


def reference_ids(docs: Sequence[dict[str, Any]], node: FilterNode | None) -> set[str]:
    return {doc["_id"] for doc in docs if matches(node, doc)}


@contextlib.asynccontextmanager
async def rolled_back(connection: asyncpg.Connection) -> AsyncIterator[None]:
    """A transaction that is always rolled back: test rows never outlive the test."""
    transaction = connection.transaction()
    await transaction.start()
    try:
        yield
    finally:
        await transaction.rollback()


@pytest.fixture()
async def conn(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as connection:
        yield connection


# ------------------------------------------------------------- meaning table

CATALOG: list[dict[str, Any]] = [
    {
        "_id": "p1",
        "productTitle": "Air Runner",
        "price": 120,
        "brand": "Nike",
        "color": "Light Blue",
        "productCollections": ["Shoes", "outdoor"],
        "inStock": True,
    },
    {
        "_id": "P1",  # ids are case-sensitive: a different product from p1
        "productTitle": "Court Classic",
        "price": 120.0,
        "brand": "nike",
        "color": "White",
        "weird": "120",
    },
    {
        "_id": "p2",
        "productTitle": "Headphones",
        "price": 80.5,
        "brand": "Sony",
        "productCollections": ["electronics"],
        "inStock": False,
    },
    {
        "_id": "p3",
        "productTitle": "Loafer",
        "price": 90,
        "brand": "Gucci",
        "color": "white",
        "productCollections": ["shoes", "OUTDOOR"],
    },
    {
        "_id": "p4",
        "productTitle": "Anvil",
        "price": 250,
        "brand": "Acme Co",
        "inStock": "true",  # a string, compared as a string
        "rating": 4.5,
    },
    {
        "_id": "p5",
        "productTitle": "Television",
        "price": 300,
        "brand": "Sony",
        "rating": "5",
        "productCollections": [],
    },
    {
        "_id": "p6",
        "productTitle": "Gift Card",
        "price": 0,
        "nested": {"brand": "Nike"},
        "brand_missing": None,
    },
    {"_id": "p7", "productTitle": "Blank", "price": 175, "brand": ""},
]
ALL = {doc["_id"] for doc in CATALOG}

MEANING: list[tuple[str, set[str]]] = [
    # f:v on a string: whole value, ignoring case.
    ("brand:nike", {"p1", "P1"}),
    ("brand:NIKE", {"p1", "P1"}),
    ("productTitle:Air", set()),
    ("productTitle:(Air Runner)", {"p1"}),
    ("productTitle:(air runner)", {"p1"}),
    ("color:(Light Blue) OR color:White", {"p1", "P1", "p3"}),
    (r"color:Light\ Blue", {"p1"}),
    # f:v on an array of strings.
    ("productCollections:shoes", {"p1", "p3"}),
    ("collections:shoes", {"p1", "p3"}),  # the alias
    ("productCollections:shoes AND productCollections:outdoor", {"p1", "p3"}),
    ("NOT productCollections:shoes", ALL - {"p1", "p3"}),
    # f:v on a number.
    ("price:120", {"p1", "P1"}),
    ("price:120.0", {"p1", "P1"}),
    ("price:1.2e2", {"p1", "P1"}),
    ("price:+120", {"p1", "P1"}),
    ("price:abc", set()),
    ("price:0", {"p6"}),
    ("price:-0", {"p6"}),
    ("rating:4.5", {"p4"}),
    ("rating:5", {"p5"}),  # the string "5"
    ("weird:120", {"P1"}),  # a string field: string equality only
    ("weird:120.0", set()),
    # f:v on a boolean.
    ("inStock:TRUE", {"p1", "p4"}),  # p4 holds the string "true"
    ("inStock:true", {"p1", "p4"}),
    ("inStock:False", {"p2"}),
    ("inStock:1", set()),
    # _id: exact.
    ("_id:p1", {"p1"}),
    ("_id:P1", {"P1"}),
    ("_id IN (p1, p3)", {"p1", "p3"}),
    ("_id:p", set()),
    ("NOT _id:p1", ALL - {"p1"}),
    ("_id:[1 TO 2]", set()),
    # Ranges: numbers only, inclusive.
    ("price:[* TO 100]", {"p2", "p3", "p6"}),
    ("price:[90 TO 120]", {"p1", "P1", "p3"}),
    ("price:[1e2 TO 1.5e2]", {"p1", "P1"}),
    ("price:[200 TO *]", {"p4", "p5"}),
    ("price:[300 TO 250]", set()),
    ("rating:[4 TO 5]", {"p4"}),  # p5's "5" is a string
    ("brand:[1 TO 2]", set()),
    ("weird:[100 TO 200]", set()),
    ("NOT rating:[4 TO 5]", ALL - {"p4"}),
    # IN.
    ("brand IN (Sony, (Acme Co))", {"p2", "p4", "p5"}),
    ("NOT brand IN (Nike, Sony)", {"p3", "p4", "p6", "p7"}),
    ("price IN (80.5, 300, x)", {"p2", "p5"}),
    # An empty IN item is the empty string (Marqo parity).
    ("brand IN (Sony,, Gucci)", {"p2", "p3", "p5", "p7"}),
    ("brand IN (Gucci,)", {"p3", "p7"}),
    ("NOT brand IN (,)", ALL - {"p7"}),
    # NOT keeps products lacking the field; unknown fields match nothing.
    ("NOT brand:Sony", ALL - {"p2", "p5"}),
    ("unknown:x", set()),
    ("NOT unknown:x", ALL),
    ("unknown:[1 TO 2]", set()),
    ("NOT unknown:[1 TO 2]", ALL),
    ("NOT unknown IN (a, b)", ALL),
    ("nested:x", set()),
    ("NOT nested:x", ALL),
    ("brand_missing:null", set()),
    ("NOT brand_missing:null", ALL),
    # The examples table.
    ("brand:Nike AND price:[* TO 200]", {"p1", "P1"}),
    ("brand:Sony OR brand:Gucci AND price:[* TO 100]", {"p2", "p5", "p3"}),
    ("(brand:Sony OR brand:Gucci) AND price:[200 TO *]", {"p5"}),
    ("NOT (brand:Sony OR brand:Nike) AND NOT productCollections:shoes", {"p4", "p6", "p7"}),
]


@pytest.mark.parametrize(("text", "expected"), MEANING, ids=[t for t, _ in MEANING])
async def test_meaning_table(conn: asyncpg.Connection, text: str, expected: set[str]) -> None:
    async with rolled_back(conn):
        index_pk = await create_index(conn)
        await insert_products(conn, index_pk, CATALOG)
        node = parse_filter(text)
        assert reference_ids(CATALOG, node) == expected, "reference evaluator"
        assert await matching_ids(conn, index_pk, node) == expected, "SQL"


# Edge values where an encoding shortcut would diverge from the meaning table.
EDGE_CATALOG: list[dict[str, Any]] = [
    {"_id": "zero", "productTitle": "t", "price": 0, "n": 0, "s": "straße"},
    {"_id": "negzero", "productTitle": "t", "price": -0.0, "n": -0.0, "s": "STRASSE"},
    {"_id": "huge", "productTitle": "t", "price": 1.7e308, "n": 10**400, "s": "ſ"},
    {"_id": "neghuge", "productTitle": "t", "price": -1.7e308, "n": -(10**309), "s": "S"},
    {"_id": "limit", "productTitle": "t", "price": 1e308, "n": 1e308, "s": "İ"},
    {"_id": "below", "productTitle": "t", "price": 9.999999999999998e307, "n": 9.999999999999998e307},
    {"_id": "big", "productTitle": "t", "price": 2**53, "n": 2**53 + 1, "s": "ǆ"},
    {"_id": "tiny", "productTitle": "t", "price": 5e-324, "n": 5e-324, "s": "Ǆ"},
    {"_id": "tenth", "productTitle": "t", "price": 0.1, "n": 0.1, "s": "0.1"},
    {"_id": "sep", "productTitle": "t", "price": 1, "x\x1fs:y": "z", "x\\": "v"},
    {"_id": "sep2", "productTitle": "t", "price": 1, "x": "y\x1fs:z", "x\\\\": "v"},
]
EDGE_FILTERS = [
    ("n:0", {"zero", "negzero"}),
    ("n:-0", {"zero", "negzero"}),
    ("n:-0.0e5", {"zero", "negzero"}),
    ("price:-0", {"zero", "negzero"}),
    ("price:[-0 TO 0]", {"zero", "negzero"}),
    ("n:[0 TO 0]", {"zero", "negzero"}),
    ("n:1e-99999", {"zero", "negzero"}),  # underflows to 0, like any double
    ("s:strasse", {"zero", "negzero"}),  # case folding: ß ~ ss
    ("s:s", {"huge", "neghuge"}),  # ſ folds to s
    ("s:ǅ", {"big", "tiny"}),  # title case folds like the others
    ("n:[1e307 TO *]", {"below"}),  # 1e308 and beyond are not filterable numbers
    ("price:[1e307 TO *]", {"below"}),
    ("price:[* TO -1e307]", set()),
    ("n:[* TO 0]", {"zero", "negzero"}),
    ("n:9007199254740992", {"big"}),  # 2**53 + 1 compares as its nearest double
    ("n:9007199254740993", {"big"}),
    ("n:[9007199254740992 TO 9007199254740992]", {"big"}),
    ("n:5e-324", {"tiny"}),
    ("n:[4e-324 TO 6e-324]", {"tiny"}),
    ("n:0.1", {"tenth"}),
    ("n:0.10000000000000001", {"tenth"}),  # the same double
    ("n:[0.1 TO 0.1]", {"tenth"}),
    ("s:0.1", {"tenth"}),
    ("price:[0.1 TO 0.1]", {"tenth"}),
    ("n:1e308", set()),
    ("n:10" + "0" * 400, set()),
]


async def test_edge_values(conn: asyncpg.Connection) -> None:
    cases: list[tuple[FilterNode | None, set[str]]] = [(parse_filter(t), e) for t, e in EDGE_FILTERS]
    # The term separator inside names and values cannot forge another field's terms.
    cases += [
        (Term("x", "y\x1fs:z"), {"sep2"}),
        (Term("x\x1fs:y", "z"), {"sep"}),
        (Term("x\\", "v"), {"sep"}),
        (Term("x\\\\", "v"), {"sep2"}),
        (Not(Term("x", "y\x1fs:z")), {d["_id"] for d in EDGE_CATALOG} - {"sep2"}),
    ]
    async with rolled_back(conn):
        index_pk = await create_index(conn)
        await insert_products(conn, index_pk, EDGE_CATALOG)
        for node, expected in cases:
            assert reference_ids(EDGE_CATALOG, node) == expected, ("reference", node)
            assert await matching_ids(conn, index_pk, node) == expected, ("SQL", node)


async def test_no_filter_is_true(conn: asyncpg.Connection) -> None:
    params = SqlParams()
    assert compile_filter(None, params) == "TRUE"
    assert params.values == []


def test_compile_rejects_a_bad_alias() -> None:
    with pytest.raises(ValueError):
        compile_filter(Term("a", "b"), SqlParams(), alias="p; DROP TABLE products")


def test_values_and_fields_are_parameters_only() -> None:
    node = parse_filter(r"brand:x AND my\ field:[1 TO 2] AND _id IN (a, b) OR other:y")
    params = SqlParams(["first"])
    sql = compile_filter(node, params, "q")
    for text in ("brand", "my field", "other"):
        assert text not in sql
    assert sql.replace("'number'", "").count("'") == 0  # the only literal is a fixed type name
    assert "q.filter_terms" in sql and "q.product_id" in sql and "q.doc" in sql
    assert params.values[0] == "first"  # appends after the caller's parameters


# ------------------------------------------------------- differential property

FIELDS = [
    "brand",
    "color",
    "size",
    "rating",
    "inStock",
    "productCollections",
    "variantTitle",
    "weird field",
    "É",
    "a:b",
    "x\x1fs:y",  # the term separator inside a field name
    "x",
]
FILTER_FIELDS = [*FIELDS, "_id", "price", "productTitle", "collections", "unknown", "x\x1fs:y\x1fs:z"]

STRING_POOL = [
    "Nike",
    "nike",
    "NIKE",
    "Light Blue",
    "120",
    "120.0",
    "1e2",
    "-0",
    "true",
    "TRUE",
    "False",
    " ",
    "straße",
    "STRASSE",
    "ſ",
    "İ",
    "ǅ",
    "'; DROP TABLE products; --",
    "a\\b",
    "a:b",
    "s:y",
    "y\x1fs:z",
    "z",
    "(x)",
    '"q"',
    "1_000",
    "nan",
    "inf",
    "1e999",
    "١٢",
]
NUMBER_POOL: list[int | float] = [
    0,
    -0.0,
    0.1,
    1,
    120,
    120.0,
    100,
    -5,
    4.5,
    2**53,
    2**53 + 1,
    10**400,
    -(10**309),
    1e308,
    9.999999999999999e307,
    1.7e308,
    5e-324,
    -1e-7,
]

_plain_chars = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
_strings = st.sampled_from(STRING_POOL) | st.text(_plain_chars, max_size=6)
_numbers = (
    st.sampled_from(NUMBER_POOL) | st.integers(-1000, 1000) | st.floats(allow_nan=False, allow_infinity=False, width=64)
)
_bounds = (
    st.sampled_from([float(n) for n in NUMBER_POOL if abs(n) < 10**308])
    | st.integers(-1000, 1000).map(float)
    | st.floats(allow_nan=False, allow_infinity=False)
)
_field_values = st.one_of(
    _strings,
    _numbers,
    st.booleans(),
    st.lists(_strings, max_size=3),
    st.just(None),
    st.just({"nested": "Nike"}),
    st.just(["Nike", 1, True, None]),  # not allowed by ingest, but never a crash or mismatch
)
_filter_strings = st.sampled_from([s for s in STRING_POOL if s]) | st.text(_plain_chars, min_size=1, max_size=6)
_prices = st.sampled_from([0, -0.0, 120, 120.0, 0.1, 80.5, 1.7e308, -1e300, 2**53 + 1]) | st.floats(
    -1e6, 1e6, allow_nan=False
)


@st.composite
def catalogs(draw: st.DrawFn) -> list[dict[str, Any]]:
    ids = draw(
        st.lists(
            st.sampled_from(["p1", "P1", "p2", "a b", "'; --", "é", "x\\y"]) | st.text(_plain_chars, min_size=1),
            min_size=1,
            max_size=14,
            unique=True,
        )
    )
    docs = []
    for product_id in ids:
        doc: dict[str, Any] = {
            "_id": product_id,
            "productTitle": draw(_strings),
            "price": draw(_prices),
        }
        for field in draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True)):
            value = draw(_field_values)
            if field == "productCollections":
                value = draw(st.lists(_strings, max_size=3))
            elif field == "variantTitle":
                value = draw(_strings)
            doc[field] = value
        docs.append(doc)
    return docs


def _spellings(value: Any) -> list[str]:
    """Ways a client might write a filter value that should (or should not) match `value`."""
    if isinstance(value, bool):
        word = "true" if value else "false"
        return [word, word.upper(), word.capitalize()]
    if isinstance(value, int | float):
        out = [str(value), str(-value)]
        if isinstance(value, float) and math.isfinite(value):
            out += [repr(value), f"{value:e}", f"{value:.3f}"]
        elif isinstance(value, int) and abs(value) < 10**20:
            out += [f"{value}.0", f"{value}e0"]
        return out
    if isinstance(value, str):
        return [value, value.upper(), value.lower(), value.swapcase()]
    if isinstance(value, list):
        return [s for item in value for s in _spellings(item)]
    return ["null"]


def filter_strategy(docs: list[dict[str, Any]]) -> st.SearchStrategy[FilterNode]:
    """Random filters biased towards this catalog's own fields, values and numbers.

    Built once per catalog (building strategies is what costs, not drawing from them).
    """
    values = sorted({s for doc in docs for v in doc.values() for s in _spellings(v) if s})
    numbers = sorted({float(v) for doc in docs for v in doc.values() if isinstance(v, int | float) and abs(v) < 1e300})
    values_st = (st.sampled_from(values) if values else _filter_strings) | _filter_strings
    bound_st = st.none() | st.sampled_from([*numbers, 0.0, 100.0, -5.0, 1e308, 1.7e308]) | _bounds
    field_st = st.sampled_from(FILTER_FIELDS) | st.sampled_from(
        sorted({f for doc in docs for f in doc if f != "productTitle"})
    )
    ranges = st.tuples(field_st, bound_st, bound_st).map(
        lambda t: Range(t[0], t[1], t[2]) if t[1] is not None or t[2] is not None else Range(t[0], 0.0, None)
    )
    # Targeted terms: a field with a spelling of a value some product holds in that field,
    # so that matches (not only misses) are common.
    pairs = sorted(
        {(field, spelling) for doc in docs for field, v in doc.items() for spelling in _spellings(v) if spelling}
    )
    targeted = st.sampled_from(pairs)
    leaves = st.one_of(
        targeted.map(lambda pair: Term(*pair)),
        st.lists(targeted, min_size=1, max_size=3).map(lambda ps: In(ps[0][0], tuple(v for _, v in ps))),
        st.builds(Term, field_st, values_st),
        st.builds(In, field_st, st.lists(values_st, min_size=1, max_size=4).map(tuple)),
        ranges,
    )

    def tree(children: st.SearchStrategy[FilterNode]) -> st.SearchStrategy[FilterNode]:
        return st.one_of(
            children.map(Not),
            st.lists(children, min_size=2, max_size=3).map(lambda cs: And(tuple(cs))),
            st.lists(children, min_size=2, max_size=3).map(lambda cs: Or(tuple(cs))),
        )

    return st.recursive(leaves, tree, max_leaves=6)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[FilterNode]]:
    docs = draw(catalogs())
    filters = draw(st.lists(filter_strategy(docs), min_size=20, max_size=30))
    return docs, filters


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(scenarios())
async def test_sql_matches_reference(
    pool: asyncpg.Pool, scenario: tuple[list[dict[str, Any]], list[FilterNode]]
) -> None:
    """One catalog, 20-30 random filters per example: SQL == reference for every product.

    Every filter is also evaluated as a SELECT column so that NULL (three-valued logic)
    would be seen directly, not only through a missing row.
    """
    docs, filters = scenario
    async with pool.acquire() as connection, rolled_back(connection):
        index_pk = await create_index(connection)
        await insert_products(connection, index_pk, docs)
        params = SqlParams([index_pk])
        columns = []
        for node in filters:
            # The text form must round-trip, so the tested AST is what a client can send.
            text = format_filter(node)
            parsed = parse_filter(text, max_length=10**6)
            assert parsed is not None
            columns.append(compile_filter(parsed, params, "p"))
        select = ", ".join(f"{sql} AS f{i}" for i, sql in enumerate(columns))
        rows = await connection.fetch(
            f"SELECT p.product_id, {select} FROM products p WHERE p.index_pk = $1",  # noqa: S608
            *params.values,
        )
        by_id = {doc["_id"]: doc for doc in docs}
        for i, node in enumerate(filters):
            parsed = parse_filter(format_filter(node), max_length=10**6)
            for row in rows:
                got = row[f"f{i}"]
                assert got is not None, f"NULL for {format_filter(node)!r} on {row['product_id']!r}"
                want = matches(parsed, by_id[row["product_id"]])
                assert got is want, (format_filter(node), by_id[row["product_id"]])
        # And the WHERE form the service runs, for a few of them.
        for node in filters[:3]:
            parsed = parse_filter(format_filter(node), max_length=10**6)
            assert await matching_ids(connection, index_pk, parsed) == reference_ids(docs, parsed)


# ------------------------------------------------------------- hostile input

HOSTILE = [
    "'; DROP TABLE products; --",
    '"; DROP TABLE products; --',
    "Robert'); DELETE FROM products; --",
    "$1",
    "$$ OR TRUE $$",
    "a'b",
    'a"b',
    "semi;colon",
    "back\\slash",
    "\\'",
    "%_*",
    "E'\\x41'",
    "\u202eevil",
    "😀 emoji",
    "名前",
    "ﬁ ligature",
    "\x1f",
    "\x01\x02",
    "line\nbreak",
]


async def test_hostile_values_and_fields_are_only_data(conn: asyncpg.Connection) -> None:
    index_pk = await create_index(conn, "hostile")
    docs: list[dict[str, Any]] = [{"_id": "plain", "productTitle": "t", "price": 1, "brand": "Nike"}]
    for i, text in enumerate(HOSTILE):
        docs.append({"_id": text, "productTitle": text, "price": i, "brand": text, text: "v"})
    await insert_products(conn, index_pk, docs)
    before = await conn.fetchval("SELECT count(*) FROM products")
    try:
        for text in HOSTILE:
            for filter_text in (
                f"brand:{escape(text)}",
                f"_id:{escape(text)}",
                f"{escape(text)}:v",
                f"{escape(text)}:[0 TO 100]",
                f"brand IN (x, {escape(text)})",
                f"NOT brand:{escape(text)}",
            ):
                node = parse_filter(filter_text)
                params = SqlParams([index_pk])
                sql = compile_filter(node, params)
                assert "DROP" not in sql and "DELETE" not in sql and ";" not in sql
                assert await matching_ids(conn, index_pk, node) == reference_ids(docs, node), filter_text
            assert await matching_ids(conn, index_pk, parse_filter(f"_id:{escape(text)}")) == {text}
        # Literal matching only: a hostile value finds itself, nothing more.
        injected = parse_filter(f"brand:{escape(HOSTILE[0])}")
        assert await matching_ids(conn, index_pk, injected) == {HOSTILE[0]}
        assert await conn.fetchval("SELECT count(*) FROM products") == before
        assert await conn.fetchval("SELECT to_regclass('products') IS NOT NULL")
    finally:
        await conn.execute("DELETE FROM indexes WHERE pk = $1", index_pk)


# PostgreSQL text and jsonb cannot hold NUL, and UTF-8 cannot hold a lone surrogate: no
# stored product can contain them, so a filter naming them simply matches nothing.
UNSTORABLE = ["a\x00b", "\x00", "\ud800", "x\udfffy"]


@pytest.mark.parametrize("bad", UNSTORABLE, ids=repr)
async def test_unstorable_text_matches_nothing(conn: asyncpg.Connection, bad: str) -> None:
    async with rolled_back(conn):
        index_pk = await create_index(conn)
        await insert_products(conn, index_pk, CATALOG)
        cases: list[tuple[FilterNode, set[str]]] = [
            (Term("brand", bad), set()),
            (Term(bad, "Nike"), set()),
            (Term("_id", bad), set()),
            (In("_id", (bad, "p1")), {"p1"}),
            (In("brand", (bad, "Gucci")), {"p3"}),
            (In(bad, (bad,)), set()),
            (Range(bad, 0.0, None), set()),
            (Not(Term("brand", bad)), ALL),
            (Not(Term(bad, bad)), ALL),
        ]
        for node, expected in cases:
            assert await matching_ids(conn, index_pk, node) == expected, node
        # Also through the parser, as a client would send it.
        assert await matching_ids(conn, index_pk, parse_filter(f"brand:{escape(bad)} OR _id:p2")) == {"p2"}


FUZZ_CATALOG = CATALOG + [
    {"_id": f"h{i}", "productTitle": text, "price": i, "brand": text, text: text} for i, text in enumerate(HOSTILE)
]

# Any text at all, including NUL and lone surrogates (which st.text() leaves out).
_any_text = st.text(st.characters() | st.sampled_from(["\x00", "\ud800", "\udfff", "'", ";", "\\"]), max_size=20)
_soup = st.lists(
    st.sampled_from(
        [*"ab:()[]{}\\ ,*\"';-.1e\x00", "\ud800", "AND ", "OR ", "NOT ", " TO ", " IN (", "brand:", "_id:", "price:["]
    ),
    max_size=25,
).map("".join)
# Well-formed filters around arbitrary names and values, so the compiler and the
# database see hostile data, not only parse errors.
_hostile_terms = st.one_of(
    st.builds(lambda f, v: f"{escape(f)}:{escape(v)}", _any_text.filter(bool), _any_text.filter(bool)),
    st.builds(lambda v: f"_id:{escape(v)}", _any_text.filter(bool)),
    st.builds(
        lambda f, vs: f"{escape(f)} IN ({', '.join(escape(v) for v in vs)})",
        _any_text.filter(bool),
        st.lists(_any_text.filter(bool), min_size=1, max_size=3),
    ),
    st.builds(lambda f: f"NOT {escape(f)}:[1 TO *]", _any_text.filter(bool)),
)
_fuzz_input = (
    st.text(max_size=60) | _soup | _hostile_terms | st.lists(_hostile_terms, min_size=2, max_size=4).map(" OR ".join)
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_fuzz_input)
async def test_fuzz_parse_compile_execute(pool: asyncpg.Pool, text: str) -> None:
    """Whatever the string, the only exception on the way to rows is FilterError, and
    the rows are the reference evaluator's."""
    try:
        node = parse_filter(text)
    except FilterError:
        return
    async with pool.acquire() as connection, rolled_back(connection):
        index_pk = await create_index(connection)
        await insert_products(connection, index_pk, FUZZ_CATALOG)
        assert await matching_ids(connection, index_pk, node) == reference_ids(FUZZ_CATALOG, node)


# ------------------------------------------------------------------- plans

BULK_PRODUCTS = 100_000


def _bulk_docs(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "_id": f"id-{i}",
            "productTitle": f"Product {i}",
            "price": round(rng.uniform(0, 1000), 2),
            "brand": f"Brand-{i % 1000}",  # each brand is 0.1% of the catalog
            "productCollections": [f"c{i % 10}"],
            "inStock": i % 2 == 0,
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
async def bulk_index(database_url: str) -> AsyncIterator[int]:
    # A plain connection (no pool codecs): COPY sends jsonb as text.
    connection = await asyncpg.connect(database_url)
    try:
        index_pk = await create_index(connection, "bulk")
        await copy_products(connection, index_pk, _bulk_docs(BULK_PRODUCTS))
        await connection.execute("ANALYZE products")
        yield index_pk
        await connection.execute("DELETE FROM indexes WHERE pk = $1", index_pk)
    finally:
        await connection.close()


async def _plan(conn: asyncpg.Connection, index_pk: int, text: str, generic: bool = False) -> str:
    params = SqlParams([index_pk])
    where = compile_filter(parse_filter(text), params)
    sql = f"SELECT p.pk FROM products p WHERE p.index_pk = $1 AND {where}"  # noqa: S608
    if not generic:
        rows = await conn.fetch("EXPLAIN " + sql, *params.values)
        return "\n".join(r[0] for r in rows)
    # What a prepared statement runs after its 5th execution: a plan made without the
    # parameter values (asyncpg prepares every statement, so this is the steady state).
    # EXECUTE takes no protocol parameters: the server quotes the values as literals.
    literals = []
    for value in params.values:
        cast = "text[]" if isinstance(value, list) else "text"
        literals.append(
            await conn.fetchval(f"SELECT quote_literal($1::{cast})", value if cast == "text[]" else str(value))
        )
    async with rolled_back(conn):
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute("PREPARE flt_generic AS " + sql)
        try:
            rows = await conn.fetch(f"EXPLAIN EXECUTE flt_generic({', '.join(literals)})")
        finally:
            await conn.execute("DEALLOCATE flt_generic")
    return "\n".join(r[0] for r in rows)


@pytest.mark.slow
async def test_selective_filters_use_indexes(conn: asyncpg.Connection, bulk_index: int) -> None:
    started = time.perf_counter()
    plan = await _plan(conn, bulk_index, "brand:Brand-42")
    assert "products_filter_terms_idx" in plan and "Seq Scan" not in plan, plan
    assert len(await matching_ids(conn, bulk_index, parse_filter("brand:Brand-42"))) == BULK_PRODUCTS // 1000

    plan = await _plan(conn, bulk_index, "brand IN (Brand-1, Brand-2, Brand-3)")
    assert "products_filter_terms_idx" in plan and "Seq Scan" not in plan, plan

    plan = await _plan(conn, bulk_index, "price:[100 TO 100.5]")
    assert "products_index_price_idx" in plan and "Seq Scan" not in plan, plan

    plan = await _plan(conn, bulk_index, "_id:id-77")
    assert "products_index_product_key" in plan and "Seq Scan" not in plan, plan

    plan = await _plan(conn, bulk_index, "brand:Brand-42 AND price:[* TO 500]")
    assert "Seq Scan" not in plan, plan

    # The generic plan (parameters unknown) of a prepared statement also avoids a Seq Scan.
    plan = await _plan(conn, bulk_index, "brand:Brand-42", generic=True)
    assert "products_filter_terms_idx" in plan and "Seq Scan" not in plan, plan
    assert time.perf_counter() - started < 30


def test_long_values_are_indexed_as_digests_and_still_match() -> None:
    """Terms over the index entry limit become digests on both sides (documents and filters)."""
    from app.filters import MAX_TERM_CHARS, value_terms

    long_value = "Ab" * 5_000
    doc = {"_id": "x", "url": long_value, "tags": [long_value.upper()]}
    terms = index_terms(doc)
    assert all(len(t) <= MAX_TERM_CHARS for t in terms)
    assert set(value_terms("url", long_value.lower())) & set(terms)
    assert set(value_terms("tags", long_value)) & set(terms)
    assert not set(value_terms("url", long_value + "c")) & set(terms)
