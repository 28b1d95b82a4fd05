"""Filter AST -> a boolean SQL expression over one `products` row.

Every value and every field name travels as a bind parameter; the SQL text holds only
placeholders, the row alias and fixed fragments. Every expression this module emits
evaluates to TRUE or FALSE, never NULL, so that `NOT x` also keeps the products that
lack x's field (SQL's three-valued logic would otherwise drop them silently).
"""

from __future__ import annotations

import math
import re
from typing import Any

from app.filters import (
    ID_FIELD,
    And,
    FilterNode,
    In,
    Not,
    Or,
    Range,
    Term,
    value_terms,
)
from app.storage.params import SqlParams

# The largest double below 10**308: clamping bounds to +-this excludes exactly the numbers
# that `app.filters.doc_number` refuses (|v| >= 10**308, NaN, infinities).
_MAX_FILTER_NUMBER = math.nextafter(1e308, 0.0)

_ALIAS_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def storable(text: str) -> bool:
    """Whether PostgreSQL can hold `text`: no NUL, valid UTF-8 (no lone surrogates).

    A value it cannot hold cannot be in any product either, so it matches nothing;
    sending it would be a driver or server error instead.
    """
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def compile_filter(node: FilterNode | None, params: SqlParams, alias: str = "p") -> str:
    """A SQL boolean expression, never NULL, that is TRUE for the rows of `alias` matching `node`.

    Equality and IN use the GIN-indexed `filter_terms && $n::text[]`; `_id` the
    (index_pk, product_id) btree; ranges on `price` the (index_pk, price) btree.
    """
    if node is None:
        return "TRUE"
    if not _ALIAS_RE.fullmatch(alias):
        raise ValueError(f"invalid table alias {alias!r}")
    return _Compiler(params, alias).compile(node)


class _Compiler:
    def __init__(self, params: SqlParams, alias: str):
        self.params = params
        self.alias = alias
        # One placeholder per distinct value: a field used in ten terms is bound once.
        self.placeholders: dict[tuple[str | None, Any], str] = {}

    def bind(self, value: Any, cast: str) -> str:
        key = (cast, tuple(value) if isinstance(value, list) else value)
        placeholder = self.placeholders.get(key)
        if placeholder is None:
            placeholder = self.params.add(value, cast)
            self.placeholders[key] = placeholder
        return placeholder

    def compile(self, node: FilterNode) -> str:
        if isinstance(node, Term):
            return self.any_of(node.field, (node.value,))
        if isinstance(node, In):
            return self.any_of(node.field, node.values)
        if isinstance(node, Range):
            return self.range(node)
        if isinstance(node, Not):
            return f"(NOT {self.compile(node.child)})"
        if isinstance(node, And):
            return "(" + " AND ".join(self.compile(child) for child in node.children) + ")"
        if isinstance(node, Or):
            return "(" + " OR ".join(self.compile(child) for child in node.children) + ")"
        raise TypeError(f"not a filter node: {node!r}")

    def any_of(self, field: str, values: tuple[str, ...]) -> str:
        if not storable(field):
            return "FALSE"
        a = self.alias
        if field == ID_FIELD:
            # Ids are exact and case-sensitive; product_id is NOT NULL, so the result is too.
            ids = sorted({v for v in values if storable(v)})
            if not ids:
                return "FALSE"
            if len(ids) == 1:
                return f"({a}.product_id = {self.bind(ids[0], 'text')})"
            return f"({a}.product_id = ANY({self.bind(ids, 'text[]')}))"
        terms = sorted({t for v in values for t in value_terms(field, v) if storable(t)})
        if not terms:
            return "FALSE"
        # No coalesce: filter_terms is NOT NULL (so && is never NULL), and wrapping the
        # operator in a function would hide it from the GIN index.
        return f"({a}.filter_terms && {self.bind(terms, 'text[]')})"

    def range(self, node: Range) -> str:
        if node.field == ID_FIELD or not storable(node.field):
            return "FALSE"  # ids are strings, and strings never match a range
        low = -_MAX_FILTER_NUMBER if node.low is None else max(node.low, -_MAX_FILTER_NUMBER)
        high = _MAX_FILTER_NUMBER if node.high is None else min(node.high, _MAX_FILTER_NUMBER)
        if low > high:
            return "FALSE"
        # An open (or clamped) side is the fixed limit, written as a constant: not client
        # data, and a generic plan then sees a one-sided range (estimated at 1/3 of the rows)
        # instead of two unknown bounds (0.5%), which would send `brand:x AND price:[* TO 500]`
        # down the price index instead of the far more selective GIN index.
        lo = self.bind(low, "float8") if low != -_MAX_FILTER_NUMBER else f"{-_MAX_FILTER_NUMBER!r}::float8"
        hi = self.bind(high, "float8") if high != _MAX_FILTER_NUMBER else f"{_MAX_FILTER_NUMBER!r}::float8"
        a = self.alias
        if node.field == "price":
            # The typed NOT NULL column mirrors the required numeric `price`: btree-indexable.
            return f"({a}.price BETWEEN {lo} AND {hi})"
        value = f"({a}.doc -> {self.bind(node.field, 'text')})"
        # CASE guarantees the casts only run on numbers small enough for float8; a missing
        # field or a non-number falls to ELSE FALSE instead of NULL.
        return (
            f"(CASE WHEN jsonb_typeof({value}) = 'number' AND abs({value}::numeric) < 1e308"
            f" THEN {value}::float8 BETWEEN {lo} AND {hi} ELSE FALSE END)"
        )
