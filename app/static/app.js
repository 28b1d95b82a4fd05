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

  function formatPrice(value) {
    return typeof value === "number" ? value.toFixed(2) : "";
  }

  function safeImageUrl(url) {
    return typeof url === "string" && /^(https?:|data:image\/)/i.test(url) ? url : "";
  }

  function card(hit, rank) {
    // Product data is untrusted: text goes in with textContent only.
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
    const meta = line("meta", "");
    const price = document.createElement("span");
    price.className = "price";
    price.textContent = formatPrice(hit.price);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = typeof hit._score === "number" ? "#" + rank + "  score " + hit._score.toFixed(3) : "";
    meta.append(price, score);
    line("id", hit._id);
    el.append(img, body);
    return el;
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

    button.disabled = true;
    statusLine.textContent = "searching…";
    const started = performance.now();
    try {
      const response = await fetch(
        "/api/v1/indexes/" + encodeURIComponent(index) + "/" + mode,
        {
          method: "POST",
          headers: { "content-type": "application/json", "x-marqo-index-id": indexId },
          body: JSON.stringify(body),
        }
      );
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
  prefill();
})();
