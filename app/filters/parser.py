"""The filter DSL (FILTER_DSL.md): text -> typed AST, and the AST back to text."""

from __future__ import annotations

import functools
import re

from app.filters.ast import And, FilterError, FilterNode, In, Not, Or, Range, Term
from app.filters.terms import NUMBER_SYNTAX, read_number

MAX_FILTER_LENGTH = 10_000
MAX_DEPTH = 32
MAX_IN_ITEMS = 10_000

# Only ASCII whitespace separates tokens: str.isspace() would also split on \x1c-\x1f
# and exotic Unicode spaces, which clients do not expect to be syntax.
WHITESPACE = frozenset(" \t\n\r\f\v")

# The `collections` alias is normalised to `productCollections` before storage, so a
# filter on the alias must look at the stored name or it could never match.
FIELD_ALIASES = {"collections": "productCollections"}

_OPERATORS = ("AND", "OR", "NOT")


def parse_filter(
    text: str | None,
    *,
    max_length: int = MAX_FILTER_LENGTH,
    max_depth: int = MAX_DEPTH,
    max_in_items: int = MAX_IN_ITEMS,
) -> FilterNode | None:
    """Parse a filter string into its AST; None for a missing, empty or all-whitespace filter.

    Raises FilterError with the 0-based position of the problem. The keyword limits
    exist for tests; callers use the defaults.
    """
    if text is None:
        return None
    if len(text) > max_length:
        raise FilterError(f"filter is too long ({len(text)} characters, the limit is {max_length})", max_length)
    if all(ch in WHITESPACE for ch in text):
        return None
    return _Parser(text, max_depth, max_in_items).parse()


def _show(text: str, limit: int = 40) -> str:
    """User text quoted for an error message, cut short so a 10 kB field cannot flood logs."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


@functools.cache
def _plain_run(stop: str) -> re.Pattern[str]:
    """A run of characters that are neither a backslash, whitespace, '(' nor in `stop`."""
    special = "\\" + "(" + stop + "".join(sorted(WHITESPACE))
    return re.compile("[^" + "".join(re.escape(ch) for ch in special) + "]*")


def _is_keyword(word: str, keyword: str) -> bool:
    """`TO`/`IN` in any ASCII case (ASCII so that no exotic letter upper-cases into one)."""
    return word.isascii() and word.upper() == keyword


class _Parser:
    """Recursive descent over the raw string, tracking offsets for error messages."""

    def __init__(self, text: str, max_depth: int, max_in_items: int):
        self.text = text
        self.n = len(text)
        self.pos = 0
        self.depth = 0
        self.max_depth = max_depth
        self.max_in_items = max_in_items

    # -- helpers

    def error(self, reason: str, position: int | None = None) -> FilterError:
        return FilterError(reason, self.pos if position is None else position)

    def at_end(self) -> bool:
        return self.pos >= self.n

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < self.n else ""

    def skip_ws(self) -> bool:
        start = self.pos
        while self.pos < self.n and self.text[self.pos] in WHITESPACE:
            self.pos += 1
        return self.pos > start

    def word_at(self, pos: int) -> str:
        """The run of non-space, non-parenthesis characters at `pos` (for messages and checks)."""
        end = pos
        while end < self.n and self.text[end] not in WHITESPACE and self.text[end] not in "()":
            end += 1
        return self.text[pos:end]

    def operator_at(self, pos: int) -> str | None:
        """An upper-case operator at `pos`: the word itself, delimited by space, paren or end."""
        if pos >= self.n or self.text[pos] not in "AON":
            return None
        for op in _OPERATORS:
            end = pos + len(op)
            if self.text.startswith(op, pos) and (
                end >= self.n or self.text[end] in WHITESPACE or self.text[end] in "()"
            ):
                return op
        return None

    def consume_operator(self, op: str) -> int:
        """Consume `op` at the cursor and the space after it; returns the operator's offset."""
        start = self.pos
        self.pos += len(op)
        if self.peek() == "(":
            raise self.error(f"expected a space between {op} and '('")
        self.skip_ws()
        return start

    def read_escaped(self, stop: str, *, in_value: bool) -> tuple[str, int]:
        """Unescaped text up to an unescaped stop character, whitespace or the end.

        Returns the text (backslashes dropped) and its start offset. With `in_value`, an
        unescaped '(' is an error: it would otherwise silently start a second term.
        """
        start = self.pos
        plain_run = _plain_run(stop)
        chars: list[str] = []
        while True:
            # Runs of ordinary characters in one regex step: parsing a 10 kB filter is
            # event-loop time, so it should not be a Python loop per character.
            match = plain_run.match(self.text, self.pos)
            assert match is not None  # the pattern matches the empty string
            chars.append(match.group())
            self.pos = match.end()
            if self.pos >= self.n:
                break
            ch = self.text[self.pos]
            if ch == "\\":
                if self.pos + 1 >= self.n:
                    raise self.error("dangling backslash at the end of the filter")
                chars.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            if ch in WHITESPACE or ch in stop:
                break
            # Only '(' is left: an error inside values, an ordinary character elsewhere.
            if in_value:
                raise self.error("unexpected '(' inside a value (escape it as \\()")
            chars.append(ch)
            self.pos += 1
        return "".join(chars), start

    # -- grammar

    def parse(self) -> FilterNode:
        self.skip_ws()
        node = self.parse_or()
        self.skip_ws()
        if not self.at_end():
            # parse_and reports anything that is not an operator; only ')' gets here.
            raise self.error("unbalanced parentheses: ')' without a matching '('")
        return node

    def parse_or(self) -> FilterNode:
        children = [self.parse_and()]
        while True:
            save = self.pos
            self.skip_ws()
            if self.operator_at(self.pos) != "OR":
                self.pos = save
                break
            op_pos = self.consume_operator("OR")
            children.append(self.parse_and_after("OR", op_pos))
        return children[0] if len(children) == 1 else Or(tuple(children))

    def parse_and_after(self, op: str, op_pos: int) -> FilterNode:
        self.expect_term_after(op, op_pos)
        return self.parse_and()

    def parse_and(self) -> FilterNode:
        children = [self.parse_unary()]
        while True:
            self.check_after_term()
            save = self.pos
            self.skip_ws()
            if self.at_end() or self.peek() == ")":
                self.pos = save
                break
            op = self.operator_at(self.pos)
            if op == "OR":
                self.pos = save
                break
            if op == "AND":
                op_pos = self.consume_operator("AND")
                self.expect_term_after("AND", op_pos)
                children.append(self.parse_unary())
                continue
            raise self.not_an_operator()
        return children[0] if len(children) == 1 else And(tuple(children))

    def check_after_term(self) -> None:
        """A term or group must be followed by space, ')' or the end: `(a:1)AND` is refused."""
        if self.at_end() or self.peek() in WHITESPACE or self.peek() == ")":
            return
        op = self.operator_at(self.pos)
        if op is not None:
            raise self.error(f"expected a space before {op}")
        raise self.error("expected an operator (AND, OR) between terms")

    def not_an_operator(self) -> FilterError:
        """Where AND/OR was due, something else came: name the likely mistake."""
        op = self.operator_at(self.pos)
        if op == "NOT":
            return self.error("expected AND or OR before NOT")
        word = self.word_at(self.pos)
        if word.lower() in ("and", "or"):
            return self.error(f"operators are upper case: write {word.upper()} instead of {word}")
        return self.error("expected an operator (AND, OR) between terms")

    def expect_term_after(self, op: str, op_pos: int) -> None:
        if self.at_end():
            raise self.error(f"dangling operator {op}: expected a term after it", op_pos)
        if self.peek() == ")":
            raise self.error(f"expected a term after {op}, found ')'")
        other = self.operator_at(self.pos)
        if other in ("AND", "OR"):
            raise self.error(f"unexpected operator {other} after {op}")
        if op == "NOT" and other == "NOT":
            raise self.error("NOT cannot follow NOT")

    def parse_unary(self) -> FilterNode:
        op = self.operator_at(self.pos)
        if op == "NOT":
            op_pos = self.consume_operator("NOT")
            self.expect_term_after("NOT", op_pos)
            return Not(self.parse_primary())
        if op is not None:
            raise self.error(f"unexpected operator {op}: expected a term")
        return self.parse_primary()

    def parse_primary(self) -> FilterNode:
        if self.peek() == "(":
            return self.parse_group()
        if self.peek() == ")":
            if self.depth == 0:
                raise self.error("unbalanced parentheses: ')' without a matching '('")
            raise self.error("expected a term, found ')'")
        return self.parse_term()

    def parse_group(self) -> FilterNode:
        open_pos = self.pos
        if self.depth >= self.max_depth:
            raise self.error(f"filter nests parentheses deeper than {self.max_depth} levels")
        self.depth += 1
        self.pos += 1
        self.skip_ws()
        if self.peek() == ")":
            raise self.error("empty group '()'", open_pos)
        if self.at_end():
            raise self.error("unbalanced parentheses: '(' is never closed", open_pos)
        node = self.parse_or()
        self.skip_ws()
        if self.at_end():
            raise self.error("unbalanced parentheses: '(' is never closed", open_pos)
        # parse_or stops only at ')' or the end.
        self.pos += 1
        self.depth -= 1
        return node

    def parse_term(self) -> FilterNode:
        start = self.pos
        field, _ = self.read_escaped(":()", in_value=False)
        if self.peek() == ":":
            if not field:
                raise self.error("missing field name before ':'")
            self.pos += 1
            return self.parse_value(FIELD_ALIASES.get(field, field))
        if not field:
            # Only '(' or ')' can stop an empty read here, and parse_primary handles both.
            raise self.error("expected a term")
        # No colon: the only other term is `field IN (...)`.
        after_field = self.pos
        self.skip_ws()
        word = self.word_at(self.pos)
        if self.pos > after_field and _is_keyword(word, "IN"):
            return self.parse_in(FIELD_ALIASES.get(field, field))
        raw = self.text[start:after_field]
        if raw.lower() in ("and", "or", "not") and self.pos > after_field:
            raise self.error(f"operators are upper case: write {raw.upper()} instead of {raw}", start)
        raise self.error(f"expected ':' after field name {_show(field)}", after_field)

    def parse_value(self, field: str) -> FilterNode:
        ch = self.peek()
        if ch == "" or ch in WHITESPACE or ch == ")":
            raise self.error("missing value after ':'")
        if ch == "[":
            return self.parse_range(field)
        if ch == "{":
            raise self.error("'{' ranges are not supported: use [low TO high] (inclusive)")
        if ch == "(":
            return Term(field, self.parse_grouped())
        value, _ = self.read_escaped(")", in_value=True)
        return Term(field, value)

    def parse_grouped(self) -> str:
        """`(Light Blue)`: words up to the matching ')', operators are plain text inside.

        Leading/trailing space is dropped and runs of unescaped space become one space;
        escaped spaces are kept as written.
        """
        open_pos = self.pos
        self.pos += 1
        words: list[str] = []
        while True:
            self.skip_ws()
            if self.at_end():
                raise self.error("unbalanced parentheses: grouped value is never closed", open_pos)
            if self.peek() == ")":
                self.pos += 1
                break
            word, _ = self.read_escaped(")", in_value=True)
            words.append(word)
        if not words:
            raise self.error("empty group '()'", open_pos)
        return " ".join(words)

    def parse_range(self, field: str) -> FilterNode:
        open_pos = self.pos
        self.pos += 1
        self.skip_ws()
        low = self.parse_bound()
        if not self.skip_ws() or not _is_keyword(self.word_at(self.pos), "TO") or self.peek() == "]":
            raise self.error("expected TO in range [low TO high]")
        self.pos += 2
        self.skip_ws()  # word_at() above guaranteed TO ends at a space, '(' or the end
        high = self.parse_bound()
        self.skip_ws()
        if self.at_end():
            raise self.error("unbalanced brackets: expected ']' to close the range")
        if self.peek() == "}":
            raise self.error("'{...}' ranges are not supported: close the range with ']'")
        if self.peek() != "]":
            raise self.error("expected ']' after the range's upper bound")
        self.pos += 1
        if low is None and high is None:
            raise self.error("[* TO *] is not a range: give at least one bound", open_pos)
        return Range(field, low, high)

    def parse_bound(self) -> float | None:
        if self.at_end():
            raise self.error("unbalanced brackets: expected ']' to close the range")
        bound, start = self.read_escaped("]}", in_value=False)
        if not bound:
            raise self.error("invalid range bound: expected a number or *")
        if self.text[start : self.pos] == "*":  # an escaped \* is a literal, not "open"
            return None
        number = read_number(bound)
        if number is None:
            if NUMBER_SYNTAX.fullmatch(bound):
                raise self.error(f"range bound {_show(bound)} is out of range for a number", start)
            raise self.error(f"invalid range bound {_show(bound)}: expected a number or *", start)
        return number

    def parse_in(self, field: str) -> FilterNode:
        self.pos += 2  # "IN", any case
        self.skip_ws()
        if self.peek() != "(":
            raise self.error("missing '(' after IN")
        open_pos = self.pos
        self.pos += 1
        values: list[str] = []
        while True:
            self.skip_ws()
            if self.at_end():
                raise self.error("unbalanced parentheses: IN list is never closed", open_pos)
            ch = self.peek()
            if ch == ")":
                if not values:
                    raise self.error("empty IN list", open_pos)
                raise self.error("expected an item after ',' in IN list")
            if ch == ",":
                raise self.error("empty item in IN list")
            if len(values) >= self.max_in_items:
                raise self.error(f"IN list has more than {self.max_in_items} items")
            if ch == "(":
                values.append(self.parse_grouped())
            else:
                item, _ = self.read_escaped(",)", in_value=True)
                values.append(item)
            self.skip_ws()
            if self.at_end():
                raise self.error("unbalanced parentheses: IN list is never closed", open_pos)
            if self.peek() == ",":
                self.pos += 1
                continue
            if self.peek() == ")":
                self.pos += 1
                return In(field, tuple(values))
            raise self.error("expected ',' or ')' in IN list (group multi-word items: (Acme Co))")


# ----------------------------------------------------------------- rendering

# Characters escaped when rendering: everything the parser may treat as syntax somewhere.
_SPECIAL = frozenset("\\():,[]{}") | WHITESPACE


def escape(text: str) -> str:
    """Backslash-escape `text` so that it parses back as one literal field name or value."""
    out = "".join("\\" + ch if ch in _SPECIAL else ch for ch in text)
    # A field named like an operator would otherwise read as the operator (`NOT IN (x)`).
    if text in _OPERATORS:
        out = "\\" + out
    return out


def _format_bound(value: float | None) -> str:
    return "*" if value is None else repr(value)


def format_filter(node: FilterNode | None) -> str:
    """Render an AST back to filter text that parses to an equal AST (logs, tests, clients)."""
    if node is None:
        return ""
    if isinstance(node, Term):
        return f"{escape(node.field)}:{escape(node.value)}"
    if isinstance(node, Range):
        return f"{escape(node.field)}:[{_format_bound(node.low)} TO {_format_bound(node.high)}]"
    if isinstance(node, In):
        return f"{escape(node.field)} IN ({', '.join(escape(v) for v in node.values)})"
    if isinstance(node, Not):
        inner = format_filter(node.child)
        return f"NOT ({inner})" if isinstance(node.child, And | Or | Not) else f"NOT {inner}"
    joiner = " AND " if isinstance(node, And) else " OR "
    return joiner.join(
        f"({format_filter(child)})" if isinstance(child, And | Or) else format_filter(child) for child in node.children
    )
