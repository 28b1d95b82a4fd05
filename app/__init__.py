"""lookalike: reverse image search for product catalogs on PostgreSQL + pgvector."""

import os

# Before torch loads its OpenMP runtime (libgomp): idle inference threads spin only briefly
# before sleeping. With libgomp's default spinning a ViT-S forward pass took 1.6-2.8 s instead
# of ~0.2 s while other processes kept the 2 cores busy; sleeping at once (OMP_WAIT_POLICY=
# PASSIVE) cost 20% on a quiet machine (130 vs 108 ms). 10,000 spins kept the quiet speed
# (105 ms) and 226 ms when busy (measured). Explicit settings win.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"
