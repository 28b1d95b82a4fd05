"""Admin API keys, stored as SHA-256 digests (keys are 256-bit random, so a fast hash suffices)."""

from __future__ import annotations

import hashlib

import asyncpg


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


ACTIVE_KEYS = "SELECT key_sha256 FROM api_keys WHERE revoked_at IS NULL"
ACTIVE_KEYS_FROM = "SELECT key_sha256 FROM api_keys WHERE revoked_at IS NULL AND source = $1"


async def active_key_digests(
    conn: asyncpg.Connection | asyncpg.Pool, source: str | None = None
) -> list[bytes]:
    if source is None:
        rows = await conn.fetch(ACTIVE_KEYS)
    else:
        rows = await conn.fetch(ACTIVE_KEYS_FROM, source)
    return [bytes(r["key_sha256"]) for r in rows]


def key_prefix(key: str, source: str) -> str:
    """What may be stored in clear to tell keys apart: 3 random characters of a generated `lk_` key.

    Nothing of an operator-chosen key (LOOKALIKE_API_KEY): its first characters are part of a
    secret that may be short, and they would shrink what is left to guess (found by
    tests/test_auth_matrix.py, which checks the table holds no plaintext).
    """
    return key[:6] if source == "generated" else ""


STORE_KEY = """
INSERT INTO api_keys (key_sha256, key_prefix, source) VALUES ($1, $2, $3)
ON CONFLICT (key_sha256) DO UPDATE SET revoked_at = NULL, key_prefix = EXCLUDED.key_prefix
"""


async def store_key(conn: asyncpg.Connection | asyncpg.Pool, key: str, source: str) -> None:
    await conn.execute(
        STORE_KEY,
        key_digest(key),
        key_prefix(key, source),
        source,
    )


# Advisory lock serialising first-start key generation: the bytes of "lookakey" as a bigint
# (beside app.storage.migrate.MIGRATION_LOCK_KEY, "lookalik").
KEY_BOOTSTRAP_LOCK_KEY = 7813586385497711993


async def lock_key_bootstrap(conn: asyncpg.Connection) -> None:
    """Serialise first-start key generation between processes (held until the transaction ends)."""
    await conn.execute(LOCK_KEY_BOOTSTRAP)


LOCK_KEY_BOOTSTRAP = f"SELECT pg_advisory_xact_lock({KEY_BOOTSTRAP_LOCK_KEY})"
