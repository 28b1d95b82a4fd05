-- Views a DBA reads to inspect lookalike. Installed by migration 0003, replaced by 0005 (embedding
-- queue columns); tests/test_sql_files.py checks this file and the latest migration's copy agree.

-- Products, vectors, embedding-queue and local-feature state per lookalike index.
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
       i.created_at,
       count(p.pk) FILTER (WHERE p.embedding_status = 'pending') AS embeddings_pending,
       count(p.pk) FILTER (WHERE p.embedding_status = 'failed') AS embeddings_failed
FROM indexes i
LEFT JOIN products p ON p.index_pk = i.pk
GROUP BY i.pk
ORDER BY i.name;

-- Products whose embedding (stage 'embedding', queue mode) or local features (stage
-- 'local_features') could not be computed, with the reason.
CREATE OR REPLACE VIEW lookalike_failed_products AS
SELECT i.name AS index_name, p.product_id,
       CASE WHEN p.embedding_status = 'failed' THEN p.embedding_error ELSE p.features_error END AS error,
       p.variant_image_url, p.updated_at,
       CASE WHEN p.embedding_status = 'failed' THEN 'embedding' ELSE 'local_features' END AS stage
FROM products p
JOIN indexes i ON i.pk = p.index_pk
WHERE p.features_status = 'failed' OR p.embedding_status = 'failed';

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

-- The embedding queue (LOOKALIKE_INGEST_MODE=queue): products waiting for a worker, who holds
-- each claim and until when (a claim whose lease has lapsed is taken by the next worker).
CREATE OR REPLACE VIEW lookalike_embedding_queue AS
SELECT i.name AS index_name, p.product_id, p.embedding_attempts AS attempts,
       p.claimed_by, p.claimed_at, p.lease_expires_at,
       (p.claimed_by IS NOT NULL AND p.lease_expires_at > now()) AS in_progress,
       p.updated_at AS queued_at
FROM products p
JOIN indexes i ON i.pk = p.index_pk
WHERE p.embedding_status = 'pending'
ORDER BY p.pk;
