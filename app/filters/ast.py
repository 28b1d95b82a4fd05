"""The filter DSL's typed AST (FILTER_DSL.md) and its parse error.

Shared by every layer: `domain` decides with it, `storage.filter_sql` compiles it to SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from app.errors import ApiError

ID_FIELD = "_id"


@dataclass(frozen=True, slots=True)
class Term:
    """`field:value` — equality with the per-type rules of FILTER_DSL.md."""

    field: str
    value: str


@dataclass(frozen=True, slots=True)
class Range:
    """`field:[low TO high]`, inclusive; None is an open bound (`*`), never both."""

    field: str
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True)
class In:
    """`field IN (v1, ..., vn)` — any of the values, each with the `Term` rules."""

    field: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Not:
    child: FilterNode


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[FilterNode, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[FilterNode, ...]


FilterNode: TypeAlias = Term | Range | In | Not | And | Or


class FilterError(ValueError):
    """A filter string that does not parse; `position` is the 0-based offset of the problem."""

    def __init__(self, reason: str, position: int):
        super().__init__(reason, position)
        self.reason = reason
        self.position = position

    def __str__(self) -> str:
        return f"Error parsing filter: {self.reason} at position {self.position}"

    def to_api_error(self) -> ApiError:
        return ApiError(400, "invalid_filter", str(self))
