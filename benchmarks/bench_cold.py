"""Cold-start latency of `retrieve query "..." --index IDX` (new process: imports + model load + index load + search).

    python benchmarks/bench_cold.py [--index IDX] [--model DIR] [--runs 5] [--json]

"Cold" = a fresh Python process each run; the OS page cache is warm (one untimed run first), as for a user who
queries twice. Reported: median wall time of the real console script, the same with the transformers text backend
($RETRIEVAL_TEXT_BACKEND=transformers, the reference, same run), and a breakdown measured in separate fresh
processes: bare interpreter start, `python -X importtime` of `retrieval.cli` and of a whole query, and the
in-process stages (imports, heads model, index, text encoder, first search). Target: <= 2 s (rclip: 3.7 s).
Without --index, the 10k-image bench index of bench_query.py is used (built first if missing).
Writes benchmarks/results/bench_cold.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import REPO_ROOT, RESULTS_DIR, banner, ensure_repo_on_path, write_json

ensure_repo_on_path()

QUERY = "a dog running on the beach"
TARGET_S = 2.0
RCLIP_S = 3.7

#: Runs in a fresh interpreter; prints one JSON line of stage times (s).
STAGES_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import retrieval.cli  # noqa: F401  (what the console script imports first)
from retrieval.search import Retriever
t1 = time.perf_counter()
from retrieval.learn.model import index_identity, load_model
model = load_model(sys.argv[2] or None)
t2 = time.perf_counter()
from index_store import IndexStore
store = IndexStore.load(sys.argv[1], expect=index_identity(model))
t3 = time.perf_counter()
from retrieval.encoders import build_text_encoder
enc = build_text_encoder(model.config.text_encoder)
t4 = time.perf_counter()
r = Retriever(enc, model, store)
r.search(sys.argv[3], k=10)
t5 = time.perf_counter()
r.search(sys.argv[3] + " again", k=10)
t6 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "model_load": t2 - t1, "index_load": t3 - t2, "text_encoder_load": t4 - t3,
                  "first_search": t5 - t4, "second_search": t6 - t5, "text_encoder": type(enc).__name__,
                  "first_search_stages_ms": r.stats.stages}))
"""


def _env(backend: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if backend:
        env["RETRIEVAL_TEXT_BACKEND"] = backend
    return env


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s = user + sys of the child). On a shared machine CPU time is the load-robust number: for a
    single-threaded start-up it is what the wall time would be on an idle machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    return _run(cmd, env)[0]


def query_cmd(index: Path, model: Path | None) -> list[str]:
    script = Path(sys.executable).with_name("retrieve")
    head = [str(script)] if script.is_file() else [sys.executable, "-m", "retrieval.cli"]
    return head + ["query", QUERY, "--index", str(index)] + (["--model", str(model)] if model else [])


def cold_runs(index: Path, model: Path | None, runs: int, backend: str | None = None) -> list[tuple[float, float]]:
    """[(wall s, CPU s)] of `runs` cold queries after one untimed run (warms the page cache)."""
    cmd, env = query_cmd(index, model), _env(backend)
    _run(cmd, env)
    return [_run(cmd, env) for _ in range(runs)]


def parse_importtime(stderr: str, top: int = 10) -> dict[str, Any]:
    """Total import time (sum of top-level cumulative times) and the heaviest top-level imports, in ms."""
    rows = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(3)) == 1:  # top level: one space after the bar
            rows.append((m.group(4), int(m.group(2)) / 1e3))
    rows.sort(key=lambda r: -r[1])
    return {"total_ms": round(sum(ms for _, ms in rows), 1), "top_ms": {name: round(ms, 1) for name, ms in rows[:top]}}


def importtime(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT)
    return parse_importtime(proc.stderr)


def stages(index: Path, model: Path | None, runs: int, backend: str | None = None) -> dict[str, Any]:
    env = _env(backend)
    results = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-c", STAGES_SCRIPT, str(index), str(model or ""), QUERY],
                              capture_output=True, text=True, env=env, cwd=REPO_ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"stage script failed: {proc.stderr.strip()[-500:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    keys = [k for k, v in results[0].items() if isinstance(v, float)]
    out: dict[str, Any] = {f"{k}_s": float(np.median([r[k] for r in results])) for k in keys}
    out["text_encoder"] = results[0]["text_encoder"]
    out["first_search_stages_ms"] = results[-1]["first_search_stages_ms"]
    return out


def _matches_model(index: Path, model: Path | None) -> bool:
    """The bench index exists and was built with the current model (the shipped model may be retrained)."""
    from index_store import IndexStore
    from retrieval.learn.model import index_identity, load_model
    from retrieval.errors import USER_ERRORS

    try:
        IndexStore.load(index, expect=index_identity(load_model(model)))
    except USER_ERRORS:
        return False
    return True


def ensure_index(index: Path | None, model: Path | None) -> Path:
    if index is not None:
        return index
    from retrieval.config import cache_dir

    default = cache_dir() / "bench" / "query_10000"
    if not _matches_model(default, model):
        cmd = [sys.executable, str(Path(__file__).with_name("bench_query.py")), "--n", "10000", "--queries", "20",
               "--out", str(cache_dir() / "bench" / "bench_query_for_cold.json")]
        subprocess.run(cmd + (["--model", str(model)] if model else []), check=True, env=_env(), cwd=REPO_ROOT)
    return default


def run(index: Path | None, model: Path | None, runs: int, reference: bool) -> dict[str, Any]:
    out: dict[str, Any] = banner({"query": QUERY, "runs": runs, "target_s": TARGET_S, "rclip_s": RCLIP_S})
    index = ensure_index(index, model)
    out["index"] = str(index)
    out["command"] = " ".join(query_cmd(index, model))
    env = _env()
    out["python_startup_s"] = float(np.median([_wall([sys.executable, "-c", "pass"], env) for _ in range(runs)]))
    out["loadavg_1min_before_cold_runs"] = os.getloadavg()[0]
    pairs = cold_runs(index, model, runs)
    out["cold_query_s"] = float(np.median([w for w, _ in pairs]))
    out["cold_query_cpu_s"] = float(np.median([c for _, c in pairs]))
    out["cold_query_runs_s"] = [w for w, _ in pairs]
    out["meets_target_wall"] = out["cold_query_s"] <= TARGET_S
    out["meets_target_cpu"] = out["cold_query_cpu_s"] <= TARGET_S
    out["importtime_cli"] = importtime(["-c", "import retrieval.cli"], env)
    out["importtime_query"] = importtime(["-m", "retrieval.cli", *query_cmd(index, model)[-4 - (2 if model else 0):]],
                                         env)
    out["stages"] = stages(index, model, max(3, runs // 2))
    if reference:
        ref = cold_runs(index, model, max(3, runs // 2), backend="transformers")
        out["cold_query_transformers_backend_s"] = float(np.median([w for w, _ in ref]))
        out["cold_query_transformers_backend_cpu_s"] = float(np.median([c for _, c in ref]))
        out["stages_transformers_backend"] = stages(index, model, 1, backend="transformers")
        out["speedup_vs_transformers_backend"] = out["cold_query_transformers_backend_s"] / out["cold_query_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=None, help="Index folder (default: the 10k bench index).")
    ap.add_argument("--model", type=Path, default=None, help="Model folder (default: the shipped model).")
    ap.add_argument("--runs", type=int, default=5, help="Timed cold runs (after one untimed).")
    ap.add_argument("--no-reference", action="store_true", help="Skip the transformers-backend reference runs.")
    ap.add_argument("--json", action="store_true", help="Print the result JSON as the last stdout line.")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "bench_cold.json")
    args = ap.parse_args()
    result = run(args.index, args.model, args.runs, not args.no_reference)
    write_json(args.out, result)
    s = result["stages"]
    print(f"cold `retrieve query`: {result['cold_query_s']:.2f} s wall, {result['cold_query_cpu_s']:.2f} s CPU, "
          f"median of {args.runs} (target {TARGET_S} s, rclip "
          f"{RCLIP_S} s) | python start {result['python_startup_s']:.2f} s, imports {s['imports_s']:.2f} s, model "
          f"{s['model_load_s']:.2f} s, index {s['index_load_s']:.2f} s, text encoder {s['text_encoder_load_s']:.2f} s, "
          f"first search {s['first_search_s']:.2f} s")
    if "cold_query_transformers_backend_s" in result:
        print(f"transformers text backend: {result['cold_query_transformers_backend_s']:.2f} s wall, "
              f"{result['cold_query_transformers_backend_cpu_s']:.2f} s CPU "
              f"({result['speedup_vs_transformers_backend']:.1f}x slower)")
    print(f"# wrote {args.out}")
    if args.json:
        print(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
