"""Run every benchmark and write a Markdown summary (`make bench`).

    python benchmarks/run_all.py [--sizes 10000,100000,1000000] [--queries 200] [--model DIR]
                                 [--skip-build] [--skip-cold] [--skip-text] [--skip-evaluate] [--reuse]

Each benchmark runs as its own subprocess (a fresh process per measurement: no import or allocator state leaks
between them): bench_build.py (index build throughput, if present), bench_query.py --n N for each size,
bench_cold.py, bench_text.py (text backends, one query and batched), bench_evaluate.py (`retrieve evaluate`),
bench_precision.py and bench_build_cli.py (with the build), bench_by_example.py, bench_ood.py and bench_review.py. Their JSON results stay in benchmarks/results/; this script prints a Markdown table and writes
benchmarks/results/summary.md. The 1M run needs ~4 GB RAM and, on 2 busy cores, ~15-30 min (HNSW build).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import REPO_ROOT, RESULTS_DIR, banner, last_json_line

HERE = Path(__file__).resolve().parent
#: Targets from the performance issue (2-core CPU).
TARGET_P50_MS_1M = 15.0
TARGET_RECALL = 0.95
TARGET_SPEEDUP = 20.0
TARGET_COLD_S = 2.0


def _run(script: str, args: list[str]) -> tuple[dict[str, Any] | None, str]:
    """Run a benchmark script with --json; (its JSON or None, one-line status)."""
    cmd = [sys.executable, str(HERE / script), *args]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"$ {' '.join(cmd)}", flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    took = time.perf_counter() - t
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        print(f"  FAILED after {took:.0f} s: {tail}", flush=True)
        return None, f"failed: {tail}"
    for line in proc.stdout.splitlines():
        if line.strip() and not line.startswith("{"):
            print(f"  {line}", flush=True)
    try:
        return last_json_line(proc.stdout), f"ok ({took:.0f} s)"
    except ValueError:
        return None, f"ok ({took:.0f} s), no JSON"


def _f(value: Any, fmt: str = ".1f") -> str:
    return "–" if value is None else format(value, fmt)


def query_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| N | index | build s | e2e p50 ms | e2e p99 ms | CPU p50 ms | encode | project | ANN | rerank+meta | "
           "ANN p50 ms | exact p50 ms | ANN speed-up | recall@10 | cand. recall@10 | B/image disk | RAM MB (index) |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s, m = r.get("stages_p50_ms", {}), r.get("memory", {})
        out.append(
            f"| {r['n']:,} | {r['index_type']} | {_f(r.get('build_s'))} | {_f(r['p50_ms'])} | {_f(r['p99_ms'])} | {_f(r.get('cpu_p50_ms'))} | "
            f"{_f(s.get('encode_ms'))} | {_f(s.get('project_ms'), '.2f')} | {_f(s.get('ann_ms'), '.2f')} | "
            f"{_f(s.get('rerank_ms'), '.2f')} | {_f(r['ann_p50_ms'], '.2f')} | {_f(r['exact_p50_ms'], '.2f')} | "
            f"{_f(r['ann_speedup_vs_exact'])}x | {_f(r['recall_at_10'], '.3f')} | "
            f"{_f(r.get('candidate_recall_at_10'), '.3f')} | {_f(m.get('bytes_per_image_disk'), '.0f')} | "
            f"{_f(m.get('rss_added_by_index_load_mb'), '.0f')} |")
    return out


def cold_table(c: dict[str, Any]) -> list[str]:
    s = c["stages"]
    out = ["| measure | seconds |", "|---|---:|",
           f"| cold `retrieve query` wall (median of {c['runs']}) | {c['cold_query_s']:.2f} |",
           f"| cold `retrieve query` CPU time (user+sys; ≈ wall on an idle machine) | {c['cold_query_cpu_s']:.2f} |"]
    if "cold_query_transformers_backend_s" in c:
        out.append(f"| same, transformers text backend (reference): wall / CPU | "
                   f"{c['cold_query_transformers_backend_s']:.2f} / {c['cold_query_transformers_backend_cpu_s']:.2f} |")
    out += [f"| python start-up (`python -c pass`) | {c['python_startup_s']:.2f} |",
            f"| import retrieval.cli + search | {s['imports_s']:.2f} |",
            f"| heads model load | {s['model_load_s']:.2f} |",
            f"| index load (index_store import + faiss + meta.csv) | {s['index_load_s']:.2f} |",
            f"| text encoder load ({s['text_encoder']}) | {s['text_encoder_load_s']:.2f} |",
            f"| first search / second search | {s['first_search_s']:.2f} / {s['second_search_s']:.2f} |",
            f"| `-X importtime` total of a query (heaviest: "
            f"{', '.join(f'{k} {v:.0f} ms' for k, v in list(c['importtime_query']['top_ms'].items())[:4])}) | "
            f"{c['importtime_query']['total_ms'] / 1e3:.2f} |"]
    return out


def targets(rows: list[dict[str, Any]], cold: dict[str, Any] | None) -> list[str]:
    out = []
    big = max(rows, key=lambda r: r["n"]) if rows else None
    if big:
        ok = lambda b: "MET" if b else "NOT MET"  # noqa: E731
        out.append(f"- e2e p50 ≤ {TARGET_P50_MS_1M:.0f} ms at N={big['n']:,}: {big['p50_ms']:.1f} ms → "
                   f"{ok(big['p50_ms'] <= TARGET_P50_MS_1M)}; CPU time per query {big.get('cpu_p50_ms', float('nan')):.1f} ms "
                   f"→ {ok(big.get('cpu_p50_ms', 1e9) <= TARGET_P50_MS_1M)} on an idle core (text encoding alone: "
                   f"{big['stages_p50_ms'].get('encode_ms', float('nan')):.1f} ms)")
        out.append(f"- recall@10 ≥ {TARGET_RECALL}: {big['recall_at_10']:.3f} → {ok(big['recall_at_10'] >= TARGET_RECALL)}")
        out.append(f"- ANN ≥ {TARGET_SPEEDUP:.0f}x faster than exact flat: {big['ann_speedup_vs_exact']:.1f}x → "
                   f"{ok(big['ann_speedup_vs_exact'] >= TARGET_SPEEDUP)}")
    if cold:
        out.append(f"- cold query ≤ {TARGET_COLD_S:.0f} s: wall {cold['cold_query_s']:.2f} s "
                   f"({'MET' if cold['cold_query_s'] <= TARGET_COLD_S else 'NOT MET'}), CPU "
                   f"{cold['cold_query_cpu_s']:.2f} s ({'MET' if cold['cold_query_cpu_s'] <= TARGET_COLD_S else 'NOT MET'})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--skip-text", action="store_true")
    ap.add_argument("--skip-evaluate", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="Reuse existing bench indexes (skips the HNSW builds).")
    ap.add_argument("--cold-runs", type=int, default=5)
    ap.add_argument("--no-reference", action="store_true", help="Skip bench_cold's transformers-backend reference.")
    args = ap.parse_args()
    info = banner()
    model_args = ["--model", str(args.model)] if args.model else []
    status: dict[str, str] = {}

    build = None
    if not args.skip_build and (HERE / "bench_build.py").is_file():
        _, status["bench_build"] = _run("bench_build.py", [])
    elif args.skip_build:
        status["bench_build"] = "skipped (--skip-build); its last results/bench_build.json is shown"
    path = RESULTS_DIR / "bench_build.json"
    build = json.loads(path.read_text()) if path.is_file() else None

    rows = []
    for n in [int(s) for s in args.sizes.split(",") if s.strip()]:
        extra = ["--reuse"] if args.reuse else []
        res, status[f"bench_query n={n}"] = _run("bench_query.py", ["--n", str(n), "--queries", str(args.queries),
                                                                    "--json", *model_args, *extra])
        if res:
            rows.append(res)
    cold = None
    if not args.skip_cold:
        index: list[str] = []  # bench_cold uses (or rebuilds, if the model changed) the 10k bench index
        ref = ["--no-reference"] if args.no_reference else []
        cold, status["bench_cold"] = _run("bench_cold.py", ["--json", "--runs", str(args.cold_runs), *model_args,
                                                            *index, *ref])

    # quality / feature benchmarks that write their own results/*.json (listed under "Runs")
    if not args.skip_build:
        for script in ("bench_precision.py", "bench_build_cli.py"):
            _, status[script[:-3]] = _run(script, [])
    for script in ("bench_by_example.py", "bench_ood.py", "bench_review.py"):
        _, status[script[:-3]] = _run(script, [])

    text_bench = evaluation = None
    if not args.skip_text:
        text_bench, status["bench_text"] = _run("bench_text.py", ["--json"])
    if not args.skip_evaluate:
        evaluation, status["bench_evaluate"] = _run("bench_evaluate.py", ["--json"])

    hw = info["hardware"]
    lines = ["# Benchmark summary", "",
             f"{hw['cpu']}, {hw['cores']} cores, {hw['ram_gb']} GB RAM, load average {hw['loadavg_1min_at_start']:.1f} "
             f"at start (the cores are shared: compare ratios within a run). Versions: "
             + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ".", "",
             "Command: `make bench` (= `python benchmarks/run_all.py`). Per-benchmark JSON in `benchmarks/results/`.", ""]
    if rows:
        lines += ["## Query latency (`bench_query.py --n N`)", "",
                  "End to end = `Retriever.search` (text encoding + projection + ANN + rerank + metadata), one query at "
                  f"a time, {rows[0]['queries']} real course captions after 10 warm-up queries; stage columns are "
                  "medians in ms; exact = IndexFlatIP over the same vectors in the same run; FAISS on "
                  f"{rows[0].get('faiss_threads', 1)} thread(s). Model {str(rows[-1].get('model_id', '?'))[:12]}…, "
                  f"text encoder {rows[-1].get('text_encoder', '?')}; `cand. recall@10` = share of the exact top-10 "
                  "among the ANN candidates the reranker re-scores with float32 vectors.", ""]
        lines += query_table(rows) + [""]
    if cold:
        lines += ["## Cold start (`bench_cold.py`)", ""] + cold_table(cold) + [""]
    if text_bench:
        lines += [f"## Text encoding (`bench_text.py`, {text_bench['model']})", "",
                  "| backend | one query p50 ms | batched ms/text | worst cosine vs numpy |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {row['single_query_p50_ms']:.1f} | {row['batched_ms_per_text']:.1f} | "
                  f"{row['worst_cosine_vs_numpy']:.7f} |" for name, row in text_bench["backends"].items()] + [""]
    if evaluation:
        lines += ["## `retrieve evaluate` (`bench_evaluate.py`)", "",
                  f"{evaluation['images']} images / {evaluation['queries']} queries: "
                  f"{evaluation['default_backend_s']:.1f} s (numpy text backend {evaluation['numpy_backend_s']:.1f} s, "
                  f"largest metric difference {evaluation['max_metric_difference']:.2g}).", ""]
    if build:
        lines += ["## Index build (`bench_build.py`, PERF helper)", "", "| variant | images/s | CPU ms/image |",
                  "|---|---:|---:|"]
        for name, v in build.get("variants", {}).items():
            lines.append(f"| {name} | {v.get('images_per_s', 0):.1f} | {v.get('cpu_ms_per_image', 0):.0f} |")
        lines.append("")
    lines += ["## Targets", ""] + targets(rows, cold) + ["", "## Runs", ""]
    lines += [f"- {name}: {st}" for name, st in status.items()]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS_DIR / ".summary.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, RESULTS_DIR / "summary.md")
    print(f"# wrote {RESULTS_DIR / 'summary.md'}")


if __name__ == "__main__":
    main()
