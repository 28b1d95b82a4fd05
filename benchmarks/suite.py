"""The whole performance suite in one command: `python -m benchmarks [--quick] [--only ...] [--out DIR]`.

Runs each sub-benchmark in its own process (`python -m benchmarks.<name>_bench ...`, from
the checkout), one after the other, each writing its JSON and PNG into the output
directory; then writes `summary.json` (per run: command, exit status, wall time, the key
figures read back from its JSON) and prints a short table. A sub-benchmark that fails
does not stop the others; the exit status is 1 if any failed.

`--quick` picks sizes that finish in a few minutes on 2 cores (ANN 20k vectors, scale 50k
instead of 1M, the offline model for the HTTP benchmarks, the default architecture at 64
products for the inference backend's); without it the published sizes
run (ANN 100k, scale 1M, both models for e2e and ingest), which takes hours on 2 cores.
Each run's output is kept in `<out>/logs/<run>.log`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

NAMES = ("ann", "e2e", "ingest", "scale", "quality", "inference")


def names(text: str) -> list[str]:
    """`--only`'s value: comma-separated names of NAMES."""
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in NAMES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark {', '.join(unknown) or repr(text)}; choose from {','.join(NAMES)}"
        )
    return chosen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Runs ann, e2e, ingest, scale and quality benchmarks one after the other, each in its own "
        "process, writing JSON and PNG into --out, then summary.json and a table. --quick: minutes on 2 cores; "
        "otherwise the published sizes (hours). Exit status 1 if any benchmark failed. Run it from the checkout.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (about 5 minutes on 2 cores)")
    parser.add_argument("--only", type=names, metavar="NAMES", help=f"comma-separated subset of {','.join(NAMES)}")
    parser.add_argument(
        "--out", type=Path, help="output directory (default: bench-results/quick with --quick, else bench-results)"
    )
    parser.add_argument("--quiet", action="store_true", help="do not echo the benchmarks' output (logs are kept)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(__file__).resolve().parents[1]  # the checkout this package is in
    out = args.out or (Path("bench-results/quick") if args.quick else Path("bench-results"))
    return run_suite(root, quick=args.quick, only=args.only, out=out, echo=not args.quiet)


@dataclass(frozen=True)
class Run:
    group: str  # one of NAMES (what --only selects)
    name: str  # unique per run, names the log
    module: str
    args: tuple[str, ...]
    result: str  # JSON file name in the output directory


def plan(quick: bool, out: Path) -> list[Run]:
    """The runs of the suite, in order; every output lands in `out`."""
    o = str(out)
    if quick:
        return [
            Run("ann", "ann", "benchmarks.ann_bench", ("--quick", "--out", o), "ann-quick.json"),
            Run(
                "e2e",
                "e2e-offline",
                "benchmarks.e2e_bench",
                (
                    "--model",
                    "offline",
                    "--products",
                    "100",
                    "--requests",
                    "20",
                    "--queries",
                    "40",
                    "--out",
                    f"{o}/e2e-offline.json",
                ),
                "e2e-offline.json",
            ),
            Run(
                "ingest",
                "ingest-offline",
                "benchmarks.ingest_bench",
                ("--model", "offline", "--products", "128", "--out", f"{o}/ingest-offline.json"),
                "ingest-offline.json",
            ),
            Run(
                "scale",
                "scale",
                "benchmarks.scale_bench",
                ("--products", "50000", "--queries", "20", "--out", f"{o}/scale.json"),
                "scale.json",
            ),
            Run(
                "quality",
                "quality-offline",
                "benchmarks.quality_bench",
                ("--model", "offline", "--products", "100", "--queries", "40", "--out", f"{o}/quality-offline.json"),
                "quality-offline.json",
            ),
            Run(
                "inference",
                "inference-default-arch",
                "benchmarks.inference_bench",
                ("--products", "64", "--queries", "16", "--runs", "10", "--out", f"{o}/inference-default-arch.json"),
                "inference-default-arch.json",
            ),
        ]
    runs = [Run("ann", "ann", "benchmarks.ann_bench", ("--out", o), "ann.json")]
    for model in ("offline", "default-arch"):
        runs.append(
            Run(
                "e2e",
                f"e2e-{model}",
                "benchmarks.e2e_bench",
                ("--model", model, "--out", f"{o}/e2e-{model}.json"),
                f"e2e-{model}.json",
            )
        )
    for model, products in (("offline", 512), ("default-arch", 256)):
        runs.append(
            Run(
                "ingest",
                f"ingest-{model}",
                "benchmarks.ingest_bench",
                ("--model", model, "--products", str(products), "--out", f"{o}/ingest-{model}.json"),
                f"ingest-{model}.json",
            )
        )
    runs.append(Run("scale", "scale", "benchmarks.scale_bench", ("--out", f"{o}/scale.json"), "scale.json"))
    runs.append(
        Run(
            "quality",
            "quality-offline",
            "benchmarks.quality_bench",
            ("--model", "offline", "--out", f"{o}/quality-offline.json"),
            "quality-offline.json",
        )
    )
    runs.append(
        Run(
            "inference",
            "inference-default-arch",
            "benchmarks.inference_bench",
            ("--out", f"{o}/inference-default-arch.json"),
            "inference-default-arch.json",
        )
    )
    return runs


# -- key figures read back from each benchmark's JSON -------------------------------------------


def _ann(d: dict[str, Any]) -> dict[str, Any]:
    at = [p for p in d["sweep"] if p["ef_search"] == 100] or d["sweep"]
    unfiltered = next((p for p in at if p["selectivity"] == "sel_100"), at[0])
    return {
        "products": d["products"],
        "ef_search": at[0]["ef_search"],
        "recall_at_10_min": min(p["recall_at_10"] for p in at),
        "p50_ms_unfiltered": unfiltered["p50_ms"],
        "p50_ms_max": max(p["p50_ms"] for p in at),
        "hnsw_build_s": round(d["load"]["hnsw_build_s"], 1),
    }


def _e2e(d: dict[str, Any]) -> dict[str, Any]:
    m = d["must_show"]
    out: dict[str, Any] = {
        "products": d["products"],
        "sbi_vs_inference_ratio": m["sbi_vs_inference_ratio"],
        "health_p95_ms_at_max_concurrency": m["health_p95_ms_at_max_concurrency"],
        "errors_at_max_concurrency": m["errors_at_max_concurrency"],
        "inference_p50_ms": m["inference_p50_ms"],
        "load_average_at_start": d["machine"]["load_average_at_start"][0],
    }
    short = {"search_by_image": "sbi", "reverse_image_search": "reverse"}
    for level in d["levels"]:
        out[f"{short[level['kind']]}_c{level['concurrency']}_p50_p95_ms"] = [level["p50_ms"], level["p95_ms"]]
    return out


def _ingest(d: dict[str, Any]) -> dict[str, Any]:
    return {
        "products": d["products"],
        "api_products_per_s": d["api"]["products_per_s"],
        "raw_images_per_s": d["raw_model"]["images_per_s"],
        "ratio_api_to_raw": d["ratio_api_to_raw"],
    }


def _scale(d: dict[str, Any]) -> dict[str, Any]:
    q = {p["selectivity"]: p for p in d["queries"]}
    out: dict[str, Any] = {"products": d["products"], "hnsw_build_s": d["load"]["hnsw_build_s"]}
    if "sel_100" in q:
        out["recall_at_10_unfiltered"] = q["sel_100"]["recall_at_10"]
        out["p50_ms_unfiltered"] = q["sel_100"]["p50_ms"]
    out["recall_at_10_min"] = min(p["recall_at_10"] for p in d["queries"])
    return out


def _quality(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"products": d["products"], "queries": d["queries"]}
    for kind, short in (("search_by_image", "sbi"), ("reverse_image_search", "reverse")):
        part = d[kind]
        out[f"{short}_recall_at_1"] = part["recall_at_1"]
        out[f"{short}_recall_at_10"] = part["recall_at_10"]
        out[f"{short}_p50_ms"] = part["p50_ms"]
    return out


def _inference(d: dict[str, Any]) -> dict[str, Any]:
    ref, m, s = d["reference"], d["model_alone"], d["service"]
    return {
        "torch_batch1_ms": ref["torch_batch1_ms"],
        "onnx_fp32_batch1_ms": m["onnx_fp32"]["batch1_p50_ms"],
        "onnx_int8_batch1_ms": m["onnx_int8"]["batch1_p50_ms"],
        "index_precision": (s.get("inference") or {}).get("precision"),
        **d["ratios"],
        "load_average_at_start": d["load_average_at_start"][0],
    }


KEY_FIGURES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "inference": _inference,
    "ann": _ann,
    "e2e": _e2e,
    "ingest": _ingest,
    "scale": _scale,
    "quality": _quality,
}


def key_figures(group: str, path: Path) -> dict[str, Any]:
    """The few numbers worth a glance; never fails (a changed JSON layout gives an `error`)."""
    try:
        return KEY_FIGURES[group](json.loads(path.read_text()))
    except FileNotFoundError:
        return {"error": f"{path.name} was not written"}
    except (KeyError, TypeError, ValueError, IndexError, StopIteration) as exc:
        return {"error": f"could not read key figures: {type(exc).__name__}: {exc}"}


# -- plots the sub-benchmarks do not draw themselves ----------------------------------------------


def plot_quality(result_path: Path, png: Path) -> None:
    """Recall@1/@10/MRR and per-stage p50 latency, Search by Image vs reverse image search."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = json.loads(result_path.read_text())
    kinds = [("search_by_image", "Search by Image"), ("reverse_image_search", "reverse image search")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    metrics = ["recall_at_1", "recall_at_10", "mrr_at_10"]
    width = 0.38
    for i, (kind, label) in enumerate(kinds):
        left.bar(
            [m + (i - 0.5) * width for m in range(len(metrics))], [d[kind][m] for m in metrics], width, label=label
        )
    left.set_xticks(range(len(metrics)), ["recall@1", "recall@10", "MRR@10"])
    left.set_ylim(0, 1)
    left.set_title(f"quality, {d['products']} products / {d['queries']} wild queries", fontsize=9)
    left.legend(fontsize=8)
    stages = sorted({s for kind, _ in kinds for s in d[kind].get("stages_p50_ms", {})})
    for i, (kind, _label) in enumerate(kinds):
        bottom = 0.0
        for j, stage in enumerate(stages):
            value = d[kind].get("stages_p50_ms", {}).get(stage, 0.0)
            right.bar(i, value, 0.6, bottom=bottom, color=f"C{j + 2}", label=stage if i == 0 else None)
            bottom += value
        right.plot([i - 0.3, i + 0.3], [d[kind]["p50_ms"]] * 2, color="black", linewidth=1.5)
    right.set_xticks(range(len(kinds)), [label for _, label in kinds])
    right.set_ylabel("ms (bars: stage p50; line: request p50)")
    right.set_title(f"latency, model {d['model']['name']}", fontsize=9)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


EXTRA_PLOTS: dict[str, Callable[[Path, Path], None]] = {"quality": plot_quality}


# -- running -------------------------------------------------------------------------------------


def _run_one(run: Run, root: Path, out: Path, echo: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", run.module, *run.args]
    log_path = out / "logs" / f"{run.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    print(f"== {run.name}: python -m {run.module} {' '.join(run.args)}", flush=True)
    started = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if echo:
                print(f"  [{run.name}] {line}", end="", flush=True)
        status = proc.wait()
    wall = time.monotonic() - started
    result = out / run.result
    png = result.with_suffix(".png")
    if status == 0 and result.exists() and not png.exists() and run.group in EXTRA_PLOTS:
        try:
            EXTRA_PLOTS[run.group](result, png)
        except Exception as exc:  # a plot is a nicety; never lose the run's numbers over it
            print(f"  ({run.name}: no plot: {type(exc).__name__}: {exc})")
    entry = {
        "name": run.name,
        "benchmark": run.group,
        "command": f"python -m {run.module} {' '.join(run.args)}",
        "exit_status": status,
        "wall_s": round(wall, 1),
        "json": run.result if result.exists() else None,
        "png": png.name if png.exists() else None,
        "log": str(log_path.relative_to(out)),
        "key": key_figures(run.group, result) if result.exists() else {"error": "no JSON written"},
    }
    print(f"== {run.name}: exit {status} in {wall:.1f} s", flush=True)
    return entry


def _short(key: dict[str, Any], width: int = 110) -> str:
    text = ", ".join(f"{k}={v}" for k, v in key.items())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(summary: dict[str, Any]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a dependency, but a plain table will do
        for e in summary["runs"]:
            print(f"{e['name']:<22} exit {e['exit_status']:<3} {e['wall_s']:>7.1f} s  {_short(e['key'])}")
        print(f"total {summary['wall_s']:.1f} s")
        return
    table = Table(title=f"python -m benchmarks ({summary['mode']}) — {summary['out']}")
    table.add_column("run")
    table.add_column("exit", justify="right")
    table.add_column("wall s", justify="right")
    table.add_column("key figures", overflow="fold")
    for e in summary["runs"]:
        status = "[green]0[/]" if e["exit_status"] == 0 else f"[red]{e['exit_status']}[/]"
        table.add_row(e["name"], status, f"{e['wall_s']:.1f}", ", ".join(f"{k}={v}" for k, v in e["key"].items()))
    load = summary["machine"]["load_average_at_start"]
    table.caption = f"total {summary['wall_s']:.1f} s; load average at start {load}"
    Console().print(table)


def _source(root: Path) -> dict[str, Any]:
    """The commit the benchmarks ran from, and whether the checkout had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def run_suite(root: Path, *, quick: bool, only: list[str] | None, out: Path, echo: bool = True) -> int:
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # The benchmarks run in `root`: inside it, name the output relatively (readable, reproducible commands).
    shown = out.relative_to(root.resolve()) if out.is_relative_to(root.resolve()) else out
    runs = [r for r in plan(quick, shown) if not only or r.group in only]
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    load_start = [round(x, 2) for x in os.getloadavg()]
    started = time.monotonic()
    entries = [_run_one(run, root, out, echo) for run in runs]
    summary = {
        "suite": "python -m benchmarks",
        "mode": "quick" if quick else "full",
        "only": only or list(NAMES),
        "out": str(shown),
        "started_at": started_at,
        "source": _source(root),
        "wall_s": round(time.monotonic() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_start": load_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "runs": entries,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_table(summary)
    print(f"wrote {out / 'summary.json'}")
    return 0 if all(e["exit_status"] == 0 for e in entries) else 1
