"""The schema exists only through Alembic: empty -> head -> base -> head."""

from __future__ import annotations

import asyncio

import asyncpg

from app.storage import migrate


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


def test_upgrade_downgrade_upgrade(fresh_database: str) -> None:
    assert asyncio.run(_tables(fresh_database)) == set()
    migrate.upgrade(fresh_database)
    tables = asyncio.run(_tables(fresh_database))
    assert {"indexes", "products", "local_features", "api_keys", "alembic_version"} <= tables
    migrate.downgrade(fresh_database, "base")
    assert asyncio.run(_tables(fresh_database)) == {"alembic_version"}
    migrate.upgrade(fresh_database)
    assert {"indexes", "products"} <= asyncio.run(_tables(fresh_database))


async def _aggregate_state(url: str) -> dict[str, object]:
    conn = await asyncpg.connect(url)
    try:
        return {
            "column": await conn.fetchval(
                "SELECT count(*) FROM information_schema.columns "
                "WHERE table_name = 'vectors_1' AND column_name = 'local_aggregate'"
            ),
            "index": await conn.fetchval("SELECT count(*) FROM pg_indexes WHERE indexname = 'vectors_1_local_hnsw'"),
            "status": await conn.fetchval("SELECT features_status FROM products WHERE product_id = 'p1'"),
        }
    finally:
        await conn.close()


async def _index_at_0003(url: str) -> None:
    """An index, its vector table as 0003 knew it, and a product whose local features are ready."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO indexes (pk, name, index_id, settings, model, dimensions, vector_type) "
            "OVERRIDING SYSTEM VALUE VALUES (1, 'old', 'id-old', '{}', '{}', 3, 'halfvec')"
        )
        await conn.execute(
            "CREATE TABLE vectors_1 (product_pk bigint PRIMARY KEY REFERENCES products(pk) ON DELETE CASCADE,"
            " embedding halfvec(3) NOT NULL)"
        )
        pk = await conn.fetchval(
            "INSERT INTO products (index_pk, product_id, product_title, price, variant_image_url, doc,"
            " filter_terms, features_status) VALUES (1, 'p1', 't', 1, 'http://x/a.png', '{}', '{}', 'ready')"
            " RETURNING pk"
        )
        await conn.execute("INSERT INTO vectors_1 VALUES ($1, '[1,0,0]')", pk)
        await conn.execute(
            "INSERT INTO local_features (product_pk, algorithm, keypoint_count, keypoints, descriptors,"
            " image_width, image_height) VALUES ($1, 'rootsift-rgb-u8', 0, '', '', 1, 1)",
            pk,
        )
    finally:
        await conn.close()


def test_0004_adds_the_aggregate_to_existing_indexes_and_queues_their_backfill(fresh_database: str) -> None:
    migrate.upgrade(fresh_database, "0003")
    asyncio.run(_index_at_0003(fresh_database))
    migrate.upgrade(fresh_database)
    assert asyncio.run(_aggregate_state(fresh_database)) == {"column": 1, "index": 1, "status": "pending"}
    migrate.downgrade(fresh_database, "0003")
    state = asyncio.run(_aggregate_state(fresh_database))
    assert (state["column"], state["index"]) == (0, 0)


async def _facets_state(url: str) -> dict[str, object]:
    conn = await asyncpg.connect(url)
    try:
        table = await conn.fetchval("SELECT to_regclass('product_facets') IS NOT NULL")
        # lookalike_facet_doc, _terms and the triggers' lookalike_facets_inserted, _updated
        functions = await conn.fetchval("SELECT count(*) FROM pg_proc WHERE proname LIKE 'lookalike_facet%'")
        triggers = await conn.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'products_facets_%'")
        state: dict[str, object] = {"table": table, "functions": functions, "triggers": triggers}
        if table:
            rows = await conn.fetch(
                "SELECT product_id, doc, filter_terms, search_tsv IS NOT NULL AS tsv FROM product_facets"
            )
            state["rows"] = {r["product_id"]: (r["doc"], list(r["filter_terms"]), r["tsv"]) for r in rows}
        return state
    finally:
        await conn.close()


async def _colour_state(url: str) -> dict[str, object]:
    conn = await asyncpg.connect(url)
    try:
        return {
            "column": await conn.fetchval(
                "SELECT count(*) FROM information_schema.columns "
                "WHERE table_name = 'vectors_1' AND column_name = 'colour'"
            ),
            "index": await conn.fetchval("SELECT count(*) FROM pg_indexes WHERE indexname = 'vectors_1_colour_hnsw'"),
            "status": await conn.fetchval("SELECT features_status FROM products WHERE product_id = 'p1'"),
        }
    finally:
        await conn.close()


async def _product_at_0008(url: str, product_id: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO indexes (name, index_id, settings, model, dimensions, vector_type)"
            " VALUES ('facets', 'id-facets', '{}', '{}', 3, 'halfvec') ON CONFLICT DO NOTHING"
        )
        await conn.execute(
            "INSERT INTO products (index_pk, product_id, product_title, description, price, variant_image_url, doc,"
            " filter_terms) SELECT pk, $1, 'Red boot', 'long text', 1, 'http://x/a.png',"
            " '{\"productTitle\": \"Red boot\", \"description\": \"long text\", \"variantImageUrl\": \"http://x/a.png\","
            " \"brand\": \"Acme\"}', ARRAY[E'brand\\x1fs:acme', E'productTitle\\x1fs:red boot']"
            " FROM indexes WHERE name = 'facets'",
            product_id,
        )
    finally:
        await conn.close()


def test_0009_backfills_product_facets_and_downgrades(fresh_database: str) -> None:
    migrate.upgrade(fresh_database, "0008")
    asyncio.run(_product_at_0008(fresh_database, "p1"))
    migrate.upgrade(fresh_database, "0009")
    kept = ('{"brand": "Acme"}', ["brand\x1fs:acme"], True)
    assert asyncio.run(_facets_state(fresh_database)) == {
        "table": True, "functions": 4, "triggers": 2, "rows": {"p1": kept}
    }
    migrate.downgrade(fresh_database, "0008")
    assert asyncio.run(_facets_state(fresh_database)) == {"table": False, "functions": 0, "triggers": 0}
    asyncio.run(_product_at_0008(fresh_database, "p2"))  # written while 0009 was not there
    migrate.upgrade(fresh_database)
    assert asyncio.run(_facets_state(fresh_database))["rows"] == {"p1": kept, "p2": kept}


def test_0010_adds_the_colour_descriptor_to_existing_indexes_and_queues_their_backfill(fresh_database: str) -> None:
    migrate.upgrade(fresh_database, "0003")
    asyncio.run(_index_at_0003(fresh_database))
    migrate.upgrade(fresh_database, "0009")
    # the aggregate's backfill has run: the product's features are ready again, without a colour
    asyncio.run(_set_features_ready(fresh_database))
    assert asyncio.run(_colour_state(fresh_database)) == {"column": 0, "index": 0, "status": "ready"}
    migrate.upgrade(fresh_database, "0010")
    assert asyncio.run(_colour_state(fresh_database)) == {"column": 1, "index": 1, "status": "pending"}
    migrate.downgrade(fresh_database, "0009")
    state = asyncio.run(_colour_state(fresh_database))
    assert (state["column"], state["index"]) == (0, 0)
    assert asyncio.run(_aggregate_state(fresh_database))["column"] == 1  # 0004's column stays


async def _set_features_ready(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE products SET features_status = 'ready'")
    finally:
        await conn.close()


async def _text_state(url: str) -> dict[str, object]:
    conn = await asyncpg.connect(url)
    try:
        table = await conn.fetchval("SELECT to_regclass('product_text') IS NOT NULL")
        functions = await conn.fetchval("SELECT count(*) FROM pg_proc WHERE proname LIKE 'lookalike_text_rows%'")
        triggers = await conn.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'product_facets_text_%'")
        state: dict[str, object] = {"table": table, "functions": functions, "triggers": triggers}
        if table:
            # every product_facets row but its filter terms, nothing else
            state["drift"] = await conn.fetchval(
                "SELECT count(*) FROM ((SELECT pk, index_pk, product_id, price, parent_product_id, product_collections,"
                " embedding_status, search_tsv, doc FROM product_facets) EXCEPT ALL (SELECT pk, index_pk, product_id,"
                " price, parent_product_id, product_collections, embedding_status, search_tsv, doc FROM product_text))"
                " d"
            )
            rows = await conn.fetch("SELECT product_id, doc, search_tsv IS NOT NULL AS tsv FROM product_text")
            state["rows"] = {r["product_id"]: (r["doc"], r["tsv"]) for r in rows}
        return state
    finally:
        await conn.close()


def test_0011_backfills_product_text_and_downgrades(fresh_database: str) -> None:
    migrate.upgrade(fresh_database, "0010")
    asyncio.run(_product_at_0008(fresh_database, "p1"))
    migrate.upgrade(fresh_database, "0011")
    kept = ('{"brand": "Acme"}', True)
    assert asyncio.run(_text_state(fresh_database)) == {
        "table": True, "functions": 2, "triggers": 2, "drift": 0, "rows": {"p1": kept}
    }
    migrate.downgrade(fresh_database, "0010")
    assert asyncio.run(_text_state(fresh_database)) == {"table": False, "functions": 0, "triggers": 0}
    asyncio.run(_product_at_0008(fresh_database, "p2"))  # written while 0011 was not there
    migrate.upgrade(fresh_database)
    state = asyncio.run(_text_state(fresh_database))
    assert (state["drift"], state["rows"]) == (0, {"p1": kept, "p2": kept})


async def _vector_rows_state(url: str) -> dict[str, object]:
    conn = await asyncpg.connect(url)
    try:
        return {
            "foreign_keys": await conn.fetchval(
                "SELECT count(*) FROM pg_constraint WHERE conrelid = 'vectors_1'::regclass AND contype = 'f'"
            ),
            "row_trigger": await conn.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname = 'vectors_1_product'"),
            "delete_trigger": await conn.fetchval(
                "SELECT count(*) FROM pg_trigger WHERE tgname = 'products_vectors_delete'"
            ),
            "functions": await conn.fetchval("SELECT count(*) FROM pg_proc WHERE proname LIKE 'lookalike_vector%'"),
            "vectors": await conn.fetchval("SELECT count(*) FROM vectors_1"),
        }
    finally:
        await conn.close()


async def _write_vector_of_missing_product(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO vectors_1 (product_pk, embedding) VALUES (987654, '[0,1,0]')")
    except asyncpg.ForeignKeyViolationError as exc:
        return type(exc).__name__
    finally:
        await conn.close()
    return "accepted"


async def _delete_products(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DELETE FROM products")
    finally:
        await conn.close()


def test_0012_replaces_the_vector_tables_foreign_keys_by_triggers_and_downgrades(fresh_database: str) -> None:
    migrate.upgrade(fresh_database, "0003")
    asyncio.run(_index_at_0003(fresh_database))  # its vector table has the foreign key
    migrate.upgrade(fresh_database, "0011")
    before = asyncio.run(_vector_rows_state(fresh_database))
    assert (before["foreign_keys"], before["row_trigger"], before["vectors"]) == (1, 0, 1)
    migrate.upgrade(fresh_database)
    after = asyncio.run(_vector_rows_state(fresh_database))
    assert after == {"foreign_keys": 0, "row_trigger": 1, "delete_trigger": 1, "functions": 2, "vectors": 1}
    # the triggers keep what the key kept: no vector row without its product, none left behind
    assert asyncio.run(_write_vector_of_missing_product(fresh_database)) == "ForeignKeyViolationError"
    migrate.downgrade(fresh_database, "0011")
    assert asyncio.run(_vector_rows_state(fresh_database)) == {
        "foreign_keys": 1, "row_trigger": 0, "delete_trigger": 0, "functions": 0, "vectors": 1
    }
    migrate.upgrade(fresh_database)
    asyncio.run(_delete_products(fresh_database))
    assert asyncio.run(_vector_rows_state(fresh_database))["vectors"] == 0
