"""ranked text search: unaccent + stemming text configuration, weighted tsvector, trigram title

Text search ranks (SPEC "Beyond the seed", DESIGN "Storefront queries in SQL"):
- `lookalike_text`: PostgreSQL's `english` configuration with `unaccent` in front of the
  stemmer for non-ASCII words, so `randonnee` finds `randonnée` and the other way round.
  Chosen over `simple` + unaccent on the labelled query set (benchmarks/text_bench.py):
  stemming lets `boot` find `boots` and `running` find `run`, with no loss elsewhere.
- `search_tsv` is rebuilt with it: product title weight A, variant title B, description C.
- `search_title`: the product and variant title folded (`lookalike_fold`: unaccent +
  lower case), with a trigram GIN index for misspellings and unfinished words
  (`wireles headphnes`, `hiking bo`) through pg_trgm's word similarity.

`pg_trgm` and `unaccent` ship with PostgreSQL's contrib (the embedded server and the
pgvector image both have them). Adding the generated columns rewrites `products` once.

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
TITLE_EXPRESSION = "lookalike_fold(product_title || coalesce(' ' || variant_title, ''))"

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
    op.execute(
        f"ALTER TABLE products ADD COLUMN search_tsv tsvector GENERATED ALWAYS AS ({TSV_EXPRESSION}) STORED,"
        f" ADD COLUMN search_title text GENERATED ALWAYS AS ({TITLE_EXPRESSION}) STORED"
    )
    op.execute("CREATE INDEX products_search_tsv_idx ON products USING gin (search_tsv)")
    op.execute("CREATE INDEX products_search_title_trgm_idx ON products USING gin (search_title gin_trgm_ops)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS products_search_title_trgm_idx")
    op.execute("DROP INDEX IF EXISTS products_search_tsv_idx")
    op.execute("ALTER TABLE products DROP COLUMN search_title, DROP COLUMN search_tsv")
    op.execute(
        f"ALTER TABLE products ADD COLUMN search_tsv tsvector GENERATED ALWAYS AS ({_OLD_TSV_EXPRESSION}) STORED"
    )
    op.execute("CREATE INDEX products_search_tsv_idx ON products USING gin (search_tsv)")
    op.execute("DROP TEXT SEARCH CONFIGURATION lookalike_text")
    op.execute("DROP FUNCTION lookalike_fold(text)")
    # The extensions stay: other objects of the database may use them.
