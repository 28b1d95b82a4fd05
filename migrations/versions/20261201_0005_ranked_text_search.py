"""ranked text search: unaccent + stemming text configuration, weighted tsvector, trigram title

Text search ranks (SPEC "Beyond the seed", DESIGN "Storefront queries in SQL"):
- `lookalike_text`: PostgreSQL's `english` configuration with `unaccent` in front of the
  stemmer for non-ASCII words, so `randonnee` finds `randonnée` and the other way round.
  Stemming lets `boot` find `boots` and `running` find `run`; with it the labelled query
  set (benchmarks/text_bench.py) reaches recall@10 1.0 in every category (`simple` +
  unaccent was not measured against it).
- `search_tsv` is rebuilt with it: product title weight A, variant title B, description C.
- `search_words`: the words of every product and variant title of an index, folded
  (`lookalike_fold`: unaccent + lower case), kept by a trigger on `products`, with a
  trigram GIN index. A query word the catalog does not know (`wireles`) is corrected to
  the most similar catalog words (`wireless`) through pg_trgm, and those are searched in
  `search_tsv` like any other word: misspellings cost one lookup in a small table, not a
  trigram comparison with every title (that way: misspelt queries p50 1.1 s at 20k products,
  load average 9).

`pg_trgm` and `unaccent` ship with PostgreSQL's contrib (the embedded server and the
pgvector image both have them). Rebuilding the generated column rewrites `products` once.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Fixed here (a migration must not change when the application's constants do).
TSV_EXPRESSION = (
    "setweight(to_tsvector('lookalike_text'::regconfig, coalesce(product_title, '')), 'A') || "
    "setweight(to_tsvector('lookalike_text'::regconfig, coalesce(variant_title, '')), 'B') || "
    "setweight(to_tsvector('lookalike_text'::regconfig, coalesce(description, '')), 'C')"
)
# Words shorter than this are not corrected (storage.storefront.MIN_FUZZY_WORD): not stored.
MIN_WORD = 4

_OLD_TSV_EXPRESSION = (
    "setweight(to_tsvector('english', coalesce(product_title, '')), 'A') || "
    "setweight(to_tsvector('english', coalesce(variant_title, '')), 'B') || "
    "setweight(to_tsvector('english', coalesce(description, '')), 'C')"
)


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute("CREATE EXTENSION IF NOT EXISTS unaccent")
    # unaccent() is only STABLE (its dictionary could change); generated columns and indexes
    # need IMMUTABLE. A SQL-standard body binds the function and dictionary at creation, so
    # the wrapper does not depend on the search_path it is called with.
    op.execute(
        """
        CREATE FUNCTION lookalike_fold(value text) RETURNS text
        LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
        BEGIN ATOMIC
          SELECT lower(unaccent('unaccent'::regdictionary, value));
        END
        """
    )
    op.execute("CREATE TEXT SEARCH CONFIGURATION lookalike_text (COPY = english)")
    op.execute(
        "ALTER TEXT SEARCH CONFIGURATION lookalike_text "
        "ALTER MAPPING FOR word, hword, hword_part WITH unaccent, english_stem"
    )
    op.execute("DROP INDEX IF EXISTS products_search_tsv_idx")
    op.execute("ALTER TABLE products DROP COLUMN search_tsv")
    op.execute(f"ALTER TABLE products ADD COLUMN search_tsv tsvector GENERATED ALWAYS AS ({TSV_EXPRESSION}) STORED")
    op.execute("CREATE INDEX products_search_tsv_idx ON products USING gin (search_tsv)")
    op.execute(
        """
        CREATE TABLE search_words (
          index_pk bigint NOT NULL REFERENCES indexes(pk) ON DELETE CASCADE,
          word text COLLATE "C" NOT NULL,  -- byte order: prefix lookups are btree range scans
          PRIMARY KEY (index_pk, word)
        )
        """
    )
    op.execute("CREATE INDEX search_words_word_trgm_idx ON search_words USING gin (word gin_trgm_ops)")
    # Words only ever get added: a word no product has any more matches nothing when searched.
    op.execute(
        f"""
        CREATE FUNCTION lookalike_title_words() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO search_words (index_pk, word)
          SELECT DISTINCT NEW.index_pk, w
          FROM regexp_split_to_table(
                 lookalike_fold(NEW.product_title || coalesce(' ' || NEW.variant_title, '')), '[^[:alnum:]]+') AS w
          WHERE length(w) >= {MIN_WORD}
          ON CONFLICT DO NOTHING;
          RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER products_title_words AFTER INSERT OR UPDATE OF product_title, variant_title ON products"
        " FOR EACH ROW EXECUTE FUNCTION lookalike_title_words()"
    )
    op.execute(
        f"""
        INSERT INTO search_words (index_pk, word)
        SELECT DISTINCT p.index_pk, w
        FROM products p, regexp_split_to_table(
               lookalike_fold(p.product_title || coalesce(' ' || p.variant_title, '')), '[^[:alnum:]]+') AS w
        WHERE length(w) >= {MIN_WORD}
        ON CONFLICT DO NOTHING
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER products_title_words ON products")
    op.execute("DROP FUNCTION lookalike_title_words()")
    op.execute("DROP TABLE search_words")
    op.execute("DROP INDEX IF EXISTS products_search_tsv_idx")
    op.execute("ALTER TABLE products DROP COLUMN search_tsv")
    op.execute(
        f"ALTER TABLE products ADD COLUMN search_tsv tsvector GENERATED ALWAYS AS ({_OLD_TSV_EXPRESSION}) STORED"
    )
    op.execute("CREATE INDEX products_search_tsv_idx ON products USING gin (search_tsv)")
    op.execute("DROP TEXT SEARCH CONFIGURATION lookalike_text")
    op.execute("DROP FUNCTION lookalike_fold(text)")
    # The extensions stay: other objects of the database may use them.
