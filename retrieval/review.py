"""Operator review of an index: record decisions, list them, ask for the most useful next images, refit the image
policy on them. The CLI (`retrieve review`, `retrieve policy-refit`) and the server's review routes call these.

Storage and precedence live in `policy.review` / `policy.apply`; the refit itself in `policy.refit`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index_store import backend_for
from retrieval.errors import InvalidQueryError, RetrievalError
from retrieval.hashing import sha256_file
from retrieval.policy.operator import IndexPolicy
from retrieval.policy.queue import calibration, expected_gain, review_queue
from retrieval.policy.refit import Refit, RefitRefusedError, fit_refit
from retrieval.policy.review import Decision, ReviewStore, check_decision, default_operator, now_iso, review_root


@dataclass
class OpenedIndex:
    """An index with the model it was built with and its image policy (no text encoder: review needs none)."""

    folder: Path
    store: Any
    model: Any
    policy: IndexPolicy

    @classmethod
    def open(cls, index_dir: str | Path, model_dir: str | Path | None = None) -> "OpenedIndex":
        from retrieval.search import open_index

        store, model = open_index(index_dir, model_dir)
        return cls(Path(store.folder), store, model, IndexPolicy.for_model(store.folder, store.meta, model))

    def rel_path(self, row: int) -> str:
        return str(self.store.meta["rel_path"].iloc[row])

    def abs_path(self, row: int) -> Path:
        return Path(self.store.manifest.images_root) / self.rel_path(row)


def find_row(opened: OpenedIndex, image: str | os.PathLike[str] | None = None, row: int | None = None) -> int:
    """The index row of `--id N` or `--image PATH` (a path to the file, or its path inside the indexed folder)."""
    count = opened.store.count
    if (image is None) == (row is None):
        raise InvalidQueryError("name one image: --image PATH or --id N")
    if row is not None:
        if not 0 <= int(row) < count:
            raise InvalidQueryError(f"--id {row} is not a row of this index (0..{count - 1}); see `retrieve review --next`")
        return int(row)
    path = Path(image)  # type: ignore[arg-type]
    rels = opened.store.meta["rel_path"].astype(str)
    root = Path(opened.store.manifest.images_root)
    for candidate in (str(path), _relative(path, root)):
        hit = np.flatnonzero(rels.to_numpy() == candidate) if candidate else []
        if len(hit):
            return int(hit[0])
    if path.is_file():
        rows = opened.policy.rows_of(sha256_file(path))
        if rows:
            return rows[0]
    raise InvalidQueryError(f"{str(image)!r} is not in this index; index it first with `retrieve build-index "
                            f"{root} --index {opened.folder}` or pass --id N")


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except (ValueError, OSError):
        return ""


def decide(index_dir: str | Path, decision: str, image: str | None = None, row: int | None = None,
           operator: str | None = None, model_dir: str | Path | None = None) -> tuple[str, Decision | None, int]:
    """Record (or with decision "clear", remove) an operator decision. Returns (what happened, decision, row)."""
    opened = OpenedIndex.open(index_dir, model_dir)
    r = find_row(opened, image, row)
    return decide_row(opened, r, decision, operator) + (r,)


def decide_row(opened: OpenedIndex, row: int, decision: str, operator: str | None = None
               ) -> tuple[str, Decision | None]:
    who = (operator or default_operator()).strip()[:80] or "operator"
    sha = opened.policy.sha[row]
    if not sha:
        raise RetrievalError(f"row {row} has no content hash; rebuild the index with `retrieve build-index`")
    if decision == "clear":
        return ("cleared" if opened.policy.reviews.clear(sha, who) else "no decision to clear"), None
    d = Decision(sha, check_decision(decision), who, now_iso(), opened.rel_path(row))
    changed = opened.policy.reviews.record([d])
    opened.policy.refresh()
    return ("recorded" if changed else "unchanged"), d


def list_decisions(index_dir: str | Path) -> list[dict[str, Any]]:
    """Every decision with where the image is in the index now (None when it is not in this index)."""

    store = backend_for(index_dir).load()
    where: dict[str, tuple[int, str]] = {}
    for i, (sha, rel) in enumerate(zip(store.meta["sha256"].astype(str), store.meta["rel_path"].astype(str))):
        where.setdefault(sha, (i, rel))
    out = []
    for sha, d in sorted(ReviewStore(store.folder).decisions().items(), key=lambda kv: kv[1].time):
        row, rel = where.get(sha, (None, None))
        out.append({"sha256": sha, "decision": d.decision, "operator": d.operator, "time": d.time, "id": row,
                    "rel_path": rel, "rel_path_when_decided": d.rel_path})
    return out


def next_for_review(index_dir: str | Path, n: int = 20, model_dir: str | Path | None = None,
                    opened: OpenedIndex | None = None) -> list[dict[str, Any]]:
    """The `n` unreviewed images whose answer would help most (`policy.queue`), best first."""

    if n <= 0:
        raise InvalidQueryError(f"--next needs a positive count, got {n}; pass e.g. --next 20")
    opened = opened or OpenedIndex.open(index_dir, model_dir)
    pol = opened.policy
    pol.refresh()
    det = pol.refit.apply(pol.detector) if pol.refit is not None else pol.detector
    prob = np.nan_to_num(pol.prob, nan=0.0)
    if det is not None and det.train_rows is not None:
        p_child = calibration(det.fuse(det.train_rows), det.train_labels != 0).predict(prob)
    else:
        p_child = prob
    gain = expected_gain(prob, pol.threshold, p_child)
    rows = review_queue(gain, opened.store.vectors, pol.reviewed_mask(), n)
    return [{"id": r, "rel_path": opened.rel_path(r), "path": str(opened.abs_path(r)), "child_prob": round(float(prob[r]), 4),
             "threshold": round(pol.threshold, 4), "withheld": bool(prob[r] >= pol.threshold),
             "expected_gain": round(float(gain[r]), 4)} for r in rows]


def refit(index_dir: str | Path, model_dir: str | Path | None = None, dry_run: bool = False,
          operator: str | None = None) -> dict[str, Any]:
    """Refit the image policy on the decisions (+ training rows), re-score every row, report what changed, and
    (unless `dry_run`) save it atomically. RefitRefusedError (nothing written) when recall would fall short."""

    opened = OpenedIndex.open(index_dir, model_dir)
    pol = opened.policy
    det = pol.detector
    if det is None:
        raise RefitRefusedError("this model has no child detector to refit; retrain it with `retrieve train`")
    decisions = pol.decisions()
    rows = [i for i, s in enumerate(pol.sha) if s in decisions and pol.has_features[i]]
    if not rows:
        raise RefitRefusedError("no reviewed image in this index yet; record decisions first "
                                f"(`retrieve review --index {index_dir} --next 20`, then `--decision`)")
    child = np.array([decisions[pol.sha[i]].decision == "child" for i in rows])
    params, threshold, numbers = fit_refit(det, pol.features[rows], child)
    mean, scale, weight, bias = params
    before = pol.withheld()
    reviewed = pol.reviewed_mask()
    new = Refit(pol.model_id, tuple(map(float, mean)), tuple(map(float, scale)), tuple(map(float, weight)), float(bias),
                float(threshold), now_iso(), (operator or default_operator()), {})
    after = np.where(reviewed, before, np.nan_to_num(pol.rescored(new), nan=-1.0) >= threshold)
    un = ~reviewed
    report = {**numbers, "previous_threshold": pol.threshold, "images": int(len(before)),
              "reviewed": int(reviewed.sum()),
              "unreviewed_withheld_before": int((before & un).sum()), "unreviewed_withheld_after": int((after & un).sum()),
              "newly_shown": int((before & ~after).sum()), "newly_withheld": int((~before & after).sum()),
              "dry_run": dry_run}
    if not dry_run:
        from dataclasses import replace

        with backend_for(opened.folder).lock():
            replace(new, report=report).save(opened.folder)
        pol.reviews.append_log({"event": "refit", "time": new.created, "operator": new.operator, **report})
    return report


def undo_refit(index_dir: str | Path, operator: str | None = None) -> bool:
    """Remove the refit (back to the detector's own fusion and threshold); logged. False when there was none."""

    root = review_root(index_dir)
    path = Refit.path(root)
    store = ReviewStore(root)
    with backend_for(root).lock():
        if not path.is_file():
            return False
        path.unlink()
    store.append_log({"event": "refit-undo", "time": now_iso(), "operator": operator or default_operator()})
    return True
