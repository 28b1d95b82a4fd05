"""`sql/queries/*.sql`: every statement the service sends, rendered from the code that sends it.

Each entry of STATEMENTS names one statement and builds it with the same function the
service calls, for a representative index and filter; `sql/queries/<module>.sql` holds
the entries of one storage module. tests/test_sql_files.py fails when a file differs from
what the code renders, and prepares every statement on a migrated database.

    python -m app.storage.snapshots --write    # in a checkout: regenerate sql/queries/
    python -m app.storage.snapshots --check    # exit 1 when a file is stale

A new statement: one line in STATEMENTS, then `--write`.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.filters import parse_filter
from app.storage import apikeys, db, indexes, products, queue, replicas, search, storefront
from app.storage.indexes import IndexRecord

QUERIES_DIR = Path("sql") / "queries"  # relative to the checkout root, where the command runs

# What the snapshots are rendered for: an index with 384-d halfvec embeddings (the default
# model) and a filter that shows each compiled form (GIN terms, the price btree, NOT).
SAMPLE_INDEX = IndexRecord(
    pk=1,
    name="shop",
    index_id="00000000-0000-4000-8000-000000000000",
    settings={"reverseImageSearch": {"enabled": True}},
    model={"name": "dinov2_vits14"},
    dimensions=384,
    vector_type="halfvec",
    created_at=datetime(2026, 1, 1, tzinfo=UTC),
)
SAMPLE_FILTER = parse_filter("brand:acme AND price:[10 TO 50] AND NOT productCollections:sale")


def _vector(index: IndexRecord, column: search.VectorColumn = "embedding") -> np.ndarray:
    size = {"embedding": index.dimensions, "local_aggregate": indexes.AGGREGATE_DIM, "colour": indexes.COLOUR_DIM}[
        column
    ]
    vector = np.ones(size, np.float32)
    return vector / np.linalg.norm(vector)


def _crops(index: IndexRecord) -> list[search.VectorQuery]:
    """Reverse search's shape: two embedded crops, one keypoint aggregate and one box's colours."""
    return [
        search.VectorQuery(_vector(index), "embedding", 100),
        search.VectorQuery(_vector(index), "embedding", 100),
        search.VectorQuery(_vector(index, "local_aggregate"), "local_aggregate", 50),
        search.VectorQuery(_vector(index, "colour"), "colour", 20),
    ]


def _plan(
    *, facets: bool = False, sort: bool = False, collapse: bool = False, filtered: bool = True
) -> storefront.StorefrontPlan:
    """A storefront request's plan under the sample filter (or none); with facets, the brand facet
    counts under a variant without `brand:acme` (its excludeTerms), as a multi-select sidebar asks."""
    without_brand = parse_filter("price:[10 TO 50] AND NOT productCollections:sale")
    price_buckets = (storefront.RangeBucket("*:50", None, 50.0), storefront.RangeBucket("50:*", 50.0, None))
    facet_plans = (
        storefront.FacetPlan("brand", "brand", "string", None, 10, False, 1 if filtered else 0),
        storefront.FacetPlan("collections", "productCollections", "array", None, 100, False, 0),
        storefront.FacetPlan("price", "price", "number", price_buckets, 100, False, 0),
        storefront.FacetPlan("rating", "rating", "number", None, 100, False, 0),
    )
    return storefront.StorefrontPlan(
        filters=(SAMPLE_FILTER, without_brand) if facets and filtered else (SAMPLE_FILTER if filtered else None,),
        facets=facet_plans if facets else (),
        sort=(storefront.SortKey("price", True, False), storefront.SortKey("color", False, True)) if sort else (),
        collapse=storefront.CollapsePlan("parentProductId", ()) if collapse else None,
        limit=20,
        offset=0,
        sort_depth=60,
    )


Statement = str | tuple[str, Sequence[Any]]

# name -> builder; the name's first part (before the dot) is the file in sql/queries/.
STATEMENTS: dict[str, Callable[[IndexRecord], Statement]] = {
    # search: browse, text, filtered nearest neighbours (both plans), reverse search's UNION
    "search.estimated_matches": lambda ix: search.estimated_matches_sql(ix, SAMPLE_FILTER),
    "search.catalog_page": lambda ix: (search.CATALOG_PAGE, [ix.pk, 1000, 0]),
    "search.configure_scan (hnsw)": lambda ix: (
        search.CONFIGURE_SCAN,
        search.configure_scan_values(exact=False, ef_search=search.DEFAULT_EF_SEARCH),
    ),
    "search.configure_scan (exact)": lambda ix: (
        search.CONFIGURE_SCAN,
        search.configure_scan_values(exact=True, ef_search=search.DEFAULT_EF_SEARCH),
    ),
    "search.nearest (hnsw)": lambda ix: search.nearest_sql(ix, _vector(ix), SAMPLE_FILTER, 10, exact=False),
    "search.nearest (exact)": lambda ix: search.nearest_sql(ix, _vector(ix), SAMPLE_FILTER, 10, exact=True),
    "search.nearest (hnsw, no filter)": lambda ix: search.nearest_sql(ix, _vector(ix), None, 10, exact=False),
    # hybrid text search (searchMethod HYBRID): lexical + vector legs fused by reciprocal rank
    "search.hybrid (hnsw)": lambda ix: search.hybrid_sql(ix, "red shoe", _vector(ix), SAMPLE_FILTER, 10, exact=False),
    "search.hybrid (exact)": lambda ix: search.hybrid_sql(ix, "red shoe", _vector(ix), SAMPLE_FILTER, 10, exact=True),
    "search.hybrid (hnsw, no filter: postings)": lambda ix: search.hybrid_sql(
        ix, "red shoe", _vector(ix), None, 10, exact=False
    ),
    "search.nearest_many (hnsw)": lambda ix: search.nearest_many_sql(ix, _crops(ix), SAMPLE_FILTER, exact=False),
    "search.nearest_many (exact)": lambda ix: search.nearest_many_sql(ix, _crops(ix), SAMPLE_FILTER, exact=True),
    "search.candidate_cosines": lambda ix: search.candidate_cosines_sql(
        ix,
        [11, 12],
        {"embedding": np.stack([_vector(ix)] * 2), "local_aggregate": _vector(ix, "local_aggregate")[None]},
    ),
    "search.candidate_details": lambda ix: (search.CANDIDATE_DETAILS, [ix.pk, [11, 12]]),
    "search.stored_embeddings": lambda ix: (search.stored_embeddings_sql(ix), [ix.pk, ["p1", "p2"]]),
    # storefront: browse and ranked text search with facets, sortBy and collapse (one statement each)
    "storefront.browse": lambda ix: storefront.storefront_sql(ix, _plan(), "browse"),
    "storefront.browse (facets, sortBy, collapse, excludeTerms)": lambda ix: storefront.storefront_sql(
        ix, _plan(facets=True, sort=True, collapse=True), "browse"
    ),
    "storefront.text": lambda ix: storefront.storefront_sql(ix, _plan(), "text", words=("red", "runing", "sho")),
    "storefront.text (facets, sortBy)": lambda ix: storefront.storefront_sql(
        ix, _plan(facets=True, sort=True), "text", words=("red", "runing", "sho")
    ),
    "storefront.text (no filter: postings, facets in one pass; sortBy)": lambda ix: storefront.storefront_sql(
        ix, _plan(facets=True, sort=True, filtered=False), "text", words=("red", "runing", "sho")
    ),
    "storefront.text facets alone (no filter: one pass; the hits apart)": lambda ix: storefront.storefront_sql(
        ix, _plan(facets=True, sort=True, filtered=False), "text", words=("red", "runing", "sho"), hits=False
    ),
    "storefront.text (no filter: postings; facets, sortBy, collapse)": lambda ix: storefront.storefront_sql(
        ix, _plan(facets=True, sort=True, collapse=True, filtered=False), "text", words=("red", "runing", "sho")
    ),
    "storefront.candidates (image query: sortBy, collapse)": lambda ix: storefront.storefront_sql(
        ix, _plan(sort=True, collapse=True), "candidates", candidates=([11, 12], [0.9, 0.8])
    ),
    "storefront.facets only (image query)": lambda ix: storefront.storefront_sql(
        ix, _plan(facets=True), "browse", hits=False
    ),
    # products: ingest upserts, reads, deletes, the backfill queue
    "products.write_product (product)": lambda ix: products.UPSERT_PRODUCT,
    "products.write_product (vectors)": lambda ix: products.upsert_vectors_sql(ix),
    "products.write_product (no features)": lambda ix: products.DELETE_FEATURES,
    "products.upsert_features": lambda ix: products.UPSERT_FEATURES,
    "products.upsert_features (aggregate, colour)": lambda ix: products.update_aggregate_sql(ix.pk),
    "products.reusable_images": lambda ix: products.reusable_images_sql(ix),
    "products.get_documents": lambda ix: (products.GET_DOCUMENTS, [ix.pk, ["p1", "p2"]]),
    "products.get_product_states": lambda ix: (products.GET_PRODUCT_STATES, [ix.pk, ["p1"]]),
    "products.update_document_only": lambda ix: products.UPDATE_DOCUMENT_ONLY,
    "products.delete_documents": lambda ix: (products.DELETE_DOCUMENTS, [ix.pk, ["p1", "p2"]]),
    "products.mark_features_pending": lambda ix: (products.MARK_FEATURES_PENDING, [ix.pk]),
    "products.clear_features_wanted": lambda ix: (products.CLEAR_FEATURES_WANTED, [ix.pk]),
    "products.claim_pending_features": lambda ix: (products.CLAIM_PENDING_FEATURES, [16]),
    "products.finish_features (ready)": lambda ix: products.FEATURES_READY,
    "products.finish_features (failed)": lambda ix: products.FEATURES_FAILED,
    # indexes: create (row + vector table DDL), read, settings, stats, delete
    "indexes.create_index": lambda ix: indexes.INSERT_INDEX,
    "indexes.create_index (vector table)": lambda ix: indexes.vector_table_ddl(ix)[0],
    "indexes.create_index (hnsw)": lambda ix: indexes.vector_table_ddl(ix)[1],
    "indexes.create_index (aggregate hnsw)": lambda ix: indexes.vector_table_ddl(ix)[2],
    "indexes.create_index (colour hnsw)": lambda ix: indexes.vector_table_ddl(ix)[3],
    "indexes.create_index (comment)": lambda ix: indexes.vector_table_ddl(ix)[4],
    "indexes.create_index (product check)": lambda ix: indexes.vector_table_ddl(ix)[5],
    "indexes.get_index": lambda ix: (indexes.GET_INDEX, [ix.name]),
    "indexes.get_index_by_pk": lambda ix: indexes.GET_INDEX_BY_PK,
    "indexes.list_indexes": lambda ix: indexes.LIST_INDEXES,
    "indexes.update_settings": lambda ix: indexes.UPDATE_SETTINGS,
    "indexes.set_inference": lambda ix: indexes.SET_INFERENCE,
    "indexes.index_stats": lambda ix: (indexes.index_stats_sql(ix), [ix.pk]),
    "indexes.delete_index (no statement timeout)": lambda ix: indexes.DELETE_WITHOUT_TIMEOUT,
    "indexes.delete_index (row)": lambda ix: (indexes.DELETE_INDEX_ROW, [ix.pk]),
    "indexes.drop_orphan_vector_tables (find)": lambda ix: indexes.ORPHAN_VECTOR_TABLES,
    "indexes.drop_orphan_vector_tables (lock timeout)": lambda ix: indexes.DROP_LOCK_TIMEOUT,
    "indexes.drop_orphan_vector_tables (drop)": lambda ix: indexes.drop_vector_table_sql(ix.vectors_table),
    "indexes.calibration_lock": lambda ix: (indexes.TRY_LOCK_CALIBRATION, [ix.pk]),
    "indexes.calibration_lock (release)": lambda ix: (indexes.UNLOCK_CALIBRATION, [ix.pk]),
    # db: the health probe
    "db.ping": lambda ix: db.PING,
    # apikeys: admin authentication and first-start key generation
    "apikeys.active_key_digests": lambda ix: apikeys.ACTIVE_KEYS,
    "apikeys.active_key_digests (by source)": lambda ix: (apikeys.ACTIVE_KEYS_FROM, ["generated"]),
    "apikeys.store_key": lambda ix: apikeys.STORE_KEY,
    "apikeys.lock_key_bootstrap": lambda ix: apikeys.LOCK_KEY_BOOTSTRAP,
    # reads: get-documents with the embedding state (queue mode)
    "products.get_documents_with_state": lambda ix: (products.GET_DOCUMENTS_WITH_STATE, [ix.pk, ["p1", "p2"]]),
    # queue: LOOKALIKE_INGEST_MODE=queue stores pending products; `lookalike worker` claims and finishes them
    "queue.enqueue_product": lambda ix: queue.ENQUEUE,
    "queue.enqueue_product (drop vector)": lambda ix: queue.drop_vector_sql(ix),
    "queue.enqueue_product (drop features)": lambda ix: queue.DROP_FEATURES,
    "queue.claim_batch (give up)": lambda ix: (queue.GIVE_UP, [5]),
    "queue.claim_batch": lambda ix: (queue.CLAIM, [16, "host:123:ab12#1", 120.0]),
    "queue.release_claim": lambda ix: (queue.RELEASE_CLAIM, ["host:123:ab12#1"]),
    "queue.finish": lambda ix: queue.MARK_READY,
    "queue.fail": lambda ix: queue.MARK_FAILED,
    "queue.pending_indexes": lambda ix: queue.PENDING_INDEXES,
    # replicas: the health check's lag measurement (primary, then each replica)
    "replicas.primary_wal_position": lambda ix: replicas.PRIMARY_WAL_POSITION,
    "replicas.replica_status": lambda ix: replicas.REPLICA_STATUS,
}


def statement(name: str, index: IndexRecord = SAMPLE_INDEX) -> tuple[str, list[Any]]:
    """The SQL text and (representative) values of one registered statement."""
    built = STATEMENTS[name](index)
    sql, values = (built, []) if isinstance(built, str) else built
    return textwrap.dedent(sql).strip(), list(values)


def _show(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"<vector of {value.size} floats>"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return repr(value)


def render() -> dict[str, str]:
    """File name -> content, for every module with registered statements."""
    files: dict[str, list[str]] = {}
    for name in STATEMENTS:
        sql, values = statement(name)
        lines = [f"-- {name}"]
        lines += [f"--   ${n} = {_show(v)}" for n, v in enumerate(values, start=1)]
        body = "\n".join(line.rstrip() for line in sql.splitlines())
        files.setdefault(name.split(".", 1)[0] + ".sql", []).append("\n".join(lines) + "\n" + body + ";\n")
    header = (
        "-- Generated by `python -m app.storage.snapshots --write` from the code that sends these\n"
        "-- statements (index pk 1, 384-d halfvec; filter `brand:acme AND price:[10 TO 50] AND NOT\n"
        "-- productCollections:sale`). Do not edit: change the code, then regenerate.\n\n"
    )
    return {file: header + "\n".join(parts) for file, parts in files.items()}


def stale(directory: Path) -> list[str]:
    """Files under `directory` that differ from what the code renders (missing and extra ones too)."""
    wanted = render()
    present = {p.name for p in directory.glob("*.sql")} if directory.is_dir() else set()
    differ = [f for f, text in wanted.items() if f not in present or (directory / f).read_text() != text]
    return sorted(differ + [f for f in present - wanted.keys()])


def write(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    wanted = render()
    for path in directory.glob("*.sql"):
        if path.name not in wanted:
            path.unlink()
    for file, text in wanted.items():
        (directory / file).write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.storage.snapshots", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the files")
    mode.add_argument("--check", action="store_true", help="exit 1 when a file is stale")
    parser.add_argument("--dir", type=Path, default=QUERIES_DIR, help="default: sql/queries")
    args = parser.parse_args(argv)
    if args.write:
        write(args.dir)
        return 0
    differ = stale(args.dir)
    for file in differ:
        print(f"stale: {args.dir / file}", file=sys.stderr)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
