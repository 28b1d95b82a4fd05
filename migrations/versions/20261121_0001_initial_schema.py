"""initial schema: indexes, products, local features, api keys

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, JSONB, TSVECTOR

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "indexes",
        sa.Column("pk", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("index_id", sa.Text, nullable=False, unique=True),
        sa.Column("settings", JSONB, nullable=False),
        sa.Column("model", JSONB, nullable=False),
        sa.Column("dimensions", sa.Integer, nullable=False),
        sa.Column("vector_type", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("vector_type IN ('halfvec', 'vector')", name="indexes_vector_type_check"),
        sa.CheckConstraint("dimensions BETWEEN 1 AND 16000", name="indexes_dimensions_check"),
    )
    op.create_table(
        "products",
        sa.Column("pk", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("index_pk", sa.BigInteger, sa.ForeignKey("indexes.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("product_id", sa.Text, nullable=False),
        sa.Column("product_title", sa.Text, nullable=False),
        sa.Column("variant_title", sa.Text),
        sa.Column("description", sa.Text),
        sa.Column("price", sa.Float(precision=53), nullable=False),
        sa.Column("parent_product_id", sa.Text),
        sa.Column("product_collections", ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("variant_image_url", sa.Text, nullable=False),
        sa.Column("image_sha256", BYTEA),
        sa.Column("doc", JSONB, nullable=False),
        sa.Column("filter_terms", ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column(
            "search_tsv",
            TSVECTOR,
            sa.Computed(
                "setweight(to_tsvector('english', coalesce(product_title, '')), 'A') || "
                "setweight(to_tsvector('english', coalesce(variant_title, '')), 'B') || "
                "setweight(to_tsvector('english', coalesce(description, '')), 'C')",
                persisted=True,
            ),
        ),
        sa.Column("features_status", sa.Text),
        sa.Column("features_error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("index_pk", "product_id", name="products_index_product_key"),
        sa.CheckConstraint(
            "features_status IS NULL OR features_status IN ('pending', 'ready', 'failed')",
            name="products_features_status_check",
        ),
    )
    op.create_index("products_index_image_sha256_idx", "products", ["index_pk", "image_sha256"])
    op.create_index("products_search_tsv_idx", "products", ["search_tsv"], postgresql_using="gin")
    op.create_index(
        "products_features_pending_idx",
        "products",
        ["index_pk", "pk"],
        postgresql_where=sa.text("features_status = 'pending'"),
    )
    op.create_table(
        "local_features",
        sa.Column(
            "product_pk", sa.BigInteger, sa.ForeignKey("products.pk", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("algorithm", sa.Text, nullable=False),
        sa.Column("keypoint_count", sa.Integer, nullable=False),
        sa.Column("keypoints", BYTEA, nullable=False),
        sa.Column("descriptors", BYTEA, nullable=False),
        sa.Column("image_width", sa.Integer, nullable=False),
        sa.Column("image_height", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "api_keys",
        sa.Column("pk", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("key_sha256", BYTEA, nullable=False, unique=True),
        sa.Column("key_prefix", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("source IN ('env', 'generated')", name="api_keys_source_check"),
    )


def downgrade() -> None:
    # Per-index vector tables hang off indexes; drop them first so nothing is orphaned.
    op.execute(
        """
        DO $$
        DECLARE t text;
        BEGIN
          FOR t IN SELECT tablename FROM pg_tables
                   WHERE schemaname = current_schema() AND tablename ~ '^vectors_[0-9]+$'
          LOOP
            EXECUTE format('DROP TABLE %I', t);
          END LOOP;
        END $$;
        """
    )
    op.drop_table("api_keys")
    op.drop_table("local_features")
    op.drop_table("products")
    op.drop_table("indexes")
