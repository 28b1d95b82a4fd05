"""`lookalike import INDEX FILE`: load a JSONL or CSV catalog through a running service's HTTP API.

- Batches of at most 128 products, several requests in flight.
- A progress bar with rate and ETA (rich, on stderr).
- Per-product failures (bad line, image that cannot be fetched, ...) go to a CSV report
  `line,_id,reason`; the import goes on.
- Resumable: after each acknowledged batch, the lines it settled are appended (and
  fsync'ed) to a state file next to the input. A restarted import skips them, so work
  the server acknowledged is never sent again; at most the batches in flight when the
  import was killed are re-sent, and the service reuses their stored embeddings (same
  image bytes) instead of re-embedding.

Only httpx, rich and the standard library are imported: the command starts fast and
runs on machines without the model stack's memory footprint.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

MAX_BATCH = 128
STATE_VERSION = 1
_RETRYABLE_STATUS = {429, 502, 503, 504}


class ImportAborted(Exception):
    """The import cannot go on (credentials refused, unknown index, service unreachable)."""


@dataclass
class Record:
    line: int  # 1-based line where the record starts
    doc: dict[str, Any] | None
    error: str | None = None

    @property
    def product_id(self) -> str:
        if isinstance(self.doc, dict) and isinstance(self.doc.get("_id"), str):
            return self.doc["_id"]
        return ""


# --- reading the catalog -----------------------------------------------------------------------


def detect_format(path: Path, explicit: str | None) -> str:
    if explicit:
        return explicit
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise ImportAborted(f"cannot tell the format of {path.name}; pass --format jsonl or --format csv")


def _jsonl_records(path: Path) -> Iterator[Record]:
    with path.open("r", encoding="utf-8", errors="replace", newline="") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw)
            except json.JSONDecodeError as exc:
                yield Record(number, None, f"not valid JSON: {exc.msg} (column {exc.colno})")
                continue
            if not isinstance(doc, dict):
                yield Record(number, None, "each line must be a JSON object")
                continue
            yield _checked(Record(number, doc))


def _number(value: str, column: str) -> float | int:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{column} must be a number, got {value[:40]!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{column} must be a finite number, got {value[:40]!r}")
    return int(number) if number.is_integer() and column != "price" else number


def csv_row_to_doc(row: dict[str, str | None], numeric: set[str], lists: set[str]) -> dict[str, Any]:
    """A CSV row as a product: empty cells omitted, `price` and --numeric columns as numbers,
    `productCollections`/`collections` and --list columns split on `;`; everything else a string."""
    doc: dict[str, Any] = {}
    for column, raw in row.items():
        if column is None:
            raise ValueError("the row has more cells than the header has columns")
        column = column.strip()
        value = (raw or "").strip()
        if not column or value == "":
            continue
        if column == "price" or column in numeric:
            doc[column] = _number(value, column)
        elif column in ("productCollections", "collections") or column in lists:
            doc[column] = [part.strip() for part in value.split(";") if part.strip()]
        else:
            doc[column] = value
    return doc


def _csv_records(path: Path, numeric: set[str], lists: set[str]) -> Iterator[Record]:
    with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            return
        start = reader.line_num + 1  # the line after the header
        for row in reader:
            line, start = start, reader.line_num + 1  # a quoted cell may span lines
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue
            try:
                yield _checked(Record(line, csv_row_to_doc(row, numeric, lists)))
            except ValueError as exc:
                yield Record(line, {"_id": row.get("_id") or ""}, str(exc))


def _checked(record: Record) -> Record:
    doc = record.doc or {}
    product_id = doc.get("_id")
    if not isinstance(product_id, str) or not product_id:
        return Record(record.line, doc, "_id is required (a non-empty string)")
    return record


def read_records(
    path: Path, fmt: str, numeric: set[str] | None = None, lists: set[str] | None = None
) -> Iterator[Record]:
    if fmt == "csv":
        return _csv_records(path, numeric or set(), lists or set())
    return _jsonl_records(path)


# --- the state file ----------------------------------------------------------------------------


def _ranges(lines: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for n in sorted(lines):
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ImportState:
    """An append-only JSONL log next to the input: a header, then one entry per settled batch.

    Appending (and fsync'ing) one line per batch means a kill at any moment loses at most
    the batches in flight; a torn last line is ignored on load.
    """

    path: Path
    done: set[int] = field(default_factory=set)
    failures: dict[int, tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, header: dict[str, Any], restart: bool) -> ImportState:
        state = cls(path)
        if path.exists() and not restart:
            lines = path.read_text(encoding="utf-8").splitlines()
            stored = _json_or_none(lines[0]) if lines else None
            if stored is not None and stored != header:
                changed = [k for k in header if stored.get(k) != header.get(k)]
                raise ImportAborted(
                    f"{path.name} belongs to another import ({', '.join(changed)} changed); "
                    "pass --restart to start over (already imported products are simply replaced)"
                )
            for raw in lines[1:]:
                entry = _json_or_none(raw)
                if entry is None:
                    continue  # torn write at a kill
                for start, end in entry.get("done", []):
                    state.done.update(range(start, end + 1))
                for line, product_id, reason in entry.get("failed", []):
                    state.failures[line] = (product_id, reason)
            if stored is not None:
                return state
        path.write_text(json.dumps(header) + "\n", encoding="utf-8")
        return state

    def record(self, done: list[int], failed: list[tuple[int, str, str]]) -> None:
        if not done and not failed:
            return
        self.done.update(done)
        for line, product_id, reason in failed:
            self.failures[line] = (product_id, reason)
        entry = {"done": _ranges(done), "failed": [list(f) for f in failed]}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _json_or_none(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return None


# --- sending ------------------------------------------------------------------------------------


@dataclass
class ImportOptions:
    index: str
    file: Path
    url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    fmt: str | None = None
    batch_size: int = MAX_BATCH
    concurrency: int = 4
    restart: bool = False
    retries: int = 5
    numeric: set[str] = field(default_factory=set)
    lists: set[str] = field(default_factory=set)
    state_path: Path | None = None
    failures_path: Path | None = None
    quiet: bool = False


@dataclass
class ImportResult:
    total: int = 0
    imported: int = 0  # acknowledged in this run
    failed: int = 0  # failures in this run
    skipped: int = 0  # settled by an earlier run
    retry_later: int = 0  # server errors left for a rerun
    seconds: float = 0.0
    failures_file: Path | None = None
    failure_count: int = 0  # all failures on record (this run and earlier ones)
    reasons: list[tuple[str, int]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.imported / self.seconds if self.seconds > 0 else 0.0


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} products/s" if speed else "- products/s", style="progress.data.speed")


def default_paths(options: ImportOptions) -> tuple[Path, Path]:
    base = options.file.with_name(f"{options.file.name}.{options.index}")
    state = options.state_path or base.with_name(base.name + ".import-state.jsonl")
    failures = options.failures_path or base.with_name(base.name + ".failures.csv")
    return state, failures


def _retry_after(response: httpx.Response | None, attempt: int) -> float:
    if response is not None:
        try:
            return min(30.0, max(0.1, float(response.headers.get("retry-after", ""))))
        except ValueError:
            pass
    return min(30.0, 0.5 * 2**attempt)


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("error") or body)
    except ValueError:
        return response.text[:200] or f"HTTP {response.status_code}"


class Importer:
    def __init__(self, options: ImportOptions, client: httpx.AsyncClient, state: ImportState, progress: Any):
        self.options = options
        self.client = client
        self.state = state
        self.progress = progress
        self.task: Any = None
        self.result = ImportResult()
        self.path = f"/api/v1/indexes/{options.index}/documents"

    async def _post(self, batch: list[Record]) -> httpx.Response:
        """POST one batch, retrying overload, server and network errors with backoff."""
        last: str = ""
        for attempt in range(self.options.retries + 1):
            response: httpx.Response | None = None
            try:
                response = await self.client.post(self.path, json={"documents": [r.doc for r in batch]})
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if response.status_code not in _RETRYABLE_STATUS and response.status_code < 500:
                    return response
                last = f"HTTP {response.status_code}: {_message(response)}"
            if attempt < self.options.retries:
                await asyncio.sleep(_retry_after(response, attempt))
        raise ImportAborted(f"the service did not accept a batch after {self.options.retries + 1} attempts: {last}")

    async def send(self, batch: list[Record]) -> None:
        response = await self._post(batch)
        status = response.status_code
        if status == 401:
            raise ImportAborted("the service refused the API key (401); pass --api-key or set LOOKALIKE_API_KEY")
        if status == 404:
            raise ImportAborted(f"{_message(response)}; create the index first (POST /api/v1/indexes/{{name}})")
        if status == 413 and len(batch) > 1:  # large data URLs: halve the batch until it fits
            half = len(batch) // 2
            await self.send(batch[:half])
            await self.send(batch[half:])
            return
        done: list[int] = []
        failed: list[tuple[int, str, str]] = []
        if status != 200:  # the whole batch was refused (e.g. a body over the size limit)
            reason = f"HTTP {status}: {_message(response)}"
            failed = [(r.line, r.product_id, reason) for r in batch]
        else:
            items = response.json().get("items", [])
            if len(items) != len(batch):
                raise ImportAborted(f"the service answered {len(items)} items for a batch of {len(batch)}")
            for record, item in zip(batch, items, strict=True):
                item_status = int(item.get("status", 500))
                if item_status < 300:
                    done.append(record.line)
                elif item_status >= 500:
                    self.result.retry_later += 1  # not settled: a rerun sends it again
                else:
                    failed.append((record.line, record.product_id, str(item.get("message") or f"HTTP {item_status}")))
        self.state.record(done + [f[0] for f in failed], failed)
        self.result.imported += len(done)
        self.result.failed += len(failed)
        self.progress.advance(self.task, len(batch))

    async def run(self, records: Iterator[Record]) -> None:
        queue: asyncio.Queue[list[Record] | None] = asyncio.Queue(maxsize=self.options.concurrency * 2)

        async def worker() -> None:
            while (batch := await queue.get()) is not None:
                await self.send(batch)

        workers = [asyncio.create_task(worker()) for _ in range(self.options.concurrency)]
        try:
            batch: list[Record] = []
            ids: set[str] = set()
            for record in records:
                if record.line in self.state.done:
                    continue
                if record.error is not None:  # settled locally: nothing to send
                    self.state.record([record.line], [(record.line, record.product_id, record.error)])
                    self.result.failed += 1
                    self.progress.advance(self.task, 1)
                    continue
                # One _id twice in a batch would race inside one request: start a new batch instead.
                if len(batch) >= self.options.batch_size or record.product_id in ids:
                    await self._put(queue, batch, workers)
                    batch, ids = [], set()
                batch.append(record)
                ids.add(record.product_id)
            if batch:
                await self._put(queue, batch, workers)
            for _ in workers:
                await self._put(queue, None, workers)
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    @staticmethod
    async def _put(queue: asyncio.Queue[Any], item: Any, workers: list[asyncio.Task[None]]) -> None:
        """Enqueue, but surface a worker's fatal error instead of waiting forever on a full queue."""
        while True:
            for task in workers:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            try:
                await asyncio.wait_for(queue.put(item), timeout=0.5)
                return
            except TimeoutError:
                continue


def _reason_key(reason: str) -> str:
    # Group "image not found (HTTP 404) at http://x/1.jpg" and ".../2.jpg" together.
    return re.sub(r"(https?|data):\S+", "<url>", reason)[:160]


def write_failures(path: Path, failures: dict[int, tuple[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["line", "_id", "reason"])
        for line in sorted(failures):
            product_id, reason = failures[line]
            writer.writerow([line, product_id, reason])


async def run_import(options: ImportOptions, console: Console | None = None) -> ImportResult:
    if not 1 <= options.batch_size <= MAX_BATCH:
        raise ImportAborted(f"--batch-size must be from 1 to {MAX_BATCH}")
    if not options.api_key:
        raise ImportAborted("an admin API key is needed: pass --api-key or set LOOKALIKE_API_KEY")
    if not options.file.is_file():
        raise ImportAborted(f"{options.file}: no such file")
    console = console or Console(stderr=True)
    fmt = detect_format(options.file, options.fmt)
    state_path, failures_path = default_paths(options)
    header = {
        "version": STATE_VERSION,
        "input": options.file.name,
        "sha256": file_digest(options.file),
        "index": options.index,
        "format": fmt,
    }
    state = ImportState.open(state_path, header, options.restart)
    total = sum(1 for _ in read_records(options.file, fmt, options.numeric, options.lists))
    started = time.perf_counter()
    timeout = httpx.Timeout(600.0, connect=10.0)  # a batch of 128 remote images can take minutes
    limits = httpx.Limits(max_connections=options.concurrency)
    headers = {"Authorization": f"Bearer {options.api_key}", "user-agent": "lookalike-import"}
    progress = Progress(
        TextColumn(f"[bold]{options.file.name}[/] → {options.index}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=options.quiet,
    )
    async with httpx.AsyncClient(base_url=options.url, headers=headers, timeout=timeout, limits=limits) as client:
        importer = Importer(options, client, state, progress)
        already = len(state.done)
        importer.result.skipped = already
        importer.result.total = total
        with progress:
            importer.task = progress.add_task("import", total=total, completed=already)
            try:
                await importer.run(read_records(options.file, fmt, options.numeric, options.lists))
            finally:
                result = importer.result
                result.seconds = time.perf_counter() - started
                result.failure_count = len(state.failures)
                if state.failures:
                    write_failures(failures_path, state.failures)
                    result.failures_file = failures_path
                elif failures_path.exists():
                    failures_path.unlink()  # a stale report from an earlier attempt would mislead
                result.reasons = Counter(_reason_key(r) for _, r in state.failures.values()).most_common(5)
    return result


def summary(result: ImportResult) -> str:
    lines = [
        f"imported {result.imported} products in {result.seconds:.1f} s ({result.rate:,.0f}/s); "
        f"{result.failed} failed; {result.skipped} settled by an earlier run; {result.total} in the file"
    ]
    if result.retry_later:
        lines.append(f"{result.retry_later} hit server errors and were not settled: run the same command again")
    if result.failures_file:
        lines.append(f"{result.failure_count} failures (line, _id, reason) in {result.failures_file}")
        lines.extend(f"  {count:>6} × {reason}" for reason, count in result.reasons)
    return "\n".join(lines)
