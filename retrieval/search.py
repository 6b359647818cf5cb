"""Search: text -> text encoder -> projection -> ANN candidates -> relevance regressor -> top-k 0-1 scores.

`Retriever` receives its parts (text encoder, heads model, opened index); `Retriever.open` is the one factory that
builds them from an index folder (and optionally another model folder). Results are policy-neutral `RawResult`s:
every output path turns them into user-facing JSON through `retrieval.policy.apply.apply_policy`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from index_store import IndexReader, backend_for
from index_store.manifest import check_expected
from retrieval.encoders.base import TextEncoder
from retrieval.errors import InvalidQueryError
from retrieval.learn.bridge import BridgedImages
from retrieval.learn.model import RetrievalModel, index_identity, model_for_index
from retrieval.limits import MAX_QUERY_CHARS, SINGLE_THREAD_MAX_QUERIES
from retrieval.policy.apply import hit_is_restricted, query_is_child
from retrieval.policy.operator import IndexPolicy
from retrieval.policy.types import Hit, RawResult
from retrieval.vectors import l2n

SearchHit = Hit
QueryResult = RawResult



@dataclass(frozen=True)
class QueryCheck:
    """What `check_query` found: the cleaned text, its token count and whether the encoder will truncate it."""

    text: str
    n_tokens: int
    truncated: bool
    max_tokens: int


@dataclass
class SearchStats:
    """Per-stage wall times in ms of the last call (for benchmarks)."""

    stages: dict[str, float] = field(default_factory=dict)


def open_index(index_dir: str | Path, model_dir: str | Path | None = None) -> tuple[IndexReader, RetrievalModel]:
    """An index and the model it was built with (`model_dir` if given; it must match the index)."""
    store = backend_for(Path(index_dir)).load()
    model = model_for_index(store.manifest, model_dir)
    check_expected(store.manifest, index_identity(model), Path(index_dir))
    return store, model


#: Weight of the examples against the text when a search by example also has words (rclip-style "+").
EXAMPLE_TEXT_WEIGHT = 0.5


def _check_k(k: Any, min_score: float) -> None:
    """The limits every search shares: a positive integer k and a min-score within 0..1."""
    if not isinstance(k, int) or k <= 0:
        raise InvalidQueryError(f"k must be a positive integer, got {k!r}; pass -k 10 for example")
    if not 0.0 <= float(min_score) <= 1.0:
        raise InvalidQueryError(f"min-score must be within 0..1, got {min_score!r}")


def _one_blas_thread() -> Any:
    """Context: BLAS on one thread. A query's products are tiny; a second BLAS thread only spins, taking CPU the
    query's encoders need."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def candidate_count(k: int, n: int) -> int:
    """How many ANN candidates the reranker sees: enough headroom for it to reorder, never more than the index."""
    return int(min(n, max(4 * k, 50)))


class Retriever:
    """Text -> ranked images with calibrated scores. Parts are passed in; `open` builds them."""

    def __init__(self, text_encoder: TextEncoder, model: RetrievalModel, store: IndexReader,
                 policy: IndexPolicy | None = None) -> None:
        """`policy` defaults to the index's own (detector verdicts, operator refit and decisions in its folder)."""
        self.text_encoder = text_encoder
        self.model = model
        self.store = store
        self.images_root = Path(store.manifest.images_root)
        self.stats = SearchStats()
        self._rel_paths = store.meta["rel_path"].astype(str).tolist()
        self._detection = store.meta["detection"].fillna("").tolist() if "detection" in store.meta else None
        self.policy = policy if policy is not None else IndexPolicy.for_model(store.folder, store.meta, model)
        self._under_masks: dict[str, np.ndarray] = {}
        # the semantic bridge's per-row classes (an index without the column ranks as if no class matched)
        self.bridged = (BridgedImages.from_column(model.bridge, store.meta["classes"].fillna("").tolist()
                                                  if "classes" in store.meta else [""] * store.count)
                        if model.bridge is not None else None)

    @classmethod
    def open(cls, index_dir: str | Path, model_dir: str | Path | None = None) -> "Retriever":
        """Open an index folder with the model it was built with (or `model_dir`, which must match it)."""
        from retrieval.encoders import build_text_encoder

        store, model = open_index(index_dir, model_dir)
        return cls(text_encoder=build_text_encoder(model.config.text_encoder), model=model, store=store)

    # -- input checks -------------------------------------------------------------------------------------------
    def check_query(self, text: str) -> QueryCheck:
        """Refuse empty / absurd queries; report (not refuse) queries the encoder will truncate."""
        if text is None or not str(text).strip():
            raise InvalidQueryError("empty query; type some words to search for, e.g. `retrieve query \"a dog on a beach\"`")
        clean = " ".join(str(text).split())
        if len(clean) > MAX_QUERY_CHARS:
            raise InvalidQueryError(f"query is {len(clean)} characters long; the limit is {MAX_QUERY_CHARS}, shorten it")
        n_tokens = self.text_encoder.n_tokens(clean)
        limit = self.text_encoder.max_tokens
        return QueryCheck(clean, n_tokens, n_tokens > limit, limit)

    # -- search -------------------------------------------------------------------------------------------------
    def search(self, text: str, k: int = 10, min_score: float = 0.0, under: str | None = None) -> RawResult:
        return self.search_many([text], k=k, min_score=min_score, under=under)[0]

    def search_many(self, texts: Sequence[str], k: int = 10, min_score: float = 0.0,
                    under: str | None = None) -> list[RawResult]:
        """Batched: texts are encoded together, ANN searched together, reranked per query. `under`: only images in
        that folder of the library (relative to the indexed root), filtered inside the ANN search."""
        return self.search_checked([self.check_query(t) for t in texts], k=k, min_score=min_score, under=under)

    def search_checked(self, checks: Sequence[QueryCheck], k: int = 10, min_score: float = 0.0,
                       under: str | None = None) -> list[RawResult]:
        """`search_many` for queries already passed through `check_query` (callers that report truncation).

        Small batches run their BLAS calls on one thread: the projection / rerank products are tiny, and a second
        spinning BLAS thread doubled CPU per query (benchmarks/bench_query.py: 188 -> 95 ms)."""
        _check_k(k, min_score)
        if len(checks) > SINGLE_THREAD_MAX_QUERIES:
            return self._search(checks, k, min_score, under)
        with _one_blas_thread():
            return self._search(checks, k, min_score, under)

    def _search(self, checks: Sequence[QueryCheck], k: int, min_score: float, under: str | None = None
                ) -> list[RawResult]:
        self.policy.refresh()
        threshold = self.policy.threshold
        clean = [c.text for c in checks]
        t0 = time.perf_counter()
        feats = self.text_encoder.encode(clean)
        t1 = time.perf_counter()
        z = self.model.project_texts(feats)
        child_p = self.model.child_text_prob(feats)
        t2 = time.perf_counter()
        n_cand = candidate_count(k, self.store.count)
        if n_cand == 0:
            return [RawResult(c.text, self._query_child(c.text, p), [], threshold) for c, p in zip(checks, child_p)]
        _, ids = self.store.search(z, n_cand, under)
        bridged = self.bridged
        qc = bridged.bridge.query_classes(feats) if bridged is not None else None
        allowed = self._under_mask(under) if bridged is not None and under else None
        t3 = time.perf_counter()
        results = []
        for row, check in enumerate(checks):
            cand = ids[row][ids[row] >= 0]
            bridge_cos = None
            if bridged is not None:  # the bridge's own candidates: images of the query's nearest classes
                cand = np.union1d(cand, bridged.candidates(qc[row], n_cand, allowed))
                bridge_cos = bridged.cos(qc[row], cand)
            cand_z = np.asarray(self.store.vectors[cand], np.float32)
            key = self.model.rank_key(cand_z, z[row], feats[row], bridge_cos)
            scores = self.model.calibrate(key)  # isotonic in `key`: sorting by key sorts scores too
            order = np.argsort(-key, kind="stable")
            hits = []
            for i in order:
                if len(hits) == k or scores[i] < min_score:
                    break
                hits.append(self._hit(len(hits) + 1, int(cand[i]), float(scores[i])))
            results.append(RawResult(check.text, self._query_child(check.text, child_p[row]), hits, threshold))
        t4 = time.perf_counter()
        self.stats.stages = {"encode_ms": (t1 - t0) * 1e3, "project_ms": (t2 - t1) * 1e3,
                             "ann_ms": (t3 - t2) * 1e3, "rerank_ms": (t4 - t3) * 1e3}
        return results

    # -- search by example ----------------------------------------------------------------------------------
    def search_by_example(self, images: Sequence[Any] = (), text: str | None = None, k: int = 10,
                          under: str | None = None, like_row: int | None = None, min_score: float = 0.0) -> RawResult:
        """Images like the query images (decoded pictures) and/or an indexed row (`like_row`), optionally steered by
        `text` (rclip's "+"). The example vector is the mean of the projected examples.

        Photo only: ranked by cosine to it; `score` = the calibrated image-to-image relevance of that cosine
        (`RetrievalModel.example_score`, retrieval.learn.examples: the expected expert/crowd relevance of the hit
        for a description of the query photo). With words: ANN candidates come from the mix of example and text
        vectors (`EXAMPLE_TEXT_WEIGHT`), ranked and scored by photo score x text score (the chance the hit matches
        both, taken as independent). Every hit also carries `similarity`, its raw cosine to the example vector.
        Models without that calibration give `score` None (ranked by cosine to the mix, as before).

        The query is restricted when the text is a child query or the child detector finds a child in a query image
        (an indexed row: its stored verdict)."""
        if not len(images) and like_row is None:
            raise InvalidQueryError("give a query image (--image PATH) or an indexed image to search like")
        _check_k(k, min_score)
        # as for text queries; here the spinning second BLAS thread also took the core the next photo's CNN passes
        # and face pass needed (bench_query --by-example at 100k: 106 -> 68 ms)
        with _one_blas_thread():
            return self._search_by_example(images, text, k, under, like_row, min_score)

    def _search_by_example(self, images: Sequence[Any], text: str | None, k: int, under: str | None,
                           like_row: int | None, min_score: float) -> RawResult:
        self.policy.refresh()
        threshold = self.policy.threshold
        t0 = time.perf_counter()
        parts, child = [], False
        if len(images):
            feats, child = self._embed_and_check(images, threshold)
            parts.append(l2n(np.asarray(self.model.project_images(feats), np.float32)).mean(0))
        else:
            self.stats.stages = {}
        if like_row is not None:
            parts.append(np.asarray(self.store.vectors[[int(like_row)]], np.float32)[0])
            hit = self._hit(1, int(like_row), 0.0)
            child = child or hit_is_restricted(hit, threshold)
        z_ex = l2n(np.mean(parts, axis=0))
        z, label, text_part = z_ex, text or "", None
        if text:
            check = self.check_query(text)
            feats_t = self.text_encoder.encode([check.text])
            zt = l2n(np.asarray(self.model.project_texts(feats_t), np.float32)[0])
            z = l2n(EXAMPLE_TEXT_WEIGHT * z_ex + (1.0 - EXAMPLE_TEXT_WEIGHT) * zt)
            child = child or self._query_child(check.text, float(self.model.child_text_prob(feats_t)[0]))
            label, text_part = check.text, (zt, feats_t[0])
        t1 = time.perf_counter()
        n_cand = candidate_count(k + 1, self.store.count)
        _, ids = self.store.search(z[None, :], n_cand, under)
        t2 = time.perf_counter()
        cand = ids[0][ids[0] >= 0]
        if like_row is not None:
            cand = cand[cand != int(like_row)]  # "more like this" never returns the photo itself
        cand_z = np.asarray(self.store.vectors[cand], np.float32) if len(cand) else np.zeros((0, len(z)), np.float32)
        sims = cand_z @ z_ex
        scores = self.model.example_score(sims)
        if text_part is None:
            key = sims
        elif scores is None:
            key = cand_z @ z
        else:
            zt, raw_t = text_part
            scores = scores * self.model.calibrate(self.model.rank_key(cand_z, zt, raw_t, self.bridge_cos(raw_t, cand)))
            key = scores
        hits = []
        for i in np.argsort(-key, kind="stable"):
            if len(hits) == k or (scores is not None and scores[i] < min_score):
                break
            score = None if scores is None else float(scores[i])
            hits.append(replace(self._hit(len(hits) + 1, int(cand[i]), 0.0), score=score, similarity=float(sims[i])))
        self.stats.stages.update({"text_ms": (t1 - t0) * 1e3 - sum(self.stats.stages.values()),
                                  "ann_ms": (t2 - t1) * 1e3, "rerank_ms": (time.perf_counter() - t2) * 1e3})
        return RawResult(label or "(search by example)", child, hits, threshold)

    def bridge_cos(self, txt_raw: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
        """Semantic-bridge cosines of one query's raw text feature with index `rows` (None: the model has none)."""
        if self.bridged is None:
            return None
        return self.bridged.cos(self.bridged.bridge.query_classes(txt_raw)[0], np.asarray(rows, np.int64))

    def _under_mask(self, under: str) -> np.ndarray:
        """Rows inside folder `under` (kept for the last few folders: at 1M rows the prefix scan costs ~0.1 s)."""
        from index_store.store import rows_under

        cache = self._under_masks
        if under not in cache:
            if len(cache) >= 8:
                cache.pop(next(iter(cache)))
            mask = np.zeros(self.store.count, bool)
            mask[rows_under(self.store.meta, under)] = True
            cache[under] = mask
        return cache[under]

    def _image_encoder(self) -> Any:
        from retrieval.encoders import build_image_encoder

        c = self.model.config
        return build_image_encoder(c.image_encoder, views=tuple(c.image_views))

    def _embed_and_check(self, images: Sequence[Any], threshold: float) -> tuple[np.ndarray, bool]:
        """The query photos' image features, and whether the child detector (as at build time) finds a child in
        one. The detector's face pass needs only pixels, so it runs on a second thread beside the image encoder
        (both release the GIL in their native kernels): the photo query waits for the slower of the two, not their
        sum. No detector in the model: never restricted."""
        from concurrent.futures import ThreadPoolExecutor

        t0 = time.perf_counter()
        encoder = self._image_encoder()
        runtime = self._detector_runtime()
        with ThreadPoolExecutor(max_workers=1) as pool:
            found = pool.submit(runtime.find, list(images)) if runtime is not None else None
            feats = np.asarray(encoder.embed_batch([encoder.preprocess(im) for im in images]), np.float32)
            t1 = time.perf_counter()
            child = self._images_show_a_child(images, feats, threshold, found.result() if found else None)
        t2 = time.perf_counter()
        self.stats.stages = {"image_encode_ms": (t1 - t0) * 1e3, "detector_wait_ms": (t2 - t1) * 1e3}
        return feats, child

    def _detector_runtime(self) -> Any:
        detector = getattr(self.model, "detector", None)
        if detector is None:
            return None
        if getattr(self, "_runtime", None) is None:
            from retrieval.policy.detector import DetectorRuntime

            self._runtime = DetectorRuntime(detector)
        return self._runtime

    def _images_show_a_child(self, images: Sequence[Any], feats: np.ndarray, threshold: float,
                             found: Any = None) -> bool:
        """The child detector's verdict on query images (`found`: its face pass, already run)."""
        runtime = self._detector_runtime()
        if runtime is None:
            return False
        return any(d.prob >= threshold for d in runtime.detect(list(images), feats, found))

    def _query_child(self, text: str, prob: float) -> bool:
        return query_is_child(text, float(prob), self.model.config.child_text_threshold)

    def hit(self, image_id: int, rank: int = 1, score: float = 0.0) -> Hit:
        """The policy-neutral hit for one index row (the server checks image fetches through the policy with it)."""
        self.policy.refresh()
        return self._hit(rank, image_id, score)

    @property
    def image_threshold(self) -> float:
        return self.policy.threshold

    def _hit(self, rank: int, image_id: int, score: float) -> Hit:
        rel = self._rel_paths[image_id]
        detection = self._detection[image_id] if self._detection is not None else ""
        return Hit(rank=rank, image=Path(rel).name, path=str(self.images_root / rel), score=score,
                   child_prob=self.policy.child_prob(image_id), image_id=image_id, detection=detection or None,
                   review=self.policy.review(image_id))
