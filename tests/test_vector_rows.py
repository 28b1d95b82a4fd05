"""Vector rows follow their products by triggers (migration 0012), with the foreign key's guarantees:
a product's delete removes its vector row whichever index it is in, a row cannot name a missing
product, and a writer and a deleter of the same product serialise on its row lock."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from app.storage import indexes
from app.storage.indexes import IndexRecord

DIM = 3


async def _index_with_products(pool: asyncpg.Pool, name: str, n: int) -> tuple[IndexRecord, list[int]]:
    async with pool.acquire() as conn, conn.transaction():
        record = await indexes.create_index(
            conn, name=name, index_id=f"{name}-id", settings={}, model={}, dimensions=DIM, vector_type="halfvec"
        )
        pks = [
            await conn.fetchval(
                "INSERT INTO products (index_pk, product_id, product_title, price, variant_image_url, doc)"
                " VALUES ($1, $2, 't', 1, 'http://x/a.png', $3::jsonb) RETURNING pk",
                record.pk,
                f"p{i}",
                json.dumps({"_id": f"p{i}"}),
            )
            for i in range(n)
        ]
        await conn.executemany(
            f"INSERT INTO {record.vectors_table} (product_pk, embedding) VALUES ($1, '[1,0,0]')", [(pk,) for pk in pks]
        )
    return record, pks


async def _count(pool: asyncpg.Pool, record: IndexRecord) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {record.vectors_table}"))


async def _wait_until_blocked(pool: asyncpg.Pool, pid: int) -> None:
    for _ in range(200):
        if await pool.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid):
            return
        await asyncio.sleep(0.05)
    pytest.fail("the second transaction never waited for the first one's lock")


async def test_deleting_products_removes_their_vector_rows_in_their_index_only(pool: asyncpg.Pool) -> None:
    a, _ = await _index_with_products(pool, "rows-a", 4)
    b, b_pks = await _index_with_products(pool, "rows-b", 5)
    assert await pool.fetchval(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'f'", b.vectors_table
    ) == 0
    await pool.execute("DELETE FROM products WHERE pk = ANY($1::bigint[])", b_pks[:2])
    assert (await _count(pool, a), await _count(pool, b)) == (4, 3)
    async with pool.acquire() as conn, conn.transaction():  # the index's delete cascades to its products
        await indexes.delete_index(conn, b)
    assert (await _count(pool, a), await _count(pool, b)) == (4, 0)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute(f"INSERT INTO {a.vectors_table} (product_pk, embedding) VALUES (-1, '[0,1,0]')")
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute(f"UPDATE {a.vectors_table} SET product_pk = -product_pk")


async def test_a_delete_waits_for_the_writer_of_its_vector_row_and_removes_it(pool: asyncpg.Pool) -> None:
    record, pks = await _index_with_products(pool, "rows-race", 2)
    await pool.execute(f"DELETE FROM {record.vectors_table}")
    insert = f"INSERT INTO {record.vectors_table} (product_pk, embedding) VALUES ($1, '[1,0,0]')"
    writer = await pool.acquire()
    deleter = await pool.acquire()
    try:
        tx = writer.transaction()
        await tx.start()
        await writer.execute(insert, pks[0])
        delete = asyncio.ensure_future(deleter.execute("DELETE FROM products WHERE pk = $1", pks[0]))
        await _wait_until_blocked(pool, deleter.get_server_pid())
        await tx.commit()
        await delete
        assert await _count(pool, record) == 0  # the committed row went with its product
        # the other way round: the writer waits for the delete, then finds no product
        tx = deleter.transaction()
        await tx.start()
        await deleter.execute("DELETE FROM products WHERE pk = $1", pks[1])
        write = asyncio.ensure_future(writer.execute(insert, pks[1]))
        await _wait_until_blocked(pool, writer.get_server_pid())
        await tx.commit()
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await write
        assert await _count(pool, record) == 0
    finally:
        await pool.release(writer)
        await pool.release(deleter)
