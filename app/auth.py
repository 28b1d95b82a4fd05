"""Admin keys (Bearer, stored hashed) and per-index read ids (x-marqo-index-id)."""

from __future__ import annotations

import hmac
import logging
import secrets
import sys

import asyncpg

from app.errors import unauthorized
from app.logs import admin_key_banner
from app.storage import apikeys
from app.storage.indexes import IndexRecord

log = logging.getLogger("lookalike.auth")


def new_secret() -> str:
    return "lk_" + secrets.token_urlsafe(32)


def new_index_id() -> str:
    return secrets.token_urlsafe(24)


class AdminKeys:
    """The digests of the keys that open admin endpoints, compared in constant time."""

    def __init__(self, digests: list[bytes]):
        self._digests = list(digests)

    def check(self, presented: str | None) -> bool:
        if not presented:
            return False
        digest = apikeys.key_digest(presented)
        ok = False
        for known in self._digests:  # no early exit: time does not depend on which key matched
            ok |= hmac.compare_digest(digest, known)
        return ok


async def bootstrap_admin_keys(pool: asyncpg.Pool, configured_key: str | None) -> AdminKeys:
    """LOOKALIKE_API_KEY when set; else the stored generated key, creating (and printing) it once."""
    if configured_key:
        await apikeys.store_key(pool, configured_key, "env")
        return AdminKeys([apikeys.key_digest(configured_key)])
    async with pool.acquire() as conn, conn.transaction():
        await apikeys.lock_key_bootstrap(conn)
        digests = await apikeys.active_key_digests(conn, source="generated")
        if not digests:
            key = new_secret()
            await apikeys.store_key(conn, key, "generated")
            digests = [apikeys.key_digest(key)]
            # Printed once, to the terminal only (never to the log): only its hash is stored.
            print(admin_key_banner(key, sys.stderr), file=sys.stderr, flush=True)
        else:
            # Another process (or an earlier start) created it; it was printed there, once.
            log.info("a generated admin API key exists (printed once by the process that created it)")
    return AdminKeys(digests)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_admin(keys: AdminKeys, authorization: str | None) -> None:
    if not keys.check(bearer_token(authorization)):
        raise unauthorized()


def can_read(
    index: IndexRecord, presented_index_id: str | None, keys: AdminKeys, authorization: str | None
) -> bool:
    """Reads need the index's own id (or the admin key); index A's id never opens index B."""
    if presented_index_id and hmac.compare_digest(presented_index_id.encode(), index.index_id.encode()):
        return True
    return keys.check(bearer_token(authorization))
