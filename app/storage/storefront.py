"""Storefront SQL: browse and ranked text search with facets, sortBy and collapse, one statement.

`storefront_sql` builds one statement per request (the shapes are in sql/storefront.sql):

    WITH tw, tl, tk, tq, ranked (text: the query's words, lexemes, tsquery, postings scores),
         m AS MATERIALIZED (every product the query matches under the filter, or under any
                            facet's filter variant: one boolean flag column per variant; read
                            from `product_facets`, migration 0009, unless the statement names
                            one of the long texts that narrow copy leaves out; without any
                            filter from `product_text`, migration 0011, the same less the
                            filter terms),
         h  (the hits' set: m under the request's filter),
         best (text without filter or collapse, instead of h: the hits best first from the
               postings, only as deep as the page or sortBy's depth needs),
         gm (collapse: the groups with more than one match),
         c  (collapse: the solo matches as they are, DISTINCT ON the collapse key over the
             shared groups' matches, the group's first by its order),
         top(relevance + sortBy: the best `sort_depth` candidates by score),
         page (ORDER BY the final order, LIMIT/OFFSET),
         f0, f1, ... (one aggregate per facet over m under its filter variant)
    SELECT the page's rows UNION ALL one JSON row per facet

Facets are aggregates over every match, never over the page: `GROUP BY` the stored values
(an array field: each element once per product), `count(*) FILTER (WHERE ...)` per
number range, min/max/avg/sum/count for number stats. With collapse, value and range
counts count groups (selecting that value yields that many hits: a match alone in its
group counts as a product, the shared groups' (value, group) pairs are deduplicated) and
number stats use each group's representative.

Text matching (migration 0005): OR-semantics over the query's words on the weighted
`search_tsv` (the last word as a prefix), a word of four or more letters that no product
has (a misspelling) replaced by the most similar words of the catalog's titles
(`search_words`, pg_trgm). The score is `ts_rank_cd` (title A, variant title B,
description C; length-normalised): equal scores mean equal matches (the same words in
the same fields at the same positions). Without a filter or collapse it is read as the sum
of the matching lexemes' `search_postings` weights (migration 0007), the same value, so
only the products a page shows are ever visited for their score.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import asyncpg

from app.filters import ID_FIELD, And, FilterNode, In, Not, Or, Range, Term
from app.storage.filter_sql import compile_filter, storable
from app.storage.indexes import IndexRecord
from app.storage.params import SqlParams

TEXT_CONFIG = "lookalike_text"  # the text search configuration of migration 0005
# Words shorter than this are not corrected: a two- or three-letter word shares its few
# trigrams with too many words (the prefix query covers unfinished words). search_words
# holds words of at least this length (migration 0005).
MIN_FUZZY_WORD = 4
# A misspelt word searches for this many of the most similar catalog words.
CORRECTIONS = 3
# ts_rank_cd weights for D, C, B, A: description (C) 0.4, variant title (B) 0.7, title (A) 1.0.
RANK_WEIGHTS = "{0.1, 0.4, 0.7, 1.0}"
# A lexeme of `tk` as tsquery text: single-quoted, quotes doubled, backslashes escaped.
_TSQUERY_QUOTED = r"'''' || replace(replace(tk.lexeme, '\', '\\'), '''', '''''') || ''''"

Source = Literal["browse", "text", "candidates"]

# The fields `product_facets` (migration 0009) and `product_text` (0011) leave out of its `doc` and `filter_terms`: the
# long texts. A statement naming none of them finds its matches in that narrow table.
WIDE_FIELDS = frozenset({"productTitle", "description", "variantImageUrl"})

# Words of a text query beyond this many are ignored (each word is one tsquery and possibly
# one correction lookup; no shopper types 33 words, and the limit bounds the statement).
MAX_QUERY_WORDS = 32
# Letters and digits in any script; everything else separates words (tsquery syntax included).
_WORD_RE = re.compile(r"[^\W_]+")


def query_words(q: str) -> tuple[str, ...]:
    """The words of a text query, in order, at most MAX_QUERY_WORDS."""
    return tuple(_WORD_RE.findall(q))[:MAX_QUERY_WORDS]


# --- what a request asks of the statement (app.domain.storefront builds it) ----------------


@dataclass(frozen=True)
class SortKey:
    field: str  # stored name (aliases resolved)
    descending: bool
    missing_first: bool


@dataclass(frozen=True)
class RangeBucket:
    name: str
    low: float | None  # inclusive
    high: float | None  # exclusive


@dataclass(frozen=True)
class FacetPlan:
    key: str  # the name the client used (the response key)
    field: str  # the stored name
    kind: str  # "string" | "array" | "number"
    ranges: tuple[RangeBucket, ...] | None  # number facets: buckets, or None for stats
    max_results: int
    ascending: bool
    variant: int  # index into StorefrontPlan.filters: the filter this facet counts under


@dataclass(frozen=True)
class CollapsePlan:
    field: str
    sort: tuple[SortKey, ...]  # empty: the best score (browse: the request's order)


@dataclass(frozen=True)
class StorefrontPlan:
    filters: tuple[FilterNode | None, ...]  # [0] the request's filter; others: facets' variants
    facets: tuple[FacetPlan, ...]
    sort: tuple[SortKey, ...]
    collapse: CollapsePlan | None
    limit: int
    offset: int
    sort_depth: int  # relevance queries with sortBy: how many top candidates are sorted

    @property
    def filtered(self) -> bool:
        return self.filters[0] is not None

    def fields(self) -> set[str]:
        """Every product field the statement reads: filters, sort keys, collapse, facets."""
        named = {k.field for k in self.sort} | {f.field for f in self.facets}
        if self.collapse is not None:
            named |= {self.collapse.field} | {k.field for k in self.collapse.sort}
        for node in self.filters:
            named |= _filter_fields(node)
        return named


def _filter_fields(node: FilterNode | None) -> set[str]:
    if node is None:
        return set()
    if isinstance(node, Term | In | Range):
        return {node.field}
    if isinstance(node, Not):
        return _filter_fields(node.child)
    if isinstance(node, And | Or):
        return set().union(*(_filter_fields(child) for child in node.children))
    raise TypeError(f"not a filter node: {node!r}")



@dataclass(frozen=True)
class StorefrontRow:
    product_pk: int
    product_id: str
    doc: dict[str, Any]
    score: float | None


@dataclass(frozen=True)
class StorefrontResult:
    rows: list[StorefrontRow]
    facets: dict[str, Any]  # facet key -> {value: {"count": n}} or number stats


# Whether match `x` is the only one of its group (`gm`: the groups with more than one match).
# g is never NULL, so NOT IN is a plain hashed lookup.
_SOLO_OF = "{0}.g NOT IN (SELECT g FROM gm)"
_SHARED_OF = "{0}.g IN (SELECT g FROM gm)"


def _value(params: SqlParams, field: str) -> str:
    """A product field of row `p` as a sortable SQL value: typed columns for _id and price, else
    the stored JSON value (JSON null is as missing as an absent key)."""
    if field == ID_FIELD:
        return 'p.product_id COLLATE "C"'
    if field == "price":
        return "p.price"
    return f"NULLIF(p.doc -> {params.add(field, 'text')}, 'null'::jsonb)"


def _group_key(params: SqlParams, field: str) -> str:
    """The collapse key of row `p` as text (sorted and compared bytewise): the canonical JSON
    text of the value, or `#<pk>` for a product without it (a group of its own)."""
    if field == ID_FIELD:
        return "p.product_id"
    if field == "price":
        return "p.price::text"
    if field == "parentProductId":
        # A core string field (validated at ingest), mirrored by a typed column: no JSON decoding.
        return "coalesce('s' || p.parent_product_id, '#' || p.pk)"
    value = f"NULLIF(p.doc -> {params.add(field, 'text')}, 'null'::jsonb)"
    return f"coalesce({value}::text, '#' || p.pk)"


def _number(params: SqlParams, field: str) -> str:
    if field == "price":
        return "p.price"
    value = f"(p.doc -> {params.add(field, 'text')})"
    # Only JSON numbers a double can hold (as the filter's ranges): anything else is no value.
    return f"(CASE WHEN jsonb_typeof({value}) = 'number' AND abs({value}::numeric) < 1e308 THEN {value}::float8 END)"


def _facet_column(params: SqlParams, facet: FacetPlan) -> str:
    """The facet's value column of row `p`: text (string), a JSON array or text[] (array), float8."""
    if facet.kind == "number":
        return _number(params, facet.field)
    if facet.kind == "array" and facet.field == "productCollections":
        # The typed column mirrors the document's string array: unnest() instead of JSON.
        return "p.product_collections"
    field = params.add(facet.field, "text")
    kind = "string" if facet.kind == "string" else "array"
    extract = "->>" if facet.kind == "string" else "->"
    return f"(CASE WHEN jsonb_typeof(p.doc -> {field}) = '{kind}' THEN p.doc {extract} {field} END)"


def text_ctes(p: SqlParams, words: tuple[str, ...], index_param: str, *, ranked: bool) -> list[str]:
    """The text query's common table expressions: `tq` (its tsquery, one row `q`) and, with
    `ranked`, `ranked` (pk, score) of every product of the index that matches it.

    tw: the query's words (the last one a prefix: it may be unfinished) and, for each word of
        MIN_FUZZY_WORD or more letters that is no title word of the index (the last: starts
        none; a misspelling), its CORRECTIONS most similar title words (`search_words`, pg_trgm
        `%`, similarity order). Knowing a word is a primary-key lookup; the trigram lookup runs
        only for unknown words (a one-time filter) and reads the trigram index.
    tl, tk: their lexemes in the text configuration (`to_tsvector`: what `search_tsv` holds),
        each exact or a prefix, without those another prefix covers (a product's matching
        lexeme counts once, as in ts_rank_cd).
    tq: the OR of tk (NULL, which matches nothing, when there is none).
    ranked: per product (pk, product_id), the sum of its matching lexemes' `search_postings`
        weights (migration 0007) as real: ts_rank_cd(RANK_WEIGHTS, search_tsv, tq, 1) for these OR queries, read
        from the postings' covering btree instead of computed from every matching tsvector.
    """
    cfg = f"'{TEXT_CONFIG}'::regconfig"
    usable = [w for w in words if storable(w)]
    sources = []
    for position, word in enumerate(usable):
        last = position == len(usable) - 1
        sources.append(f"SELECT {p.add(word, 'text')}, {'TRUE' if last else 'FALSE'}")
        if len(word) < MIN_FUZZY_WORD:
            continue
        folded = f"lookalike_fold({p.add(word, 'text')})"
        # Known: a title word of the index equal to it (the last word: starting with it),
        # a primary-key lookup in search_words (byte-ordered, so a prefix is a range).
        known = f"k.word = {folded}"
        if last:
            known = f"k.word >= {folded} AND k.word < {folded} || chr(1114111)"
        sources.append(
            f"(SELECT s.word::text, FALSE FROM search_words s WHERE NOT EXISTS (SELECT 1 FROM search_words k"
            f" WHERE k.index_pk = {index_param} AND {known})"
            f" AND s.index_pk = {index_param} AND s.word % {folded}"
            f" ORDER BY similarity(s.word, {folded}) DESC, s.word LIMIT {CORRECTIONS})"
        )
    if not sources:
        sources.append("SELECT NULL::text, FALSE WHERE FALSE")
    ctes = [
        "tw (word, prefix) AS MATERIALIZED (" + " UNION ALL ".join(sources) + ")",
        'tl AS MATERIALIZED (SELECT DISTINCT l.lexeme COLLATE "C" AS lexeme, w.prefix FROM tw w'
        f" CROSS JOIN LATERAL unnest(tsvector_to_array(to_tsvector({cfg}, w.word))) AS l(lexeme))",
        "tk AS MATERIALIZED (SELECT a.lexeme, a.prefix FROM tl a WHERE NOT EXISTS (SELECT 1 FROM tl b"
        " WHERE b.prefix AND starts_with(a.lexeme, b.lexeme) AND (b.lexeme <> a.lexeme OR NOT a.prefix)))",
        # tsquery text: each lexeme quoted (quotes doubled, backslashes escaped), a prefix `:*`
        f"tq AS MATERIALIZED (SELECT string_agg({_TSQUERY_QUOTED}"
        " || CASE WHEN tk.prefix THEN ':*' ELSE '' END, ' | ')::tsquery AS q FROM tk)",
    ]
    if ranked:
        ctes.append(
            "ranked AS NOT MATERIALIZED (SELECT sp.product_pk AS pk, sp.product_id,"
            " sum(sp.weight)::real::float8 AS score"
            " FROM tk CROSS JOIN LATERAL ("
            "SELECT x.product_pk, x.product_id, x.weight FROM search_postings x"
            f" WHERE NOT tk.prefix AND x.index_pk = {index_param} AND x.lexeme = tk.lexeme UNION ALL"
            " SELECT x.product_pk, x.product_id, x.weight FROM search_postings x"
            f" WHERE tk.prefix AND x.index_pk = {index_param} AND x.lexeme >= tk.lexeme"
            " AND x.lexeme < tk.lexeme || chr(1114111) AND starts_with(x.lexeme, tk.lexeme)"
            ") sp GROUP BY sp.product_pk, sp.product_id)"
        )
    return ctes


def best_first_ctes(name: str, p: SqlParams, index_param: str, depth: int, columns: str) -> list[str]:
    """CTEs ending in `name`: the `depth` best ready products of `ranked` (text_ctes) in (score,
    product_id) order, as `columns` of products `p` and ranked `r`.

    The first 2 x depth + 32 of ranked by that order (a bounded sort: fully sorting every match
    compared the ids of thousands of products tied on score, 9 ms at 100k) are probed for their
    state; when they hold `depth` ready products, or are all of ranked, those are the answer.
    Otherwise (more products not ready at the top than that) every match is walked in order.
    """
    depth_param = p.add(depth)
    cut_param = p.add(2 * depth + 32)

    def walk(source: str) -> str:
        return (
            f"SELECT {columns} FROM {source} r JOIN products p ON p.pk = r.pk"
            f" WHERE p.index_pk = {index_param} AND p.embedding_status = 'ready'"
            f" ORDER BY r.score DESC, r.product_id LIMIT {depth_param}"
        )

    enough = (
        f"((SELECT count(*) FROM {name}_quick) >= {depth_param} OR (SELECT count(*) FROM {name}_cut) < {cut_param})"
    )
    everything = "(SELECT r.pk, r.product_id, r.score FROM ranked r ORDER BY r.score DESC, r.product_id)"
    return [
        f"{name}_cut AS MATERIALIZED (SELECT r.pk, r.product_id, r.score FROM ranked r"
        f" ORDER BY r.score DESC, r.product_id LIMIT {cut_param})",
        f"{name}_quick AS MATERIALIZED ({walk(name + '_cut')})",
        f"{name} AS MATERIALIZED (SELECT * FROM {name}_quick WHERE {enough}"
        f" UNION ALL SELECT * FROM ({walk(everything)}) f WHERE NOT {enough})",
    ]


class _Builder:
    def __init__(
        self, index: IndexRecord, plan: StorefrontPlan, source: Source, *, narrow: bool = True, text_table: bool = True
    ):
        self.index = index
        # Where the matches' values are read: the narrow copy unless a long text is needed, and
        # its copy without filter terms when no filter is (none in the request or any facet's).
        self.table = "product_facets" if narrow and not (plan.fields() & WIDE_FIELDS) else "products"
        if self.table == "product_facets" and text_table and all(node is None for node in plan.filters):
            self.table = "product_text"
        self.plan = plan
        self.source = source
        self.params = SqlParams()
        self.ctes: list[str] = []
        self.relevance = source != "browse"
        self.collapsed = plan.collapse is not None
        self.variants = len(plan.filters)
        # Collapsed, one filter: the solo matches' facet counts in one pass (fx) instead of one scan
        # of m per facet, when there are two or more such counts (string, productCollections, ranges).
        self.solo_pass = (
            self.collapsed
            and self.variants == 1
            and sum(f.kind != "number" or f.ranges is not None for f in plan.facets) >= 2
            and all(f.kind != "array" or f.field == "productCollections" for f in plan.facets)
        )
        # m's extracted columns: sort keys (request's, collapse's) and facet values, each value
        # once (a field sorted by and faceted on is read from the document once per row)
        self.columns: list[str] = []
        self.column_names: dict[tuple[str, str], str] = {}
        self.sort_columns = [self.column("value", k.field, _value) for k in plan.sort]
        self.group_sort_columns = (
            [self.column("value", k.field, _value) for k in plan.collapse.sort] if plan.collapse else []
        )
        self.facet_columns = [
            self.column(f.kind, f.field, lambda params, _, facet=f: _facet_column(params, facet)) for f in plan.facets
        ]

    def column(self, role: str, field: str, expression: Callable[[SqlParams, str], str]) -> str:
        """The name in m of `field` read as `role` ("value": sortable; "number"; a facet's kind)."""
        key = (role, field)
        if key not in self.column_names:
            value = expression(self.params, field)
            if value == "p.price":
                self.column_names[key] = "price"  # m has the typed column already
            else:
                self.column_names[key] = f"c{len(self.columns)}"
                self.columns.append(f"{value} AS {self.column_names[key]}")
        return self.column_names[key]

    # -- pieces

    def flag(self, variant: int) -> str:
        return "TRUE" if self.variants == 1 else f"f{int(variant)}"

    @staticmethod
    def ordered(columns: list[str], keys: tuple[SortKey, ...]) -> list[str]:
        return [
            f"{c} {'DESC' if k.descending else 'ASC'} NULLS {'FIRST' if k.missing_first else 'LAST'}"
            for c, k in zip(columns, keys, strict=True)
        ]

    def default_order(self) -> list[str]:
        if self.relevance:
            return ["score DESC", 'product_id COLLATE "C"']
        return ['product_id COLLATE "C"']

    def final_order(self) -> list[str]:
        return self.ordered(self.sort_columns, self.plan.sort) + self.default_order()

    def group_order(self) -> list[str]:
        collapse = self.plan.collapse
        assert collapse is not None
        if collapse.sort:
            return self.ordered(self.group_sort_columns, collapse.sort) + self.default_order()
        if self.relevance:
            return self.default_order()
        return self.final_order()

    # -- the statement

    def build(
        self,
        *,
        words: tuple[str, ...] = (),
        candidates: tuple[list[int], list[float]] | None = None,
        hits: bool = True,
    ) -> tuple[str, list[Any]]:
        p = self.params
        index_param = p.add(self.index.pk)
        flags = [compile_filter(node, p, "p") for node in self.plan.filters]
        where = flags[0] if self.variants == 1 else "(" + " OR ".join(flags) + ")"
        flag_columns = "" if self.variants == 1 else "".join(f", {f} AS f{i}" for i, f in enumerate(flags))
        group_columns = ""
        if self.collapsed:
            assert self.plan.collapse is not None
            group_columns = f', {_group_key(p, self.plan.collapse.field)} COLLATE "C" AS g'
        # Relevance hits without a filter or collapse: the best first, straight from the postings
        # (`best`, below); the scan of every match (m) is then only for the facets, unscored.
        best_first = self.source == "text" and hits and not self.collapsed and self.plan.filters[0] is None
        # A text query's facet counts alone (`facets_apart`: its hits come from another statement).
        counts_only = self.source == "text" and not hits and not self.collapsed
        if self.source == "text":
            self.ctes.extend(text_ctes(p, words, index_param, ranked=best_first))
            tsquery = "(SELECT q FROM tq)"
            score = f"ts_rank_cd('{RANK_WEIGHTS}', p.search_tsv, {tsquery}, 1)::float8"
            if best_first or counts_only:
                score = "NULL::float8"  # m only counts facets
            source_sql = (
                f"FROM {self.table} p WHERE p.index_pk = {index_param} AND p.embedding_status = 'ready'"
                f" AND p.search_tsv @@ {tsquery} AND {where}"
            )
        elif self.source == "candidates":
            assert candidates is not None
            pks, scores = candidates
            score = "c.score"
            source_sql = (
                f"FROM unnest({p.add(pks, 'bigint[]')}, {p.add(scores, 'float8[]')}) AS c(pk, score)"
                f" JOIN products p ON p.pk = c.pk WHERE p.index_pk = {index_param} AND {where}"
            )
        else:
            score = "NULL::float8"
            source_sql = (
                f"FROM {self.table} p WHERE p.index_pk = {index_param} AND p.embedding_status = 'ready' AND {where}"
            )
        extracted = "".join(", " + c for c in self.columns)
        # Best first, m only feeds the facets (one filter, no collapse): then all of them are one
        # aggregate over the scan (`fx`, grouping sets) unless one unnests a JSON array, and m
        # is never stored (writing and re-reading 15,000 rows cost more than the grouping).
        one_pass = (best_first or counts_only) and self.variants == 1 and bool(self.plan.facets) and all(
            f.kind != "array" or f.field == "productCollections" for f in self.plan.facets
        )
        # m carries the extracted values, not the documents: only the page's are fetched.
        if not best_first or self.plan.facets:
            self.ctes.append(
                f"m AS {'NOT ' if one_pass else ''}MATERIALIZED (SELECT p.pk, p.product_id, p.price, {score} AS score"
                f"{flag_columns}{group_columns}{extracted} {source_sql})"
            )
        hits_set = "m" if self.variants == 1 else "(SELECT * FROM m WHERE f0)"
        if best_first:
            # The products in (score, _id) order (the postings' sums and ids, sorted), each probing
            # products_pkey for its state and values, until the page (or sortBy's candidate depth)
            # is full: the exact order of all matches, from that many probes instead of ts_rank_cd
            # over every match.
            depth = self.plan.sort_depth if self.plan.sort else self.plan.limit + self.plan.offset
            self.ctes.extend(
                best_first_ctes("best", p, index_param, depth, f"p.pk, p.product_id, p.price, r.score{extracted}")
            )
            hits_set = "best"
        if self.collapsed:
            # gm: the groups with more than one match. Every other match is its group's only one
            # (under any facet's filter variant too, m being their union): it is its own
            # representative, and counts once for its values without deduplication. Only the
            # shared groups are sorted and deduplicated (with a 10% filter at 100k: none of 10,000).
            self.ctes.append("gm AS MATERIALIZED (SELECT g FROM m GROUP BY g HAVING count(*) > 1)")
            order = ", ".join(self.group_order())
            self.ctes.append(
                f"c AS (SELECT * FROM {hits_set} h WHERE {_SOLO_OF.format('h')} UNION ALL"
                f" (SELECT DISTINCT ON (g) * FROM {hits_set} h WHERE {_SHARED_OF.format('h')} ORDER BY g, {order}))"
            )
            hits_set = "c"
        selects = []
        if hits:
            final = ", ".join(self.final_order())
            if self.relevance and self.plan.sort:
                depth = p.add(self.plan.sort_depth)
                self.ctes.append(
                    f"top AS (SELECT * FROM {hits_set} t ORDER BY {', '.join(self.default_order())} LIMIT {depth})"
                )
                hits_set = "top"
            self.ctes.append(
                f"page AS (SELECT *, row_number() OVER (ORDER BY {final}) AS ord FROM"
                f" (SELECT * FROM {hits_set} s ORDER BY {final}"
                f" LIMIT {p.add(self.plan.limit)} OFFSET {p.add(self.plan.offset)}) q)"
            )
            selects.append(
                "SELECT 0 AS kind, s.ord, s.pk, s.product_id, d.doc::text AS doc, s.score, NULL::text AS payload"
                " FROM page s JOIN products d ON d.pk = s.pk"
            )
        if one_pass:
            self.ctes.append(self.one_pass_cte())
        elif self.solo_pass:
            # collapse: the solo matches' counts of every facet in one aggregate, as one_pass
            self.ctes.append(self.one_pass_cte(f"m x WHERE {_SOLO_OF.format('x')}", stats=False))
        for number, facet in enumerate(self.plan.facets):
            body = self.one_pass_facet_sql(facet, number) if one_pass else self.facet_sql(facet, number)
            self.ctes.append(f"f{number} AS ({body})")
            selects.append(
                f"SELECT 1 AS kind, {number} AS ord, NULL::bigint AS pk, NULL::text AS product_id, NULL::text AS doc,"
                f" NULL::float8 AS score, payload::text FROM f{number}"
            )
        if not selects:
            selects.append("SELECT 0, 0, NULL::bigint, NULL::text, NULL::text, NULL::float8, NULL::text WHERE FALSE")
        sql = "WITH " + ",\n".join(self.ctes) + "\n" + "\nUNION ALL\n".join(selects)
        return sql, p.values

    def bucket_condition(self, value: str, bucket: RangeBucket) -> str:
        conditions = [f"{value} IS NOT NULL"]
        if bucket.low is not None:
            conditions.append(f"{value} >= {self.params.add(bucket.low, 'float8')}")
        if bucket.high is not None:
            conditions.append(f"{value} < {self.params.add(bucket.high, 'float8')}")
        return " AND ".join(conditions)

    def value_facets(self) -> list[int]:
        return [n for n, f in enumerate(self.plan.facets) if f.kind in ("string", "array")]

    def one_pass_cte(self, rows: str = "m x", *, stats: bool = True) -> str:
        """fx: every facet of `rows` in one aggregate. A grouping set per string or productCollections
        facet (its value or list: g<n> = 0 on its rows), and the whole set `()` (every g<n> = 1)
        carrying the number facets' range counts (r<n>_<i>) and, with `stats`, stats."""
        columns, sets = [], []
        for n in self.value_facets():
            value = f"x.{self.facet_columns[n]}"
            columns.append(f"{value} AS v{n}, GROUPING({value}) AS g{n}")
            sets.append(f"({value})")
        columns.append("count(*) AS n")
        for n, facet in enumerate(self.plan.facets):
            if facet.kind != "number":
                continue
            value = f"x.{self.facet_columns[n]}"
            if facet.ranges is not None:
                for i, bucket in enumerate(facet.ranges):
                    columns.append(f"count(*) FILTER (WHERE {self.bucket_condition(value, bucket)}) AS r{n}_{i}")
            elif stats:
                columns.append(
                    f"min({value}) AS min{n}, max({value}) AS max{n}, {_exact('avg', value)} AS avg{n},"
                    f" {_exact('sum', value)} AS sum{n}, count({value}) AS count{n}"
                )
        sets.append("()")
        grouping = f"GROUP BY GROUPING SETS ({', '.join(sets)})"
        return f"fx AS MATERIALIZED (SELECT {', '.join(columns)} FROM {rows} {grouping})"

    def fx_value_rows(self, facet: FacetPlan, number: int) -> str:
        """(v, n) rows of a string or productCollections facet from fx (one_pass_cte)."""
        mine = f"x.g{number} = 0"
        if facet.kind == "string":
            return f"SELECT x.v{number} AS v, x.n FROM fx x WHERE {mine} AND x.v{number} IS NOT NULL"
        # productCollections: per distinct list, each element once (value_counts)
        return _list_element_counts(f"SELECT x.v{number} AS a, x.n FROM fx x WHERE {mine}")

    def fx_whole(self) -> str:
        """fx's row of the whole set `()` (the number facets' counts)."""
        return " AND ".join(f"x.g{n} = 1" for n in self.value_facets()) or "TRUE"

    def one_pass_facet_sql(self, facet: FacetPlan, number: int) -> str:
        """Facet `number` read from fx (one_pass_cte): the same payload as facet_sql's."""
        p = self.params
        if facet.kind in ("string", "array"):
            direction = "ASC" if facet.ascending else "DESC"
            rows = self.fx_value_rows(facet, number)
            order = f'n {direction}, v COLLATE "C"'
            return (
                f"SELECT json_agg(json_build_array(v, n) ORDER BY {order}) AS payload FROM"
                f" (SELECT v, n FROM ({rows}) r ORDER BY {order} LIMIT {p.add(facet.max_results)}) t"
            )
        whole = self.fx_whole()
        if facet.ranges is not None:
            counts = ", ".join(
                f"json_build_array({p.add(bucket.name, 'text')}, x.r{number}_{i})"
                for i, bucket in enumerate(facet.ranges)
            )
            return f"SELECT json_build_array({counts}) AS payload FROM fx x WHERE {whole}"
        return (
            f"SELECT json_build_object('min', x.min{number}, 'max', x.max{number}, 'avg', x.avg{number},"
            f" 'sum', x.sum{number}, 'count', x.count{number}) AS payload FROM fx x WHERE {whole}"
        )

    def value_counts(self, facet: FacetPlan, number: int, where: str, *, per_group: bool) -> str:
        """(v, n) rows: how many of m's rows under `where` (per_group: how many groups) hold each
        value of a string or array facet."""
        value = f"x.{self.facet_columns[number]}"
        unit = ", x.g" if per_group else ", x.pk"
        if facet.kind == "string" and not per_group:
            # one value per product: count the rows directly
            return f"SELECT {value} AS v, count(*) AS n FROM m x WHERE {where} AND {value} IS NOT NULL GROUP BY 1"
        if facet.field == "productCollections" and not per_group:
            # Products share few distinct collection lists: count the products per list
            # first, then unnest each distinct list once, each element once per list
            # (DISTINCT over (element, list)), and add up. At 100k products a 10% filter
            # holds 10k products but about 800 distinct lists. (text[] only: jsonb equality
            # would merge [1] and [1.0], whose elements' texts differ.)
            return _list_element_counts(f"SELECT {value} AS a, count(*) AS n FROM m x WHERE {where} GROUP BY 1")
        if facet.kind == "string":
            pairs = f"SELECT {value} AS v{unit} FROM m x WHERE {where}"
        else:
            elements = (
                f"unnest({value})" if facet.field == "productCollections" else f"jsonb_array_elements_text({value})"
            )
            pairs = f"SELECT a.v{unit} FROM m x CROSS JOIN LATERAL {elements} AS a(v) WHERE {where}"
        # (value, product) or (value, group) pairs once each, then counted: an array
        # counts an element once per product, a group once per value.
        return f"SELECT v, count(*) AS n FROM (SELECT DISTINCT * FROM ({pairs}) q WHERE v IS NOT NULL) d GROUP BY v"

    def facet_sql(self, facet: FacetPlan, number: int) -> str:
        p = self.params
        flag = "TRUE" if self.variants == 1 else f"x.f{int(facet.variant)}"
        direction = "ASC" if facet.ascending else "DESC"
        value = f"x.{self.facet_columns[number]}"
        if facet.kind in ("string", "array"):
            if self.collapsed:
                # A group counts once per value: the solo matches as products, the shared groups'
                # (value, group) pairs deduplicated.
                if self.solo_pass:
                    solo = self.fx_value_rows(facet, number)
                else:
                    solo = self.value_counts(facet, number, f"{flag} AND {_SOLO_OF.format('x')}", per_group=False)
                shared = self.value_counts(facet, number, f"{flag} AND {_SHARED_OF.format('x')}", per_group=True)
                rows = f"SELECT v, sum(n)::bigint AS n FROM ({solo} UNION ALL {shared}) u GROUP BY v"
            else:
                rows = self.value_counts(facet, number, flag, per_group=False)
            order = f'n {direction}, v COLLATE "C"'
            return (
                f"SELECT json_agg(json_build_array(v, n) ORDER BY {order}) AS payload FROM"
                f" (SELECT v, n FROM ({rows}) r ORDER BY {order} LIMIT {p.add(facet.max_results)}) t"
            )
        if facet.ranges is not None:
            names, solo, shared = [], [], []
            for position, bucket in enumerate(facet.ranges):
                where = self.bucket_condition(value, bucket)
                names.append(p.add(bucket.name, "text"))
                solo.append(f"count(*) FILTER (WHERE {where}) AS n{position}")
                shared.append(f"count(DISTINCT x.g) FILTER (WHERE {where}) AS n{position}")
            if not self.collapsed:
                counts = ", ".join(f"json_build_array({name}, s.n{i})" for i, name in enumerate(names))
                every = ", ".join(solo)
                return f"SELECT json_build_array({counts}) AS payload FROM (SELECT {every} FROM m x WHERE {flag}) s"
            # groups: the solo matches counted as rows, the shared groups each once per bucket
            counts = ", ".join(f"json_build_array({name}, s.n{i} + u.n{i})" for i, name in enumerate(names))
            solo_counts = f"SELECT {', '.join(solo)} FROM m x WHERE {flag} AND {_SOLO_OF.format('x')}"
            if self.solo_pass:
                solo_counts = (
                    "SELECT "
                    + ", ".join(f"x.r{number}_{i} AS n{i}" for i in range(len(facet.ranges)))
                    + f" FROM fx x WHERE {self.fx_whole()}"
                )
            return (
                f"SELECT json_build_array({counts}) AS payload"
                f" FROM ({solo_counts}) s,"
                f" (SELECT {', '.join(shared)} FROM m x WHERE {flag} AND {_SHARED_OF.format('x')}) u"
            )
        # number stats: over each group's representative when collapsing
        source = f"m x WHERE {flag}"
        if self.collapsed:
            if facet.variant == 0:
                source = "c x"
            else:
                source = (
                    f"(SELECT DISTINCT ON (g) * FROM m WHERE f{int(facet.variant)}"
                    f" ORDER BY g, {', '.join(self.group_order())}) x"
                )
        return (
            f"SELECT json_build_object('min', min(v), 'max', max(v), 'avg', {_exact('avg', 'v')},"
            f" 'sum', {_exact('sum', 'v')}, 'count', count(v)) AS payload FROM (SELECT {value} AS v FROM {source}) s"
        )


def _list_element_counts(lists: str) -> str:
    """(v, n) rows from `lists`, (a, n) rows of distinct text[] lists and their product counts: each
    element's products, an element counted once per list. The first occurrence of an element in
    its list is the one kept (array_position: the first subscript holding it): a check of a few
    elements per list, where DISTINCT over (element, list, n) hashed every list again (`leather
    boots` at 100k products: 819 lists, 2,347 elements; this facet 3.9 ms in the plan before,
    1.5-1.6 ms after, load 3.4-4.3)."""
    return (
        "SELECT e.v, sum(x.n)::bigint AS n FROM (" + lists + ") x"
        " CROSS JOIN LATERAL unnest(x.a) WITH ORDINALITY AS e(v, o)"
        " WHERE e.v IS NOT NULL AND array_position(x.a, e.v) = array_lower(x.a, 1) + e.o - 1 GROUP BY e.v"
    )


def _exact(aggregate: str, value: str) -> str:
    """avg/sum of a float8 column in numeric: a float8 sum depends on the order rows arrive in (plans,
    parallel workers, physical order), so the same products could report different stats."""
    return f"{aggregate}({value}::numeric)::float8"


def storefront_sql(
    index: IndexRecord,
    plan: StorefrontPlan,
    source: Source,
    *,
    words: tuple[str, ...] = (),
    candidates: tuple[list[int], list[float]] | None = None,
    hits: bool = True,
    narrow: bool = True,
    text_table: bool = True,
) -> tuple[str, list[Any]]:
    """The statement and its values (exposed so tests and benchmarks can EXPLAIN it).

    `narrow=False` reads every match from `products` even when `product_facets` would do, and
    `text_table=False` from `product_facets` when `product_text` would do: the same answer, the
    old ways (tests and benchmarks compare them)."""
    return _Builder(index, plan, source, narrow=narrow, text_table=text_table).build(
        words=words, candidates=candidates, hits=hits
    )


def facets_apart(plan: StorefrontPlan, source: Source) -> tuple[StorefrontPlan, StorefrontPlan] | None:
    """A text query without a filter or collapse, with facets, as two statements that may run at
    once on two connections: its hits (best first from the postings; no facet values) and its facet
    counts (`hits=False`: every match's values, unscored). In one statement they are two passes, one
    after the other (`leather boots` at 100k products: the postings' ranking 11 ms, then the facet
    pass 20 ms), and neither reads what the other found. None: one statement answers it."""
    if source != "text" or not plan.facets or plan.collapse is not None or plan.filters[0] is not None:
        return None
    return replace(plan, facets=(), filters=plan.filters[:1]), plan


async def storefront_query_apart(
    read: Callable[
        [Callable[[asyncpg.Connection | asyncpg.Pool], Awaitable[StorefrontResult]]], Awaitable[StorefrontResult]
    ],
    index: IndexRecord,
    apart: tuple[StorefrontPlan, StorefrontPlan],
    source: Source,
    *,
    words: tuple[str, ...] = (),
) -> StorefrontResult:
    """`facets_apart`'s two statements at once, each through `read` (its own connection: the
    service's `Database.read`, or a pool), as one result: the first's hits, the second's facets."""
    hits_plan, facets_plan = apart
    found, counted = await asyncio.gather(
        read(lambda conn: storefront_query(conn, index, hits_plan, source, words=words)),
        read(lambda conn: storefront_query(conn, index, facets_plan, source, words=words, hits=False)),
    )
    return StorefrontResult(found.rows, counted.facets)


def _facet_value(facet: FacetPlan, payload: Any) -> Any:
    if facet.kind == "number" and facet.ranges is None:
        return payload
    return {str(value): {"count": int(n)} for value, n in (payload or [])}


async def storefront_query(
    conn: asyncpg.Connection | asyncpg.Pool,
    index: IndexRecord,
    plan: StorefrontPlan,
    source: Source,
    *,
    words: tuple[str, ...] = (),
    candidates: tuple[list[int], list[float]] | None = None,
    hits: bool = True,
    narrow: bool = True,
    text_table: bool = True,
) -> StorefrontResult:
    sql, values = storefront_sql(
        index, plan, source, words=words, candidates=candidates, hits=hits, narrow=narrow, text_table=text_table
    )
    records = await conn.fetch(sql, *values)
    rows: list[tuple[int, StorefrontRow]] = []
    facets: dict[str, Any] = {}
    for r in records:
        if r["kind"] == 0:
            rows.append(
                (
                    r["ord"],
                    StorefrontRow(
                        r["pk"], r["product_id"], json.loads(r["doc"]), None if r["score"] is None else r["score"]
                    ),
                )
            )
        else:
            facet = plan.facets[r["ord"]]
            facets[facet.key] = _facet_value(facet, json.loads(r["payload"]) if r["payload"] else None)
    for facet in plan.facets:  # in the order asked
        facets[facet.key] = facets.pop(facet.key, {})
    rows.sort(key=lambda item: item[0])
    return StorefrontResult([row for _, row in rows], facets)
