"""Storefront decisions (pure): what facets, sortBy and collapseFields ask of the database.

The request's contract models (app.contract.storefront) become a `StorefrontPlan` (declared
beside the SQL it parameterises, in storage.storefront): which filter variants the facets
count under (`excludeTerms`), the sort keys, the collapse key, how deep relevance
candidates go.
"""

from __future__ import annotations

from app.contract.storefront import CollapseField, Facets, SortBy
from app.errors import bad_request
from app.filters import FIELD_ALIASES, And, FilterError, FilterNode, Not, Or, parse_filter
from app.storage.storefront import CollapsePlan, FacetPlan, RangeBucket, SortKey, StorefrontPlan, query_words


def _stored(name: str) -> str:
    return FIELD_ALIASES.get(name, name)


def sort_keys(sort: SortBy | None) -> tuple[SortKey, ...]:
    if sort is None:
        return ()
    return tuple(SortKey(_stored(f.field_name), f.order == "desc", f.missing == "first") for f in sort.fields)


def sort_depth(sort: SortBy | None, limit: int, offset: int) -> int:
    """Relevance queries sort their top max(3 x limit, offset + limit) candidates, or sortDepth
    (never fewer than the page needs), and at least minSortCandidates."""
    depth = max(3 * limit, offset + limit)
    if sort is not None and sort.sort_depth is not None:
        depth = max(sort.sort_depth, offset + limit)
    if sort is not None and sort.min_sort_candidates is not None:
        depth = max(depth, sort.min_sort_candidates)
    return depth


def without_terms(node: FilterNode | None, terms: list[FilterNode]) -> FilterNode | None:
    """`node` with every subtree equal to one of `terms` removed (a parent left empty goes too)."""
    if node is None or node in terms:
        return None
    if isinstance(node, And | Or):
        kept = [c for c in (without_terms(child, terms) for child in node.children) if c is not None]
        if not kept:
            return None
        return kept[0] if len(kept) == 1 else type(node)(tuple(kept))
    if isinstance(node, Not):
        child = without_terms(node.child, terms)
        return None if child is None else Not(child)
    return node


def _contains(node: FilterNode | None, term: FilterNode) -> bool:
    if node is None:
        return False
    if node == term:
        return True
    if isinstance(node, And | Or):
        return any(_contains(child, term) for child in node.children)
    if isinstance(node, Not):
        return _contains(node.child, term)
    return False


def _exclude_terms(filter_node: FilterNode | None, facet_name: str, texts: list[str]) -> list[FilterNode]:
    if filter_node is None:
        raise bad_request(
            f"facets: excludeTerms of {facet_name!r} need a filter to exclude them from", "invalid_facets"
        )
    terms = []
    for text in texts:
        try:
            term = parse_filter(text)
        except FilterError as exc:
            raise bad_request(f"facets: excludeTerms item {text!r} of {facet_name!r}: {exc}", "invalid_facets") from exc
        if term is None or not _contains(filter_node, term):
            raise bad_request(
                f"facets: excludeTerms item {text!r} of {facet_name!r} does not appear in the filter", "invalid_facets"
            )
        terms.append(term)
    return terms


def build_plan(
    *,
    filter_node: FilterNode | None,
    facets: Facets | None,
    sort: SortBy | None,
    collapse: CollapseField | None,
    limit: int,
    offset: int,
) -> StorefrontPlan:
    filters: list[FilterNode | None] = [filter_node]
    facet_plans: list[FacetPlan] = []
    for name, spec in (facets.fields.items() if facets is not None else ()):
        variant = 0
        if spec.exclude_terms:
            reduced = without_terms(filter_node, _exclude_terms(filter_node, name, spec.exclude_terms))
            if reduced not in filters:
                filters.append(reduced)
            variant = filters.index(reduced)
        ranges = None
        if spec.ranges is not None:
            ranges = tuple(RangeBucket(r.label, r.low, r.high) for r in spec.ranges)
        assert facets is not None
        facet_plans.append(
            FacetPlan(
                key=name,
                field=_stored(name),
                kind=spec.type,
                ranges=ranges,
                max_results=spec.max_results or facets.max_results,
                ascending=(spec.order or facets.order) == "asc",
                variant=variant,
            )
        )
    collapse_plan = None
    if collapse is not None:
        collapse_plan = CollapsePlan(_stored(collapse.name), sort_keys(collapse.sort_by))
    return StorefrontPlan(
        filters=tuple(filters),
        facets=tuple(facet_plans),
        sort=sort_keys(sort),
        collapse=collapse_plan,
        limit=limit,
        offset=offset,
        sort_depth=sort_depth(sort, limit, offset),
    )


__all__ = ["build_plan", "query_words", "sort_depth", "sort_keys", "without_terms"]
