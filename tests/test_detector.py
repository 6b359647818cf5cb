"""The child detector: gating, threshold choice, the stored detection and the audit explanation, bad input."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from index_store.manifest import FORMAT_VERSION
from retrieval.errors import DetectorUnavailableError
from retrieval.policy.apply import apply_policy
from retrieval.policy.classifiers import threshold_for_recall
from retrieval.policy.detector import FEATURES, N_FUSED, ChildDetector, Detection, DetectorRuntime, PersonBox
from retrieval.policy.detector_train import FaceTable, constant_probe, detector_metrics, fit_detector
from retrieval.policy.faces import Face
from retrieval.policy.types import Hit, RawResult


# ----------------------------------------------------------------------------------------------- synthetic world
def _world(n: int = 240, seed: int = 0):
    """Images whose feature 0 says "person", feature 1 "child"; children's faces have crop feature 0 high."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(["child", "none", "unsure"], size=n, p=[0.3, 0.5, 0.2])
    person = (labels != "none") | (rng.random(n) < 0.5)
    G = rng.normal(size=(n, 8)).astype(np.float32)
    G[:, 0] += 2.5 * person
    G[:, 1] += 2.0 * (labels == "child") + 1.0 * (labels == "unsure")
    image, feats = [], []
    for i in range(n):
        k = int(rng.integers(1, 3)) if person[i] and rng.random() < 0.7 else 0
        for j in range(k):
            f = rng.normal(size=6)
            f[0] += 3.0 if (labels[i] == "child" and j == 0) else -1.0
            image.append(i)
            feats.append(f)
    m = len(image)
    boxes = np.tile(np.array([[10, 10, 30, 34]], np.float32), (m, 1))
    ft = FaceTable(np.asarray(image, np.int64), boxes, np.full(m, 0.99, np.float32),
                   np.asarray(feats, np.float32).reshape(m, 6), np.full((n, 2), 100, np.int64))
    return G, ft, labels, person


def _detector(threshold: float = 0.3, person_threshold: float = 0.5) -> ChildDetector:
    """Fusion = 2 * max face logit + image logit; gate from the person head's logit (feature 1)."""
    w = np.zeros(N_FUSED)
    w[0], w[3] = 1.0, 2.0
    return ChildDetector(constant_probe(4), constant_probe(4), constant_probe(3), np.zeros(N_FUSED),
                         np.ones(N_FUSED), w, 0.0, person_threshold, threshold)


# ----------------------------------------------------------------------------------------------- gating
def test_no_person_means_not_restricted_whatever_the_fusion_says() -> None:
    det = _detector(person_threshold=0.5)
    high = np.zeros((3, len(FEATURES)))
    high[:, 0] = 8.0  # the image head alone would call all three children
    high[0, 1] = -3.0  # no face, person head below its gate -> no person
    high[1, 1] = +3.0  # no face, but the person head fires
    high[2, 1], high[2, 2], high[2, 3] = -3.0, 1.0, 1.0  # a face was found: always a person
    p = det.fuse(high)
    assert p[0] == 0.0 and p[1] > 0.99 and p[2] > 0.99
    assert det.person(high).tolist() == [False, True, True]


class _NoFaces:
    id = "none"

    def find(self, image):
        return []


class _OneFace:
    id = "one"

    def find(self, image):
        w, h = image.size
        return [Face((0.25 * w, 0.25 * h, 0.75 * w, 0.75 * h), 0.99)]


class _CropEncoder:
    dim = 3

    def preprocess(self, image):
        return np.asarray(image.convert("RGB").resize((4, 4)), np.float32).mean(axis=(0, 1)) / 255.0

    def embed_batch(self, items):
        return np.asarray(items, np.float32).reshape(len(items), 3)


def test_runtime_gates_an_image_without_a_person_to_zero() -> None:
    det = _detector(person_threshold=0.9)  # constant person head says 0.5 < 0.9: no person without a face
    img = Image.new("RGB", (64, 48), (200, 10, 10))
    none = DetectorRuntime(det, faces=_NoFaces(), crop_encoder=_CropEncoder()).detect([img], np.zeros((1, 4)))[0]
    assert none.prob == 0.0 and not none.person and none.boxes == ()
    face = DetectorRuntime(det, faces=_OneFace(), crop_encoder=_CropEncoder()).detect([img], np.zeros((1, 4)))[0]
    assert face.person and face.prob > 0.0 and len(face.boxes) == 1
    assert face.boxes[0].box == (16.0, 12.0, 48.0, 36.0) and face.size == (64, 48)


# ----------------------------------------------------------------------------------------------- threshold
def test_threshold_meets_the_recall_target_out_of_fold_with_unsure_as_positive() -> None:
    G, ft, labels, person = _world()
    det, m, oof = fit_detector(G, ft, labels, person, n_splits=4, seed=0, target_recall=0.97)
    pos = labels != "none"
    assert m["threshold"] == pytest.approx(threshold_for_recall(pos, oof, 0.97)) == pytest.approx(det.threshold)
    assert m["recall_child_and_unsure"] >= 0.97
    assert (oof[pos] >= det.threshold).mean() >= 0.97
    # reported apart: child and unsure each have their own withheld share, and the detector learned something
    assert m["withheld_child"] >= 0.97 and 0.0 <= m["withheld_unsure"] <= 1.0
    assert m["withheld_none"] < 0.9 and m["auc"] > 0.8
    # a stricter target can only lower the threshold
    det99, m99, _ = fit_detector(G, ft, labels, person, n_splits=4, seed=0, target_recall=0.995)
    assert det99.threshold <= det.threshold and m99["withheld_none"] >= m["withheld_none"]


def test_detector_round_trips_through_tensors() -> None:
    G, ft, labels, person = _world(120)
    det, _, _ = fit_detector(G, ft, labels, person, n_splits=3)
    back = ChildDetector.from_tensors(det.to_tensors())
    Z = det.image_features(G[:5], [[Face((1, 1, 9, 9), 0.99)]] * 5, [np.array([0.7])] * 5, [(50, 50)] * 5)
    np.testing.assert_allclose(back.fuse(Z), det.fuse(Z), rtol=1e-5)
    assert back.threshold == pytest.approx(det.threshold) and back.person_threshold == pytest.approx(det.person_threshold)


def test_metrics_count_each_label_apart() -> None:
    m = detector_metrics(np.array(["child", "child", "none", "none", "unsure"]), np.array([0.9, 0.1, 0.8, 0.0, 0.6]), 0.5)
    assert (m["withheld_child"], m["withheld_none"], m["withheld_unsure"]) == (0.5, 0.5, 1.0)
    assert m["recall_child_and_unsure"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------------------------- stored + audit
def test_detection_json_round_trip_and_explanation() -> None:
    d = Detection(0.81, True, (PersonBox((1.0, 2.5, 30.0, 41.0), 0.998, 0.93), PersonBox((50, 5, 60, 18), 0.95, 0.05)),
                  (1.0, 2.0, 1.0, 2.6, 1.1, 0.4), (640, 480))
    back = Detection.from_json(d.to_json())
    assert back.prob == pytest.approx(0.81) and back.person and back.size == (640, 480)
    assert [b.child_prob for b in back.boxes] == pytest.approx([0.93, 0.05])
    assert back.features == pytest.approx(d.features)
    why = back.explain(0.2)
    assert "0.81 >= threshold 0.20" in why["reason"] and "0.93" in why["reason"]
    assert why["boxes"][0]["box"] == [1.0, 2.5, 30.0, 41.0]
    assert "no person" in Detection(0.0, False, (), (), (10, 10)).explain(0.2)["reason"]
    assert "< threshold" in Detection(0.1, True, (), (), (10, 10)).explain(0.2)["reason"]


def _hit(prob: float, det: Detection | None, rank: int = 1) -> Hit:
    return Hit(rank=rank, image=f"{rank}.jpg", path=f"/x/{rank}.jpg", score=0.5, child_prob=prob, image_id=rank,
               detection=det.to_json() if det else None)


def test_audit_json_says_why_and_strict_reveals_nothing_more() -> None:
    child = Detection(0.9, True, (PersonBox((1, 1, 9, 9), 0.99, 0.95),), (), (10, 10))
    adult = Detection(0.05, True, (PersonBox((1, 1, 9, 9), 0.99, 0.02),), (), (10, 10))
    raw = RawResult("a beach", False, [_hit(0.9, child, 1), _hit(0.05, adult, 2), _hit(0.0, None, 3)], image_threshold=0.3)
    audit = apply_policy(raw, "audit")
    a1, a2, a3 = audit["hits"]
    assert a1["restricted"] and "0.90 >= threshold 0.30" in a1["why"]["reason"] and a1["why"]["boxes"][0]["child_prob"] == 0.95
    assert not a2["restricted"] and "< threshold" in a2["why"]["reason"]
    assert "threshold 0.30" in a3["why"]["reason"] and a3["why"]["boxes"] == []
    strict = apply_policy(raw, "strict")
    assert strict["hits"][0]["image"] is None and strict["hits"][0]["path"] is None
    assert all("why" not in h for h in strict["hits"]) and "boxes" not in json.dumps(strict)


# ----------------------------------------------------------------------------------------------- bad input
def _odd_images() -> dict[str, Image.Image]:
    rgb = Image.effect_noise((640, 480), 60).convert("RGB")
    exif = rgb.copy()
    ex = Image.Exif()
    ex[0x0112] = 6
    from io import BytesIO

    buf = BytesIO()
    exif.save(buf, format="JPEG", exif=ex)
    from retrieval.index.imageio import decode_image

    return {
        "1x1": Image.new("RGB", (1, 1), "white"),
        "tiny": Image.new("RGB", (11, 30), "gray"),
        "grayscale": rgb.convert("L"),
        "cmyk": rgb.convert("CMYK"),
        "huge": Image.new("RGB", (6000, 4000), (120, 90, 60)),
        "exif-rotated": decode_image(buf.getvalue(), target_size=None),
        "no-face": rgb,
    }


@pytest.mark.slow
def test_real_face_finder_handles_odd_images() -> None:
    from retrieval.policy.faces import FaceFinder

    finder = FaceFinder()
    for name, im in _odd_images().items():
        faces = finder.find(im)
        assert isinstance(faces, list), name
        w, h = im.size
        assert all(0 <= f.box[0] < f.box[2] <= w and 0 <= f.box[1] < f.box[3] <= h for f in faces), name
    assert _odd_images()["exif-rotated"].size == (480, 640)  # upright before the detector sees it


@pytest.mark.slow
def test_channels_last_face_finder_finds_the_same_faces_as_the_reference() -> None:
    """The fast memory layout changes speed only: same faces, boxes and probabilities on the OOD fixture photos."""
    from pathlib import Path

    from retrieval.index.imageio import load_image
    from retrieval.policy.faces import FaceFinder

    fast, ref = FaceFinder(), FaceFinder(channels_last=False)
    assert type(fast._mtcnn.pnet.pool1).__name__ == "ChannelsLastPool"
    photos = sorted((Path(__file__).parent / "fixtures" / "ood" / "images").iterdir())[:40]
    n_faces = 0
    for path in photos:
        try:
            im = load_image(path, target_size=None)
        except Exception:  # noqa: BLE001 - the set holds deliberately unreadable files too
            continue
        a, b = fast.find(im), ref.find(im)
        assert len(a) == len(b), path.name
        for x, y in zip(a, b):
            assert x.prob == pytest.approx(y.prob, abs=1e-3) and x.box == pytest.approx(y.box, abs=0.05), path.name
        n_faces += len(a)
    assert n_faces > 0  # the comparison saw faces


@pytest.mark.slow
def test_shipped_detector_gives_a_probability_for_every_odd_image() -> None:
    from retrieval.learn.model import load_model

    model = load_model("default")
    runtime = DetectorRuntime(model.detector)
    images = _odd_images()
    feats = np.zeros((len(images), model.detector.image_head.dim), np.float32)
    for d, name in zip(runtime.detect([im.convert("RGB") for im in images.values()], feats), images):
        assert 0.0 <= d.prob <= 1.0, name
        assert len(d.features) == len(FEATURES)


def test_face_finder_that_cannot_load_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # import fails as if not installed
    from retrieval.policy.faces import FaceFinder

    with pytest.raises(DetectorUnavailableError) as err:
        FaceFinder()
    assert "facenet-pytorch" in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------- build + index format
def test_build_stops_with_a_clear_error_when_the_face_finder_cannot_load(fake_env, tmp_path, monkeypatch) -> None:
    from tests.conftest import run_cli

    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    res = run_cli("build-index", fake_env / "images", "--index", tmp_path / "idx", "--model", fake_env / "model", "--quiet")
    assert res.exit_code != 0 and "facenet-pytorch" in res.output
    assert not (tmp_path / "idx").exists()  # nothing written, nothing called "not a child"


def test_the_build_decodes_a_large_photo_for_the_detector_at_its_working_size(fake_env, tmp_path, monkeypatch) -> None:
    """A 12 MP JPEG reaches the detector JPEG-drafted (shorter side still >= faces.DECODE_SHORT_SIDE), a small one
    in full: MTCNN shrinks to MAX_SIDE anyway, and a full decode of a phone photo costs 7x more."""
    from types import SimpleNamespace

    from retrieval.index.build import child_detector
    from retrieval.learn.model import RetrievalModel
    from retrieval.policy.faces import DECODE_SHORT_SIDE

    seen = []
    monkeypatch.setattr(DetectorRuntime, "__init__", lambda self, heads: None)
    monkeypatch.setattr(DetectorRuntime, "detect", lambda self, images, feats: seen.extend(im.size for im in images))
    big, small = tmp_path / "big.jpg", tmp_path / "small.jpg"
    Image.new("RGB", (4000, 3000), (90, 120, 200)).save(big)
    Image.new("RGB", (1600, 1200), (90, 120, 200)).save(small)
    detect = child_detector(RetrievalModel.load(fake_env / "model"))
    detect([SimpleNamespace(abs_path=big, rel_path="big.jpg"), SimpleNamespace(abs_path=small, rel_path="small.jpg")],
           None)
    assert seen[1] == (1600, 1200)
    assert DECODE_SHORT_SIDE <= min(seen[0]) < 3000 and seen[0][0] * 3 == seen[0][1] * 4


def test_index_of_the_previous_format_names_the_rebuild_command(fake_env, tmp_path) -> None:
    import shutil

    from tests.conftest import run_cli

    idx = tmp_path / "old_idx"
    shutil.copytree(fake_env / "idx", idx)
    manifest = json.loads((idx / "manifest.json").read_text())
    manifest["format_version"] = 1
    (idx / "manifest.json").write_text(json.dumps(manifest))
    res = run_cli("query", "a dog", "--index", idx, "--model", fake_env / "model")
    assert res.exit_code != 0 and "format_version 1" in res.output and f"retrieve build-index IMAGES --index {idx}" in res.output
    res = run_cli("build-index", fake_env / "images", "--index", idx, "--model", fake_env / "model", "--quiet")
    assert res.exit_code == 0, res.output
    assert json.loads((idx / "manifest.json").read_text())["format_version"] == FORMAT_VERSION
    assert run_cli("query", "a dog", "--index", idx, "--model", fake_env / "model").exit_code == 0


def test_unfamiliar_photo_without_a_face_is_not_a_person_but_a_familiar_one_is() -> None:
    from retrieval.policy.detector import familiarity, reference_space

    rng = np.random.default_rng(1)
    scale = np.r_[np.ones(4), np.full(12, 0.05)]
    train = rng.normal(size=(200, 16)) * scale + np.r_[3.0, np.zeros(15)]  # the photos the heads learned from
    mean, proj, ref = reference_space(train, k=8)
    like = train[:5] + 0.05 * rng.normal(size=(5, 16))
    unlike = np.zeros((5, 16))
    unlike[:, 8:] = rng.normal(size=(5, 8))  # directions no training photo takes
    assert familiarity(like, mean, proj, ref).min() > familiarity(unlike, mean, proj, ref).max()
    det = _detector(person_threshold=0.5)
    det = ChildDetector(det.image_head, det.person_head, det.face_head, det.fusion_mean, det.fusion_scale,
                        det.fusion_weight, det.fusion_bias, 0.5, 0.3, familiar_threshold=0.5)
    Z = np.zeros((3, len(FEATURES)))
    Z[:, 0] = 8.0
    Z[:, 1] = 3.0  # the person head fires on all three
    Z[0, 6], Z[1, 6] = 0.9, 0.1  # familiar, unfamiliar
    Z[2, 6], Z[2, 2], Z[2, 3] = 0.1, 1.0, 1.0  # unfamiliar but a face was found
    assert det.person(Z).tolist() == [True, False, True]
    assert det.fuse(Z)[1] == 0.0
    back = ChildDetector.from_tensors(det.to_tensors())
    assert back.familiar_threshold == pytest.approx(0.5) and back.ref is None
