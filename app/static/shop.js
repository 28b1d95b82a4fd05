// The catalog side of the web page: text search, a facet sidebar (multi-select through
// excludeTerms), sort and variant collapse. Plain JS, no build step, only the public read API
// (POST /search with x-marqo-index-id), like any storefront. Kept apart from app.js (photos).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("shop-form");
  if (!form) return;

  // Price buckets of the sidebar: `from` inclusive, `to` exclusive (the facet's own rule).
  const PRICE_RANGES = [
    { to: 25, name: "under 25" },
    { from: 25, to: 50, name: "25 to 50" },
    { from: 50, to: 100, name: "50 to 100" },
    { from: 100, name: "100 and more" },
  ];
  const FACETS = [
    { field: "brand", label: "Brand", type: "string" },
    { field: "productCollections", label: "Collections", type: "array" },
    { field: "price", label: "Price", type: "number", ranges: PRICE_RANGES },
  ];
  const selected = { brand: new Set(), productCollections: new Set(), price: new Set() };
  let answered = 0; // completed searches (#shop-status data-answered), for scripts and tests

  // Filter DSL text for a value: backslash-escape everything the parser treats as syntax.
  function escapeValue(text) {
    return String(text).replace(/[\\():,\[\]{}\s]/g, (c) => "\\" + c);
  }

  function number(value) {
    return String(value);
  }

  // One facet's selection as one filter term (so excludeTerms can name it exactly).
  function selectionTerm(facet) {
    const values = Array.from(selected[facet.field]);
    if (!values.length) return null;
    if (facet.type !== "number") {
      return facet.field + " IN (" + values.map(escapeValue).join(", ") + ")";
    }
    // Ranges: [from TO to] is inclusive, the bucket excludes `to`: drop it explicitly.
    const parts = values.map((name) => {
      const r = PRICE_RANGES.find((x) => x.name === name);
      const low = r.from === undefined ? "*" : number(r.from);
      const high = r.to === undefined ? "*" : number(r.to);
      const range = "price:[" + low + " TO " + high + "]";
      return r.to === undefined ? range : "(" + range + " AND NOT price:[" + high + " TO " + high + "])";
    });
    return parts.length === 1 ? parts[0] : "(" + parts.join(" OR ") + ")";
  }

  function shopRequest() {
    const terms = FACETS.map((f) => [f, selectionTerm(f)]).filter(([, t]) => t);
    const body = { limit: parseInt($("shop-limit").value, 10) || 24 };
    const q = $("shop-q").value.trim();
    if (q) body.q = q;
    if (terms.length) body.filter = terms.map(([, t]) => (terms.length > 1 ? "(" + t + ")" : t)).join(" AND ");
    const fields = {};
    for (const f of FACETS) {
      const spec = { type: f.type };
      if (f.ranges) spec.ranges = f.ranges;
      const own = terms.find(([g]) => g === f);
      // Multi-select: a facet counts as if its own selection were not applied.
      if (own) spec.excludeTerms = [terms.length > 1 ? "(" + own[1] + ")" : own[1]];
      fields[f.field] = spec;
    }
    body.facets = { fields, maxResults: 20 };
    const sort = $("sort").value;
    if (sort !== "relevance") {
      const [fieldName, order] = sort.split(":");
      body.sortBy = { fields: [{ fieldName, order, missing: "last" }] };
    }
    if ($("collapse").checked) body.collapseFields = [{ name: "parentProductId" }];
    return body;
  }

  function shopCard(hit) {
    const { el, line } = window.lookalikeCards.hitCard(hit);
    line("price", window.lookalikeCards.formatPrice(hit.price));
    if (typeof hit._score === "number") line("score", "score " + hit._score.toFixed(3));
    return el;
  }

  function renderFacets(facets) {
    const sidebar = $("facets");
    sidebar.replaceChildren();
    for (const f of FACETS) {
      const counts = (facets && facets[f.field]) || {};
      const group = document.createElement("fieldset");
      group.className = "facet";
      group.dataset.field = f.field;
      const legend = document.createElement("legend");
      legend.textContent = f.label;
      group.appendChild(legend);
      const values = f.ranges ? f.ranges.map((r) => r.name) : Object.keys(counts);
      for (const value of values) {
        const label = document.createElement("label");
        const box = document.createElement("input");
        box.type = "checkbox";
        box.value = value;
        box.checked = selected[f.field].has(value);
        box.addEventListener("change", () => {
          if (box.checked) selected[f.field].add(value);
          else selected[f.field].delete(value);
          runShopSearch();
        });
        const text = document.createElement("span");
        text.textContent = value;
        const count = document.createElement("span");
        count.className = "count";
        count.textContent = String(counts[value] ? counts[value].count : 0);
        label.append(box, text, count);
        group.appendChild(label);
      }
      sidebar.appendChild(group);
    }
  }

  async function runShopSearch(event) {
    if (event) event.preventDefault();
    const index = $("index").value.trim();
    const indexId = $("index-id").value.trim();
    const errorBox = $("shop-error");
    errorBox.hidden = true;
    if (!index || !indexId) {
      errorBox.textContent = "enter the index name and its index id";
      errorBox.hidden = false;
      return;
    }
    const body = shopRequest();
    $("shop-status").textContent = "searching…";
    try {
      const response = await fetch("/api/v1/indexes/" + encodeURIComponent(index) + "/search", {
        method: "POST",
        headers: { "content-type": "application/json", "x-marqo-index-id": indexId },
        body: JSON.stringify(body),
      });
      const payload = await response.json().catch(() => null);
      if (!response.ok) {
        $("shop-results").replaceChildren();
        $("shop-status").textContent = "";
        errorBox.textContent =
          response.status + ": " + (payload && payload.error ? payload.error : "HTTP " + response.status) +
          (payload && payload.code ? "  (" + payload.code + ")" : "");
        errorBox.hidden = false;
        return;
      }
      const hits = payload.hits || [];
      $("shop-results").replaceChildren(...hits.map(shopCard));
      renderFacets(payload.facets);
      $("shop-status").textContent =
        hits.length + (hits.length === 1 ? " hit" : " hits") + " · processing time " + payload.processingTimeMs + " ms";
      $("shop-status").dataset.filter = body.filter || "";
      $("shop-status").dataset.answered = String(++answered);
    } catch (e) {
      $("shop-status").textContent = "";
      errorBox.textContent = "could not reach the server: " + e.message;
      errorBox.hidden = false;
    }
  }

  form.addEventListener("submit", runShopSearch);
  $("sort").addEventListener("change", () => runShopSearch());
  $("collapse").addEventListener("change", () => runShopSearch());
})();
