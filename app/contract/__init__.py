"""The API contract: typed request and response models (pydantic v2), the one source of
validation, error messages and /openapi.json. Imports only pydantic, the stdlib, app.errors
and app.config, so both app.http and app.domain may use it."""
