"""`python -m benchmarks`: the whole performance suite, from a checkout (see benchmarks/suite.py)."""

from benchmarks.suite import main

raise SystemExit(main())
