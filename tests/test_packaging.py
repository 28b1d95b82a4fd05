"""The Dockerfile's artefact is real: its wheel, built from the checkout and installed outside
it, migrates an empty database and serves (index, ingest, search, reverse search, web page).

Without a Docker daemon the test replays the Dockerfile: the build stage's COPY lines make
the build context (so a file the wheel needs but the Dockerfile forgets fails here), its
`pip wheel` line builds the wheel, and the final stage's `pip install` of that wheel goes
into a fresh virtualenv. Dependencies are not reinstalled: the fresh venv reads them from
this test's environment through PYTHONPATH, which processes no `.pth` files, so the
editable install of the checkout cannot leak in; the test asserts where `app` came from.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.script import ScriptDirectory

from app.cli import build_parser
from app.storage import migrate
from tests.conftest import ADMIN, ADMIN_KEY, REPO_ROOT
from tests.helpers import TEST_MODEL, data_url, product, product_image


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def of(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def dockerfile_stages(path: Path) -> list[Stage]:
    """The Dockerfile's stages and their (KEYWORD, arguments) instructions."""
    text = path.read_text().replace("\\\n", " ")
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def _json_argv(args: str) -> list[str]:
    import json

    argv = json.loads(args)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), args
    return argv


def test_dockerfile_builds_a_wheel_and_runs_only_that() -> None:
    """Fast structural check, against the CLI itself (its commands must parse) rather than text."""
    build, final = dockerfile_stages(REPO_ROOT / "Dockerfile")
    assert build.base.startswith("python:3.1") and final.base.startswith("python:3.1")
    for copy in build.of("COPY"):
        *sources, _ = shlex.split(copy)
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the checkout"
    # the runtime stage takes nothing from the build context, only the built wheel
    assert all(c.startswith(f"--from={build.name} ") for c in final.of("COPY")), final.of("COPY")
    assert any(shlex.split(r)[:2] == ["pip", "wheel"] and "--no-deps" in r for r in build.of("RUN"))
    assert any(shlex.split(r)[:2] == ["pip", "install"] and ".whl" in r for r in final.of("RUN"))
    pull = next(r for r in final.of("RUN") if "lookalike models pull" in r)
    assert build_parser().parse_args(["models", "pull"]).func is not None, pull
    cmd = _json_argv(final.of("CMD")[0])
    assert cmd[0] == "lookalike"
    assert build_parser().parse_args(cmd[1:]).command == "serve"


def _replay_wheel_build(tmp: Path) -> Path:
    """The build stage: its COPY lines into a fresh context, then its `pip wheel` line."""
    build = dockerfile_stages(REPO_ROOT / "Dockerfile")[0]
    workdir = Path(build.of("WORKDIR")[0])
    context = tmp / "context"
    for copy in build.of("COPY"):
        *sources, dest = shlex.split(copy)
        target = context / workdir.relative_to("/") / dest
        for source in sources:
            src = REPO_ROOT / source
            if src.is_dir():
                shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target / src.name if dest.endswith("/") else target)
    (run,) = [r for r in build.of("RUN") if shlex.split(r)[:2] == ["pip", "wheel"]]
    argv = shlex.split(run)
    wheels = tmp / "wheels"
    wheel_dir = argv.index("--wheel-dir")
    argv[wheel_dir + 1] = str(wheels)
    # The venv's setuptools builds it: tests never reach a package registry.
    argv = [sys.executable, "-m", *argv, "--no-build-isolation", "-q"]
    done = subprocess.run(argv, cwd=context / workdir.relative_to("/"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = wheels.glob("lookalike-*.whl")
    return wheel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _head_revision() -> str:
    head = ScriptDirectory.from_config(migrate.alembic_config("postgresql://unused")).get_current_head()
    assert head is not None
    return head


@pytest.mark.slow
def test_wheel_installed_outside_the_checkout_migrates_and_serves(fresh_database: str, tmp_path: Path) -> None:
    wheel = _replay_wheel_build(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in sorted((REPO_ROOT / "app" / "static").rglob("*")):
        if path.is_file():
            assert path.relative_to(REPO_ROOT).as_posix() in names, path
    for path in sorted((REPO_ROOT / "migrations").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            assert "app/_migrations/" + path.relative_to(REPO_ROOT / "migrations").as_posix() in names, path
    assert any(n.startswith("app/vision/data/") and n.endswith(".npz") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    deps = os.pathsep.join(dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_") and k != "PYTHONPATH"}
    env.update(
        PYTHONPATH=deps,
        PYTHONUNBUFFERED="1",
        LOOKALIKE_DATABASE_URL=fresh_database,
        LOOKALIKE_API_KEY=ADMIN_KEY,
        LOOKALIKE_DATA_DIR=str(tmp_path / "data"),
    )

    where = subprocess.run(
        [str(python), "-c", "import app, app.storage.migrate as m; print(app.__file__); print(m.migrations_dir())"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert where.returncode == 0, where.stderr
    app_file, migrations = (Path(line) for line in where.stdout.split())
    assert app_file.is_relative_to(venv) and migrations.is_relative_to(venv), where.stdout

    lookalike = venv / "bin" / "lookalike"
    migrated = subprocess.run(
        [str(lookalike), "migrate"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert migrated.returncode == 0, migrated.stderr

    async def version() -> str:
        conn = await asyncpg.connect(fresh_database)
        try:
            return await conn.fetchval("SELECT version_num FROM alembic_version")
        finally:
            await conn.close()

    assert asyncio.run(version()) == _head_revision()

    port = _free_port()
    proc = subprocess.Popen(
        [str(lookalike), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=elsewhere,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "".join(stderr)[-3000:]
            assert time.monotonic() < deadline, "lookalike serve did not start: " + "".join(stderr)[-3000:]
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        with httpx.Client(base_url=base + "/api/v1/indexes", timeout=120) as client:
            body = {"model": TEST_MODEL, "reverseImageSearch": {"enabled": True}}
            created = client.post("/shop", json=body, headers=ADMIN)
            assert created.status_code == 200, created.text
            index = {"x-marqo-index-id": created.json()["indexId"]}
            docs = [product(f"p{i}", data_url(product_image(300 + i))) for i in range(3)]
            added = client.post("/shop/documents", json={"documents": docs}, headers=ADMIN)
            assert added.status_code == 200 and added.json()["errors"] is False, added.text
            photo = data_url(product_image(301))
            found = client.post("/shop/search", json={"q": photo, "limit": 3}, headers=index)
            assert found.status_code == 200, found.text
            assert found.json()["hits"][0]["_id"] == "p1"
            reverse = client.post("/shop/reverse-image-search", json={"q": photo, "limit": 3}, headers=index)
            assert reverse.status_code == 200, reverse.text
            assert reverse.json()["hits"][0]["_id"] == "p1"
        page = httpx.get(base + "/ui", timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("Run the tests") :]
    command = section[section.index("```bash\n") + len("```bash\n") :].split("\n```", 1)[0].strip()
    ci = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci, f"README's test command is not a line of .ci/run:\n{command}"
    assert "lint-imports" in command.split(" && ")[-2], command  # the import contracts run in CI
