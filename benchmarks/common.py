"""Shared benchmark helpers: hardware/version banner, medians/percentiles, memory, atomic JSON results.

Benchmarks share a 2-core machine with other work, so every number is a median over repeated runs after
warm-up, and comparisons are ratios measured within one run (never against numbers from another run).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("numpy", "faiss-cpu", "tokenizers", "torch", "transformers", "pandas", "safetensors", "threadpoolctl")


def ensure_repo_on_path() -> None:
    """Benchmarks run as scripts (`python benchmarks/x.py`); make `retrieval`/`index_store` importable."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)


def hardware() -> dict[str, Any]:
    """CPU model (lscpu), logical cores, RAM, and the load average when the benchmark started (noise indicator)."""
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    mem_gb = None
    try:
        with open("/proc/meminfo") as fh:
            mem_gb = round(int(fh.readline().split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": model, "cores": os.cpu_count(), "ram_gb": mem_gb, "loadavg_1min_at_start": load,
            "python": platform.python_version(), "platform": platform.platform()}


def versions(names: Iterable[str] = LIBRARIES) -> dict[str, str]:
    """Installed versions read from package metadata (no imports, so no import cost is added)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def banner(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    info = {"hardware": hardware(), "versions": versions(), **(extra or {})}
    hw = info["hardware"]
    print(f"# {hw['cpu']} | {hw['cores']} cores | {hw['ram_gb']} GB | load {hw['loadavg_1min_at_start']:.1f} | "
          f"python {hw['python']}")
    print("# " + " ".join(f"{k}={v}" for k, v in info["versions"].items()))
    return info


def median_ms(seconds: Sequence[float]) -> float:
    return float(np.median(seconds) * 1e3) if len(seconds) else float("nan")


def pct_ms(seconds: Sequence[float], q: float) -> float:
    return float(np.percentile(seconds, q) * 1e3) if len(seconds) else float("nan")


def time_calls(fn: Callable[[Any], Any], items: Sequence[Any], warmup: int) -> list[float]:
    """Wall time (s) of fn(item) for each item, the first `warmup` calls dropped."""
    times = []
    for i, item in enumerate(items):
        t = time.perf_counter()
        fn(item)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def rss_bytes() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process from /proc (0, 0 where unavailable)."""
    cur = peak = 0
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except OSError:
        pass
    return cur, peak


def folder_bytes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(Path(folder).iterdir()) if p.is_file()}


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Atomic: temp file in the same folder, then os.replace."""
    ensure_repo_on_path()
    from retrieval.atomic import write_text

    return write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def last_json_line(stdout: str) -> dict[str, Any]:
    """The JSON object on the last non-empty stdout line of a `--json` benchmark run."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ValueError("benchmark printed nothing")
    return json.loads(lines[-1])
