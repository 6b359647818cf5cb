"""Projection heads: shapes, normalisation, save/load tensors, and that fitting recovers a planted alignment."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval.learn.projection import LinearProjection, Pairs, fit_cca, fit_ridge
from retrieval.learn.validation import retrieval_metrics


def _synthetic(n_img: int = 120, caps: int = 3, seed: int = 0):
    """Images and captions generated from shared latent factors (+ noise) in different bases."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n_img, 16))
    img = latent @ rng.normal(size=(16, 48)) + 0.3 * rng.normal(size=(n_img, 48))
    a = rng.normal(size=(16, 32))
    txt = np.concatenate([latent @ a + 0.5 * rng.normal(size=(n_img, 32)) for _ in range(caps)])
    owner = np.tile(np.arange(n_img), caps)
    return img.astype(np.float32), txt.astype(np.float32), owner


@pytest.mark.parametrize("fit", [lambda i, t, p: fit_cca(i, t, p, d=12, reg_img=0.1, reg_txt=0.1),
                                 lambda i, t, p: fit_ridge(i, t, p, d=12, lam=0.1)])
def test_fitted_projection_retrieves_held_out_images(fit):
    img, txt, owner = _synthetic()
    train = owner < 80
    proj = fit(img, txt, Pairs(owner[train], np.flatnonzero(train)))
    test_txt = np.flatnonzero(~train)
    zi = proj.project_images(img[80:])
    zt = proj.project_texts(txt[test_txt])
    assert zi.shape == (40, 12) and zt.shape == (len(test_txt), 12)
    np.testing.assert_allclose(np.linalg.norm(zi, axis=1), 1.0, atol=1e-5)
    m = retrieval_metrics(zt @ zi.T, owner[test_txt] - 80)
    assert m["R@1"] > 50.0  # chance is 2.5 %


def test_tensor_round_trip_gives_identical_outputs():
    img, txt, owner = _synthetic(seed=1)
    proj = fit_cca(img, txt, Pairs(owner, np.arange(len(owner))), d=8)
    again = LinearProjection.from_tensors(proj.to_tensors())
    np.testing.assert_array_equal(proj.project_texts(txt[:5]), again.project_texts(txt[:5]))
    np.testing.assert_array_equal(proj.project_images(img[:5]), again.project_images(img[:5]))


@pytest.mark.parametrize("fit", [lambda i, t, p: fit_cca(i, t, p, d=12, reg_img=10.0, reg_txt=3.0),
                                 lambda i, t, p: fit_ridge(i, t, p, d=12, lam=0.1)])
def test_thin_whitening_gives_the_same_projection_when_features_outnumber_images(fit, monkeypatch):
    """Fewer training images than image dimensions (the default model: 1,000 vs 5,120): the thin-SVD whitener keeps
    only the spanned directions, and held-out images and texts must still get the same similarities."""
    import retrieval.learn.projection as projection

    rng = np.random.default_rng(3)
    img, txt, owner = _synthetic(n_img=120, seed=3)
    img = np.concatenate([img, 0.2 * rng.normal(size=(120, 200)).astype(np.float32)], axis=1)  # 248-d > 80 images
    train = owner < 80
    pairs = Pairs(owner[train], np.flatnonzero(train))
    thin = fit(img, txt, pairs)
    whiten = projection._whitener
    monkeypatch.setattr(projection, "_whitener", lambda x, reg, k=None: whiten(x, reg, k, full=True))  # reference
    full = fit(img, txt, pairs)
    test_txt = np.flatnonzero(~train)
    sim = lambda p: p.project_texts(txt[test_txt]) @ p.project_images(img[80:]).T  # noqa: E731
    np.testing.assert_allclose(sim(thin), sim(full), atol=1e-4)


@pytest.mark.parametrize("fit", [lambda i, t, p: fit_cca(i, t, p, d=256), lambda i, t, p: fit_ridge(i, t, p, d=256)])
def test_output_width_depends_on_feature_sizes_not_on_the_number_of_training_images(fit):
    """K-fold training stacks reranker features of every fold: each fold's projection must have the same width even
    when a fold has fewer images than dimensions (the thin whitener spans fewer directions)."""
    rng = np.random.default_rng(4)
    img, txt = rng.normal(size=(12, 11)).astype(np.float32), rng.normal(size=(36, 9)).astype(np.float32)
    owner = np.tile(np.arange(12), 3)
    widths = set()
    for n_train in (4, 7, 12):
        keep = owner < n_train
        proj = fit(img, txt, Pairs(owner[keep], np.flatnonzero(keep)))
        z_img, z_txt = proj.project_images(img), proj.project_texts(txt)
        assert np.isfinite(z_img).all() and np.isfinite(z_txt).all()
        widths.add((z_img.shape[1], z_txt.shape[1]))
    assert len(widths) == 1  # CCA: min(d, image dim, text dim) = 9; ridge: min(d, image dim) = 11
