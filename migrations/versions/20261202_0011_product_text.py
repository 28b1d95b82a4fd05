"""product text: the text matches' facet values without filter terms, for unfiltered text queries

A text query without a filter (storefront `q` + facets) aggregates every product it matches
(15,105 for `leather boots` at 100k products) from `product_facets` (migration 0009). Those
rows still carry `filter_terms` (~235 bytes, a third of the row), which only a filtered
statement reads: the matches of `leather | boot:*` lay on 7,700 of its pages.

`product_text` is `product_facets` without `filter_terms`, with its own GIN index on the
weighted tsvector, the fixed-width columns first and the tsvector last (a bitmap heap scan
reading the facet values stops deforming before it): ~500 bytes a row, 50 MB instead of
73 MB at 100k. A statement with no filter at all (none in the request, none in a facet's
`excludeTerms` variant) that names none of the long texts reads its matches here
(storage.storefront).

The rows follow `product_facets` in the writing transaction: a statement trigger on INSERT
(one insert for a whole COPY or batch, as products' own into product_facets), a row trigger
on UPDATE, and ON DELETE CASCADE from product_facets (so from products and indexes).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Fixed here (a migration must not change when the application's constants do).
COLUMNS = "pk, index_pk, price, embedding_status, product_id, parent_product_id, product_collections, doc, search_tsv"


def _values(row: str) -> str:
    return ", ".join(f"{row}.{column.strip()}" for column in COLUMNS.split(","))


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE product_text (
          pk bigint PRIMARY KEY REFERENCES product_facets(pk) ON DELETE CASCADE,
          index_pk bigint NOT NULL,
          price float8 NOT NULL,
          embedding_status text NOT NULL,
          product_id text NOT NULL,
          parent_product_id text,
          product_collections text[] NOT NULL,
          doc jsonb NOT NULL,
          search_tsv tsvector
        )
        """
    )
    op.execute(f"INSERT INTO product_text ({COLUMNS}) SELECT {_values('f')} FROM product_facets f ORDER BY f.pk")
    op.execute(
        "CREATE INDEX product_text_search_tsv_idx ON product_text USING gin (search_tsv) WITH (fastupdate = off)"
    )
    op.execute(
        f"""
        CREATE FUNCTION lookalike_text_rows_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO product_text ({COLUMNS}) SELECT {_values('n')} FROM inserted n;
          RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER product_facets_text_insert AFTER INSERT ON product_facets REFERENCING NEW TABLE AS inserted"
        " FOR EACH STATEMENT EXECUTE FUNCTION lookalike_text_rows_inserted()"
    )
    op.execute(
        f"""
        CREATE FUNCTION lookalike_text_rows_updated() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          UPDATE product_text t SET ({COLUMNS}) = (SELECT {_values('NEW')}) WHERE t.pk = OLD.pk;
          RETURN NULL;
        END $$
        """
    )
    mirrored = ", ".join(f"{{0}}.{column.strip()}" for column in COLUMNS.split(","))
    op.execute(
        "CREATE TRIGGER product_facets_text_update AFTER UPDATE ON product_facets FOR EACH ROW"
        f" WHEN (({mirrored.format('OLD')}) IS DISTINCT FROM ({mirrored.format('NEW')}))"
        " EXECUTE FUNCTION lookalike_text_rows_updated()"
    )
    op.execute("ANALYZE product_text")


def downgrade() -> None:
    op.execute("DROP TRIGGER product_facets_text_update ON product_facets")
    op.execute("DROP TRIGGER product_facets_text_insert ON product_facets")
    op.execute("DROP FUNCTION lookalike_text_rows_updated()")
    op.execute("DROP FUNCTION lookalike_text_rows_inserted()")
    op.execute("DROP TABLE product_text")
