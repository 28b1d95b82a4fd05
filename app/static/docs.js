// A tiny, self-contained renderer for /openapi.json (no CDN: works on air-gapped installs).
"use strict";

(async function () {
  const el = (tag, attrs, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  };
  const pretty = (value) => el("pre", {}, JSON.stringify(value, null, 2));
  const schemaLink = (schema) => {
    if (schema && schema.$ref) {
      const name = schema.$ref.split("/").pop();
      return el("a", { href: "#schema-" + name }, name);
    }
    return pretty(schema);
  };

  const response = await fetch("/openapi.json");
  const doc = await response.json();
  document.getElementById("intro").append(
    el("h2", {}, doc.info.title + " " + doc.info.version),
    el("p", {}, doc.info.summary || ""),
    el("p", {}, doc.info.description || "")
  );

  const ops = document.getElementById("operations");
  const toc = document.getElementById("toc");
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const method of ["get", "post", "patch", "put", "delete"]) {
      const op = item[method];
      if (!op) continue;
      const id = (method + path).replace(/[^a-z0-9]+/gi, "-");
      toc.append(el("div", {}, el("a", { href: "#" + id }, method.toUpperCase() + " " + path)));
      const details = el("details", { class: "op", id });
      details.append(
        el("summary", {},
          el("span", { class: "method " + method }, method),
          el("span", { class: "path" }, path),
          el("span", { class: "summary" }, op.summary || ""))
      );
      if (op.description) details.append(el("p", {}, op.description));
      if (op.security) {
        const names = op.security.map((s) => Object.keys(s).join(" + ")).join(" or ");
        details.append(el("p", {}, "Credentials: " + names));
      }
      if (op.requestBody) {
        const media = op.requestBody.content["application/json"];
        details.append(el("h4", {}, "Request body (application/json)" + (op.requestBody.required ? "" : ", optional")));
        details.append(schemaLink(media.schema));
        if (media.example !== undefined) details.append(el("div", {}, "Example:"), pretty(media.example));
      }
      details.append(el("h4", {}, "Responses"));
      const grid = el("div", { class: "resp" });
      for (const [status, resp] of Object.entries(op.responses)) {
        const content = resp.content ? Object.entries(resp.content)[0] : null;
        const cell = el("div", {}, resp.description || "");
        if (content) cell.append(" — ", content[0], " ", schemaLink(content[1].schema));
        grid.append(el("code", {}, status), cell);
      }
      details.append(grid);
      ops.append(details);
    }
  }

  const schemas = document.getElementById("schemas");
  for (const [name, schema] of Object.entries(doc.components.schemas)) {
    schemas.append(el("div", { class: "schema", id: "schema-" + name }, el("h3", {}, name), pretty(schema)));
  }
})();
