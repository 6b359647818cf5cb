"""`RetrievalModel`: the learned heads (projection, reranker, policy probes) as a self-describing folder.

Folder = `config.json` (encoder ids + weight checksums, views, dims, training fingerprint, seed, validation
metrics, created, format_version, model_id) + `model.safetensors` (float32 arrays only, no pickles).
`model_id` is the sha256 of model.safetensors, so an index can refuse heads it was not built with.
Loading uses numpy + safetensors only (no torch): a cold CLI query must stay fast.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import numpy.typing as npt

from retrieval.atomic import atomic_folder
from retrieval.config import DEFAULT_MODEL_DIR, PACKAGED_MODELS
from retrieval.errors import ModelMismatchError, ModelNotFoundError
from retrieval.hashing import sha256_file
from retrieval.learn.bridge import SemanticBridge
from retrieval.learn.examples import calibration_from_json
from retrieval.learn.projection import LinearProjection
from retrieval.learn.reranker import Reranker
from retrieval.policy.classifiers import LinearProbe
from retrieval.policy.detector import ChildDetector

FloatArray = npt.NDArray[np.float32]
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class ModelConfig:
    image_encoder: str
    image_encoder_checksum: str
    image_views: tuple[str, ...]
    text_encoder: str
    text_encoder_checksum: str
    image_dim: int
    text_dim: int
    dim: int
    method: str = "cca"
    #: ranking key = rank_logit_weight * reranker logit + rank_cos_weight * cosine (chosen on validation so it
    #: never lowers R@K against plain cosine); `score` is the isotonic calibration of that same key
    rank_logit_weight: float = 0.0
    rank_cos_weight: float = 1.0
    child_image_threshold: float = 0.5
    child_text_threshold: float = 0.5
    seed: int = 0
    training: Mapping[str, Any] = field(default_factory=dict)
    validation: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""
    #: isotonic knots {"x": cosines, "y": scores} of the image-to-image score (retrieval.learn.examples); {} = none
    example_calibration: Mapping[str, Any] = field(default_factory=dict)
    #: the semantic bridge (retrieval.learn.bridge): {"part", "scale", "weight", "top_k"}; {} = none. The key adds
    #: weight x bridge cosine, and the reranker's calibration was fitted on that key
    bridge: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    model_id: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["image_views"] = tuple(kwargs.get("image_views", ("center",)))
        return cls(**kwargs)


def _probe_cls() -> Any:
    return LinearProbe


class RetrievalModel:
    """Heads on top of fixed encoders. Parts are passed in; `train.train_model` builds them."""

    def __init__(self, config: ModelConfig, projection: LinearProjection, reranker: Reranker | None = None,
                 detector: Any = None, text_probe: Any = None, bridge: SemanticBridge | None = None) -> None:
        self.config = config
        self.projection = projection
        self.reranker = reranker
        self.bridge = bridge
        self.detector = detector  # retrieval.policy.detector.ChildDetector (its threshold = child_image_threshold)
        self.text_probe = text_probe

    # --------------------------------------------------------------------------------------------- inference
    @property
    def dim(self) -> int:
        return self.projection.dim

    def project_images(self, feats: np.ndarray) -> FloatArray:
        return self.projection.project_images(feats)

    def project_texts(self, feats: np.ndarray) -> FloatArray:
        return self.projection.project_texts(feats)

    def score(self, img_z: np.ndarray, txt_z: np.ndarray, txt_raw: np.ndarray | None = None,
              bridge_cos: np.ndarray | None = None) -> FloatArray:
        """Calibrated relevance in [0, 1] for aligned rows (falls back to (cos+1)/2 without a reranker).

        txt_raw: the texts' raw text-encoder features (what `project_texts` was given); required when the reranker's
        caption memory keeps raw captions (`Reranker.needs_raw_text`). bridge_cos: the pairs' semantic-bridge
        cosines (`bridge_weight` > 0 only)."""
        return self.calibrate(self.rank_key(img_z, txt_z, txt_raw, bridge_cos))

    def calibrate(self, key: np.ndarray) -> FloatArray:
        """`rank_key` values -> calibrated scores (monotone), so callers that already ranked need not recompute."""
        if self.reranker is None or self.config.rank_logit_weight == 0.0:
            cos = np.asarray(key, np.float32) / (self.config.rank_cos_weight or 1.0)
            return np.clip((cos + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)
        return self.reranker.calibration(key)

    @property
    def bridge_weight(self) -> float:
        """Weight of the bridge cosine in the key (0 without a bridge)."""
        return float(self.bridge.weight) if self.bridge is not None else 0.0

    def rank_key(self, img_z: np.ndarray, txt_z: np.ndarray, txt_raw: np.ndarray | None = None,
                 bridge_cos: np.ndarray | None = None) -> FloatArray:
        """Ordering key for search results: a * reranker logit + b * cosine (config rank_*_weight), plus
        bridge_weight * `bridge_cos` for a model with a semantic bridge (refused without it).

        Sort hits by this key to get the validated R@K; `score` = calibration(key) is monotone in it."""
        img_z, txt_z = np.atleast_2d(img_z), np.atleast_2d(txt_z)
        key = self._blend(np.sum(img_z * txt_z, axis=1), lambda r: r.logit(img_z, txt_z, txt_raw))
        return self._add_bridge(key, bridge_cos)

    def rank_grid(self, img_z: np.ndarray, txt_z: np.ndarray, txt_raw: np.ndarray | None = None,
                  bridge_grid: np.ndarray | None = None) -> FloatArray:
        """`rank_key` of every (text, image) pair, (n_txt, n_img): ranks whole galleries (evaluate) with the
        gallery-side work (caption-memory neighbours) done once instead of once per query."""
        img_z, txt_z = np.atleast_2d(img_z), np.atleast_2d(txt_z)
        key = self._blend(txt_z @ img_z.T, lambda r: r.logit_grid(img_z, txt_z, txt_raw))
        return self._add_bridge(key, bridge_grid)

    def _add_bridge(self, key: np.ndarray, bridge_cos: np.ndarray | None) -> FloatArray:
        w = self.bridge_weight
        if w == 0.0:
            return key
        if bridge_cos is None:
            raise ValueError("this model ranks with its semantic bridge: pass the bridge cosines (index `classes`)")
        return (key + w * np.asarray(bridge_cos, np.float32)).astype(np.float32)

    def _blend(self, cos: np.ndarray, logit: Callable[[Reranker], np.ndarray]) -> FloatArray:
        """a * logit(reranker) + b * cos with the config's weights; the logit is not computed when its weight is 0."""
        a, b = self.config.rank_logit_weight, self.config.rank_cos_weight
        if self.reranker is None or a == 0.0:
            return (b * cos if b else cos).astype(np.float32)
        return (a * logit(self.reranker) + b * cos).astype(np.float32)

    def example_score(self, cos: np.ndarray) -> FloatArray | None:
        """Calibrated image-to-image relevance of image-pair cosines (retrieval.learn.examples for what it means);
        None for models trained without that calibration."""
        knots = self.config.example_calibration
        if getattr(self, "_example_knots", None) is not knots:  # parsed once per config, not once per query
            self._example_knots, self._example_cal = knots, calibration_from_json(knots)
        return None if self._example_cal is None else self._example_cal(np.asarray(cos, np.float32))

    def child_text_prob(self, feats: np.ndarray) -> FloatArray:
        if self.text_probe is None:
            raise ModelMismatchError("this model has no child text probe; retrain it with `retrieve train`")
        return np.asarray(self.text_probe.predict_proba(feats), np.float32)

    def check_encoders(self, image_encoder: str | None = None, text_encoder: str | None = None,
                       image_checksum: str | None = None, text_checksum: str | None = None) -> None:
        """Raise ModelMismatchError (naming both pairs) when asked for encoders the heads were not trained on."""
        c = self.config
        bad = (
            (image_encoder is not None and image_encoder != c.image_encoder)
            or (text_encoder is not None and text_encoder != c.text_encoder)
            or (image_checksum is not None and image_checksum != c.image_encoder_checksum)
            or (text_checksum is not None and text_checksum != c.text_encoder_checksum)
        )
        if bad:
            raise ModelMismatchError(
                f"model was trained for image/text encoders {c.image_encoder!r}/{c.text_encoder!r} but "
                f"{image_encoder or c.image_encoder!r}/{text_encoder or c.text_encoder!r} were asked "
                "(checksums compared too); use the matching encoders or retrain with "
                "`retrieve train --image-encoder ... --text-encoder ...`"
            )

    # --------------------------------------------------------------------------------------------- storage
    def tensors(self) -> dict[str, np.ndarray]:
        out = self.projection.to_tensors()
        if self.reranker is not None:
            out.update(self.reranker.to_tensors())
        if self.text_probe is not None:
            out.update({"probe_txt." + k: np.ascontiguousarray(v, np.float32) for k, v in self.text_probe.to_tensors().items()})
        if self.detector is not None:
            out.update({k: np.ascontiguousarray(v, np.float32) for k, v in self.detector.to_tensors().items()})
        if self.bridge is not None:
            out["bridge.class_text"] = np.ascontiguousarray(self.bridge.class_text, np.float32)
        return out

    def save(self, directory: Path | str) -> Path:
        """Atomic: written into a sibling temp folder, then swapped into place. Returns the folder."""
        from safetensors.numpy import save_file

        directory = Path(directory)
        with atomic_folder(directory) as tmp:
            save_file(self.tensors(), str(tmp / WEIGHTS_NAME), metadata={"format": "retrieval-heads"})
            model_id = sha256_file(tmp / WEIGHTS_NAME)
            self.config = replace(self.config, model_id=model_id)
            with open(tmp / CONFIG_NAME, "w", encoding="utf-8") as fh:
                json.dump(asdict(self.config), fh, indent=2, sort_keys=True, default=list)
                fh.write("\n")
        return directory

    @classmethod
    def load(cls, directory: Path | str, image_encoder: str | None = None, text_encoder: str | None = None,
             image_checksum: str | None = None, text_checksum: str | None = None) -> "RetrievalModel":
        """Read a model folder; refuses newer formats, corrupted weights and (if given) other encoders."""
        from safetensors.numpy import load_file

        directory = Path(directory)
        cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not cfg_path.is_file() or not w_path.is_file():
            raise ModelNotFoundError(
                f"no model in {str(directory)!r} (need {CONFIG_NAME} + {WEIGHTS_NAME}); "
                "train one with `retrieve train --data DIR --out MODEL_DIR`"
            )
        try:
            config = ModelConfig.from_json(json.loads(cfg_path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise ModelNotFoundError(f"{cfg_path} is not a valid model config ({exc}); retrain with `retrieve train`") from exc
        if config.format_version > FORMAT_VERSION:
            raise ModelMismatchError(
                f"model format_version {config.format_version} is newer than supported ({FORMAT_VERSION}); "
                "upgrade retrieval or retrain with `retrieve train`"
            )
        digest = sha256_file(w_path)
        if config.model_id and digest != config.model_id:
            raise ModelMismatchError(
                f"{w_path} has sha256 {digest[:12]}… but config.json says model_id {config.model_id[:12]}…; "
                "the folder was modified — retrain with `retrieve train`"
            )
        t = load_file(str(w_path))
        reranker = Reranker.from_tensors(t) if "rerank.coef" in t else None
        sub = {k[len("probe_txt."):]: v for k, v in t.items() if k.startswith("probe_txt.")}
        text_probe = _probe_cls().from_tensors(sub) if sub else None
        detector = None
        if any(k.startswith("det.") for k in t):
            detector = ChildDetector.from_tensors(t)
        bridge = None
        if config.bridge:
            if "bridge.class_text" not in t:
                raise ModelMismatchError(f"{w_path} lacks the bridge's class vectors that config.json names; "
                                         "retrain with `retrieve train`")
            bridge = SemanticBridge.from_config(config.bridge, t["bridge.class_text"])
        model = cls(config, LinearProjection.from_tensors(t), reranker, detector, text_probe, bridge)
        model.check_encoders(image_encoder, text_encoder, image_checksum, text_checksum)
        return model


def default_model_dir() -> Path:
    return DEFAULT_MODEL_DIR


def index_identity(model: "RetrievalModel") -> dict[str, Any]:
    """What an index is only valid for: the encoders and heads that produced its vectors (manifest + load check)."""
    c = model.config
    return {"image_encoder": c.image_encoder, "image_encoder_sha": c.image_encoder_checksum,
            "text_encoder": c.text_encoder, "text_encoder_sha": c.text_encoder_checksum,
            "model_id": c.model_id, "dim": int(model.dim), "metric": "ip"}


def resolve_model_dir(model_dir: str | Path | None = None) -> Path:
    """A model folder path; None -> the shipped default; "default"/"light" -> the shipped ones unless such a folder exists."""

    if model_dir is None:
        return default_model_dir()
    if not Path(model_dir).exists() and str(model_dir) in PACKAGED_MODELS:
        return PACKAGED_MODELS[str(model_dir)]
    return Path(model_dir)


def load_model(model_dir: str | Path | None = None) -> "RetrievalModel":
    """The heads model folder (see `resolve_model_dir`)."""
    return RetrievalModel.load(resolve_model_dir(model_dir))


def _model_id_of(folder: Path) -> str:
    try:
        return str(json.loads((Path(folder) / CONFIG_NAME).read_text(encoding="utf-8")).get("model_id", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def model_for_index(manifest: Any, model_dir: str | Path | None = None) -> "RetrievalModel":
    """The model to serve an index with: `model_dir` when given; else the shipped model, or the model folder the
    build recorded, whose model_id the index carries; else the default (the identity check then names the
    mismatch)."""
    if model_dir is not None:
        return load_model(model_dir)
    wanted = str(getattr(manifest, "model_id", ""))
    recorded = (getattr(manifest, "extra", None) or {}).get("model_dir")
    for folder in [*PACKAGED_MODELS.values(), *([Path(recorded)] if recorded else [])]:
        if wanted and _model_id_of(folder) == wanted:
            return RetrievalModel.load(folder)
    return load_model(None)
