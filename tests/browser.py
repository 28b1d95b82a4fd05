"""Real-browser tests: Debian's chromium driven by Playwright (the `browser` fixture in conftest.py).

`.ci/run` installs chromium when /usr/bin/chromium is missing; never `playwright install`
(it downloads browsers). Tests that need it carry `needs_chromium`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install -y chromium; .ci/run does it)"
)
