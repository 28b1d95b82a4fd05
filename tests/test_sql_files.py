"""sql/ stays true: the DBA views file matches what the migrations installed."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"


def _normalise(sql: str) -> str:
    sql = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return re.sub(r"\s+", " ", sql).strip()


def test_views_file_is_the_migration_copy() -> None:
    """The newest migration that installs the views holds a frozen copy of sql/dba_views.sql."""
    import importlib.util

    versions = Path(__file__).resolve().parents[1] / "migrations" / "versions"
    copies = []
    for path in sorted(versions.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"m_{path.stem}", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, "VIEWS"):
            copies.append((module.revision, module.VIEWS))
    assert copies, "no migration installs the DBA views"
    newest = max(copies)[1]
    assert _normalise((SQL_DIR / "dba_views.sql").read_text()) == _normalise(newest)


async def test_views_exist_and_answer(pool: asyncpg.Pool) -> None:
    names = re.findall(r"CREATE OR REPLACE VIEW (\w+)", (SQL_DIR / "dba_views.sql").read_text())
    assert len(names) == 4
    for name in names:
        await pool.fetch(f"SELECT * FROM {name}")  # noqa: S608 - names come from our own file
