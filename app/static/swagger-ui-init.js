// Renders /openapi.json with the vendored Swagger UI (app/static/vendor/swagger-ui, from the npm
// package swagger-ui-dist). A file, not an inline script: the page's CSP allows only 'self' scripts.
window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // The default would load a badge from the public validator service: nothing leaves this server.
    validatorUrl: null,
  });
});
