"""Bind-parameter collector: SQL text only ever gets `$n` placeholders, values go separately."""

from __future__ import annotations

from typing import Any


class SqlParams:
    def __init__(self, initial: list[Any] | None = None):
        self.values: list[Any] = list(initial or [])

    def add(self, value: Any, cast: str | None = None) -> str:
        """Append `value` and return its placeholder, e.g. `$3` or `$3::text[]`."""
        self.values.append(value)
        placeholder = f"${len(self.values)}"
        return f"{placeholder}::{cast}" if cast else placeholder
