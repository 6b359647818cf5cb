"""Wall time of `retrieve evaluate` on a course-layout folder, default text backend vs the numpy one, same run.

    python benchmarks/bench_evaluate.py [--images 300] [--grades] [--json]

The folder is built from the course training data (found as in the tests: $RETRIEVAL_COURSE_DATA, else
../shared/data/course-train): the first --images train images (sorted names) as test_images/ (symlinks) and their
5 Flickr8k captions (extra_captions.tsv) as test_queries.csv, in the user's test format (`|`-separated, header
`|query_id|query_text|image`). With --grades the course annotation files and train_images/ are linked in too, so
evaluate also computes Kendall tau on the graded pairs of those images. Each evaluate runs as a fresh `retrieve`
process (the index build's embedding cache is warm after the first, untimed, run). The shipped default model is
the same in both runs, so metrics.json must agree; the result JSON records both times and their ratio.
Writes benchmarks/results/bench_evaluate[_grades].json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO_ROOT, RESULTS_DIR, banner, ensure_repo_on_path, write_json

ensure_repo_on_path()

GRADE_FILES = ("train_dataset.csv", "ExpertAnnotations.tsv", "CrowdAnnotations.tsv", "train_images")


def make_folder(data: Path, out: Path, n_images: int, grades: bool) -> int:
    """Course-layout test folder in `out` from the first `n_images` train images; returns the number of queries."""
    rows = [line.rstrip("\n").split("\t", 1) for line in open(data / "extra_captions.tsv", encoding="utf-8")]
    images = sorted({qid.split("#")[0] for qid, _ in rows})[:n_images]
    keep = set(images)
    (out / "test_images").mkdir(parents=True)
    for name in images:
        (out / "test_images" / name).symlink_to(data / "train_images" / name)
    queries = [(qid, text.replace("|", " ")) for qid, text in rows if qid.split("#")[0] in keep]
    with open(out / "test_queries.csv", "w", encoding="utf-8") as fh:
        fh.write("|query_id|query_text|image\n")
        for i, (qid, text) in enumerate(queries):
            fh.write(f"{i}|{qid}|{text}|{qid.split('#')[0]}\n")
    if grades:
        for name in GRADE_FILES:
            (out / name).symlink_to(data / name)
    return len(queries)


def timed_evaluate(folder: Path, out: Path, backend: str | None) -> tuple[float, dict[str, Any]]:
    env = dict(os.environ)
    if backend:
        env["RETRIEVAL_TEXT_BACKEND"] = backend
    cmd = [sys.executable, "-m", "retrieval.cli", "evaluate", "--data", str(folder), "--out", str(out)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    metrics.pop("sheet", None)
    return wall, metrics


def main() -> None:
    from retrieval.config import course_data_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--grades", action="store_true", help="Link the course grades in (Kendall tau is computed).")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data = course_data_dir()
    if not (data / "extra_captions.tsv").is_file():
        sys.exit(f"course data not found at {data}; set RETRIEVAL_COURSE_DATA to the course-train folder")
    result: dict[str, Any] = {**banner(), "images": args.images, "grades": args.grades}
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        folder = Path(tmp) / "course"
        result["queries"] = make_folder(data, folder, args.images, args.grades)
        timed_evaluate(folder, Path(tmp) / "warm", None)  # untimed: fills the embedding cache for the index build
        default_s, default_m = timed_evaluate(folder, Path(tmp) / "default", None)
        numpy_s, numpy_m = timed_evaluate(folder, Path(tmp) / "numpy", "numpy")
    result.update(default_backend_s=default_s, numpy_backend_s=numpy_s, speedup=numpy_s / default_s,
                  max_metric_difference=max_difference(default_m, numpy_m), metrics=default_m,
                  command="python benchmarks/bench_evaluate.py --images %d%s" % (args.images, " --grades" * args.grades))
    path = RESULTS_DIR / f"bench_evaluate{'_grades' if args.grades else ''}.json"
    write_json(path, result)
    print(f"evaluate on {args.images} images / {result['queries']} queries{' + grades' if args.grades else ''}: "
          f"{default_s:.1f} s (default text backend) vs {numpy_s:.1f} s (numpy backend), {numpy_s / default_s:.1f}x; "
          f"largest metric difference {result['max_metric_difference']:.2g}")
    if args.json:
        print(json.dumps(result))


def max_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Largest absolute difference between the numbers of two metrics.json dicts (nested one level)."""
    diffs = [0.0]
    for key, value in a.items():
        other = b.get(key)
        if isinstance(value, dict) and isinstance(other, dict):
            diffs += [abs(float(v) - float(other[k])) for k, v in value.items() if k in other]
        elif isinstance(value, (int, float)) and isinstance(other, (int, float)):
            diffs.append(abs(float(value) - float(other)))
    return max(diffs)


if __name__ == "__main__":
    main()
