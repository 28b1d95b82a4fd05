"""The filter DSL (FILTER_DSL.md): parser to a typed AST, and the per-product filter terms.

Pure domain logic: no SQL here; `storage.filter_sql` compiles the AST.
"""

from __future__ import annotations

from typing import Any

TERM_SEPARATOR = "\x1f"


def index_terms(doc: dict[str, Any]) -> list[str]:
    """Normalised equality terms of a product document, stored in `products.filter_terms`.

    `s:` strings and string-array elements (lower case), `n:` numbers (canonical float
    repr), `b:` booleans. `_id` is matched on its own column, not here.
    """
    terms: set[str] = set()
    for field, value in doc.items():
        if field == "_id":
            continue
        prefix = field + TERM_SEPARATOR
        if isinstance(value, bool):
            terms.add(prefix + "b:" + ("true" if value else "false"))
        elif isinstance(value, int | float):
            terms.add(prefix + "n:" + repr(float(value)))
        elif isinstance(value, str):
            terms.add(prefix + "s:" + value.lower())
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    terms.add(prefix + "s:" + item.lower())
    return sorted(terms)
