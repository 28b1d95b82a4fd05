"""The API contract as typed request and response models (filled in by the contract work)."""
