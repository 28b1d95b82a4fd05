"""Apply Alembic migrations programmatically (`lookalike migrate`, app start-up, tests)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the `app` package


def migrations_dir() -> Path:
    """The Alembic tree: inside the installed package (a wheel ships the top-level `migrations/`
    as `app/_migrations`, see setup.py), else the `migrations/` beside `app/` in a checkout."""
    installed = _PACKAGE_DIR / "_migrations"
    if (installed / "env.py").is_file():
        return installed
    return _PACKAGE_DIR.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    # Configured in code: no alembic.ini needed at run time (that file is for `alembic revision`).
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["database_url"] = database_url
    return cfg


def _in_thread(fn, *args) -> None:  # type: ignore[no-untyped-def]
    """Alembic's async env calls asyncio.run(); keep it off any running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        fn(*args)
        return
    import threading

    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def upgrade(database_url: str, revision: str = "head") -> None:
    _in_thread(command.upgrade, alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    _in_thread(command.downgrade, alembic_config(database_url), revision)
