// The product card both searches of the page show (photos: app.js, catalog: shop.js): image,
// title and variant; each caller adds its own lines. Plain JS, no build step; loaded first.
"use strict";

window.lookalikeCards = (function () {
  function formatPrice(value) {
    return typeof value === "number" ? value.toFixed(2) : "";
  }

  function safeImageUrl(url) {
    return typeof url === "string" && /^(https?:|data:image\/)/i.test(url) ? url : "";
  }

  // Product data is untrusted: text goes in with textContent only. Returns the card and
  // `line(cls, text)`, which appends a line to its body and returns it.
  function hitCard(hit) {
    const el = document.createElement("article");
    el.className = "hit";
    el.dataset.id = hit._id;
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = hit.productTitle || hit._id;
    img.referrerPolicy = "no-referrer";
    img.src = safeImageUrl(hit.variantImageUrl);
    const body = document.createElement("div");
    body.className = "body";
    const line = (cls, text) => {
      const d = document.createElement("div");
      d.className = cls;
      d.textContent = text;
      body.appendChild(d);
      return d;
    };
    line("title", hit.productTitle || "(untitled)");
    if (hit.variantTitle) line("variant", hit.variantTitle);
    el.append(img, body);
    return { el, line };
  }

  return { formatPrice, safeImageUrl, hitCard };
})();
