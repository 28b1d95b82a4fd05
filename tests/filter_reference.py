"""A pure-Python reference evaluator of FILTER_DSL.md's meaning table.

Written straight from the table, on the document as the client sent it, without the
index terms or any SQL, so that a differential test can hold the compiled SQL (and the
`filter_terms` encoding it relies on) to the documented meaning. It shares only the
definition of "reads as a number" (`read_number`) with the implementation, as the
spec requires one definition for both.
"""

from __future__ import annotations

from typing import Any

from app.filters import And, FilterNode, In, Not, Or, Range, Term, read_number

# Numbers at or beyond this magnitude are not filterable (see app.filters.NUMBER_LIMIT):
# restated here on purpose, as part of the documented meaning.
_LIMIT = 10**308


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not abs(value) < _LIMIT:  # exact for ints and floats; False for NaN
        return None
    return float(value)


def _bool_word(text: str) -> bool | None:
    if text.isascii() and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return None


def _scalar_equals(stored: Any, wanted: str) -> bool:
    """`f:v` against one stored value (not an array)."""
    if isinstance(stored, bool):  # before numbers: bool is an int in Python
        return _bool_word(wanted) is stored
    if isinstance(stored, int | float):
        stored_number = _number(stored)
        wanted_number = read_number(wanted)
        return stored_number is not None and wanted_number is not None and stored_number == wanted_number
    if isinstance(stored, str):
        return stored.casefold() == wanted.casefold()
    return False  # null, nested objects


def term_matches(doc: dict[str, Any], field: str, wanted: str) -> bool:
    if field == "_id":
        return doc.get("_id") == wanted  # exact, case-sensitive
    if field not in doc:
        return False
    stored = doc[field]
    if isinstance(stored, list):
        return any(isinstance(item, str) and _scalar_equals(item, wanted) for item in stored)
    return _scalar_equals(stored, wanted)


def range_matches(doc: dict[str, Any], node: Range) -> bool:
    if node.field == "_id":
        return False
    number = _number(doc.get(node.field))
    if number is None:
        return False
    if node.low is not None and number < node.low:
        return False
    return node.high is None or number <= node.high


def matches(node: FilterNode | None, doc: dict[str, Any]) -> bool:
    """Whether product `doc` (with its `_id`) matches the filter `node` (None: everything)."""
    if node is None:
        return True
    if isinstance(node, Term):
        return term_matches(doc, node.field, node.value)
    if isinstance(node, In):
        return any(term_matches(doc, node.field, value) for value in node.values)
    if isinstance(node, Range):
        return range_matches(doc, node)
    if isinstance(node, Not):
        return not matches(node.child, doc)
    if isinstance(node, And):
        return all(matches(child, doc) for child in node.children)
    if isinstance(node, Or):
        return any(matches(child, doc) for child in node.children)
    raise TypeError(f"not a filter node: {node!r}")
