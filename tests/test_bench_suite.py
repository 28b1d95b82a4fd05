"""The performance suite's plumbing: a tiny end-to-end benchmark run and `python -m benchmarks`.

The real runs are `python -m benchmarks.e2e_bench` and `python -m benchmarks [--quick]`; this only
checks that they run and report what they promise (figures measured here mean nothing).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import build_parser as lookalike_parser
from benchmarks import suite

REPO_ROOT = Path(__file__).resolve().parents[1]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}


def _run_bench(module: str, args: list[str], out: Path, timeout: int) -> dict:
    """Run `python -m benchmarks.<module> ARGS` from the checkout; its JSON report (written to `out`)."""
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args, "--out", str(out)],
        cwd=REPO_ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def test_e2e_bench_tiny_run_reports_every_field(tmp_path: Path, fresh_database: str) -> None:
    out = tmp_path / "e2e.json"
    args = ["--products", "8", "--concurrency", "1,2", "--requests", "3", "--queries", "3", "--warmup", "1"]
    # The test PostgreSQL (an empty database) spares the benchmark an initdb of its own.
    args += ["--inference-runs", "3", "--database-url", fresh_database]
    result = _run_bench("e2e_bench", args, out, timeout=180)
    assert out.with_suffix(".png").stat().st_size > 1000
    assert result["products"] == 8 and result["ingest"]["failed"] == 0
    assert result["distinct_query_images"] == 2 * (3 + 3) + 2  # one image per request, warm-up included
    machine = result["machine"]
    assert machine["cpus"] >= 1 and len(machine["load_average_at_start"]) == 3
    inference = result["inference"]
    assert inference["p50_ms"] > 0 and inference["runs"] == 3 and inference["torch_threads"] >= 1
    levels = {(level["concurrency"], level["kind"]): level for level in result["levels"]}
    assert set(levels) == {(c, k) for c in (1, 2) for k in ("search_by_image", "reverse_image_search")}
    for level in levels.values():
        assert level["error_count"] == 0 and level["errors"] == {}, level
        assert level["ok"] == level["requests"] == 3
        assert 0 < level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"] <= level["max_ms"]
        assert level["throughput_rps"] > 0
        assert level["health"]["probes"] > 0 and level["health"]["p95_ms"] is not None
        assert set(level["health"]["statuses"]) == {"200"}
    assert {"decode", "embed", "sql"} <= set(levels[1, "search_by_image"]["stages_p50_ms"])
    assert {"embed", "features", "rerank"} <= set(levels[1, "reverse_image_search"]["stages_p50_ms"])
    must = result["must_show"]
    assert must["max_concurrency"] == 2 and must["errors_at_max_concurrency"] == 0
    sbi = levels[1, "search_by_image"]["p50_ms"]
    assert must["sbi_vs_inference_ratio"] == pytest.approx(sbi / (inference["p50_ms"] + 15.0), abs=0.002)
    assert must["health_p95_ms_at_max_concurrency"] is not None


def _benchmarks(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_python_m_benchmarks_help_and_only_names(capsys: pytest.CaptureFixture[str]) -> None:
    done = _benchmarks("--help")
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout and "--only" in done.stdout and "--out" in done.stdout

    parser = suite.build_parser()
    args = parser.parse_args(["--quick", "--only", "e2e, ann"])
    assert args.quick and args.only == ["e2e", "ann"]
    for bad in ("fuzz", "ann,nope", ","):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["--only", bad])
        assert exc.value.code == 2
        assert "unknown benchmark" in capsys.readouterr().err

    # quick and full mode cover every benchmark name
    for quick in (True, False):
        runs = suite.plan(quick, Path("/tmp/out"))
        assert {r.group for r in runs} == set(suite.NAMES)
        assert len({r.name for r in runs}) == len(runs)
        assert all(f"/tmp/out/{r.result}" in r.args or "/tmp/out" in r.args for r in runs)


def test_unknown_only_name_is_rejected() -> None:
    done = _benchmarks("--only", "ann,bogus")
    assert done.returncode == 2
    assert "unknown benchmark bogus" in done.stderr


def test_the_lookalike_command_has_no_bench() -> None:
    """The installed command does not depend on the checkout's benchmarks/."""
    with pytest.raises(SystemExit):
        lookalike_parser().parse_args(["bench"])


def test_verify_ceiling_bench_tiny_run_reports_consistent_naming_figures(tmp_path: Path) -> None:
    out = tmp_path / "ceiling.json"
    args = ["--products", "16", "--low-texture", "6", "--queries", "6", "--multi", "4"]
    result = _run_bench("verify_ceiling_bench", args, out, timeout=300)
    assert result["single_product"]["all"]["n"] == 6
    multi = result["multi_product"]
    products = multi["region_keypoints"]["all"]["n"]
    naming = multi["unverified_naming"]
    assert naming["verified_products"] + naming["missed_products"] == products
    assert round(naming["verified_products"] / products, 4) == multi["region_keypoints"]["all"]["located"]
    assert 0.0 <= naming["oracle_box_named_first"] <= naming["oracle_box_in_top5"] <= 1.0
    # a higher margin accepts a subset of the regions a lower one does (best margin first)
    by_margin = [naming["proposal_boxes_by_margin"][m] for m in sorted(naming["proposal_boxes_by_margin"], key=float)]
    for looser, stricter in itertools.pairwise(by_margin):
        assert stricter["true_regions"] <= looser["true_regions"]
        assert stricter["false_regions_per_photo"] <= looser["false_regions_per_photo"]
    for figures in by_margin:
        expected = (naming["verified_products"] + figures["true_regions"]) / products
        assert figures["per_product_recall_with_verified"] == round(expected, 4)


def test_delete_bench_tiny_run_reports_both_schemas(tmp_path: Path, server_url: str) -> None:
    out = tmp_path / "delete.json"
    args = ["--products", "40", "--indexes", "0,3", "--database-url", server_url]
    result = _run_bench("delete_bench", args, out, timeout=300)
    assert [run["other_indexes"] for run in result["runs"]] == [0, 3] and result["products"] == 40
    for run in result["runs"]:
        assert all(run[k] > 0 for k in ("delete_triggers_s", "delete_foreign_keys_s", "insert_vectors_triggers_s"))
