"""`retrieve evaluate`: quality on a course-layout folder's test part (test_queries.csv + test_images/).

The test images are indexed through the product path (`build_index_with_model`, embedding cache included), then
every query is scored against every indexed image twice: by raw projection cosine and by the relevance regressor.
Reported: R@1/5/10, MRR, median rank for both, on all queries and on non-child queries (what the law lets the
product show); when the folder has expert / crowd grades for indexed images, Kendall tau-c against the three
expert grades stacked (CLIPScore's Flickr8k-Expert protocol: own-caption pairs dropped) and tau-b against crowd
shares. Writes metrics.json and a visual sheet (10 random queries with their top-5, through the policy).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retrieval.atomic import write_text
from retrieval.data.course import load_course, load_test_queries
from retrieval.errors import DatasetError
from retrieval.index.build import build_index_with_model
from retrieval.learn.validation import retrieval_metrics
from retrieval.policy.apply import apply_policy
from retrieval.policy.lexicon import mentions_child
from retrieval.reports.contact_sheet import write_sheet as write_png
from retrieval.reports.html import results_page
from retrieval.search import Retriever


def _kendall(course: Any, names: list[str], img_z: np.ndarray, retriever: Any, texts: dict[str, str],
             encoded: dict[str, np.ndarray]) -> dict[str, Any]:
    """tau-c vs stacked expert grades and tau-b vs crowd share on annotated pairs whose image is indexed.

    `encoded`: text -> raw text feature already computed (the test queries); filled with the graded texts, each
    encoded once (a text recurs in many graded pairs and in both sources)."""
    from scipy.stats import kendalltau

    row_of = {n: i for i, n in enumerate(names)}
    out: dict[str, Any] = {}
    child_img = set(course_child_images(course))
    for source, frame in (("expert", course.expert), ("crowd", course.crowd)):
        frame = frame[frame["image"].isin(row_of) & frame["query_id"].isin(texts)]
        frame = frame[frame["query_id"].str.split("#").str[0] != frame["image"]]  # own captions dropped
        if frame.empty:
            continue
        q_text = frame["query_id"].map(texts).tolist()
        new = sorted(set(q_text) - encoded.keys())
        if new:
            encoded.update(zip(new, retriever.text_encoder.encode(new)))
        txt_raw = np.stack([encoded[t] for t in q_text])
        txt_z = retriever.model.project_texts(txt_raw)
        rows = frame["image"].map(row_of).to_numpy()
        bridge = retriever.bridged.aligned(txt_raw, rows) if retriever.bridged is not None else None
        scores = retriever.model.score(img_z[rows], txt_z, txt_raw, bridge)
        non_child = ~mentions_child(q_text) & ~frame["image"].isin(child_img).to_numpy()
        for subset, mask in (("all", np.ones(len(frame), bool)), ("non_child", non_child)):
            if mask.sum() < 3:
                continue
            if source == "expert":
                grades = frame[["e1", "e2", "e3"]].to_numpy(float)[mask]
                tau = kendalltau(np.repeat(scores[mask], 3), grades.reshape(-1), variant="c").statistic
            else:
                tau = kendalltau(scores[mask], frame["share_yes"].to_numpy(float)[mask], variant="b").statistic
            out[f"{source}_tau_{'c' if source == 'expert' else 'b'}_{subset}"] = float(tau)
            out[f"{source}_pairs_{subset}"] = int(mask.sum())
    return out


def course_child_images(course: Any) -> list[str]:
    """Images any of whose known captions (own query ids) mention a child."""

    caps = course.captions
    owner = caps["query_id"].str.split("#").str[0]
    return sorted(set(owner[mentions_child(caps["query_text"].tolist())]))


def evaluate(data_dir: str | Path, model_dir: str | Path | None = None, out_dir: str | Path | None = None,
             sheet_queries: int = 10, sheet_k: int = 5, seed: int = 0, policy: str = "strict",
             progress: bool = True) -> dict[str, Any]:
    data_dir = Path(data_dir)
    queries = load_test_queries(data_dir / "test_queries.csv", data_dir / "test_images")
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="retrieval-eval-"))
    out.mkdir(parents=True, exist_ok=True)
    build_index_with_model(data_dir / "test_images", out / "index", model_dir, progress=progress)
    retriever = Retriever.open(out / "index", model_dir)
    names = [Path(p).name for p in retriever.store.meta["rel_path"].astype(str)]
    col = {n: i for i, n in enumerate(names)}
    missing = sorted(set(queries["image"]) - set(col))
    if missing:
        raise DatasetError(f"{data_dir / 'test_images'}: query images could not be indexed: {missing[:3]}; "
                           "replace or remove those files / queries")
    texts = queries["query_text"].tolist()
    target = queries["image"].map(col).to_numpy()
    img_z = np.asarray(retriever.store.vectors[:], np.float32)
    txt_raw = retriever.text_encoder.encode(texts)
    txt_z = retriever.model.project_texts(txt_raw)
    cosine = txt_z @ img_z.T
    rerank = retriever.model.rank_grid(img_z, txt_z, txt_raw,
                                       retriever.bridged.grid(txt_raw) if retriever.bridged is not None else None)
    child = mentions_child(texts)
    metrics: dict[str, Any] = {"n_queries": len(texts), "n_images": len(names), "n_child_queries": int(child.sum())}
    for subset, mask in (("all", np.ones(len(texts), bool)), ("non_child", ~child)):
        metrics[f"projection_{subset}"] = retrieval_metrics(cosine[mask], target[mask])
        metrics[f"reranked_{subset}"] = retrieval_metrics(rerank[mask], target[mask])
    if (data_dir / "ExpertAnnotations.tsv").is_file():
        course = load_course(data_dir)
        known = dict(zip(course.captions["query_id"], course.captions["query_text"]))
        known.update(dict(zip(queries["query_id"], queries["query_text"])))
        metrics.update(_kendall(course, names, img_z, retriever, known, dict(zip(texts, txt_raw))))
    metrics["sheet"] = str(write_sheet(retriever, texts, out, sheet_queries, sheet_k, seed, policy))
    write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def write_sheet(retriever: Any, texts: list[str], out: Path, n: int, k: int, seed: int, policy: str) -> Path:
    """HTML + PNG sheet of `n` random queries (fixed seed) with their top-k under `policy`, and the same queries
    under `audit` beside it (sheet_audit.png/html: every image, the detector's boxes and reasons), all through the
    policy choke point."""

    rng = np.random.default_rng(seed)
    picked = [texts[i] for i in sorted(rng.choice(len(texts), size=min(n, len(texts)), replace=False))]
    raw = retriever.search_many(picked, k=k)
    results = [apply_policy(r, policy) for r in raw]
    write_png(results, out / "sheet.png", k, title=f"policy {policy}: {len(results)} random queries (seed {seed}), top-{k}")
    if policy != "audit":
        audit = [apply_policy(r, "audit") for r in raw]
        write_png(audit, out / "sheet_audit.png", k, title="policy audit (operators): same queries, boxes = faces "
                  "with P(child)")
        results_page("retrieve evaluate: sample queries (audit)", audit, out / "sheet_audit.html",
                     intro="<p>Same queries under <code>--policy audit</code>; strict view: <a href='sheet.html'>sheet.html</a>.</p>")
    return results_page("retrieve evaluate: sample queries", results, out / "sheet.html",
                        intro=f"<p>{len(results)} random queries (seed {seed}), top-{k}, policy {policy}. "
                              "Operator view: <a href='sheet_audit.html'>sheet_audit.html</a>.</p>")


def metrics_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """Rows (scorer, subset) x columns R@1/R@5/R@10/MRR/medR, for printing."""
    rows = {key: val for key, val in metrics.items() if isinstance(val, dict)}
    return pd.DataFrame(rows).T[["R@1", "R@5", "R@10", "MRR", "medR", "n"]]
