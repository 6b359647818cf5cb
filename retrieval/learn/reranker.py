"""Relevance head: (projected image, projected text) -> calibrated score in [0, 1] ("how well the text fits").

Features of a pair in the shared space: [cosine, z_img * z_txt, optional caption-memory kNN feature and its
per-dimension products z_txt * pseudo_caption]. A linear logit is fitted on soft targets (expert mean grade;
optionally crowd share, own caption = 1, sampled mismatches = 0) with either a logistic regression (`fit_logistic`)
or, by default, the same soft-target loss plus a listwise term that ranks each validation caption's own image first
among its nearest candidates (`fit_listwise`, torch at training time only); isotonic regression fitted on out-of-fold
logits maps it to a calibrated probability. The product ranks AND scores by one key, a validated blend a*logit + b*cosine
(RetrievalModel.rank_key), calibrated isotonically (RetrievalModel.score), so listed scores decrease with rank.
Applying the head is numpy only (dot products and a table lookup).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from retrieval.vectors import l2n

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class CaptionMemory:
    """Visual neighbours' captions: allowed training images (shared space) and the mean of their captions.

    `pseudo_caption(img_z)` = softmax(top-k image similarities / temperature)-weighted mean caption vector of
    the k nearest training images; the feature text . pseudo_caption ("does the query read like what people
    wrote about similar pictures") adds graded-relevance signal the plain cosine misses. With `raw_caption` (the
    same captions in the text encoder's own space, before the projection) the memory also gives `pseudo_raw`: the
    query is compared with the neighbours' captions with all of the text encoder's dimensions, not only the 256
    the projection keeps.
    """

    img_z: FloatArray
    caption_mean: FloatArray
    k: int = 10
    temperature: float = 0.05
    raw_caption: FloatArray | None = None

    def _neighbours(self, img_z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(top-k memory rows, their softmax weights) per image."""
        sim = np.asarray(img_z, np.float32) @ self.img_z.T
        k = min(self.k, sim.shape[1])
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        w = np.take_along_axis(sim, top, 1) / self.temperature
        w = np.exp(w - w.max(axis=1, keepdims=True))
        return top, w / w.sum(axis=1, keepdims=True)

    def check_raw(self, txt_raw: np.ndarray | None) -> None:
        """A memory with raw captions compares them with the query's raw text feature: refuse to go without it."""
        if self.raw_caption is not None and txt_raw is None:
            raise ValueError("this reranker compares the raw text feature with its caption memory: pass txt_raw")

    def pseudo(self, img_z: np.ndarray) -> tuple[FloatArray, FloatArray | None]:
        """(pseudo caption, L2-normalised pseudo raw caption or None without raw captions), one neighbour search."""
        top, w = self._neighbours(img_z)
        caption = np.einsum("nk,nkd->nd", w, self.caption_mean[top]).astype(np.float32)
        raw = None if self.raw_caption is None else l2n(np.einsum("nk,nkd->nd", w, self.raw_caption[top]).astype(np.float32))
        return caption, raw


def pair_features(img_z: np.ndarray, txt_z: np.ndarray, memory: CaptionMemory | None = None,
                  knn_products: bool = False, txt_raw: np.ndarray | None = None) -> np.ndarray:
    """(n, d) x (n, d) L2-normalised (either may be a single broadcast row) -> features of each pair.

    Layout: [cosine, z_img * z_txt (d), knn] with a memory, then z_txt * pseudo_caption (d) when `knn_products`
    (per-dimension weights on the caption-memory match, as z_img * z_txt does for the cosine: +.004 expert tau-c),
    then, for a memory with raw captions, the cosine of the raw text feature `txt_raw` with `pseudo_raw`.
    """
    img_z, txt_z = np.atleast_2d(np.asarray(img_z, np.float32)), np.atleast_2d(np.asarray(txt_z, np.float32))
    prod = img_z * txt_z
    parts = [prod.sum(axis=1, keepdims=True), prod]
    if memory is not None:
        memory.check_raw(txt_raw)
        pseudo, pseudo_raw = memory.pseudo(img_z)
        kp = pseudo * txt_z
        parts.append(kp.sum(axis=1, keepdims=True))
        if knn_products:
            parts.append(kp)
        if pseudo_raw is not None:
            parts.append(np.sum(l2n(np.asarray(txt_raw, np.float32)) * pseudo_raw, axis=1, keepdims=True))
    return np.concatenate(parts, axis=1)


def logit_grid(coef: np.ndarray, intercept: float, txt_z: np.ndarray, img_z: np.ndarray,
               pseudo: np.ndarray | None = None, raw: tuple[np.ndarray, np.ndarray] | None = None) -> FloatArray:
    """Logits of every (text, image) pair, (n_txt, n_img), without building the per-pair feature rows.

    Same coefficients and layout as `pair_features` (pseudo, pseudo_raw = memory.pseudo(img_z); pseudo None without
    memory; raw = (txt_raw, pseudo_raw) for a memory with raw captions); validation ranks whole galleries with it.
    """
    txt_z, img_z = np.asarray(txt_z, np.float32), np.asarray(img_z, np.float32)
    d = img_z.shape[1]
    out = (txt_z * coef[1 : 1 + d]) @ img_z.T + coef[0] * (txt_z @ img_z.T) + intercept
    if pseudo is not None:
        out += coef[1 + d] * (txt_z @ pseudo.T)
        if len(coef) - (raw is not None) == 2 + 2 * d:
            out += (txt_z * coef[2 + d : 2 + 2 * d]) @ pseudo.T
    if raw is not None:
        out += coef[-1] * (l2n(np.asarray(raw[0], np.float32)) @ np.asarray(raw[1], np.float32).T)
    return out.astype(np.float32)


@dataclass(frozen=True)
class Calibration:
    """Monotone piecewise-linear map from logit to probability (isotonic knots), clipped to [0, 1]."""

    x: FloatArray
    y: FloatArray

    def __call__(self, logit: np.ndarray) -> FloatArray:
        return np.clip(np.interp(np.asarray(logit, np.float64), self.x, self.y), 0.0, 1.0).astype(np.float32)


def fit_calibration(logit: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None, max_knots: int = 64,
                    tie_break: float = 0.02) -> Calibration:
    """Isotonic regression of soft targets on logits, thinned to at most `max_knots` knots.

    Isotonic fits have flat steps, which would turn distinct scores into ties (bad for ranking and Kendall tau);
    mixing in a `tie_break` share of a linear ramp over the knots makes the map strictly increasing.
    """
    from sklearn.isotonic import IsotonicRegression

    logit = np.asarray(logit, np.float64)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(logit, np.asarray(target, np.float64), sample_weight=weight)
    xs = np.asarray(iso.X_thresholds_, np.float64)
    ys = np.asarray(iso.y_thresholds_, np.float64)
    if len(xs) > max_knots:
        keep = np.unique(np.linspace(0, len(xs) - 1, max_knots).round().astype(int))
        xs, ys = xs[keep], ys[keep]
    if len(xs) == 1:
        xs, ys = np.array([xs[0] - 1.0, xs[0] + 1.0]), np.array([ys[0], ys[0]])
    ys = (1.0 - tie_break) * ys + tie_break * np.linspace(0.0, 1.0, len(ys))
    return Calibration(xs.astype(np.float32), ys.astype(np.float32))


@dataclass(frozen=True)
class Reranker:
    """Logistic head on `pair_features` + calibration. `blend` weights its logit in the ranking score."""

    coef: FloatArray
    intercept: float
    calibration: Calibration
    memory: CaptionMemory | None = None

    def uses_knn_products(self) -> bool:
        """True when coef covers [cos, d products, knn, d knn products] (older models stop after knn)."""
        if self.memory is None:
            return False
        return len(self.coef) - (self.memory.raw_caption is not None) == 2 + 2 * self.memory.img_z.shape[1]

    def needs_raw_text(self) -> bool:
        """True when `logit` needs the raw text feature (the memory compares it with the neighbours' raw captions)."""
        return self.memory is not None and self.memory.raw_caption is not None

    def logit(self, img_z: np.ndarray, txt_z: np.ndarray, txt_raw: np.ndarray | None = None) -> FloatArray:
        if self.memory is not None and not self.uses_knn_products() and not self.needs_raw_text() and self.coef[-1] == 0.0:
            return (pair_features(img_z, txt_z) @ self.coef[:-1] + self.intercept).astype(np.float32)  # kNN term off
        feats = pair_features(img_z, txt_z, self.memory, self.uses_knn_products(), txt_raw)
        return (feats @ self.coef + self.intercept).astype(np.float32)

    def logit_grid(self, img_z: np.ndarray, txt_z: np.ndarray, txt_raw: np.ndarray | None = None) -> FloatArray:
        """Logits of every (text, image) pair, (n_txt, n_img): the memory's neighbour search runs once per image,
        not once per pair as stacking `logit` rows would."""
        pseudo = pseudo_raw = None
        if self.memory is not None:
            self.memory.check_raw(txt_raw)
            pseudo, pseudo_raw = self.memory.pseudo(np.atleast_2d(img_z))
        raw = (np.atleast_2d(txt_raw), pseudo_raw) if pseudo_raw is not None else None
        return logit_grid(self.coef, self.intercept, np.atleast_2d(txt_z), np.atleast_2d(img_z), pseudo, raw)

    def to_tensors(self, prefix: str = "rerank.") -> dict[str, np.ndarray]:
        out = {
            f"{prefix}coef": np.asarray(self.coef, np.float32),
            f"{prefix}intercept": np.asarray([self.intercept], np.float32),
            f"{prefix}calib_x": np.asarray(self.calibration.x, np.float32),
            f"{prefix}calib_y": np.asarray(self.calibration.y, np.float32),
        }
        if self.memory is not None:
            m = self.memory
            out[f"{prefix}mem_img"] = np.ascontiguousarray(m.img_z, np.float32)
            out[f"{prefix}mem_caption"] = np.ascontiguousarray(m.caption_mean, np.float32)
            out[f"{prefix}mem_params"] = np.asarray([m.k, m.temperature], np.float32)
            if m.raw_caption is not None:
                out[f"{prefix}mem_raw"] = np.ascontiguousarray(m.raw_caption, np.float32)
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, np.ndarray], prefix: str = "rerank.") -> "Reranker":
        memory = None
        if f"{prefix}mem_img" in t:
            k, temp = (float(v) for v in np.asarray(t[f"{prefix}mem_params"]).reshape(-1)[:2])
            raw = t.get(f"{prefix}mem_raw")
            memory = CaptionMemory(np.asarray(t[f"{prefix}mem_img"], np.float32),
                                   np.asarray(t[f"{prefix}mem_caption"], np.float32), int(k), temp,
                                   None if raw is None else np.asarray(raw, np.float32))
        return cls(
            coef=np.asarray(t[f"{prefix}coef"], np.float32),
            intercept=float(np.asarray(t[f"{prefix}intercept"]).reshape(-1)[0]),
            calibration=Calibration(np.asarray(t[f"{prefix}calib_x"], np.float32), np.asarray(t[f"{prefix}calib_y"], np.float32)),
            memory=memory,
        )


def fit_logistic(feats: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None, c: float = 1.0,
                 seed: int = 0) -> tuple[FloatArray, float]:
    """Soft-target logistic regression via row duplication: (x, 1) weight t*w and (x, 0) weight (1-t)*w."""
    from sklearn.linear_model import LogisticRegression

    target = np.clip(np.asarray(target, np.float64), 0.0, 1.0)
    w = np.ones(len(target)) if weight is None else np.asarray(weight, np.float64)
    x = np.concatenate([feats, feats])
    y = np.concatenate([np.ones(len(target)), np.zeros(len(target))])
    sw = np.concatenate([target * w, (1.0 - target) * w])
    keep = sw > 0
    model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    model.fit(x[keep], y[keep], sample_weight=sw[keep])
    return model.coef_[0].astype(np.float32), float(model.intercept_[0])


def fit_listwise(feats: np.ndarray, target: np.ndarray, weight: np.ndarray, lists: list[tuple[np.ndarray, np.ndarray]],
                 rank_weight: float = 0.3, weight_decay: float = 1e-4, steps: int = 200, lr: float = 0.05,
                 seed: int = 0) -> tuple[FloatArray, float]:
    """Linear head trained on soft-target BCE over graded rows PLUS a listwise softmax loss that puts each caption's own
    image first among its candidates, so the logit alone both ranks and scores.

    lists: [(F (n_query, k, n_feat), position of the right image (n_query,))] with pair_features of each query's
    candidates (the BCE alone orders graded pairs well but ranks own images lower than the cosine does).
    The listwise logits get their own learned scale; the L2 penalty spares the first two (cosine, kNN) coefficients.
    """
    import torch

    torch.manual_seed(seed)
    n_feat = feats.shape[1]
    keep = np.asarray(weight) > 0
    x = torch.tensor(np.asarray(feats, np.float32)[keep])
    t = torch.tensor(np.clip(np.asarray(target, np.float32)[keep], 0.0, 1.0))
    w = torch.tensor(np.asarray(weight, np.float32)[keep])
    groups = [(torch.tensor(np.ascontiguousarray(f, np.float32).reshape(-1, n_feat)), torch.tensor(np.asarray(p, np.int64)), f.shape[1])
              for f, p in lists if len(p)]
    n_queries = sum(len(p) for _, p, _ in groups)
    coef = torch.zeros(n_feat)
    coef[0] = 3.0
    coef.requires_grad_(True)
    icpt = torch.zeros((), requires_grad=True)
    log_scale = torch.tensor(2.0, requires_grad=True)
    opt = torch.optim.Adam([coef, icpt, log_scale], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(x @ coef + icpt, t, weight=w, reduction="sum") / w.sum()
        loss = bce + weight_decay * (coef[2:] ** 2).sum()
        if groups and rank_weight > 0:
            ce = sum(torch.nn.functional.cross_entropy((f @ coef).reshape(-1, k) * torch.exp(log_scale), p, reduction="sum")
                     for f, p, k in groups)
            loss = loss + rank_weight * ce / n_queries
        loss.backward()
        opt.step()
    return coef.detach().numpy().astype(np.float32), float(icpt.detach())


# ------------------------------------------------------------------------------------------- calibration metrics
def reliability(prob: np.ndarray, target: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: (mean predicted, mean target, count)."""
    prob, target = np.asarray(prob, np.float64), np.asarray(target, np.float64)
    idx = np.minimum((prob * bins).astype(int), bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    safe = np.maximum(count, 1)
    return np.bincount(idx, prob, bins) / safe, np.bincount(idx, target, bins) / safe, count


def ece(prob: np.ndarray, target: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error against (soft) targets, equal-width bins."""
    mp, mt, n = reliability(prob, target, bins)
    return float(np.sum(n / max(n.sum(), 1) * np.abs(mp - mt)))


def brier(prob: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean((np.asarray(prob, np.float64) - np.asarray(target, np.float64)) ** 2))


def build_memory(img_z: np.ndarray, caption_z: np.ndarray, caption_img: np.ndarray, k: int = 10,
                 temperature: float = 0.05, caption_raw: np.ndarray | None = None) -> CaptionMemory:
    """Memory from training images (rows of img_z) and their captions (caption_img[i] = row of its image);
    `caption_raw`: the same captions' raw text features (L2-normalised here, then averaged per image)."""
    n = len(img_z)
    counts = np.bincount(caption_img, minlength=n)
    keep = counts > 0

    def per_image_mean(x: np.ndarray) -> FloatArray:
        sums = np.zeros((n, x.shape[1]), np.float64)
        np.add.at(sums, caption_img, x)
        return (sums[keep] / counts[keep, None]).astype(np.float32)

    raw = per_image_mean(l2n(np.asarray(caption_raw, np.float32))) if caption_raw is not None else None
    return CaptionMemory(np.asarray(img_z, np.float32)[keep], per_image_mean(caption_z), k, temperature, raw)


def plot_reliability(prob: np.ndarray, target: np.ndarray, path: "str | object", bins: int = 10, title: str = "") -> None:
    """Reliability diagram (mean target per predicted-score bin, with counts) saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mp, mt, n = reliability(prob, target, bins)
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ok = n > 0
    ax.plot(mp[ok], mt[ok], "o-", color="C0")
    ax.set_ylabel("mean target in bin")
    ax.set_title(title or f"reliability (ECE {ece(prob, target, bins):.3f}, Brier {brier(prob, target):.3f})")
    axn.bar((np.arange(bins) + 0.5) / bins, n, width=1.0 / bins, color="C1")
    axn.set_yscale("log")
    axn.set_xlabel("predicted score")
    axn.set_ylabel("pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
