"""local-feature aggregate: a `local_aggregate halfvec(512)` column + HNSW index in every vector table

Reverse image search retrieves candidates by the aggregate of each product's local
features (app/vision/aggregate.py) as well as by its embedding. New indexes get the
column when they are created; this migration adds it to the vector tables of indexes
that already exist, and queues their products that have local features for the
feature backfill (status 'pending'), which recomputes features and aggregate from the
product image. Until the backfill reaches a product, it is found through its embedding
only, as before.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Fixed here (a migration must not change when the application's constants do).
_CAST = "halfvec(512)"


def _vector_tables() -> list[str]:
    pks = op.get_bind().execute(sa.text("SELECT pk FROM indexes ORDER BY pk")).scalars().all()
    return [f"vectors_{int(pk)}" for pk in pks]


def upgrade() -> None:
    for table in _vector_tables():
        op.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS local_aggregate {_CAST}")
        op.execute(
            f"CREATE INDEX IF NOT EXISTS {table}_local_hnsw ON {table} "
            "USING hnsw (local_aggregate halfvec_cosine_ops) WITH (m = 16, ef_construction = 64)"
        )
    op.execute(
        """
        UPDATE products p SET features_status = 'pending', features_error = NULL
        WHERE p.features_status = 'ready'
          AND EXISTS (SELECT 1 FROM local_features f WHERE f.product_pk = p.pk)
        """
    )


def downgrade() -> None:
    for table in _vector_tables():
        op.execute(f"DROP INDEX IF EXISTS {table}_local_hnsw")
        op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS local_aggregate")
