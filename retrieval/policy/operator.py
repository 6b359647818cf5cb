"""The image side of the policy for one opened index: the detector's stored verdicts, re-scored by the operator's
refit when there is one, plus the operator's decisions. Search, the server, `retrieve review` and
`retrieve policy-refit` all read images' restrictions from here, so they agree.

Review files change while a server runs (an operator clicks "no child here"): `refresh()` re-reads them when their
modification time changes (one stat per file per search).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from retrieval.policy.refit import Refit, detection_rows
from retrieval.policy.review import Decision, ReviewStore


class IndexPolicy:
    """Per-row probability, threshold and operator decision for one index (see module docstring)."""

    def __init__(self, index_dir: str | Path, meta: pd.DataFrame, detector: Any, model_id: str,
                 base_threshold: float) -> None:
        self.index_dir = Path(index_dir)
        self.reviews = ReviewStore(self.index_dir)
        self.detector = detector
        self.model_id = model_id
        self.base_threshold = float(base_threshold)
        self.sha = meta["sha256"].astype(str).tolist() if "sha256" in meta else [""] * len(meta)
        self.base_prob = meta["child_prob"].to_numpy(np.float64) if "child_prob" in meta else np.full(len(meta), np.nan)
        self._meta = meta
        self._features: tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]] | None = None
        self.refit: Refit | None = None
        self.refit_ignored = ""  # why a refit file on disk is not used (another model)
        self.prob = self.base_prob
        self.threshold = self.base_threshold
        self._decisions: dict[str, Decision] = {}
        self._stamp: tuple[int, int] | None = None
        self.refresh()

    def _parsed(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Every row's stored detector features, parsed from the detection JSON once, only when a refit, the queue
        or `policy-refit` needs them (opening an index for search does not pay for it)."""
        if self._features is None:
            meta = self._meta
            self._features = detection_rows(meta["detection"].fillna("")) if "detection" in meta \
                else (np.zeros((len(meta), 0)), np.zeros(len(meta), bool))
        return self._features

    @property
    def features(self) -> npt.NDArray[np.float64]:
        return self._parsed()[0]

    @property
    def has_features(self) -> npt.NDArray[np.bool_]:
        return self._parsed()[1]

    @classmethod
    def for_model(cls, index_dir: str | Path, meta: pd.DataFrame, model: Any) -> "IndexPolicy":
        """The policy of an index served by `model` (its detector, model id and threshold)."""
        return cls(index_dir, meta, getattr(model, "detector", None), model.config.model_id,
                   model.config.child_image_threshold)

    def rescored(self, refit: Refit) -> npt.NDArray[np.float64]:
        """Every row's P(child) under `refit` (rows without stored detector features keep their stored value)."""
        if not self.has_features.any():
            return self.base_prob
        return np.where(self.has_features, refit.apply(self.detector).fuse(self.features), self.base_prob)

    def _stamps(self) -> tuple[int, int]:
        out = []
        for path in (self.reviews.path, Refit.path(self.index_dir)):
            try:
                out.append(path.stat().st_mtime_ns)
            except FileNotFoundError:
                out.append(0)
        return out[0], out[1]

    def refresh(self) -> None:
        stamp = self._stamps()
        if stamp == self._stamp:
            return
        self._decisions = self.reviews.decisions()
        if self._stamp is None or stamp[1] != self._stamp[1]:
            self._load_refit()
        self._stamp = stamp

    def _load_refit(self) -> None:
        refit = Refit.load(self.index_dir)
        self.refit, self.refit_ignored = None, ""
        self.prob, self.threshold = self.base_prob, self.base_threshold
        if refit is None or self.detector is None:
            return
        if refit.model_id != self.model_id:
            self.refit_ignored = (f"refit.json was made for model {refit.model_id[:12]}, this index is served by "
                                  f"{self.model_id[:12]}; run `retrieve policy-refit --index {self.index_dir}` again")
            return
        self.refit = refit
        self.prob = self.rescored(refit)
        self.threshold = float(refit.threshold)

    # ------------------------------------------------------------------ per row
    def child_prob(self, row: int) -> float | None:
        p = self.prob[row]
        return None if np.isnan(p) else float(p)

    def review(self, row: int) -> Decision | None:
        return self._decisions.get(self.sha[row])

    def decisions(self) -> dict[str, Decision]:
        return dict(self._decisions)

    def reviewed_mask(self) -> npt.NDArray[np.bool_]:
        return np.fromiter((s in self._decisions for s in self.sha), bool, len(self.sha))

    def rows_of(self, sha256: str) -> list[int]:
        return [i for i, s in enumerate(self.sha) if s == sha256]

    def withheld(self) -> npt.NDArray[np.bool_]:
        """Rows strict withholds now: operator's word first, then probability >= threshold."""
        out = np.nan_to_num(self.prob, nan=-1.0) >= self.threshold
        for i, s in enumerate(self.sha):
            d = self._decisions.get(s)
            if d is not None:
                out[i] = d.decision == "child"
        return out
