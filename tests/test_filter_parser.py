"""The filter DSL parser and value rules, table-driven from FILTER_DSL.md (no database)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.filters import (
    MAX_DEPTH,
    MAX_FILTER_LENGTH,
    MAX_IN_ITEMS,
    And,
    FilterError,
    FilterNode,
    In,
    Not,
    Or,
    Range,
    Term,
    canonical_number,
    escape,
    format_filter,
    index_terms,
    parse_filter,
    read_bool,
    read_number,
    value_terms,
)

# --------------------------------------------------------------- valid filters

VALID: list[tuple[str, FilterNode]] = [
    # The examples table of FILTER_DSL.md, in order.
    ("brand:Nike AND price:[* TO 200]", And((Term("brand", "Nike"), Range("price", None, 200.0)))),
    ("color:(Light Blue) OR color:White", Or((Term("color", "Light Blue"), Term("color", "White")))),
    (
        "productCollections:shoes AND productCollections:outdoor",
        And((Term("productCollections", "shoes"), Term("productCollections", "outdoor"))),
    ),
    ("NOT productCollections:shoes", Not(Term("productCollections", "shoes"))),
    (
        "brand:Sony OR brand:Gucci AND price:[* TO 100]",
        Or((Term("brand", "Sony"), And((Term("brand", "Gucci"), Range("price", None, 100.0))))),
    ),
    (
        "(brand:Sony OR brand:Gucci) AND price:[200 TO *]",
        And((Or((Term("brand", "Sony"), Term("brand", "Gucci"))), Range("price", 200.0, None))),
    ),
    ("brand IN (Sony, (Acme Co))", In("brand", ("Sony", "Acme Co"))),
    ("NOT brand IN (Nike, Sony)", Not(In("brand", ("Nike", "Sony")))),
    ("inStock:TRUE", Term("inStock", "TRUE")),
    ("_id IN (p1, p3)", In("_id", ("p1", "p3"))),
    ("price:[1e2 TO 1.5e2]", Range("price", 100.0, 150.0)),
    # Grammar bullets.
    ("  brand:Nike  ", Term("brand", "Nike")),  # surrounding whitespace ignored
    ("\tbrand:Nike\n", Term("brand", "Nike")),
    ("a:1 OR b:2 OR c:3", Or((Term("a", "1"), Term("b", "2"), Term("c", "3")))),
    ("a:1 AND b:2 AND c:3", And((Term("a", "1"), Term("b", "2"), Term("c", "3")))),
    (
        "a:1 AND b:2 OR c:3 AND d:4",
        Or((And((Term("a", "1"), Term("b", "2"))), And((Term("c", "3"), Term("d", "4"))))),
    ),
    ("NOT a:1 AND b:2", And((Not(Term("a", "1")), Term("b", "2")))),  # NOT binds to the next term only
    ("NOT (a:1 OR b:2)", Not(Or((Term("a", "1"), Term("b", "2"))))),
    ("NOT (NOT a:1)", Not(Not(Term("a", "1")))),  # a group in between makes double negation legal
    ("(a:1) AND (b:2)", And((Term("a", "1"), Term("b", "2")))),
    ("((a:1))", Term("a", "1")),
    ("( a:1 OR b:2 )", Or((Term("a", "1"), Term("b", "2")))),
    ("a:1  AND\n\tb:2", And((Term("a", "1"), Term("b", "2")))),  # any run of whitespace around operators
    ("brand IN (Sony)", In("brand", ("Sony",))),
    ("brand in (Sony)", In("brand", ("Sony",))),  # IN in any case
    ("brand iN (Sony)", In("brand", ("Sony",))),
    ("brand IN(Sony,Nike)", In("brand", ("Sony", "Nike"))),
    ("brand IN ( Sony ,  Nike )", In("brand", ("Sony", "Nike"))),
    ("brand IN (Sony, (Acme Co), (AND OR NOT))", In("brand", ("Sony", "Acme Co", "AND OR NOT"))),
    ("price:[10 to 20]", Range("price", 10.0, 20.0)),  # TO in any case
    ("price:[10 tO 20]", Range("price", 10.0, 20.0)),
    ("price:[-5 TO 10.5]", Range("price", -5.0, 10.5)),
    ("price:[ 1 TO 2 ]", Range("price", 1.0, 2.0)),
    ("price:[5 TO 1]", Range("price", 5.0, 1.0)),  # legal, matches nothing
    ("price:[* TO -1e-3]", Range("price", None, -0.001)),
    ("price:[.5 TO 5.]", Range("price", 0.5, 5.0)),
    ("price:[+1 TO 1E2]", Range("price", 1.0, 100.0)),
    # Grouped values: operators are plain text, whitespace runs collapse, escapes kept.
    ("color:(Light Blue)", Term("color", "Light Blue")),
    ("color:( Light   Blue )", Term("color", "Light Blue")),
    ("name:(Salt AND Pepper OR NOT)", Term("name", "Salt AND Pepper OR NOT")),
    (r"name:(a\ \ b)", Term("name", "a  b")),
    (r"name:(a\)b)", Term("name", "a)b")),
    # Backslash escapes anywhere, the backslash is dropped.
    (r"color:Light\ Blue", Term("color", "Light Blue")),
    (r"my\ field:x", Term("my field", "x")),
    (r"sku:\(1\+1\)\:2", Term("sku", "(1+1):2")),
    (r"path:C\\dir", Term("path", "C\\dir")),
    (r"a\:b:c", Term("a:b", "c")),
    # Only the first unescaped ':' splits.
    ("url:https://x.com/a", Term("url", "https://x.com/a")),
    ("a::b", Term("a", ":b")),
    # Double quotes are ordinary characters.
    ('brand:"Levi\'s"', Term("brand", '"Levi\'s"')),
    ('"brand":x', Term('"brand"', "x")),
    # Not operators: &&, ||, !, +, - are plain characters of values.
    ("a:&&", Term("a", "&&")),
    ("a:!x", Term("a", "!x")),
    ("a:-x", Term("a", "-x")),
    ("a:*", Term("a", "*")),  # no wildcards: a literal star
    # Operator words as field names or values are plain text when glued to ':'.
    ("AND:x", Term("AND", "x")),
    ("NOT:x", Term("NOT", "x")),
    ("a:AND", Term("a", "AND")),
    ("a:NOT OR b:OR", Or((Term("a", "NOT"), Term("b", "OR")))),
    ("ANDROID:x AND ORACLE:y", And((Term("ANDROID", "x"), Term("ORACLE", "y")))),
    ("NOTE:x", Term("NOTE", "x")),
    # Values are whatever is between ':' and the next space or ')'.
    ("a:b[c]", Term("a", "b[c]")),
    ("a:b{c}", Term("a", "b{c}")),
    ("a:b,c", Term("a", "b,c")),
    ("(a:b)", Term("a", "b")),
    ("a:é", Term("a", "é")),
    ("名前:値", Term("名前", "値")),
    ("a:b\u00a0c", Term("a", "b\u00a0c")),  # only ASCII whitespace separates
    # The `collections` alias is stored as productCollections.
    ("collections:shoes", Term("productCollections", "shoes")),
    ("collections IN (a, b)", In("productCollections", ("a", "b"))),
    ("_id:P1", Term("_id", "P1")),
]


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[t for t, _ in VALID])
def test_parses(text: str, expected: FilterNode) -> None:
    assert parse_filter(text) == expected


def test_escaped_brackets_are_plain_values() -> None:
    assert parse_filter(r"a:\[1") == Term("a", "[1")
    assert parse_filter(r"a:\{1") == Term("a", "{1")
    assert parse_filter(r"a:\[1\ TO\ 2\]") == Term("a", "[1 TO 2]")


@pytest.mark.parametrize("text", [None, "", " ", "\t\n  \r"])
def test_no_filter(text: str | None) -> None:
    assert parse_filter(text) is None


# ----------------------------------------------------------------------- errors

ERRORS: list[tuple[str, int, str]] = [
    # The 400 rows of the examples table.
    ("brand:Nike AND", 11, "dangling operator AND"),
    ("brand:Nike brand:Sony", 11, "expected an operator"),
    ("brand:Nike and price:1", 11, "upper case"),
    ("(brand:Nike", 0, "unbalanced parentheses"),
    ("NOT NOT brand:Nike", 4, "NOT cannot follow NOT"),
    ("price:[* TO *]", 6, "[* TO *]"),
    # Dangling / misplaced operators.
    ("brand:Nike OR", 11, "dangling operator OR"),
    ("NOT", 0, "dangling operator NOT"),
    ("a:1 AND NOT", 8, "dangling operator NOT"),
    ("AND a:1", 0, "unexpected operator AND"),
    ("OR a:1", 0, "unexpected operator OR"),
    ("a:1 AND OR b:2", 8, "unexpected operator OR after AND"),
    ("a:1 OR AND b:2", 7, "unexpected operator AND after OR"),
    ("NOT AND a:1", 4, "unexpected operator AND after NOT"),
    ("(a:1 AND)", 8, "expected a term after AND"),
    ("a:1 NOT b:2", 4, "expected AND or OR before NOT"),
    ("a:1 or b:2", 4, "upper case: write OR instead of or"),
    ("a:1 And b:2", 4, "upper case"),
    ("not a:1", 0, "upper case: write NOT instead of not"),
    ("a:1 && b:2", 4, "expected an operator"),
    ("a:1 || b:2", 4, "expected an operator"),
    ("a:1 +b:2", 4, "expected an operator"),
    ("a:1 !b:2", 4, "expected an operator"),
    # Spaces around parentheses and operators.
    ("NOT(a:1)", 3, "space between NOT and '('"),
    ("a:1 AND(b:2)", 7, "space between AND and '('"),
    ("(a:1)AND (b:2)", 5, "space before AND"),
    ("(a:1)b:2", 5, "expected an operator"),
    ("a:[1 TO 2]b:2", 10, "expected an operator"),
    ("a:(x y)b:1", 7, "expected an operator"),
    ("a IN (x)b:1", 8, "expected an operator"),
    # Parentheses.
    ("a:1)", 3, "unbalanced parentheses: ')' without"),
    (")", 0, "unbalanced parentheses"),
    ("(a:1))", 5, "unbalanced parentheses"),
    ("((a:1)", 0, "unbalanced parentheses: '(' is never closed"),
    ("a:1 AND (b:2", 8, "never closed"),
    ("()", 0, "empty group"),
    ("(  )", 0, "empty group"),
    ("a:1 AND ()", 8, "empty group"),
    ("a:()", 2, "empty group"),
    ("a:(  )", 2, "empty group"),
    ("a:(x", 2, "grouped value is never closed"),
    ("a:(x (y))", 5, "unexpected '('"),
    ("a:b(c)", 3, "unexpected '('"),
    # Terms.
    ("brand", 5, "expected ':' after field name 'brand'"),
    ("brand Nike", 5, "expected ':'"),
    ("brand:Nike OR Sony", 18, "expected ':' after field name 'Sony'"),
    ("brand :Nike", 5, "expected ':'"),
    ("brand(x)", 5, "expected ':'"),
    (":x", 0, "missing field name"),
    ("a:", 2, "missing value"),
    ("a: b", 2, "missing value"),
    ("(a:)", 3, "missing value"),
    ("a:b\\", 3, "dangling backslash"),
    ("a\\", 1, "dangling backslash"),
    # Ranges.
    ("a:{1 TO 2}", 2, "'{' ranges are not supported"),
    ("a:[1 TO 2}", 9, "close the range with ']'"),
    ("a:[x TO 2]", 3, "invalid range bound 'x'"),
    ("a:[1 TO x]", 8, "invalid range bound 'x'"),
    ("a:[1_000 TO 2]", 3, "invalid range bound"),
    ("a:[nan TO 2]", 3, "invalid range bound"),
    ("a:[1 TO inf]", 8, "invalid range bound"),
    ("a:[1 TO 1e999]", 8, "range bound '1e999' is out of range"),
    ("a:[-2e308 TO 1]", 3, "out of range"),
    ("a:[\\* TO 2]", 3, "invalid range bound"),  # an escaped star is not "open"
    ("a:[]", 3, "invalid range bound"),
    ("a:[1 TO ]", 8, "invalid range bound"),
    ("a:[1 2]", 5, "expected TO"),
    ("a:[1]", 4, "expected TO"),
    ("a:[1 TO5]", 5, "expected TO"),
    ("a:[1 TO 2", 9, "expected ']'"),
    ("a:[1 TO", 7, "expected ']'"),
    ("a:[", 3, "expected ']'"),
    ("a:[1 TO 2 3]", 10, "expected ']' after"),
    ("a:[* TO *] OR b:1", 2, "[* TO *]"),
    # IN lists.
    ("brand IN Sony", 9, "missing '(' after IN"),
    ("brand IN", 8, "missing '(' after IN"),
    ("brand IN ()", 9, "empty IN list"),
    ("brand IN (a,,b)", 12, "empty item"),
    ("brand IN (,a)", 10, "empty item"),
    ("brand IN (a,)", 12, "expected an item after ','"),
    ("brand IN (a b)", 12, "expected ',' or ')'"),
    ("brand IN (Sony, Acme Co)", 21, "expected ',' or ')'"),
    ("brand IN (a", 9, "IN list is never closed"),
    ("brand IN (a,", 9, "IN list is never closed"),
    ("brand IN (a(b))", 11, "unexpected '('"),
    ("brand IN (())", 10, "empty group"),
]


@pytest.mark.parametrize(("text", "position", "reason"), ERRORS, ids=[t for t, _, _ in ERRORS])
def test_errors(text: str, position: int, reason: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(text)
    error = caught.value
    assert error.position == position, str(error)
    assert reason in error.reason
    assert str(error) == f"Error parsing filter: {error.reason} at position {position}"


def test_error_renders_as_api_error() -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter("brand:Nike AND")
    api_error = caught.value.to_api_error()
    assert api_error.status == 400
    assert api_error.body() == {
        "error": "Error parsing filter: dangling operator AND: expected a term after it at position 11",
        "code": "invalid_filter",
    }


def test_error_messages_quote_user_text_briefly() -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter("x" * 5000)
    assert len(str(caught.value)) < 200


# ----------------------------------------------------------------------- limits


def test_length_limit() -> None:
    ok = "a:" + "x" * (MAX_FILTER_LENGTH - 2)
    assert parse_filter(ok) == Term("a", "x" * (MAX_FILTER_LENGTH - 2))
    with pytest.raises(FilterError) as caught:
        parse_filter(ok + "x")
    assert caught.value.position == MAX_FILTER_LENGTH
    assert "too long" in caught.value.reason and "10000" in caught.value.reason
    # Whitespace counts: the limit is on what the client sent.
    with pytest.raises(FilterError):
        parse_filter(" " * (MAX_FILTER_LENGTH + 1))


def test_depth_limit() -> None:
    nested = "(" * MAX_DEPTH + "a:1" + ")" * MAX_DEPTH
    assert parse_filter(nested) == Term("a", "1")
    deeper = "(" * (MAX_DEPTH + 1) + "a:1" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(FilterError) as caught:
        parse_filter(deeper)
    assert caught.value.position == MAX_DEPTH
    assert "deeper than 32" in caught.value.reason
    # Depth counts open groups, not groups seen: many siblings are fine.
    siblings = " AND ".join(["(a:1)"] * 100)
    assert isinstance(parse_filter(siblings), And)
    # Mixed with NOT and operators, the 33rd open '(' is the one reported.
    mixed = "NOT (" * MAX_DEPTH + "(a:1" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(FilterError) as caught:
        parse_filter(mixed)
    assert caught.value.position == len("NOT (") * MAX_DEPTH


def test_in_list_limit() -> None:
    # 10,000 one-character items need more than 10,000 characters, so the IN limit is
    # checked with the length limit lifted, as a larger max_length would allow.
    items = ",".join("x" for _ in range(MAX_IN_ITEMS))
    text = f"a IN ({items})"
    node = parse_filter(text, max_length=10 * MAX_FILTER_LENGTH)
    assert isinstance(node, In) and len(node.values) == MAX_IN_ITEMS
    with pytest.raises(FilterError) as caught:
        parse_filter(f"a IN ({items},y)", max_length=10 * MAX_FILTER_LENGTH)
    assert caught.value.position == len(f"a IN ({items},")
    assert "more than 10000 items" in caught.value.reason
    # And with the default limits the length limit fires first.
    with pytest.raises(FilterError) as caught:
        parse_filter(text)
    assert "too long" in caught.value.reason
    with pytest.raises(FilterError) as caught:
        parse_filter("a IN (x, y, z)", max_in_items=2)
    assert caught.value.position == 12


# ------------------------------------------------------------------ value rules


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("120", 120.0),
        ("120.0", 120.0),
        ("1e2", 100.0),
        ("1E+2", 100.0),
        ("-5", -5.0),
        ("+5", 5.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("-0", 0.0),
        ("007", 7.0),
        ("1e-99999", 0.0),
        ("1_000", None),
        ("nan", None),
        ("NaN", None),
        ("inf", None),
        ("-Infinity", None),
        ("1e999", None),
        (" 1", None),
        ("1 ", None),
        ("٣", None),  # Arabic-Indic digit: float() takes it, a client does not mean it
        ("0x10", None),
        ("1e", None),
        ("e1", None),
        (".", None),
        ("", None),
        ("--1", None),
        ("1.2.3", None),
    ],
)
def test_read_number(text: str, number: float | None) -> None:
    assert read_number(text) == number


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("TRUE", True), ("tRuE", True), ("false", False), ("False", False)]
    + [("yes", None), ("1", None), ("falſe", None), (" true", None), ("", None)],
)
def test_read_bool(text: str, value: bool | None) -> None:
    assert read_bool(text) is value


def test_canonical_number() -> None:
    assert canonical_number(120) == canonical_number(120.0) == canonical_number(1.2e2) == "120.0"
    assert canonical_number(-0.0) == canonical_number(0) == "0.0"


def test_index_terms_encoding() -> None:
    doc = {
        "_id": "P1",
        "productTitle": "Air Runner",
        "price": 120,
        "brand": "Nike",
        "productCollections": ["Shoes", "outdoor", "SHOES"],
        "inStock": True,
        "onSale": False,
        "rating": -0.0,
        "nested": {"a": 1},
        "nothing": None,
        "huge": 10**400,
    }
    us = "\x1f"
    assert index_terms(doc) == sorted(
        [
            f"productTitle{us}s:air runner",
            f"price{us}n:120.0",
            f"brand{us}s:nike",
            f"productCollections{us}s:shoes",
            f"productCollections{us}s:outdoor",
            f"inStock{us}b:true",
            f"onSale{us}b:false",
            f"rating{us}n:0.0",
        ]
    )


def test_index_terms_field_encoding_is_injective() -> None:
    # Without escaping, field "a\x1fs:q" = "r" and field "a" = "q\x1fs:r" share a term.
    forged = index_terms({"a\x1fs:q": "r"})
    assert not set(forged) & set(index_terms({"a": "q\x1fs:r"}))
    assert not set(index_terms({"a\\": "x"})) & set(index_terms({"a\\\\": "x"}))
    assert set(value_terms("a\x1fs:q", "r")) & set(forged)


def test_value_terms() -> None:
    us = "\x1f"
    assert value_terms("brand", "NIKE") == [f"brand{us}s:nike"]
    assert value_terms("price", "120") == [f"price{us}s:120", f"price{us}n:120.0"]
    assert value_terms("price", "1.2e2") == [f"price{us}s:1.2e2", f"price{us}n:120.0"]
    assert value_terms("inStock", "TRUE") == [f"inStock{us}s:true", f"inStock{us}b:true"]
    assert value_terms("x", "STRASSE") == value_terms("x", "straße")  # Unicode case folding


# ------------------------------------------------------------ property tests

_FIELD_CHARS = st.sampled_from(list("abcXYZ_09 :()[]{},\\\"'\x1f\t\né名-*.!&|")) | st.characters(
    exclude_categories=("Cs",)
)
_texts = st.text(_FIELD_CHARS, min_size=1, max_size=12)
_numbers = st.floats(allow_nan=False, allow_infinity=False)


def _leaves() -> st.SearchStrategy[FilterNode]:
    bounds = st.one_of(st.none(), _numbers)
    ranges = st.tuples(_texts, bounds, bounds).filter(lambda t: t[1] is not None or t[2] is not None)
    return st.one_of(
        st.builds(Term, _texts, _texts),
        st.builds(In, _texts, st.lists(_texts, min_size=1, max_size=4).map(tuple)),
        ranges.map(lambda t: Range(*t)),
    )


def _tree(children: st.SearchStrategy[FilterNode]) -> st.SearchStrategy[FilterNode]:
    return st.one_of(
        children.filter(lambda c: not isinstance(c, Not)).map(Not),
        st.lists(children, min_size=2, max_size=4).map(lambda cs: And(tuple(cs))),
        st.lists(children, min_size=2, max_size=4).map(lambda cs: Or(tuple(cs))),
    )


filter_trees = st.recursive(_leaves(), _tree, max_leaves=12)


def _canonical(node: FilterNode) -> FilterNode:
    """The AST the parser yields for this tree: aliases resolved, NOT NOT via a group."""
    if isinstance(node, Term):
        return Term("productCollections" if node.field == "collections" else node.field, node.value)
    if isinstance(node, In):
        return In("productCollections" if node.field == "collections" else node.field, node.values)
    if isinstance(node, Range):
        field = "productCollections" if node.field == "collections" else node.field
        return Range(field, node.low, node.high)
    if isinstance(node, Not):
        return Not(_canonical(node.child))
    if isinstance(node, And):
        return And(tuple(_canonical(c) for c in node.children))
    return Or(tuple(_canonical(c) for c in node.children))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(filter_trees)
def test_format_parse_round_trip(node: FilterNode) -> None:
    """Any AST renders (with escapes) to text that parses back to the same AST."""
    text = format_filter(node)
    assert parse_filter(text, max_length=10**6) == _canonical(node)


# Grammar-shaped noise (operators, brackets, escapes, NUL) reaches deep into the parser;
# plain random text covers the rest.
_TOKENS = list("ab:()[]{}\\ ,*\"'-.1e\x00\t") + ["AND ", "OR ", "NOT ", " TO ", " IN ", "x:", "[1", "(", ")"]
_noise = st.lists(st.sampled_from(_TOKENS), max_size=30).map("".join) | st.text()


@settings(max_examples=1500, deadline=None)
@given(_noise)
def test_parser_fuzz_raises_only_filter_error(text: str) -> None:
    try:
        node = parse_filter(text)
    except FilterError as error:
        assert 0 <= error.position <= len(text)
        return
    if node is not None:
        # What parses renders and re-parses to the same tree.
        assert parse_filter(format_filter(node), max_length=10**6) == node


def test_escape_round_trips_every_special_character() -> None:
    for value in [
        "a b",
        "(x)",
        "a:b",
        "x,y",
        "[1 TO 2]",
        "{x}",
        "back\\slash",
        "tab\there",
        "AND",
        "NOT",
        "OR",
    ]:
        assert parse_filter(f"{escape('f')}:{escape(value)}") == Term("f", value)
        assert parse_filter(f"{escape(value)}:v") == Term(value, "v")
        assert parse_filter(f"{escape(value)} IN ({escape(value)}, x)") == In(value, (value, "x"))
