"""The embedded PostgreSQL is sized to the machine, not left at PostgreSQL's laptop defaults."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg
import psutil

from app.storage import db

GB = 2**30


def test_tuning_scales_with_memory_and_is_bounded() -> None:
    small = db.embedded_tuning(2 * GB, 2)
    assert small["shared_buffers"] == "256MB" and small["maintenance_work_mem"] == "128MB"
    ci = db.embedded_tuning(24 * GB, 2)
    assert ci["shared_buffers"] == "3072MB" and ci["maintenance_work_mem"] == "1536MB"
    assert ci["max_parallel_maintenance_workers"] == "1"
    huge = db.embedded_tuning(512 * GB, 64)
    assert huge["shared_buffers"] == "4096MB" and huge["maintenance_work_mem"] == "2048MB"
    assert db.embedded_tuning(256 * 2**20, 1)["shared_buffers"] == "128MB"  # never below the default


async def _show(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(url)
    try:
        return {
            name: await conn.fetchval(f"SELECT current_setting('{name}')")
            for name in ("shared_buffers", "maintenance_work_mem")
        }
    finally:
        await conn.close()


def _mb(value: str) -> int:
    units = {"kB": 1 / 1024, "MB": 1, "GB": 1024}
    number = value.rstrip("kBMG")
    return round(float(number) * units[value[len(number) :]])


def test_a_fresh_embedded_server_runs_with_the_tuning(tmp_path: Path) -> None:
    server = db.embedded_server(tmp_path)
    try:
        shown = asyncio.run(_show(server.get_uri("postgres")))
        want = db.embedded_tuning(psutil.virtual_memory().total, os.cpu_count() or 1)
        assert _mb(shown["shared_buffers"]) == _mb(want["shared_buffers"])
        assert _mb(shown["maintenance_work_mem"]) == _mb(want["maintenance_work_mem"])
        conf = (tmp_path / "pgdata" / "postgresql.conf").read_text()
        assert conf.count("include_if_exists = 'lookalike.conf'") == 1
    finally:
        db.release_embedded(server)
