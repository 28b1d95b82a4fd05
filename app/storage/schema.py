"""The shared tables as SQLAlchemy Core metadata: the Alembic target and the DBA's map.

Per-index vector tables (`vectors_<index pk>`, one HNSW index each) are created by
`storage.indexes` when a lookalike index is created, because their column type
depends on the index's model dimension; everything else is here and changes only
through migrations.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, JSONB, TSVECTOR

metadata = sa.MetaData()

indexes = sa.Table(
    "indexes",
    metadata,
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

products = sa.Table(
    "products",
    metadata,
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
    # The whole document as the client sent it (core and custom fields), returned on reads.
    sa.Column("doc", JSONB, nullable=False),
    # Normalised `field\x1fvalue` terms for indexed equality filters (see app.filters.terms).
    sa.Column("filter_terms", ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column(
        "search_tsv",
        TSVECTOR,
        sa.Computed(
            # `lookalike_text`: english stemming with unaccent (migration 0005).
            "setweight(to_tsvector('lookalike_text'::regconfig, coalesce(product_title, '')), 'A') || "
            "setweight(to_tsvector('lookalike_text'::regconfig, coalesce(variant_title, '')), 'B') || "
            "setweight(to_tsvector('lookalike_text'::regconfig, coalesce(description, '')), 'C')",
            persisted=True,
        ),
    ),

    # Local-feature state for reverse image search: NULL = not wanted (flag off).
    sa.Column("features_status", sa.Text),
    sa.Column("features_error", sa.Text),
    # Embedding state (migration 0006): 'pending' products (queue mode) wait for `lookalike worker`,
    # have no vector row and are not searchable; a worker's claim is `claimed_by` until `lease_expires_at`.
    sa.Column("embedding_status", sa.Text, nullable=False, server_default="ready"),
    sa.Column("embedding_error", sa.Text),
    sa.Column("embedding_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("claimed_by", sa.Text),
    sa.Column("claimed_at", sa.DateTime(timezone=True)),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.UniqueConstraint("index_pk", "product_id", name="products_index_product_key"),
    sa.CheckConstraint(
        "features_status IS NULL OR features_status IN ('pending', 'ready', 'failed')",
        name="products_features_status_check",
    ),
    sa.CheckConstraint(
        "embedding_status IN ('pending', 'ready', 'failed')", name="products_embedding_status_check"
    ),
)
sa.Index("products_index_image_sha256_idx", products.c.index_pk, products.c.image_sha256)
sa.Index(
    "products_filter_terms_idx",
    products.c.filter_terms,
    postgresql_using="gin",
    postgresql_with={"fastupdate": "off"},
)
sa.Index("products_index_price_idx", products.c.index_pk, products.c.price)
sa.Index(
    "products_search_tsv_idx",
    products.c.search_tsv,
    postgresql_using="gin",
    postgresql_with={"fastupdate": "off"},  # migration 0007
)

# The folded words of an index's product and variant titles (trigger `products_title_words`,
# migration 0005): what a misspelt query word is corrected to, through a trigram index.
search_words = sa.Table(
    "search_words",
    metadata,
    sa.Column("index_pk", sa.BigInteger, sa.ForeignKey("indexes.pk", ondelete="CASCADE"), primary_key=True),
    sa.Column("word", sa.Text(collation="C"), primary_key=True),  # byte order: prefix lookups are range scans
)
sa.Index(
    "search_words_word_trgm_idx",
    search_words.c.word,
    postgresql_using="gin",
    postgresql_ops={"word": "gin_trgm_ops"},
    postgresql_with={"fastupdate": "off"},  # no pending list the planner costs above a scan (0007)
)

# Each product's share of ts_rank_cd per distinct lexeme of its search_tsv (`lookalike_postings`,
# triggers `products_postings_insert`/`_update`, migration 0007): text scores are sums over the
# covering btree, not ts_rank_cd over every matching tsvector.
search_postings = sa.Table(
    "search_postings",
    metadata,
    sa.Column("product_pk", sa.BigInteger, sa.ForeignKey("products.pk", ondelete="CASCADE"), nullable=False),
    sa.Column("index_pk", sa.BigInteger, nullable=False),
    sa.Column("lexeme", sa.Text(collation="C"), nullable=False),  # byte order: a prefix is a range scan
    sa.Column("product_id", sa.Text(collation="C"), nullable=False),  # (score, _id) order without products (0008)
    sa.Column("weight", sa.Float(precision=53), nullable=False),
)
sa.Index(
    "search_postings_lexeme_idx",
    search_postings.c.index_pk,
    search_postings.c.lexeme,
    postgresql_include=["product_pk", "product_id", "weight"],
)
sa.Index("search_postings_product_idx", search_postings.c.product_pk)

# Each product without its long texts (triggers `products_facets_insert`/`_update`, migration 0009):
# `doc` and `filter_terms` less productTitle, description and variantImageUrl (`lookalike_facet_doc`,
# `lookalike_facet_terms`). Storefront statements that name none of those read their matches here.
product_facets = sa.Table(
    "product_facets",
    metadata,
    sa.Column("pk", sa.BigInteger, sa.ForeignKey("products.pk", ondelete="CASCADE"), primary_key=True),
    sa.Column("index_pk", sa.BigInteger, nullable=False),
    sa.Column("product_id", sa.Text, nullable=False),
    sa.Column("price", sa.Float(precision=53), nullable=False),
    sa.Column("parent_product_id", sa.Text),
    sa.Column("product_collections", ARRAY(sa.Text), nullable=False),
    sa.Column("embedding_status", sa.Text, nullable=False),
    sa.Column("filter_terms", ARRAY(sa.Text), nullable=False),
    sa.Column("search_tsv", TSVECTOR),
    sa.Column("doc", JSONB, nullable=False),
)
sa.Index(
    "product_facets_filter_terms_idx",
    product_facets.c.filter_terms,
    postgresql_using="gin",
    postgresql_with={"fastupdate": "off"},
)
sa.Index(
    "product_facets_search_tsv_idx",
    product_facets.c.search_tsv,
    postgresql_using="gin",
    postgresql_with={"fastupdate": "off"},
)
# The text matches' facet values: product_facets less filter_terms, the tsvector last (triggers
# `product_facets_text_insert`/`_update`, migration 0011). Text statements without any filter read
# their matches here.
product_text = sa.Table(
    "product_text",
    metadata,
    sa.Column("pk", sa.BigInteger, sa.ForeignKey("product_facets.pk", ondelete="CASCADE"), primary_key=True),
    sa.Column("index_pk", sa.BigInteger, nullable=False),
    sa.Column("price", sa.Float(precision=53), nullable=False),
    sa.Column("embedding_status", sa.Text, nullable=False),
    sa.Column("product_id", sa.Text, nullable=False),
    sa.Column("parent_product_id", sa.Text),
    sa.Column("product_collections", ARRAY(sa.Text), nullable=False),
    sa.Column("doc", JSONB, nullable=False),
    sa.Column("search_tsv", TSVECTOR),
)
sa.Index(
    "product_text_search_tsv_idx",
    product_text.c.search_tsv,
    postgresql_using="gin",
    postgresql_with={"fastupdate": "off"},
)
sa.Index(
    "products_features_pending_idx",
    products.c.index_pk,
    products.c.pk,
    postgresql_where=sa.text("features_status = 'pending'"),
)

sa.Index(
    "products_embedding_pending_idx",
    products.c.pk,
    postgresql_where=sa.text("embedding_status = 'pending'"),
)

local_features = sa.Table(
    "local_features",
    metadata,
    sa.Column("product_pk", sa.BigInteger, sa.ForeignKey("products.pk", ondelete="CASCADE"), primary_key=True),
    sa.Column("algorithm", sa.Text, nullable=False),
    sa.Column("keypoint_count", sa.Integer, nullable=False),
    # float32 x,y pairs in the catalog image's pixel frame, then descriptors (layout per algorithm).
    sa.Column("keypoints", BYTEA, nullable=False),
    sa.Column("descriptors", BYTEA, nullable=False),
    sa.Column("image_width", sa.Integer, nullable=False),
    sa.Column("image_height", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("pk", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("key_sha256", BYTEA, nullable=False, unique=True),
    sa.Column("key_prefix", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("source IN ('env', 'generated')", name="api_keys_source_check"),
)


def vectors_table_name(index_pk: int) -> str:
    """Name of an index's own vector table; built from an integer only, so safe as SQL text."""
    return f"vectors_{int(index_pk)}"
