"""product facets: each product's filterable, sortable and facet values without its long texts

The storefront's facets aggregate every product a query matches (15,105 for `leather boots`
at 100k products, 10,000 under a 10% filter), and each match's values lived only in its
~1.2 kB `products` row: the title and description three times over (columns, `doc`,
`filter_terms`), the image URL, the tsvector. The matches are spread over nearly every page,
so the statement read 10,000-10,400 heap pages.

`product_facets` is the same product without its long texts: `doc` and `filter_terms` less
the product title, the description and the image URL (`lookalike_facet_doc`,
`lookalike_facet_terms`), with the typed columns, the embedding state and the tsvector
(~730 bytes a row: 73 MB instead of 130 MB at 100k), and GIN indexes on its terms and tsvector. A
statement that names none of those three fields (filter, facets, sortBy, collapse) reads its
matches here instead (storage.storefront).

The rows follow `products` in the writing transaction: a statement trigger on INSERT (one
insert for a whole COPY or batch), a row trigger on UPDATE of the mirrored columns, and
ON DELETE CASCADE from products (so also from indexes).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Fixed here (a migration must not change when the application's constants do): the fields
# left out, storage.storefront.WIDE_FIELDS. Their filter terms are `<field>\x1f...` (the names
# hold neither `\` nor \x1f, so app.filters.terms does not escape them).
FUNCTIONS = [
    """
    CREATE FUNCTION lookalike_facet_doc(doc jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    RETURN doc - '{productTitle,description,variantImageUrl}'::text[]
    """,
    """
    CREATE FUNCTION lookalike_facet_terms(terms text[]) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    RETURN ARRAY(SELECT t FROM unnest(terms) WITH ORDINALITY AS u(t, o)
                 WHERE NOT (starts_with(t, E'productTitle\\x1f') OR starts_with(t, E'description\\x1f')
                            OR starts_with(t, E'variantImageUrl\\x1f'))
                 ORDER BY o)
    """,
]

COLUMNS = (
    "pk, index_pk, product_id, price, parent_product_id, product_collections, embedding_status,"
    " filter_terms, search_tsv, doc"
)


def _values(row: str) -> str:
    return (
        f"{row}.pk, {row}.index_pk, {row}.product_id, {row}.price, {row}.parent_product_id,"
        f" {row}.product_collections, {row}.embedding_status, lookalike_facet_terms({row}.filter_terms),"
        f" {row}.search_tsv, lookalike_facet_doc({row}.doc)"
    )


# The columns an UPDATE must name to change a mirrored value (search_tsv follows the texts).
MIRRORED = (
    "index_pk, product_id, price, parent_product_id, product_collections, embedding_status,"
    " filter_terms, doc, product_title, variant_title, description"
)


def upgrade() -> None:
    for function in FUNCTIONS:
        op.execute(function)
    op.execute(
        """
        CREATE TABLE product_facets (
          pk bigint PRIMARY KEY REFERENCES products(pk) ON DELETE CASCADE,
          index_pk bigint NOT NULL,
          product_id text NOT NULL,
          price float8 NOT NULL,
          parent_product_id text,
          product_collections text[] NOT NULL,
          embedding_status text NOT NULL,
          filter_terms text[] NOT NULL,
          search_tsv tsvector,
          doc jsonb NOT NULL
        )
        """
    )
    op.execute(f"INSERT INTO product_facets ({COLUMNS}) SELECT {_values('p')} FROM products p ORDER BY p.pk")
    op.execute(
        "CREATE INDEX product_facets_filter_terms_idx ON product_facets USING gin (filter_terms)"
        " WITH (fastupdate = off)"
    )
    op.execute(
        "CREATE INDEX product_facets_search_tsv_idx ON product_facets USING gin (search_tsv) WITH (fastupdate = off)"
    )
    op.execute(
        f"""
        CREATE FUNCTION lookalike_facets_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO product_facets ({COLUMNS}) SELECT {_values('n')} FROM inserted n;
          RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER products_facets_insert AFTER INSERT ON products REFERENCING NEW TABLE AS inserted"
        " FOR EACH STATEMENT EXECUTE FUNCTION lookalike_facets_inserted()"
    )
    op.execute(
        f"""
        CREATE FUNCTION lookalike_facets_updated() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          UPDATE product_facets f SET ({COLUMNS}) = (SELECT {_values('NEW')}) WHERE f.pk = OLD.pk;
          RETURN NULL;
        END $$
        """
    )
    op.execute(
        f"CREATE TRIGGER products_facets_update AFTER UPDATE OF {MIRRORED} ON products FOR EACH ROW"
        " WHEN ((OLD.index_pk, OLD.product_id, OLD.price, OLD.parent_product_id, OLD.product_collections,"
        " OLD.embedding_status, OLD.filter_terms, OLD.search_tsv, OLD.doc) IS DISTINCT FROM"
        " (NEW.index_pk, NEW.product_id, NEW.price, NEW.parent_product_id, NEW.product_collections,"
        " NEW.embedding_status, NEW.filter_terms, NEW.search_tsv, NEW.doc))"
        " EXECUTE FUNCTION lookalike_facets_updated()"
    )
    op.execute("ANALYZE product_facets")


def downgrade() -> None:
    op.execute("DROP TRIGGER products_facets_update ON products")
    op.execute("DROP TRIGGER products_facets_insert ON products")
    op.execute("DROP FUNCTION lookalike_facets_updated()")
    op.execute("DROP FUNCTION lookalike_facets_inserted()")
    op.execute("DROP TABLE product_facets")
    op.execute("DROP FUNCTION lookalike_facet_terms(text[])")
    op.execute("DROP FUNCTION lookalike_facet_doc(jsonb)")
