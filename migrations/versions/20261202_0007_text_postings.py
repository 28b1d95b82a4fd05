"""text postings: each product's share of ts_rank_cd per lexeme, so ranking reads a btree, not every match

Ranked text search (migration 0005) scored every product a query matches with
`ts_rank_cd(weights, search_tsv, query, 1)`: 15,000 matches for `leather boots` at 100k
products, about 2 us each, the largest part of the statement (storefront text query p50
56 ms, hybrid SQL 50 ms).

For the OR queries lookalike builds (one lexeme per item, the last word's a prefix),
ts_rank_cd is additive: every occurrence of a matching lexeme is a cover of its own, worth
its field weight, and the sum is divided by ln(positions + 1). So each (product, lexeme)
pair has a fixed share of any query's score:

    weight = sum of the field weights of the lexeme's positions / ln(positions of the product + 1)

`search_postings` stores it, one row per distinct lexeme of a product, with a covering btree
(index_pk, lexeme) INCLUDE (product_pk, weight): a query's scores are an index-only scan of its
lexemes' rows summed per product (cast to real, as ts_rank_cd returns), the same values as
ts_rank_cd gives (checked equal for all 15,105 matches of `leather | boot:*` at 100k).

The rows follow `search_tsv` in the writing transaction: a statement trigger on INSERT (one
insert for a whole COPY or batch), a row trigger on UPDATE of the text columns, and
ON DELETE CASCADE from products.

Also: the trigram index of `search_words` loses its GIN pending list (`fastupdate = off`).
Words arrive through the title trigger after the index exists; while they sat in the pending
list the planner costed the index above reading all 16,700 words (16 ms per misspelt word at
100k products, seen in the storefront benchmark) instead of 0.1-0.4 ms through the index.
The weighted tsvector's GIN index gets the same setting for the same reason (as the filter
terms' index in 0002).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Fixed here (a migration must not change when the application's constants do): the field
# weights of storage.storefront.RANK_WEIGHTS, A title 1.0, B variant title 0.7, C description
# 0.4, D 0.1, as real (ts_rank_cd's float4 weights) and through 1 / (1 / w) as ts_rank_cd
# computes each single-position cover's worth.
POSTINGS_FUNCTION = """
CREATE FUNCTION lookalike_postings(doc tsvector) RETURNS TABLE (lexeme text, weight float8)
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
BEGIN ATOMIC
  SELECT u.lexeme,
         (SELECT sum(1.0::float8 / (1.0::float8 / (CASE w WHEN 'A' THEN 1.0::real WHEN 'B' THEN 0.7::real
                                                             WHEN 'C' THEN 0.4::real ELSE 0.1::real END)::float8))
            FROM unnest(u.weights) AS w)
         / ln((SELECT sum(greatest(cardinality(x.positions), 1)) FROM unnest(doc) AS x) + 1)
  FROM unnest(doc) AS u;
END
"""


def upgrade() -> None:
    op.execute(POSTINGS_FUNCTION)
    op.execute(
        """
        CREATE TABLE search_postings (
          product_pk bigint NOT NULL REFERENCES products(pk) ON DELETE CASCADE,
          index_pk bigint NOT NULL,
          lexeme text COLLATE "C" NOT NULL,  -- byte order: a prefix is a range scan
          weight float8 NOT NULL
        )
        """
    )
    op.execute(
        """
        INSERT INTO search_postings (product_pk, index_pk, lexeme, weight)
        SELECT p.pk, p.index_pk, l.lexeme, l.weight FROM products p, lookalike_postings(p.search_tsv) AS l
        """
    )
    op.execute(
        "CREATE INDEX search_postings_lexeme_idx ON search_postings (index_pk, lexeme) INCLUDE (product_pk, weight)"
    )
    op.execute("CREATE INDEX search_postings_product_idx ON search_postings (product_pk)")
    op.execute(
        """
        CREATE FUNCTION lookalike_postings_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO search_postings (product_pk, index_pk, lexeme, weight)
          SELECT n.pk, n.index_pk, l.lexeme, l.weight FROM inserted n, lookalike_postings(n.search_tsv) AS l;
          RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER products_postings_insert AFTER INSERT ON products REFERENCING NEW TABLE AS inserted"
        " FOR EACH STATEMENT EXECUTE FUNCTION lookalike_postings_inserted()"
    )
    op.execute(
        """
        CREATE FUNCTION lookalike_postings_updated() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.search_tsv IS DISTINCT FROM OLD.search_tsv OR NEW.index_pk <> OLD.index_pk THEN
            DELETE FROM search_postings WHERE product_pk = OLD.pk;
            INSERT INTO search_postings (product_pk, index_pk, lexeme, weight)
            SELECT NEW.pk, NEW.index_pk, l.lexeme, l.weight FROM lookalike_postings(NEW.search_tsv) AS l;
          END IF;
          RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER products_postings_update AFTER UPDATE OF product_title, variant_title, description, index_pk"
        " ON products FOR EACH ROW EXECUTE FUNCTION lookalike_postings_updated()"
    )
    op.execute("ALTER INDEX search_words_word_trgm_idx SET (fastupdate = off)")
    op.execute("SELECT gin_clean_pending_list('search_words_word_trgm_idx'::regclass)")
    op.execute("ALTER INDEX products_search_tsv_idx SET (fastupdate = off)")
    op.execute("SELECT gin_clean_pending_list('products_search_tsv_idx'::regclass)")
    op.execute("ANALYZE search_postings")


def downgrade() -> None:
    op.execute("ALTER INDEX products_search_tsv_idx RESET (fastupdate)")
    op.execute("ALTER INDEX search_words_word_trgm_idx RESET (fastupdate)")
    op.execute("DROP TRIGGER products_postings_update ON products")
    op.execute("DROP TRIGGER products_postings_insert ON products")
    op.execute("DROP FUNCTION lookalike_postings_updated()")
    op.execute("DROP FUNCTION lookalike_postings_inserted()")
    op.execute("DROP TABLE search_postings")
    op.execute("DROP FUNCTION lookalike_postings(tsvector)")
