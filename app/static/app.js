// The lookalike search page: plain JS, no build step. Talks to the same API any storefront uses.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("search-form");
  const drop = $("drop");
  const fileInput = $("file");
  const preview = $("preview");
  const errorBox = $("error");
  const statusLine = $("status");
  const results = $("results");
  const button = $("search-btn");

  // Photos from phones are large; anything bigger is scaled down before upload (data URLs grow by 4/3).
  const MAX_SIDE = 1600;
  const MAX_UNSCALED_BYTES = 4 * 1024 * 1024;

  let imageDataUrl = null; // the picked/dropped photo, as a data URL

  // The last reverse image search: its request, the photo as sent, its hits and regions.
  const BOX_COLOUR = "#d6246e";
  const REGION_COLOUR = "#ffd400";
  let last = null; // {url, headers, body, photo, hits, regions, selected}

  // Prefill from the URL: fragment first (never sent to the server, so the index id stays out of
  // access logs), then query parameters.
  function prefill() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    const query = new URLSearchParams(location.search);
    const get = (name) => params.get(name) || query.get(name);
    if (get("index")) $("index").value = get("index");
    if (get("indexId")) $("index-id").value = get("indexId");
    if (get("filter")) $("filter").value = get("filter");
  }

  function showError(message, code) {
    errorBox.textContent = message;
    if (code) {
      const c = document.createElement("code");
      c.textContent = "  (" + code + ")";
      errorBox.appendChild(c);
    }
    errorBox.hidden = false;
  }

  function clearError() {
    errorBox.hidden = true;
    errorBox.textContent = "";
  }

  function readAsDataUrl(blob) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    });
  }

  async function downscaled(file, dataUrl) {
    const img = new Image();
    img.src = dataUrl;
    await img.decode();
    const scale = Math.min(1, MAX_SIDE / Math.max(img.naturalWidth, img.naturalHeight));
    if (scale === 1 && file.size <= MAX_UNSCALED_BYTES) return dataUrl;
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(img.naturalWidth * scale);
    canvas.height = Math.round(img.naturalHeight * scale);
    canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
    return canvas.toDataURL("image/jpeg", 0.9);
  }

  async function usePhoto(file) {
    if (!file) return;
    if (!file.type.startsWith("image/")) {
      showError("that file is not an image");
      return;
    }
    clearError();
    const raw = await readAsDataUrl(file);
    try {
      imageDataUrl = await downscaled(file, raw);
    } catch (e) {
      imageDataUrl = raw; // a format this browser cannot decode: let the server decide
    }
    $("image-url").value = "";
    preview.src = imageDataUrl;
    preview.hidden = false;
  }

  fileInput.addEventListener("change", () => usePhoto(fileInput.files[0]));
  $("image-url").addEventListener("input", () => {
    if ($("image-url").value.trim()) {
      imageDataUrl = null;
      preview.hidden = true;
    }
  });
  ["dragenter", "dragover"].forEach((t) =>
    drop.addEventListener(t, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    })
  );
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    usePhoto(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const item = Array.from(e.clipboardData.items).find((i) => i.type.startsWith("image/"));
    if (item) usePhoto(item.getAsFile());
  });

  const { formatPrice, safeImageUrl, hitCard } = window.lookalikeCards;

  function card(hit, rank) {
    const { el, line } = hitCard(hit);
    const meta = line("meta", "");
    const price = document.createElement("span");
    price.className = "price";
    price.textContent = formatPrice(hit.price);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = typeof hit._score === "number" ? "#" + rank + "  score " + hit._score.toFixed(3) : "";
    meta.append(price, score);
    line("id", hit._id);
    if (hit._match) line("where", "found in the photo · " + hit._match.inliers + " matched keypoints");
    el.addEventListener("click", () => select(rank - 1));
    return el;
  }

  function loadImage(src) {
    const img = new Image();
    img.referrerPolicy = "no-referrer";
    img.src = src;
    return img.decode().then(() => img);
  }

  function strokeBox(ctx, box, scale, colour, width) {
    ctx.strokeStyle = colour;
    ctx.lineWidth = width;
    ctx.strokeRect(box[0] * scale, box[1] * scale, (box[2] - box[0]) * scale, (box[3] - box[1]) * scale);
  }

  // The photo with the selected hit's box (and, with regions, every region's box).
  function drawMatch() {
    const view = $("match-view");
    if (!last || !last.photo) {
      view.hidden = true;
      return;
    }
    const photo = last.photo;
    const canvas = $("match-canvas");
    const scale = Math.min(1, 520 / photo.naturalWidth, 420 / photo.naturalHeight);
    canvas.width = Math.round(photo.naturalWidth * scale);
    canvas.height = Math.round(photo.naturalHeight * scale);
    canvas.dataset.scale = String(scale);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(photo, 0, 0, canvas.width, canvas.height);
    (last.regions || []).forEach((r) => strokeBox(ctx, r.box, scale, REGION_COLOUR, 2));
    const hit = last.hits[last.selected];
    const match = hit && hit._match;
    if (match) strokeBox(ctx, match.box, scale, BOX_COLOUR, 3);
    canvas.dataset.box = match ? JSON.stringify(match.box) : "";
    const title = hit ? hit.productTitle || hit._id : "";
    $("match-caption").textContent = !hit
      ? ""
      : match
        ? "#" + (last.selected + 1) + " " + title + ": found here, " + match.inliers + " matched keypoints"
        : "#" + (last.selected + 1) + " " + title + ": no keypoint match (ranked by overall appearance)";
    $("explain-btn").disabled = !match;
    $("explain-canvas").hidden = true;
    $("explain-caption").textContent = "";
    results.querySelectorAll(".hit").forEach((el, i) => el.classList.toggle("selected", i === last.selected));
    view.hidden = false;
  }

  function select(i) {
    if (!last) return;
    last.selected = i;
    drawMatch();
  }

  // "Why this match": the same search with explain, then the matched keypoint pairs side by side.
  async function explain() {
    if (!last) return;
    const hit = last.hits[last.selected];
    const explainButton = $("explain-btn");
    explainButton.disabled = true;
    $("explain-caption").textContent = "matching keypoints…";
    try {
      const response = await fetch(last.url, {
        method: "POST",
        headers: last.headers,
        body: JSON.stringify(Object.assign({}, last.body, { explain: true, regions: false })),
      });
      const payload = await response.json();
      if (!response.ok) throw new Error(payload.error || "HTTP " + response.status);
      const same = (payload.hits || []).find((h) => h._id === hit._id);
      const match = same && same._match;
      if (!match || !match.pairs) {
        $("explain-caption").textContent = "no matched keypoints for this hit";
        return;
      }
      const catalog = await loadImage(safeImageUrl(hit.variantImageUrl));
      drawPairs(last.photo, catalog, match);
    } catch (e) {
      $("explain-caption").textContent = "could not explain: " + e.message;
    } finally {
      explainButton.disabled = false;
    }
  }

  function drawPairs(photo, catalog, match) {
    const canvas = $("explain-canvas");
    const height = 260;
    const sq = height / photo.naturalHeight;
    // pairs are in the pixels of the product image the server analysed (catalogSize)
    const sc = height / match.catalogSize[1];
    const left = Math.round(photo.naturalWidth * sq);
    canvas.width = left + 12 + Math.round(match.catalogSize[0] * sc);
    canvas.height = height;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(photo, 0, 0, left, height);
    ctx.drawImage(catalog, left + 12, 0, Math.round(match.catalogSize[0] * sc), height);
    strokeBox(ctx, match.box, sq, BOX_COLOUR, 2);
    ctx.lineWidth = 1;
    match.pairs.forEach((p, i) => {
      ctx.strokeStyle = "hsl(" + ((i * 47) % 360) + ", 85%, 50%)";
      ctx.beginPath();
      ctx.moveTo(p[0] * sq, p[1] * sq);
      ctx.lineTo(left + 12 + p[2] * sc, p[3] * sc);
      ctx.stroke();
    });
    canvas.dataset.pairs = String(match.pairs.length);
    canvas.hidden = false;
    $("explain-caption").textContent =
      match.pairs.length + " keypoint pairs agree on one view of the product (left: your photo, right: the catalog image)";
  }

  async function search(event) {
    event.preventDefault();
    clearError();
    const index = $("index").value.trim();
    const indexId = $("index-id").value.trim();
    const text = $("text-q").value.trim();
    // Words go to /search (the index's default text method); a photo to the chosen mode.
    const mode = text ? "search" : form.querySelector('input[name="mode"]:checked').value;
    const q = text || imageDataUrl || $("image-url").value.trim();
    if (!index || !indexId) return showError("enter the index name and its index id");
    if (!q) return showError("drop or pick a photo, paste an image URL, or type words");
    const body = { q, limit: parseInt($("limit").value, 10) || 10 };
    const filter = $("filter").value.trim();
    if (filter) body.filter = filter;
    const reverse = mode === "reverse-image-search";
    if (reverse && $("regions").checked) body.regions = true;

    button.disabled = true;
    statusLine.textContent = "searching…";
    const started = performance.now();
    const url = "/api/v1/indexes/" + encodeURIComponent(index) + "/" + mode;
    const headers = { "content-type": "application/json", "x-marqo-index-id": indexId };
    last = null;
    drawMatch();
    try {
      const response = await fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
      const roundTrip = Math.round(performance.now() - started);
      let payload = null;
      try {
        payload = await response.json();
      } catch (e) {
        payload = null;
      }
      if (!response.ok) {
        results.replaceChildren();
        statusLine.textContent = "";
        const message = payload && payload.error ? payload.error : "HTTP " + response.status;
        return showError(response.status + ": " + message, payload && payload.code);
      }
      const hits = payload.hits || [];
      results.replaceChildren(...hits.map((h, i) => card(h, i + 1)));
      if (reverse) {
        let photo = null;
        try {
          photo = await loadImage(q);
        } catch (e) {
          photo = null; // a photo this browser cannot show: the hits still stand
        }
        last = { url, headers, body, photo, hits, regions: payload.regions || [], selected: 0 };
        drawMatch();
      }
      statusLine.textContent =
        hits.length + (hits.length === 1 ? " hit" : " hits") +
        " · processing time " + payload.processingTimeMs + " ms · round trip " + roundTrip + " ms";
      statusLine.dataset.processingTimeMs = String(payload.processingTimeMs);
    } catch (e) {
      statusLine.textContent = "";
      showError("could not reach the server: " + e.message);
    } finally {
      button.disabled = false;
    }
  }

  form.addEventListener("submit", search);
  $("explain-btn").addEventListener("click", explain);
  prefill();
})();
