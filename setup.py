"""Packaging that pyproject.toml cannot express: the top-level `migrations/` ships in the wheel.

The design keeps the Alembic tree at the top level; installed, it becomes the package
`app._migrations` (env.py, script.py.mako, versions/*.py), which `app.storage.migrate`
finds next to the installed `app`. Everything else (package data included) is declared in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["app", "app.*"]), "app._migrations"],
    package_dir={"app._migrations": "migrations"},
)
