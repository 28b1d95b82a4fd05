"""Request and response models (pydantic v2): the one declaration of each parameter."""
