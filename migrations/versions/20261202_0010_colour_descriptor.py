"""colour descriptor: a `colour halfvec(112)` column + HNSW index in every vector table

Reverse image search scores candidates by a non-learned colour descriptor of each product
image (app/vision/colour.py) as well as by its embedding and keypoints: flat, low-texture
products and soft photos leave verification little to match, their colours survive. New
indexes get the column when they are created; this migration adds it to the vector tables
of indexes that already exist, and queues their products that have local features for the
feature backfill (status 'pending'), which recomputes features, aggregate and colour from
the product image. Until the backfill reaches a product, it has no colour score (it is
ranked as before).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Fixed here (a migration must not change when the application's constants do).
_CAST = "halfvec(112)"


def _vector_tables() -> list[str]:
    """The vector tables of the existing indexes (an index row whose table is gone is skipped)."""
    pks = op.get_bind().execute(
        sa.text("SELECT pk FROM indexes WHERE to_regclass('vectors_' || pk) IS NOT NULL ORDER BY pk")
    ).scalars().all()
    return [f"vectors_{int(pk)}" for pk in pks]


def upgrade() -> None:
    for table in _vector_tables():
        op.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS colour {_CAST}")
        op.execute(
            f"CREATE INDEX IF NOT EXISTS {table}_colour_hnsw ON {table} "
            "USING hnsw (colour halfvec_cosine_ops) WITH (m = 16, ef_construction = 64)"
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
        op.execute(f"DROP INDEX IF EXISTS {table}_colour_hnsw")
        op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS colour")
