"""DBA views: index overview, failed products, vector table sizes (sql/dba_views.sql)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of sql/dba_views.sql at this revision (a later change gets a new migration).
VIEWS = """
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

CREATE OR REPLACE VIEW lookalike_failed_products AS
SELECT i.name AS index_name, p.product_id, p.features_error AS error, p.variant_image_url, p.updated_at
FROM products p
JOIN indexes i ON i.pk = p.index_pk
WHERE p.features_status = 'failed';

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
"""


def upgrade() -> None:
    # asyncpg prepares each statement, so they go one at a time.
    for statement in VIEWS.split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS lookalike_vector_sizes")
    op.execute("DROP VIEW IF EXISTS lookalike_failed_products")
    op.execute("DROP VIEW IF EXISTS lookalike_index_overview")
