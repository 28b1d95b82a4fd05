"""vector rows follow products by one statement trigger, not one foreign key per index

Every index has its own vector table (`vectors_<index pk>`), and each carried a foreign key
`product_pk REFERENCES products(pk) ON DELETE CASCADE`. PostgreSQL fires every referencing
constraint's cascade for every deleted product, whichever index it belongs to: deleting
20,000 products took 0.06 s with one index, 0.45 s with 11, 2.1 s with 51 and 12.3 s with 201
(measured), so a shop's product deletes and an index's delete slowed down with every other
index in the database. Dropping an emptied vector table also took an ACCESS EXCLUSIVE lock on
`products` (the constraint's other end), stopping every index's reads and writes meanwhile.

Instead:
- one AFTER DELETE statement trigger on `products` deletes the gone products' vector rows, one
  DELETE per index the statement touched (its own vector table, by primary key);
- a BEFORE INSERT OR UPDATE OF product_pk row trigger on each vector table checks the product
  exists and takes the same FOR KEY SHARE lock on it that the foreign key's check took (so a
  concurrent delete of that product waits for the writer, and then deletes its vector row too,
  or the writer fails with foreign_key_violation, as before).

New indexes get the row trigger when they are created (app.storage.indexes.vector_table_ddl).
Downgrade puts the foreign keys back.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _vector_tables() -> list[str]:
    """The vector tables of the existing indexes (an index row whose table is gone is skipped)."""
    pks = op.get_bind().execute(
        sa.text("SELECT pk FROM indexes WHERE to_regclass('vectors_' || pk) IS NOT NULL ORDER BY pk")
    ).scalars().all()
    return [f"vectors_{int(pk)}" for pk in pks]


def _foreign_keys(table: str) -> list[str]:
    """Names of `table`'s foreign keys to products (named by PostgreSQL when the table was created)."""
    return list(
        op.get_bind().execute(
            sa.text(
                "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(:t) AND contype = 'f'"
                " AND confrelid = 'products'::regclass ORDER BY conname"
            ),
            {"t": table},
        ).scalars()
    )


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION lookalike_vectors_products_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
          gone record;
        BEGIN
          FOR gone IN SELECT index_pk, array_agg(pk) AS pks FROM deleted GROUP BY index_pk LOOP
            -- an index's table may be gone already (dropped after its index row)
            IF to_regclass('vectors_' || gone.index_pk) IS NOT NULL THEN
              EXECUTE format('DELETE FROM %I WHERE product_pk = ANY($1)', 'vectors_' || gone.index_pk)
                USING gone.pks;
            END IF;
          END LOOP;
          RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER products_vectors_delete AFTER DELETE ON products REFERENCING OLD TABLE AS deleted"
        " FOR EACH STATEMENT EXECUTE FUNCTION lookalike_vectors_products_deleted()"
    )
    op.execute(
        """
        CREATE FUNCTION lookalike_vector_product_exists() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          PERFORM 1 FROM products WHERE pk = NEW.product_pk FOR KEY SHARE;
          IF NOT FOUND THEN
            RAISE EXCEPTION 'insert or update on table "%" violates its product reference', TG_TABLE_NAME
              USING ERRCODE = 'foreign_key_violation',
                    DETAIL = format('Key (product_pk)=(%s) is not present in table "products".', NEW.product_pk);
          END IF;
          RETURN NEW;
        END
        $$
        """
    )
    for table in _vector_tables():
        for name in _foreign_keys(table):
            op.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        op.execute(
            f"CREATE TRIGGER {table}_product BEFORE INSERT OR UPDATE OF product_pk ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION lookalike_vector_product_exists()"
        )


def downgrade() -> None:
    for table in _vector_tables():
        op.execute(f"DROP TRIGGER IF EXISTS {table}_product ON {table}")
        op.execute(f"DELETE FROM {table} v WHERE NOT EXISTS (SELECT 1 FROM products p WHERE p.pk = v.product_pk)")
        op.execute(
            f"ALTER TABLE {table} ADD FOREIGN KEY (product_pk) REFERENCES products(pk) ON DELETE CASCADE"
        )
    op.execute("DROP FUNCTION lookalike_vector_product_exists()")
    op.execute("DROP TRIGGER products_vectors_delete ON products")
    op.execute("DROP FUNCTION lookalike_vectors_products_deleted()")
