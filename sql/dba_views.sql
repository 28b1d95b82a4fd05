-- Views a DBA reads to inspect lookalike. Installed by migration 0003; tests/test_sql_files.py
-- checks this file and the database agree.

-- Products, vectors and local-feature state per lookalike index.
CREATE OR REPLACE VIEW lookalike_index_overview AS
SELECT i.name AS index_name,
       i.model ->> 'name' AS model,
       i.dimensions,
       i.vector_type,
       (i.settings -> 'reverseImageSearch' ->> 'enabled')::boolean AS reverse_search_enabled,
       count(p.pk) AS products,
       count(p.pk) FILTER (WHERE p.features_status = 'ready') AS features_ready,
       count(p.pk) FILTER (WHERE p.features_status = 'pending') AS features_pending,
       count(p.pk) FILTER (WHERE p.features_status = 'failed') AS features_failed,
       i.created_at
FROM indexes i
LEFT JOIN products p ON p.index_pk = i.pk
GROUP BY i.pk
ORDER BY i.name;

-- Products whose local features could not be computed, with the reason.
CREATE OR REPLACE VIEW lookalike_failed_products AS
SELECT i.name AS index_name, p.product_id, p.features_error AS error, p.variant_image_url, p.updated_at
FROM products p
JOIN indexes i ON i.pk = p.index_pk
WHERE p.features_status = 'failed';

-- Each index's own vector table and HNSW index, with their sizes.
CREATE OR REPLACE VIEW lookalike_vector_sizes AS
SELECT i.name AS index_name,
       'vectors_' || i.pk AS vector_table,
       c.reltuples::bigint AS estimated_rows,
       pg_size_pretty(pg_relation_size(c.oid)) AS table_size,
       pg_size_pretty(pg_relation_size(to_regclass('vectors_' || i.pk || '_hnsw'))) AS hnsw_size,
       pg_relation_size(to_regclass('vectors_' || i.pk || '_hnsw')) AS hnsw_bytes
FROM indexes i
LEFT JOIN pg_class c ON c.oid = to_regclass('vectors_' || i.pk)
ORDER BY i.name;
