"""The filter DSL, shared by domain and storage: AST, parser, and the index-term rules.

No SQL and no I/O here (`storage.filter_sql` compiles the AST); nothing here imports
domain, storage, vision or http.
"""

from app.filters.ast import ID_FIELD, And, FilterError, FilterNode, In, Not, Or, Range, Term
from app.filters.parser import (
    FIELD_ALIASES,
    MAX_DEPTH,
    MAX_FILTER_LENGTH,
    MAX_IN_ITEMS,
    escape,
    format_filter,
    parse_filter,
)
from app.filters.terms import (
    MAX_TERM_CHARS,
    NUMBER_LIMIT,
    TERM_SEPARATOR,
    canonical_number,
    doc_number,
    fold,
    index_terms,
    read_bool,
    read_number,
    value_terms,
)

__all__ = [
    "FIELD_ALIASES",
    "ID_FIELD",
    "MAX_DEPTH",
    "MAX_FILTER_LENGTH",
    "MAX_IN_ITEMS",
    "MAX_TERM_CHARS",
    "NUMBER_LIMIT",
    "TERM_SEPARATOR",
    "And",
    "FilterError",
    "FilterNode",
    "In",
    "Not",
    "Or",
    "Range",
    "Term",
    "canonical_number",
    "doc_number",
    "escape",
    "format_filter",
    "fold",
    "index_terms",
    "parse_filter",
    "read_bool",
    "read_number",
    "value_terms",
]
