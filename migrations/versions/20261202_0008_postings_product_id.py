"""text postings carry the product id: the best products sort by (score, _id) from the btree alone

The best-first walk over the postings (storage.storefront.best_first_ctes) orders products by
(score, product_id). With only product_pk in the postings it had to probe products for the id
of every product tied with the k-th score; on the generated hybrid catalog (every text the
same length) 7,300 products tie for `warm premium`: that lexical top 10 took 27 ms probing
them, 16 ms with the id in the postings (min of 15, load 4.5). The column is filled from
products, the covering index rebuilt with it, and the triggers of 0007 write it (and rewrite a
product's rows if its id ever changed).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INSERTED = """
CREATE OR REPLACE FUNCTION lookalike_postings_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO search_postings (product_pk, index_pk, lexeme, product_id, weight)
  SELECT n.pk, n.index_pk, l.lexeme, n.product_id, l.weight
  FROM inserted n, lookalike_postings(n.search_tsv) AS l;
  RETURN NULL;
END $$
"""

_UPDATED = """
CREATE OR REPLACE FUNCTION lookalike_postings_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.search_tsv IS DISTINCT FROM OLD.search_tsv OR NEW.index_pk <> OLD.index_pk
     OR NEW.product_id <> OLD.product_id THEN
    DELETE FROM search_postings WHERE product_pk = OLD.pk;
    INSERT INTO search_postings (product_pk, index_pk, lexeme, product_id, weight)
    SELECT NEW.pk, NEW.index_pk, l.lexeme, NEW.product_id, l.weight
    FROM lookalike_postings(NEW.search_tsv) AS l;
  END IF;
  RETURN NULL;
END $$
"""

# 0007's versions, restored on downgrade
_INSERTED_0007 = """
CREATE OR REPLACE FUNCTION lookalike_postings_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO search_postings (product_pk, index_pk, lexeme, weight)
  SELECT n.pk, n.index_pk, l.lexeme, l.weight FROM inserted n, lookalike_postings(n.search_tsv) AS l;
  RETURN NULL;
END $$
"""

_UPDATED_0007 = """
CREATE OR REPLACE FUNCTION lookalike_postings_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.search_tsv IS DISTINCT FROM OLD.search_tsv OR NEW.index_pk <> OLD.index_pk THEN
    DELETE FROM search_postings WHERE product_pk = OLD.pk;
    INSERT INTO search_postings (product_pk, index_pk, lexeme, weight)
    SELECT NEW.pk, NEW.index_pk, l.lexeme, l.weight FROM lookalike_postings(NEW.search_tsv) AS l;
  END IF;
  RETURN NULL;
END $$
"""


def upgrade() -> None:
    op.execute('ALTER TABLE search_postings ADD COLUMN product_id text COLLATE "C"')
    op.execute("UPDATE search_postings s SET product_id = p.product_id FROM products p WHERE p.pk = s.product_pk")
    op.execute("ALTER TABLE search_postings ALTER COLUMN product_id SET NOT NULL")
    op.execute("DROP INDEX search_postings_lexeme_idx")
    op.execute(
        "CREATE INDEX search_postings_lexeme_idx ON search_postings (index_pk, lexeme)"
        " INCLUDE (product_pk, product_id, weight)"
    )
    op.execute(_INSERTED)
    op.execute(_UPDATED)
    op.execute("DROP TRIGGER products_postings_update ON products")
    op.execute(
        "CREATE TRIGGER products_postings_update"
        " AFTER UPDATE OF product_title, variant_title, description, index_pk, product_id"
        " ON products FOR EACH ROW EXECUTE FUNCTION lookalike_postings_updated()"
    )
    op.execute("ANALYZE search_postings")


def downgrade() -> None:
    op.execute("DROP TRIGGER products_postings_update ON products")
    op.execute(
        "CREATE TRIGGER products_postings_update AFTER UPDATE OF product_title, variant_title, description, index_pk"
        " ON products FOR EACH ROW EXECUTE FUNCTION lookalike_postings_updated()"
    )
    op.execute(_UPDATED_0007)
    op.execute(_INSERTED_0007)
    op.execute("DROP INDEX search_postings_lexeme_idx")
    op.execute(
        "CREATE INDEX search_postings_lexeme_idx ON search_postings (index_pk, lexeme) INCLUDE (product_pk, weight)"
    )
    op.execute("ALTER TABLE search_postings DROP COLUMN product_id")
