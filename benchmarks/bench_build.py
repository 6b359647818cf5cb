"""Images/s of the real index build vs the naive one-image-at-a-time loop, in the same run.

Usage: PYTHONPATH=. python benchmarks/bench_build.py [--n 128] [--naive-n 32] [--reps 3] [--views 1,2,4]
       [--encoder efficientnet-lite0] [--skip-forward] [--out benchmarks/results/bench_build.json]

- naive: for each file, PIL open -> preprocess -> embed a batch of one with the *reference* forward (the seed
  notebook's way), with torch's default threads and with 1 thread (ratios use the faster of the two); plus the
  same loop with the default (fast) backend.
- build: `retrieval.index.indexer.build_index` (parallel decode threads, batches of 32, default backend, no embedding
  cache, a fresh index folder each run) for 1, 2 and 4 views per image.
- forward: `embed_batch` alone on already-decoded items, batch 32 and 1, for each backend.
- child detector (--detector-model, default the shipped light model, whose image head reads Lite0 features): the
  detector alone on decoded images (MTCNN faces + Lite0 crops + heads), and build_index views=1 with it, i.e. what
  `retrieve build-index` really pays per image.

Input: the first --n course train images (500x375 JPEGs) copied into a temp folder. Rounds are interleaved (the
2 cores are shared with other jobs), the first round is a warm-up and dropped, medians are reported; wall time
gives images/s, process CPU time per image shows what an idle machine could reach. Writes a JSON file.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from retrieval.config import course_data_dir
from retrieval.encoders import image as image_mod

ALL_VIEWS = ("center", "full", "center-flip", "full-flip")
NAIVE = "naive (reference fwd, batch 1)"
NAIVE_1T = "naive (reference fwd, batch 1, 1 thread)"


def hardware() -> dict[str, object]:
    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        flags = ""
        for line in out.splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "Model name":
                model = val.strip()
            if key.strip() == "Flags":
                flags = val
        isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f" {f} " in f"{flags} "]
    except (OSError, subprocess.CalledProcessError):
        isa = []
    return {"cpu": model, "cores": os.cpu_count(), "isa": isa, "load_avg_1m": round(os.getloadavg()[0], 2)}


def versions() -> dict[str, str]:
    import PIL
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "pillow": PIL.__version__, "torch_threads": str(torch.get_num_threads())}
    try:
        import openvino

        out["openvino"] = openvino.get_version()
    except ImportError:
        out["openvino"] = "not installed"
    return out


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default=str(course_data_dir() / "train_images"))
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--naive-n", type=int, default=32, help="images timed in the (slow) naive loops")
    ap.add_argument("--reps", type=int, default=3, help="measured rounds after one warm-up round")
    ap.add_argument("--encoder", default="efficientnet-lite0", choices=("efficientnet-lite0", "efficientnet-lite2"))
    ap.add_argument("--views", default="1,2,4", help="view counts to build with (1=center, 2=+full, 4=+flips)")
    ap.add_argument("--skip-forward", action="store_true", help="skip the forward-only backend table")
    ap.add_argument("--detector-model", default="light",
                    help="model folder whose child detector is timed ('none' to skip); its image head must read "
                         "--encoder features")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_build.json"))
    args = ap.parse_args()

    import torch
    from PIL import Image

    from retrieval.index.indexer import build_index

    src = sorted(Path(args.images).glob("*.jpg"))[: args.n]
    if not src:
        sys.exit(f"no .jpg images in {args.images}; pass --images DIR")
    tmp = Path(tempfile.mkdtemp(prefix="bench_build_"))
    img_dir = tmp / "images"
    img_dir.mkdir()
    for p in src:
        shutil.copy(p, img_dir / p.name)
    files = sorted(img_dir.glob("*.jpg"))
    n = len(files)
    hw, ver = hardware(), versions()
    print(f"cpu: {hw['cpu']} | cores {hw['cores']} | isa {','.join(hw['isa'])} | load {hw['load_avg_1m']}")
    print("versions: " + " ".join(f"{k}={v}" for k, v in ver.items()))
    print(f"images: {n} x {Image.open(files[0]).size} JPEG from {args.images}; encoder {args.encoder}")

    def encoder(views: int, backend: str | None = None) -> image_mod.TorchImageEncoder:
        return image_mod.efficientnet_lite(args.encoder, views=ALL_VIEWS[:views], backend=backend)

    def naive(enc: image_mod.TorchImageEncoder, threads: int | None = None) -> Callable[[], object]:
        def go() -> object:
            before = torch.get_num_threads()
            torch.set_num_threads(threads or before)
            try:
                return [enc.embed_batch([enc.preprocess(Image.open(f).convert("RGB"))]) for f in naive_files]
            finally:
                torch.set_num_threads(before)

        return go

    run_id = iter(range(10**6))

    def build(enc: image_mod.TorchImageEncoder, detect: Callable | None = None) -> Callable[[], object]:
        def go() -> object:
            out = tmp / f"index-{next(run_id)}"
            report = build_index(img_dir, out, enc, project=lambda f: f, cache=False, workers=2, batch_size=32,
                                 detect=detect)
            assert report.count == n, report
            shutil.rmtree(out, ignore_errors=True)
            return report

        return go

    default = encoder(1)
    reference = encoder(1, "reference")
    naive_files = files[: args.naive_n]
    nn = len(naive_files)
    variants: dict[str, tuple[Callable[[], object], int]] = {
        NAIVE: (naive(reference), nn),
        # Same loop with 1 torch thread: on a loaded box 2 OpenMP threads at batch 1 stall at every barrier
        # (measured 16x slower), so this is the fairer reference for the ratio.
        NAIVE_1T: (naive(reference, threads=1), nn),
        f"naive ({default.backend} fwd, batch 1)": (naive(default), nn),
    }
    for v in (int(x) for x in args.views.split(",")):
        variants[f"build_index {default.backend} views={v}"] = (build(encoder(v)), n)
    if args.detector_model != "none":
        from retrieval.index.build import child_detector
        from retrieval.learn.model import load_model
        from retrieval.index.imageio import load_image
        from retrieval.policy.detector import DetectorRuntime

        model = load_model(args.detector_model)
        if model.detector.image_head.dim != default.dim:
            sys.exit(f"--detector-model {args.detector_model} reads {model.detector.image_head.dim}-d image features, "
                     f"--encoder {args.encoder} gives {default.dim}; pass matching ones")
        runtime = DetectorRuntime(model.detector)
        decoded = [load_image(f, target_size=None) for f in files[:32]]
        zeros = np.zeros((len(decoded), default.dim), np.float32)
        variants["child detector alone (batch 32)"] = ((lambda: runtime.detect(decoded, zeros)), len(decoded))
        variants[f"build_index {default.backend} views=1 + child detector"] = (
            build(encoder(1), child_detector(model)), n)
    if not args.skip_forward:
        items = [default.preprocess(Image.open(f).convert("RGB")) for f in files[:32]]
        for backend in ("reference", "torch", "openvino"):
            try:
                enc = encoder(1, backend)
            except Exception as exc:  # noqa: BLE001 - e.g. openvino not installed: report and go on
                print(f"forward {backend}: unavailable ({exc})")
                continue
            variants[f"forward {backend} batch 32"] = ((lambda e=enc: e.embed_batch(items)), len(items))
            variants[f"forward {backend} batch 1"] = ((lambda e=enc: [e.embed_batch([it]) for it in items[:8]]), 8)

    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for rnd in range(args.reps + 1):
        for name, (fn, _) in variants.items():
            res = timed(fn)
            if rnd:  # round 0 = warm-up (OpenVINO compile, page cache, allocator)
                samples[name].append(res)
        print(f"round {rnd}/{args.reps} done (load {os.getloadavg()[0]:.1f})", file=sys.stderr)

    rows = {}
    for name, (_, count) in variants.items():
        wall = statistics.median(s[0] for s in samples[name])
        cpu = statistics.median(s[1] for s in samples[name])
        rows[name] = {"images_per_s": count / wall, "wall_ms_per_image": 1000 * wall / count,
                      "cpu_ms_per_image": 1000 * cpu / count, "runs_s": [round(s[0], 3) for s in samples[name]]}
    naive_best = max(rows[NAIVE]["images_per_s"], rows[NAIVE_1T]["images_per_s"])
    print(f"\n{'variant':44s} {'img/s':>8s} {'wall ms/img':>12s} {'cpu ms/img':>11s} {'x naive':>8s}")
    for name, r in rows.items():
        r["ratio_vs_best_naive"] = r["images_per_s"] / naive_best
        print(f"{name:44s} {r['images_per_s']:8.1f} {r['wall_ms_per_image']:12.1f} {r['cpu_ms_per_image']:11.1f}"
              f" {r['ratio_vs_best_naive']:8.2f}")
    key = f"build_index {default.backend} views=1"
    if key in rows:
        print(f"\nbuild_index (views=1) vs the faster naive loop: {rows[key]['ratio_vs_best_naive']:.2f}x "
              f"({rows[key]['images_per_s']:.1f} vs {naive_best:.1f} images/s, load {os.getloadavg()[0]:.1f})")
    result = {"hardware": hw, "versions": ver, "encoder": args.encoder, "n_images": n, "reps": args.reps,
              "default_backend": default.backend, "load_avg_1m_end": round(os.getloadavg()[0], 2), "variants": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp_out = Path(args.out).with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2))
    os.replace(tmp_out, args.out)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
