"""lookalike: reverse image search for product catalogs on PostgreSQL + pgvector."""

__version__ = "0.1.0"
