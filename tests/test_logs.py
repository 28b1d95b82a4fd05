"""Logs a person can read: text lines on a terminal, JSON lines elsewhere or on request; the
generated admin key in a box, once; the embedded PostgreSQL's narration at DEBUG."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app import logs
from app.auth import bootstrap_admin_keys
from app.config import Settings
from app.storage import db
from tests.conftest import REPO_ROOT


@pytest.fixture()
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture()
def terminal() -> Iterator[io.TextIOWrapper]:
    """A real pseudo-terminal: what `lookalike serve` sees when a person runs it."""
    controller, device = os.openpty()
    stream = open(device, "w", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        yield stream
    finally:
        stream.close()
        os.close(controller)


def test_the_format_is_the_flag_else_the_setting_else_the_stream(terminal: io.TextIOWrapper) -> None:
    pipe = io.StringIO()
    assert logs.choose_format(None, None, terminal) == "text"
    assert logs.choose_format(None, None, pipe) == "json"
    assert logs.choose_format(None, "text", pipe) == "text"
    assert logs.choose_format("json", "text", terminal) == "json"
    assert Settings.from_env({"LOOKALIKE_LOG_FORMAT": " JSON "}).log_format == "json"
    assert Settings.from_env({}).log_format is None
    with pytest.raises(ValueError, match="LOOKALIKE_LOG_FORMAT must be one of json, text"):
        Settings.from_env({"LOOKALIKE_LOG_FORMAT": "xml"})


def test_text_lines_are_readable_and_json_lines_parse(restore_logging: None, terminal: io.TextIOWrapper) -> None:
    out = io.StringIO()
    logs.configure_logging("text", "info", out)
    logging.getLogger("lookalike.test").info("index %s created", "shop")
    logging.getLogger("lookalike.access").info(
        "%s %s %s", "POST", "/x", 200, extra={"fields": {"duration_ms": 3.5}, "request_id": "r-1"}
    )
    logging.getLogger("lookalike.test").debug("not shown at info")
    first, second = out.getvalue().splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO     lookalike\.test: index shop created", first), first
    assert second.endswith("lookalike.access: POST /x 200 3.5 ms [r-1]"), second
    assert "\033[" not in out.getvalue()  # no colour codes into a file

    logs.configure_logging("text", "info", terminal)  # a terminal gets the level coloured
    formatted = terminal_handler_format(logging.WARNING)
    assert "\033[33mWARNING" in formatted

    out = io.StringIO()
    logs.configure_logging("json", "debug", out)
    logging.getLogger("lookalike.test").warning("careful", extra={"fields": {"index": "shop"}})
    entry = json.loads(out.getvalue())
    assert entry["level"] == "warning" and entry["logger"] == "lookalike.test" and entry["index"] == "shop"


def terminal_handler_format(level: int) -> str:
    handler = logging.getLogger().handlers[0]
    record = logging.LogRecord("lookalike.test", level, __file__, 1, "message", None, None)
    return handler.format(record)


def test_embedded_postgres_narration_is_debug(restore_logging: None) -> None:
    out = io.StringIO()
    logs.configure_logging("json", "info", out)
    chatter = logging.getLogger("embedded_postgres")  # the library's own logger
    chatter.info("running pg_ctl...")
    chatter.warning("Failed to stop server, killing it instead.")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["level"], e["message"]) for e in lines] == [("warning", "Failed to stop server, killing it instead.")]

    out = io.StringIO()
    logs.configure_logging("json", "debug", out)
    chatter.info("running pg_ctl...")
    assert json.loads(out.getvalue())["level"] == "debug"


def test_lookalike_migrate_on_the_embedded_server_says_no_more_than_it_must() -> None:
    """A real embedded start (joining the test server, or starting one): no INFO narration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env.update(LOOKALIKE_DATA_DIR=str(REPO_ROOT / ".data" / "test-pg"), LOOKALIKE_LOG_FORMAT="json")
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    entries = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert entries, done.stderr
    chatty = [e for e in entries if e["logger"].startswith(("embedded_postgres", "alembic.runtime.plugins"))]
    assert not chatty, done.stderr[-3000:]
    assert "migrations applied" in done.stderr


async def test_the_generated_admin_key_is_boxed_and_printed_once(
    fresh_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.storage import migrate

    migrate.upgrade(fresh_database)
    pool = await db.create_pool(fresh_database, min_size=1, max_size=2, statement_timeout_ms=10_000)
    try:
        await bootstrap_admin_keys(pool, None)
        printed = capsys.readouterr().err
        key = re.search(r"(lk_\S+)", printed)
        assert key, printed
        box = [line for line in printed.splitlines() if line]
        assert box[0].startswith("┌") and box[-1].startswith("└")
        assert all(line.startswith("│") and line.endswith("│") for line in box[1:-1])
        assert len({len(line) for line in box}) == 1  # the box closes
        await bootstrap_admin_keys(pool, None)  # a second start prints nothing
        assert capsys.readouterr().err == ""
        stored = await pool.fetchval("SELECT key_sha256 FROM api_keys")
        assert bytes(stored) != key.group(1).encode()
    finally:
        await pool.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_lookalike_serve_logs_in_the_chosen_format(database_url: str, fmt: str, tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env.update(LOOKALIKE_DATABASE_URL=database_url, LOOKALIKE_API_KEY="k" * 24, PYTHONUNBUFFERED="1")
    log_file = tmp_path / "stderr.log"
    with log_file.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-format", fmt],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=REPO_ROOT,
        )
        try:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, log_file.read_text()[-3000:]
                assert time.monotonic() < deadline, log_file.read_text()[-3000:]
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    lines = [line for line in log_file.read_text().splitlines() if line.strip()]
    started = [line for line in lines if "Uvicorn running on" in line]
    assert started, lines
    access = [line for line in lines if "/health" in line]
    if fmt == "json":
        entries = [json.loads(line) for line in lines]  # every line is one JSON object
        assert any(e["logger"] == "lookalike.access" and e["route"] == "/health" for e in entries)
    else:
        assert not any(line.startswith("{") for line in lines), lines
        assert re.match(r"\d\d:\d\d:\d\d INFO     uvicorn\.error: Uvicorn running on", started[0]), started
        assert re.search(r"lookalike\.access: GET /health 200 [\d.]+ ms \[", access[0]), access


def test_a_bad_log_format_setting_is_a_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env["LOOKALIKE_LOG_FORMAT"] = "xml"
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "LOOKALIKE_LOG_FORMAT must be one of json, text" in done.stderr

