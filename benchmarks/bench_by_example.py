"""Search by example on the course data: does an image query find images about the same subject as often as a text
query made of that image's own caption?

    python benchmarks/bench_by_example.py [--json]

Images: the training images labelled child-free by eye (what the product may show). Subject of an image: the most
frequent of a fixed list of subject nouns across its 5 Flickr8k captions (plural folded; images without one are left
out). 10 image-grouped folds of ~50 images each play the gallery, like the validation protocol. For each image of a
fold, with itself removed from the gallery: the image query ranks the gallery by cosine to its own projected vector
(what `retrieve query --image` and "more like this" do); the text query is its first caption, ranked by the shipped
score key (what `retrieve query TEXT` does). share@5 = share of queries with at least one of the top 5 about the same
subject. Both use the shipped default model (trained on these images, so both are in-sample alike).
Latency of searches by example is timed beside text queries on one index by `bench_query.py --by-example`.
Writes benchmarks/results/bench_by_example.json.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter

import numpy as np
from common import RESULTS_DIR, banner, ensure_repo_on_path, write_json

ensure_repo_on_path()

SUBJECTS = ("dog", "man", "woman", "boy", "girl", "child", "people", "person", "player", "biker", "bike", "bicycle",
            "horse", "cat", "bird", "car", "skier", "snowboarder", "surfer", "climber", "crowd", "team", "couple",
            "ball", "water", "beach", "snow", "motorcycle", "skateboarder", "cow", "sheep", "boat")
_PLURAL = {"dogs": "dog", "men": "man", "women": "woman", "boys": "boy", "girls": "girl", "children": "child",
           "players": "player", "bikers": "biker", "bikes": "bike", "horses": "horse", "cats": "cat", "birds": "bird",
           "cars": "car", "skiers": "skier", "surfers": "surfer", "climbers": "climber", "balls": "ball", "cows": "cow",
           "boats": "boat", "persons": "person", "bicycles": "bicycle", "motorcycles": "motorcycle",
           "skateboarders": "skateboarder", "snowboarders": "snowboarder"}


def subject(captions: list[str]) -> str | None:
    words = Counter()
    for text in captions:
        for w in re.findall(r"[a-z]+", text.lower()):
            w = _PLURAL.get(w, w)
            if w in SUBJECTS:
                words[w] += 1
    return words.most_common(1)[0][0] if words else None


#: scenes of the composed (text + photo) queries: the words that mark a caption as being there, and the query text
SCENES = {"beach": (("beach", "sand", "ocean", "shore", "waves"), "at the beach"),
          "snow": (("snow", "snowy"), "in the snow"),
          "water": (("water", "pool", "lake", "river", "splashing"), "in the water"),
          "grass": (("grass", "grassy", "field", "lawn"), "on the grass"),
          "street": (("street", "road", "sidewalk", "city"), "on a city street")}
COMPOSED_SUBJECTS = ("dog", "man", "woman", "people", "bike")


def _mentions(captions: list[str], words: tuple[str, ...]) -> int:
    return sum(any(re.search(rf"\b{w}s?\b", c.lower()) for w in words) for c in captions)


def bridged_images(model, feats: np.ndarray):
    """The semantic bridge's view of these images (as an index stores it), or None for a model without a bridge."""
    from retrieval.learn.bridge import BridgedImages, image_classifier

    classify = image_classifier(model.bridge, model.config.image_encoder)
    return None if classify is None else BridgedImages.from_column(model.bridge, classify(feats))


def bridge_cos(bridged, txt_raw: np.ndarray, rows: np.ndarray):
    """Bridge cosines of one text with image `rows` (what `Retriever` adds to the key), None without a bridge."""
    return None if bridged is None else bridged.cos(bridged.bridge.query_classes(txt_raw)[0], rows)


def composed(model, names: list[str], captions: dict[str, list[str]], z_img: np.ndarray, text_encoder,
             bridged=None) -> dict:
    """Text + photo: the photo gives the subject, the words the scene. For subject S and scene W, every gallery image
    whose captions put S there (>= 2 of 5 mention S) but never W is a query photo, sent with W's words ("at the
    beach"); a hit is right when >= 2 of its captions mention S and >= 2 mention W. success@5 (any right hit among
    the top 5) for the photo alone, the words alone, rclip's sum of the two vectors ("mix 0.5"; "mix w": w * photo +
    (1 - w) * words) and what `Retriever.search_by_example` ships: photo score x text score ("product"). `example`:
    the first query that only the combination answers (its top 3 for each)."""
    from retrieval.learn.examples import calibration_from_json

    cal = calibration_from_json(model.config.example_calibration)
    n = len(names)
    has_s = {s: np.array([_mentions(captions[m], (s,) + tuple(k for k, v in _PLURAL.items() if v == s)) >= 2
                          for m in names]) for s in COMPOSED_SUBJECTS}
    in_w = {w: np.array([_mentions(captions[m], words) for m in names]) for w, (words, _) in SCENES.items()}
    texts = [phrase for _, phrase in SCENES.values()]
    feats_t = text_encoder.encode(texts)
    z_t = np.asarray(model.project_texts(feats_t), np.float32)
    every = np.arange(n)
    text_score = {w: model.calibrate(model.rank_key(z_img, z_t[j], feats_t[j], bridge_cos(bridged, feats_t[j], every)))
                  for j, w in enumerate(SCENES)}
    rankers: dict[str, list[bool]] = {"photo": [], "words": [], "mix 0.25": [], "mix 0.5": [], "mix 0.75": [],
                                      "product": []}
    cells, example = [], None
    for s in COMPOSED_SUBJECTS:
        for j, w in enumerate(SCENES):
            right = has_s[s] & (in_w[w] >= 2)
            queries = np.flatnonzero(has_s[s] & (in_w[w] == 0))
            if right.sum() < 3 or len(queries) == 0:
                continue
            cells.append({"subject": s, "scene": w, "queries": int(len(queries)), "right_images": int(right.sum())})
            for q in queries:
                others = np.arange(n) != q
                cos_i = z_img @ z_img[q]
                s_img = cal(cos_i) if cal is not None else (cos_i + 1) / 2
                keys = {"photo": cos_i, "words": text_score[w], "product": s_img * text_score[w]}
                for wt in (0.25, 0.5, 0.75):
                    zq = wt * z_img[q] + (1 - wt) * z_t[j]
                    keys[f"mix {wt:g}"] = z_img @ (zq / np.linalg.norm(zq))
                tops = {}
                for name, key in keys.items():
                    tops[name] = np.flatnonzero(others)[np.argsort(-key[others], kind="stable")[:5]]
                    rankers[name].append(bool(right[tops[name]].any()))
                if example is None and not right[tops["photo"]].any() and not right[tops["words"]].any() \
                        and right[tops["product"][:3]].sum() >= 2:
                    example = {"query_photo": names[q], "query_photo_caption": captions[names[q]][0],
                               "query_words": SCENES[w][1], **{
                        name: [{"image": names[i], "right": bool(right[i]),
                                "captions": captions[names[i]][0]} for i in tops[name][:3]]
                        for name in ("photo", "words", "product")}}
    return {"cells": cells, "queries": len(rankers["photo"]), "example": example,
            "success_at_5": {k: round(float(np.mean(v)), 4) for k, v in rankers.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from retrieval.config import course_data_dir
    from retrieval.learn.features import course_embeddings, read_extra_captions
    from retrieval.learn.model import load_model
    from retrieval.learn.validation import image_folds
    from retrieval.policy.visual_labels import labels_for
    from retrieval.vectors import l2n

    info = banner({"benchmark": "search by example vs text, course data"})
    model = load_model(None)
    c = model.config
    emb = course_embeddings(course_data_dir(), c.image_encoder, c.text_encoder, tuple(c.image_views))
    captions: dict[str, list[str]] = {}
    for qid, text in read_extra_captions(course_data_dir()):
        captions.setdefault(qid.split("#", 1)[0], []).append(text)
    labels = labels_for(emb.image_names)
    keep = [i for i, n in enumerate(emb.image_names) if labels[i] == "none" and subject(captions.get(n, []))]
    subj = {i: subject(captions[emb.image_names[i]]) for i in keep}
    z_img = l2n(np.asarray(model.project_images(emb.image_feats[keep]), np.float32))
    first = [captions[emb.image_names[i]][0] for i in keep]
    from retrieval.encoders import build_text_encoder

    text_encoder = build_text_encoder(c.text_encoder)
    feats_t = text_encoder.encode(first)
    z_txt = np.asarray(model.project_texts(feats_t), np.float32)
    bridged = bridged_images(model, emb.image_feats[keep])
    hits = {"image": [], "text": []}
    for _, va in image_folds(len(keep), 10, 0):
        va = np.asarray(va)
        for pos in va:
            gallery = va[va != pos]
            want = subj[keep[pos]]
            img_rank = gallery[np.argsort(-(z_img[gallery] @ z_img[pos]), kind="stable")[:5]]
            key = model.rank_key(z_img[gallery], z_txt[pos], feats_t[pos], bridge_cos(bridged, feats_t[pos], gallery))
            txt_rank = gallery[np.argsort(-key, kind="stable")[:5]]
            hits["image"].append(any(subj[keep[g]] == want for g in img_rank))
            hits["text"].append(any(subj[keep[g]] == want for g in txt_rank))
    out = {**info, "queries": len(hits["image"]), "subjects": dict(Counter(subj.values()).most_common()),
           "share_at_5_image_query": round(float(np.mean(hits["image"])), 4),
           "share_at_5_text_query": round(float(np.mean(hits["text"])), 4)}
    ok = [i for i, n in enumerate(emb.image_names) if labels[i] == "none" and len(captions.get(n, [])) >= 5]
    out["composed"] = composed(model, [emb.image_names[i] for i in ok], captions,
                               l2n(np.asarray(model.project_images(emb.image_feats[ok]), np.float32)), text_encoder,
                               bridged_images(model, emb.image_feats[ok]))
    path = write_json(RESULTS_DIR / "bench_by_example.json", out)
    print(json.dumps({k: out[k] for k in ("queries", "share_at_5_image_query", "share_at_5_text_query")}))
    print(json.dumps(out["composed"]["success_at_5"]))
    print(f"wrote {path}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
