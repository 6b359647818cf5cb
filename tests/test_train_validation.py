"""Validation protocol: grouped folds never share an image; held-out texts leave training; the child rule."""
from __future__ import annotations

import numpy as np

from retrieval.learn.validation import CoursePairs, image_folds, restricted_images, retrieval_metrics, train_mask_for


def _pairs() -> CoursePairs:
    # 6 images x 2 captions; text 12 is a train_dataset query written for image 3
    img = np.repeat(np.arange(6), 2)
    txt = np.arange(12)
    owner = np.concatenate([img, [3]])
    return CoursePairs(n_images=6, n_texts=13, caption_img=img, caption_txt=txt, caption_qid=[f"{i}#{k}" for i, k in zip(img, txt % 2)], text_owner=owner)


def test_image_folds_partition_images_without_overlap():
    folds = image_folds(1000, 10, seed=3)
    held = np.concatenate([va for _, va in folds])
    assert sorted(held) == list(range(1000))
    for tr, va in folds:
        assert len(va) == 100 and not set(tr) & set(va) and len(tr) + len(va) == 1000


def test_held_out_images_and_their_texts_leave_training():
    p = _pairs()
    img_ok, txt_ok = train_mask_for(p, np.array([0, 1, 2, 4, 5]))
    assert not img_ok[3] and img_ok[[0, 1, 2, 4, 5]].all()
    assert not txt_ok[[6, 7, 12]].any() and txt_ok[[0, 1, 8, 9]].all()


def test_an_image_is_restricted_when_any_owned_text_mentions_a_child():
    p = _pairs()
    child = np.zeros(13, bool)
    child[12] = True  # only the train_dataset query owned by image 3
    child[1] = True   # second caption of image 0
    assert restricted_images(p, child).tolist() == [True, False, False, True, False, False]


def test_retrieval_metrics_ranks():
    sim = np.array([[0.9, 0.1, 0.0], [0.5, 0.4, 0.6], [0.2, 0.3, 0.1]])
    m = retrieval_metrics(sim, np.array([0, 1, 2]))
    assert abs(m["R@1"] - 100 / 3) < 1e-9 and m["medR"] == 3.0
    assert abs(m["MRR"] - (1 + 1 / 3 + 1 / 3) / 3) < 1e-9


def test_choose_blend_never_lowers_recall_without_tolerance():
    from retrieval.learn.train import _blend_name, choose_blend

    def entry(r1: float, r5: float, r10: float, tau_c: float, tau_b: float) -> dict:
        return {"retrieval_non_child": {"R@1": r1, "R@5": r5, "R@10": r10},
                "score": {"expert_tau_c": tau_c, "crowd_tau_b": tau_b}}

    blends = ((0.0, 1.0), (1.0, 0.0), (1.0, 3.0))
    metrics = {"blends": {_blend_name(0.0, 1.0): entry(51.6, 85.9, 93.7, 0.566, 0.338),
                          _blend_name(1.0, 0.0): entry(51.8, 85.8, 93.7, 0.614, 0.347),
                          _blend_name(1.0, 3.0): entry(52.2, 86.0, 94.0, 0.603, 0.349)}}
    assert choose_blend(metrics, blends, tolerance=0.0) == 2  # logit alone loses 0.1 R@5: not allowed
    assert choose_blend(metrics, blends, tolerance=0.5) == 1


def test_ranking_list_holds_each_querys_own_image_at_the_reported_position():
    from retrieval.learn.train import HeadConfig, ranking_list

    rng = np.random.default_rng(3)
    zi = rng.normal(size=(12, 4)).astype(np.float32)
    zi /= np.linalg.norm(zi, axis=1, keepdims=True)
    zt = -zi[:5]  # own images are the least similar: they must be forced into the list
    target = np.arange(5)
    feats, pos = ranking_list(zi, zt, target, None, HeadConfig(rank_candidates=3))
    assert feats.shape == (5, 3, 1 + 4)
    np.testing.assert_allclose(feats[np.arange(5), pos, 0], -1.0, atol=1e-5)  # cosine of each own pair
