"""embedding queue: per-product embedding state, worker claims with a lease; DBA views updated

LOOKALIKE_INGEST_MODE=queue stores products with `embedding_status = 'pending'` and no
vector row; `lookalike worker` processes claim them (`FOR UPDATE SKIP LOCKED`, then a
lease: `claimed_by`, `claimed_at`, `lease_expires_at`), embed, and mark them 'ready' or
'failed' (`embedding_error`). Existing products are 'ready'. Only 'ready' products are
searchable. The DBA views gain the embedding counts, failures and the queue itself
(sql/dba_views.sql).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
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
       i.created_at,
       count(p.pk) FILTER (WHERE p.embedding_status = 'pending') AS embeddings_pending,
       count(p.pk) FILTER (WHERE p.embedding_status = 'failed') AS embeddings_failed
FROM indexes i
LEFT JOIN products p ON p.index_pk = i.pk
GROUP BY i.pk
ORDER BY i.name;

CREATE OR REPLACE VIEW lookalike_failed_products AS
SELECT i.name AS index_name, p.product_id,
       CASE WHEN p.embedding_status = 'failed' THEN p.embedding_error ELSE p.features_error END AS error,
       p.variant_image_url, p.updated_at,
       CASE WHEN p.embedding_status = 'failed' THEN 'embedding' ELSE 'local_features' END AS stage
FROM products p
JOIN indexes i ON i.pk = p.index_pk
WHERE p.features_status = 'failed' OR p.embedding_status = 'failed';

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

CREATE OR REPLACE VIEW lookalike_embedding_queue AS
SELECT i.name AS index_name, p.product_id, p.embedding_attempts AS attempts,
       p.claimed_by, p.claimed_at, p.lease_expires_at,
       (p.claimed_by IS NOT NULL AND p.lease_expires_at > now()) AS in_progress,
       p.updated_at AS queued_at
FROM products p
JOIN indexes i ON i.pk = p.index_pk
WHERE p.embedding_status = 'pending'
ORDER BY p.pk;
"""

# The 0003 views, restored on downgrade.
_VIEWS_0003 = """
CREATE VIEW lookalike_index_overview AS
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

CREATE VIEW lookalike_failed_products AS
SELECT i.name AS index_name, p.product_id, p.features_error AS error, p.variant_image_url, p.updated_at
FROM products p
JOIN indexes i ON i.pk = p.index_pk
WHERE p.features_status = 'failed';
"""


def _run(script: str) -> None:
    # asyncpg prepares each statement, so they go one at a time.
    for statement in script.split(";"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    op.add_column("products", sa.Column("embedding_status", sa.Text, nullable=False, server_default="ready"))
    op.add_column("products", sa.Column("embedding_error", sa.Text))
    op.add_column("products", sa.Column("embedding_attempts", sa.Integer, nullable=False, server_default="0"))
    op.add_column("products", sa.Column("claimed_by", sa.Text))
    op.add_column("products", sa.Column("claimed_at", sa.DateTime(timezone=True)))
    op.add_column("products", sa.Column("lease_expires_at", sa.DateTime(timezone=True)))
    op.create_check_constraint(
        "products_embedding_status_check", "products", "embedding_status IN ('pending', 'ready', 'failed')"
    )
    op.create_index(
        "products_embedding_pending_idx",
        "products",
        ["pk"],
        postgresql_where=sa.text("embedding_status = 'pending'"),
    )
    # Columns of the overview and failures views change: replace, not CREATE OR REPLACE.
    op.execute("DROP VIEW IF EXISTS lookalike_index_overview")
    op.execute("DROP VIEW IF EXISTS lookalike_failed_products")
    _run(VIEWS)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS lookalike_embedding_queue")
    op.execute("DROP VIEW IF EXISTS lookalike_index_overview")
    op.execute("DROP VIEW IF EXISTS lookalike_failed_products")
    _run(_VIEWS_0003)
    op.drop_index("products_embedding_pending_idx", table_name="products")
    op.drop_constraint("products_embedding_status_check", "products", type_="check")
    for column in ("lease_expires_at", "claimed_at", "claimed_by", "embedding_attempts", "embedding_error",
                   "embedding_status"):
        op.drop_column("products", column)
