"""lookalike: reverse image search for product catalogs on PostgreSQL + pgvector."""

import os

# Before torch loads its OpenMP runtime: idle inference threads sleep instead of spinning.
# With spinning threads, a ViT-S forward pass took 2.8 s instead of 0.23 s while other
# processes kept the 2 cores busy (measured); the service shares its cores with PostgreSQL,
# image decoding and feature matching, so it must not spin. An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
