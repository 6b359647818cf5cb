"""Learned linear maps from the text space and the CNN image space into one shared d-dim space.

Both sides are `z = l2norm((l2norm(x) - mean) @ W)`: the index stores `project_images(image_feats)` once and a
query is `project_texts(text_feat)`, so search is one inner-product lookup. Fitting (numpy; torch only for the
contrastive refinement) offers closed-form ridge (text -> whitened image PCA space), regularised CCA, and a
symmetric InfoNCE fine-tune started from CCA. Applying a fitted projection needs numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from retrieval.vectors import l2n
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class LinearProjection:
    """Shared-space heads. Inputs are raw encoder features; outputs are L2-normalised (n, d)."""

    img_mean: FloatArray
    img_W: FloatArray
    txt_mean: FloatArray
    txt_W: FloatArray

    @property
    def dim(self) -> int:
        return int(self.img_W.shape[1])

    def project_images(self, feats: np.ndarray) -> FloatArray:
        return l2n((l2n(np.asarray(feats, np.float32)) - self.img_mean) @ self.img_W).astype(np.float32)

    def project_texts(self, feats: np.ndarray) -> FloatArray:
        return l2n((l2n(np.asarray(feats, np.float32)) - self.txt_mean) @ self.txt_W).astype(np.float32)

    def to_tensors(self, prefix: str = "proj.") -> dict[str, np.ndarray]:
        return {f"{prefix}{k}": np.ascontiguousarray(getattr(self, k), np.float32)
                for k in ("img_mean", "img_W", "txt_mean", "txt_W")}

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], prefix: str = "proj.") -> "LinearProjection":
        return cls(**{k: np.asarray(tensors[f"{prefix}{k}"], np.float32) for k in ("img_mean", "img_W", "txt_mean", "txt_W")})


# ------------------------------------------------------------------------------------------------ helpers
def _whitener(x: np.ndarray, reg: float, k: int | None = None, full: bool = False) -> np.ndarray:
    """(D, k) matrix W with W' C W ~= I for the (regularised) covariance C of centred rows x (PCA whitening).

    `reg` is relative to the mean eigenvalue so one value works for every encoder. With fewer rows than dimensions
    (1,000 images, 5,120-d default features) the eigenvectors come from a thin SVD of x, O(n^2 D) instead of the
    O(D^3) covariance eigh, and only the n directions the rows span are returned: the others carry no training
    signal, so CCA and ridge give them no weight either way (same projection, tests/test_projection.py).
    `full` forces the eigh over every direction of the feature space (the tests' reference).
    """
    n, dim = x.shape
    if n >= dim or full:
        vals, vecs = np.linalg.eigh(((x.T @ x) / max(n - 1, 1)).astype(np.float64))
        order = np.argsort(vals)[::-1]
        vals, vecs = np.clip(vals[order], 0, None), vecs[:, order]
    else:
        _, sing, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
        vals, vecs = sing**2 / max(n - 1, 1), vt.T
    eps = reg * float(vals.sum()) / dim  # mean over all `dim` eigenvalues, the zero ones included
    if k is not None:
        vals, vecs = vals[:k], vecs[:, :k]
    return vecs / np.sqrt(vals + eps)[None, :]


def _prep(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = l2n(np.asarray(x, np.float64))
    mean = x.mean(axis=0)
    return x - mean, mean


@dataclass(frozen=True)
class Pairs:
    """Training pairs as row indices into the image and text feature matrices, with optional weights."""

    img: IntArray
    txt: IntArray
    weight: FloatArray | None = None

    def w(self) -> np.ndarray:
        return np.ones(len(self.img)) if self.weight is None else np.asarray(self.weight, np.float64)


def _pair_stats(img_x: np.ndarray, txt_x: np.ndarray, pairs: Pairs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre each side on the images / texts used in training (unique rows, so repeats don't skew the mean)."""
    ui = np.unique(pairs.img)
    ut = np.unique(pairs.txt)
    xi, mi = _prep(img_x[ui])
    xt, mt = _prep(txt_x[ut])
    return xi, mi, xt, mt


# ------------------------------------------------------------------------------------------------ fitters
def fit_cca(
    img_x: np.ndarray, txt_x: np.ndarray, pairs: Pairs, d: int = 256, reg_img: float = 0.1, reg_txt: float = 0.1,
    power: float = 0.5, pca_img: int | None = None, pca_txt: int | None = None,
) -> LinearProjection:
    """Regularised CCA: whiten each side, SVD of the (weighted) cross-covariance, keep d canonical directions.

    Directions are scaled by corr**power so strongly correlated ones dominate the cosine.
    """
    _, mi, _, mt = _pair_stats(img_x, txt_x, pairs)
    xi_all = l2n(np.asarray(img_x, np.float64)) - mi
    xt_all = l2n(np.asarray(txt_x, np.float64)) - mt
    wi = _whitener(xi_all[np.unique(pairs.img)], reg_img, pca_img)
    wt = _whitener(xt_all[np.unique(pairs.txt)], reg_txt, pca_txt)
    a = xi_all[pairs.img] @ wi
    b = xt_all[pairs.txt] @ wt
    w = pairs.w()[:, None]
    cross = (b * w).T @ a / w.sum()
    u, s, vt = np.linalg.svd(cross, full_matrices=False)
    # The output width depends on the feature sizes only, never on how many images a fold has: directions beyond
    # the data's rank (a thin whitener with fewer rows than dimensions) have correlation 0 and stay zero columns.
    d = min(d, pca_img or img_x.shape[1], pca_txt or txt_x.shape[1])
    k = min(d, len(s))
    scale = s[:k] ** power
    img_W, txt_W = np.zeros((img_x.shape[1], d)), np.zeros((txt_x.shape[1], d))
    img_W[:, :k], txt_W[:, :k] = wi @ vt[:k].T * scale, wt @ u[:, :k] * scale
    return LinearProjection(
        img_mean=mi.astype(np.float32), img_W=img_W.astype(np.float32),
        txt_mean=mt.astype(np.float32), txt_W=txt_W.astype(np.float32),
    )


def fit_ridge(
    img_x: np.ndarray, txt_x: np.ndarray, pairs: Pairs, d: int = 256, lam: float = 1.0, reg_img: float = 0.1,
    whiten_txt: bool = True, reg_txt: float = 0.1,
) -> LinearProjection:
    """Closed-form ridge text -> image: image side = whitened PCA (d), text side regresses onto it.

    `lam` is relative to the mean eigenvalue of the (whitened) text design matrix.
    """
    _, mi, _, mt = _pair_stats(img_x, txt_x, pairs)
    xi_all = l2n(np.asarray(img_x, np.float64)) - mi
    xt_all = l2n(np.asarray(txt_x, np.float64)) - mt
    wi = _whitener(xi_all[np.unique(pairs.img)], reg_img, d)
    if wi.shape[1] < min(d, xi_all.shape[1]):  # fewer training images than d: the missing directions stay zero
        wi = np.pad(wi, ((0, 0), (0, min(d, xi_all.shape[1]) - wi.shape[1])))
    wt = _whitener(xt_all[np.unique(pairs.txt)], reg_txt) if whiten_txt else np.eye(xt_all.shape[1])
    y = xi_all[pairs.img] @ wi
    x = xt_all[pairs.txt] @ wt
    w = pairs.w()[:, None]
    gram = (x * w).T @ x
    lam_abs = lam * float(np.trace(gram)) / wt.shape[0]  # per text dimension, whether or not the whitener is thin
    beta = np.linalg.solve(gram + lam_abs * np.eye(gram.shape[0]), (x * w).T @ y)
    return LinearProjection(
        img_mean=mi.astype(np.float32), img_W=wi.astype(np.float32),
        txt_mean=mt.astype(np.float32), txt_W=(wt @ beta).astype(np.float32),
    )


def fit_contrastive(
    img_x: np.ndarray, txt_x: np.ndarray, pairs: Pairs, init: LinearProjection, epochs: int = 300,
    lr: float = 1e-3, weight_decay: float = 1e-4, temperature: float = 0.05, seed: int = 0,
    val: Callable[[LinearProjection], float] | None = None, patience: int = 5, eval_every: int = 20,
) -> LinearProjection:
    """Symmetric InfoNCE fine-tune of both matrices (learnable temperature), one caption per image per step.

    Starts from `init` (e.g. CCA). `val(projection) -> score` (higher is better) enables early stopping.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    xi = torch.tensor(l2n(np.asarray(img_x, np.float32)) - init.img_mean)
    xt = torch.tensor(l2n(np.asarray(txt_x, np.float32)) - init.txt_mean)
    wi = torch.nn.Parameter(torch.tensor(init.img_W))
    wt = torch.nn.Parameter(torch.tensor(init.txt_W))
    log_t = torch.nn.Parameter(torch.tensor(float(np.log(temperature))))
    opt = torch.optim.AdamW([wi, wt, log_t], lr=lr, weight_decay=weight_decay)
    img_ids = np.unique(pairs.img)
    by_img = {int(i): np.flatnonzero(pairs.img == i) for i in img_ids}
    counts = torch.tensor([len(by_img[int(i)]) for i in img_ids])
    offsets = torch.cumsum(counts, 0) - counts
    flat = torch.tensor(np.concatenate([by_img[int(i)] for i in img_ids]))
    img_t = torch.tensor(img_ids)
    txt_rows = torch.tensor(pairs.txt)

    def current() -> LinearProjection:
        return LinearProjection(init.img_mean, wi.detach().numpy().copy(), init.txt_mean, wt.detach().numpy().copy())

    best, best_score, bad = current(), -np.inf, 0
    for epoch in range(1, epochs + 1):
        pick = offsets + (torch.rand(len(img_ids), generator=gen) * counts).long()
        t_rows = txt_rows[flat[pick]]
        zi = torch.nn.functional.normalize(xi[img_t] @ wi, dim=1)
        zt = torch.nn.functional.normalize(xt[t_rows] @ wt, dim=1)
        logits = zt @ zi.T / log_t.exp().clamp(min=1e-3)
        labels = torch.arange(len(img_ids))
        loss = 0.5 * (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if val is not None and epoch % eval_every == 0:
            score = val(current())
            if score > best_score:
                best, best_score, bad = current(), score, 0
            else:
                bad += 1
                if bad >= patience:
                    break
    return best if val is not None else current()
