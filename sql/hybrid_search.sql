-- Hybrid text search (/search, searchMethod HYBRID, the default on indexes whose model has a text
-- tower): the lexical leg and the vector leg, each a CTE with its own LIMIT and the filter inside,
-- fused by reciprocal rank fusion: the sum of 1 / (60 + rank) over the legs that found a product.
-- Rendered by app.storage.search.hybrid_sql for q = 'leather boot' ($3), filter `brand:(Nike)` ($1),
-- a 512-d halfvec index (vectors_1), k = 10 ($5); tests/test_text_search.py keeps this file true.
-- The lexical leg is app.storage.search.lexical_leg_sql, the same ranking as LEXICAL text search.

-- HNSW walk (the planner estimates more than EXACT_SCAN_MAX_ROWS matching products):
WITH lexical AS MATERIALIZED (
    SELECT l.pk, row_number() OVER (ORDER BY l.score DESC, l.product_id COLLATE "C") AS rank
    FROM (
        SELECT p.pk, p.product_id, ts_rank_cd(p.search_tsv, q.query) AS score
        FROM products p, websearch_to_tsquery('english', $3) AS q(query)
        WHERE p.index_pk = $4 AND p.search_tsv @@ q.query AND ((p.filter_terms && $1::text[]))
        ORDER BY score DESC, p.product_id COLLATE "C"
        LIMIT $5
    ) l
),
vector AS MATERIALIZED (
    SELECT c.product_pk AS pk, row_number() OVER (ORDER BY c.distance, c.product_pk) AS rank
    FROM (
        SELECT v.product_pk, v.embedding <=> $2::halfvec(512) AS distance
        FROM vectors_1 v JOIN products p ON p.pk = v.product_pk
        WHERE p.index_pk + 0 = $4 AND ((p.filter_terms && $1::text[]))
        ORDER BY v.embedding <=> $2::halfvec(512)
        LIMIT $5
    ) c
),
fused AS (
    SELECT legs.pk, sum(1.0 / ($6::int + legs.rank)) AS score
    FROM (SELECT pk, rank FROM lexical UNION ALL SELECT pk, rank FROM vector) legs
    GROUP BY legs.pk
)
SELECT p.pk, p.product_id, p.doc, f.score::float8 AS score, (SELECT count(*) FROM vector) AS vector_rows
FROM fused f JOIN products p ON p.pk = f.pk
ORDER BY f.score DESC, p.product_id COLLATE "C"
LIMIT $5;

-- Exact scan over the filtered rows (a selective filter, or a walk that came back short):
WITH lexical AS MATERIALIZED (
    SELECT l.pk, row_number() OVER (ORDER BY l.score DESC, l.product_id COLLATE "C") AS rank
    FROM (
        SELECT p.pk, p.product_id, ts_rank_cd(p.search_tsv, q.query) AS score
        FROM products p, websearch_to_tsquery('english', $3) AS q(query)
        WHERE p.index_pk = $4 AND p.search_tsv @@ q.query AND ((p.filter_terms && $1::text[]))
        ORDER BY score DESC, p.product_id COLLATE "C"
        LIMIT $5
    ) l
),
vector AS MATERIALIZED (
    SELECT c.product_pk AS pk, row_number() OVER (ORDER BY c.distance, c.product_pk) AS rank
    FROM (
        SELECT v.product_pk, v.embedding <=> $2::halfvec(512) AS distance
        FROM vectors_1 v JOIN products p ON p.pk = v.product_pk
        WHERE p.index_pk + 0 = $4 AND ((p.filter_terms && $1::text[]))
        ORDER BY (v.embedding <=> $2::halfvec(512)) + 0, p.pk
        LIMIT $5
    ) c
),
fused AS (
    SELECT legs.pk, sum(1.0 / ($6::int + legs.rank)) AS score
    FROM (SELECT pk, rank FROM lexical UNION ALL SELECT pk, rank FROM vector) legs
    GROUP BY legs.pk
)
SELECT p.pk, p.product_id, p.doc, f.score::float8 AS score, (SELECT count(*) FROM vector) AS vector_rows
FROM fused f JOIN products p ON p.pk = f.pk
ORDER BY f.score DESC, p.product_id COLLATE "C"
LIMIT $5;
