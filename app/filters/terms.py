"""The value rules both sides of a filter must agree on.

What "reads as a number" means, how case is ignored, how a value becomes an index term:
defined here once, so that the terms stored at ingest (`index_terms`) and the terms a
filter looks for (`value_terms`) cannot drift apart.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from app.filters.ast import ID_FIELD

# Separates the (escaped) field name from the typed value in an index term.
TERM_SEPARATOR = "\x1f"

# Numbers with an absolute value of 10**308 or more are treated as "not a number" for
# filtering: PostgreSQL's numeric -> float8 cast overflows near there, and one exact
# cut-off that Python and SQL both evaluate exactly keeps the two in agreement.
NUMBER_LIMIT = 10**308

# A strict decimal number: optional sign, digits with an optional fraction (or a bare
# fraction), optional exponent. ASCII digits only: float() would also accept "1_000",
# "nan", "inf", " 1 " and Arabic-Indic digits, none of which a client means as a number.
NUMBER_SYNTAX = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def read_number(text: str) -> float | None:
    """The number `text` reads as, or None: strict decimal syntax and a finite double."""
    if not NUMBER_SYNTAX.fullmatch(text):
        return None
    value = float(text)
    if not math.isfinite(value):
        return None
    return value


def read_bool(text: str) -> bool | None:
    """`true`/`false` in any (ASCII) case, else None.

    ASCII only on purpose: "falſe".casefold() == "false" but nobody means that.
    """
    if not text.isascii():
        return None
    lowered = text.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    return None


def doc_number(value: Any) -> float | None:
    """A document value as a filterable number (a double), or None if it is not one.

    Booleans are not numbers (Python's bool is an int subclass). Integers beyond a
    double's precision compare as their nearest double, like JSON numbers in most clients.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    # Exact int/float comparison in Python; done before float() so huge ints cannot overflow.
    if not abs(value) < NUMBER_LIMIT:  # also rejects NaN
        return None
    return float(value)


def fold(text: str) -> str:
    """Case-insensitive comparison key: Unicode case folding (so "STRASSE" matches "straße")."""
    return text.casefold()


def canonical_number(value: float) -> str:
    """One spelling per double: 120, 120.0 and 1.2e2 all become '120.0'; -0.0 becomes '0.0'."""
    value = float(value)
    if value == 0:
        value = 0.0
    return repr(value)


# GIN (and btree) entries must fit in about a third of a page; longer terms are stored
# as a digest of the full term, computed the same way for documents and filter values.
MAX_TERM_CHARS = 400


def _term(prefix: str, kind: str, value: str) -> str:
    term = prefix + kind + ":" + value
    if len(term) <= MAX_TERM_CHARS:
        return term
    return prefix + "h:" + hashlib.sha256(term.encode("utf-8", "surrogatepass")).hexdigest()


def _field_prefix(field: str) -> str:
    # Escape the separator (and the escape character) inside field names so that a field
    # containing \x1f cannot forge another field's terms: the encoding stays injective.
    escaped = field.replace("\\", "\\\\").replace(TERM_SEPARATOR, "\\x1f")
    return escaped + TERM_SEPARATOR


def index_terms(doc: dict[str, Any]) -> list[str]:
    """Normalised equality terms of a product document, stored in `products.filter_terms`.

    Each term is `<field><US><type>:<value>` where `<US>` is \\x1f and `field` has `\\` and
    \\x1f backslash-escaped. Types: `s:` strings and string-array elements, case-folded;
    `n:` numbers as `canonical_number`; `b:` booleans as `true`/`false`; a term longer than
    MAX_TERM_CHARS becomes `h:` + the SHA-256 of the whole term. `_id` is matched
    on its own column, not here; nested objects and nulls produce no terms.
    """
    terms: set[str] = set()
    for field, value in doc.items():
        if field == ID_FIELD:
            continue
        prefix = _field_prefix(field)
        if isinstance(value, bool):
            terms.add(_term(prefix, "b", "true" if value else "false"))
        elif isinstance(value, int | float):
            number = doc_number(value)
            if number is not None:
                terms.add(_term(prefix, "n", canonical_number(number)))
        elif isinstance(value, str):
            terms.add(_term(prefix, "s", fold(value)))
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    terms.add(_term(prefix, "s", fold(item)))
    return sorted(terms)


def value_terms(field: str, value: str) -> list[str]:
    """The index terms a filter `field:value` matches: any one of them present is a match.

    Always the case-folded string; plus the canonical number if `value` reads as one,
    plus the boolean if it is `true`/`false`.
    """
    prefix = _field_prefix(field)
    terms = [_term(prefix, "s", fold(value))]
    number = read_number(value)
    if number is not None and abs(number) < NUMBER_LIMIT:
        terms.append(_term(prefix, "n", canonical_number(number)))
    boolean = read_bool(value)
    if boolean is not None:
        terms.append(_term(prefix, "b", "true" if boolean else "false"))
    return terms
