"""EDA report for a course-layout folder: a static index.html with PNG plots and the key numbers.

`write_report(data_dir, out_dir)` builds everything in a sibling temp folder and swaps it into place (`atomic_folder`), so
a reader never sees a half-written report and a failed run leaves the previous one intact.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from retrieval.atomic import atomic_folder  # noqa: E402
from retrieval.data.course import GRADE_COLUMNS, CourseData, load_course  # noqa: E402
from retrieval.data.targets import (  # noqa: E402
    DEFAULT_EXPERT_METHOD,
    build_targets,
    compare_expert_methods,
    fit_beta_prior,
)
from retrieval.policy.lexicon import mentions_child  # noqa: E402
from retrieval.config import REPO_ROOT
from retrieval.learn.model import load_model
from retrieval.policy.train import evaluate_policy


@dataclass(frozen=True)
class _Plot:
    file: str
    title: str
    caption: str


def _save(fig: plt.Figure, folder: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(folder / name, dpi=90)
    plt.close(fig)
    return name


def _expert_plot(course: CourseData, folder: Path) -> tuple[_Plot, dict[str, str]]:
    grades = course.expert[list(GRADE_COLUMNS)].to_numpy()
    n_distinct = 1 + (np.diff(np.sort(grades, axis=1), axis=1) != 0).sum(axis=1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    values, counts = np.unique(grades, return_counts=True)
    ax1.bar(values, counts, color="#4477aa")
    ax1.set(xlabel="expert grade (1 = no match, 4 = exact)", ylabel="grades", xticks=[1, 2, 3, 4],
            title="Expert grade distribution")
    labels = ["all 3 agree", "2 agree", "all differ"]
    shares = [(n_distinct == k).mean() if len(grades) else 0.0 for k in (1, 2, 3)]
    ax2.bar(labels, shares, color=["#228833", "#ccbb44", "#ee6677"])
    ax2.set(ylabel="share of pairs", ylim=(0, 1), title="Inter-expert agreement")
    name = _save(fig, folder, "expert_grades.png")
    numbers = {"expert pairs": f"{len(grades):,}",
               "experts unanimous": f"{shares[0]:.1%}", "two of three agree": f"{shares[1]:.1%}",
               "all three differ (majority vote drops)": f"{int((n_distinct == 3).sum()):,} ({shares[2]:.1%})"}
    return _Plot(name, "Expert grades", "Grades of all three experts and how often they agree."), numbers


def _crowd_plot(course: CourseData, folder: Path) -> tuple[_Plot, dict[str, str]]:
    crowd = course.crowd
    n_votes = crowd["n_yes"] + crowd["n_no"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.hist(crowd["share_yes"], bins=np.linspace(0, 1, 11), color="#4477aa")
    ax1.set(xlabel="share of workers saying yes", ylabel="pairs", yscale="log", title="Crowd share of yes")
    votes, counts = np.unique(n_votes, return_counts=True)
    ax2.bar(votes.astype(str), counts, color="#66ccee")
    ax2.set(xlabel="votes per pair", ylabel="pairs", yscale="log", title="Crowd votes per pair")
    name = _save(fig, folder, "crowd_votes.png")
    a, b = fit_beta_prior(crowd["n_yes"], crowd["n_no"])
    numbers = {"crowd pairs": f"{len(crowd):,}", "crowd pairs with share 0": f"{(crowd['share_yes'] == 0).mean():.1%}",
               "median votes per pair": f"{float(np.median(n_votes)) if len(crowd) else 0:g}",
               "fitted Beta prior (a, b)": f"({a:.3f}, {b:.3f}), prior mean {a / (a + b):.3f}"}
    return _Plot(name, "Crowd votes", "Share of yes votes (log scale) and number of votes per pair."), numbers


def _shared_plot(targets: pd.DataFrame, course: CourseData, folder: Path) -> _Plot:
    both = targets[targets["expert"].notna() & targets["crowd"].notna()].merge(
        course.crowd[["image", "query_id", "share_yes"]], on=["image", "query_id"], how="left")
    fig, ax = plt.subplots(figsize=(6, 4))
    levels = np.sort(both["expert"].unique())
    data = [both.loc[both["expert"] == lv, "share_yes"].to_numpy() for lv in levels]
    if len(data):
        ax.boxplot(data, positions=np.arange(len(levels)), widths=0.6)
        ax.set_xticks(np.arange(len(levels)), [f"{1 + 3 * lv:g}" for lv in levels])
    ax.set(xlabel=f"expert grade ({DEFAULT_EXPERT_METHOD} of 3)", ylabel="crowd share of yes",
           title=f"Expert vs crowd on {len(both):,} shared pairs")
    return _Plot(_save(fig, folder, "expert_vs_crowd.png"), "Expert vs crowd",
                 "Crowd share of yes for each expert grade, on the pairs both rated.")


def _target_plot(targets: pd.DataFrame, folder: Path) -> _Plot:
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 21)
    for source, frame in targets.groupby("source"):
        ax.hist(frame["target"], bins=bins, alpha=0.6, label=f"{source} ({len(frame):,})")
    ax.set(xlabel="target relevance (0-1)", ylabel="pairs", yscale="log", title="Aggregated targets by source")
    ax.legend()
    return _Plot(_save(fig, folder, "targets.png"), "Targets",
                 "Distribution of the aggregated 0-1 target (retrieval.data.targets defaults), by source.")


def _texts(course: CourseData) -> dict[str, pd.Series]:
    groups = {"train queries": course.train.drop_duplicates("query_id")["query_text"]}
    if course.extra_captions is not None:
        groups["extra captions"] = course.extra_captions["query_text"]
    if course.test_queries is not None:
        groups["test queries"] = course.test_queries["query_text"]
    return groups


def _length_plot(course: CourseData, folder: Path) -> tuple[_Plot, dict[str, str]]:
    fig, ax = plt.subplots(figsize=(6, 4))
    numbers = {}
    for label, texts in _texts(course).items():
        words = texts.str.split().str.len()
        ax.hist(words, bins=np.arange(0, words.max() + 2) if len(words) else 10, alpha=0.6, label=label,
                density=True)
        numbers[f"{label}: count / median words"] = f"{len(texts):,} / {float(words.median()):g}"
    ax.set(xlabel="words per caption", ylabel="share", title="Caption lengths")
    ax.legend()
    return _Plot(_save(fig, folder, "caption_lengths.png"), "Caption lengths", "Words per caption."), numbers


def _child_plot(course: CourseData, folder: Path) -> tuple[_Plot, dict[str, str]]:
    groups = _texts(course)
    shares = {label: float(mentions_child(texts.tolist()).mean()) if len(texts) else 0.0
              for label, texts in groups.items()}
    numbers = {f"{label} mentioning children": f"{s:.1%}" for label, s in shares.items()}
    if course.extra_captions is not None and len(course.extra_captions):
        flags = course.extra_captions.assign(child=mentions_child(course.extra_captions["query_text"].tolist()))
        per_image = flags.groupby("image")["child"].any()
        shares["images with any child caption"] = float(per_image.mean())
        numbers["train images with >= 1 caption mentioning children"] = (
            f"{int(per_image.sum()):,} of {len(per_image):,} ({per_image.mean():.1%})")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(list(shares), list(shares.values()), color="#aa3377")
    ax.set(ylabel="share", ylim=(0, 1), title="Captions mentioning children (policy lexicon)")
    ax.tick_params(axis="x", labelrotation=15)
    return _Plot(_save(fig, folder, "child_mentions.png"), "Children in captions",
                 "Share of texts matched by retrieval.policy.lexicon.mentions_child."), numbers


def _html(title: str, numbers: dict[str, str], methods: pd.DataFrame, plots: list[_Plot]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in numbers.items())
    method_rows = "".join(
        f"<tr><td>{html.escape(r.method)}{' (default)' if r.method == DEFAULT_EXPERT_METHOD else ''}</td>"
        f"<td>{r.expert_pairs:,}</td><td>{r.shared_pairs:,}</td><td>{r.tau:.3f}</td>"
        f"<td>{r.tau_raw_share:.3f}</td></tr>"
        for r in methods.itertuples())
    figures = "".join(
        f'<figure><h2>{html.escape(p.title)}</h2><img src="{p.file}" alt="{html.escape(p.title)}">'
        f"<figcaption>{html.escape(p.caption)}</figcaption></figure>" for p in plots)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1>
<h2>Key numbers</h2><table>{rows}</table>
<h2>Expert aggregation vs crowd (Kendall tau-b on pairs both rated)</h2>
<table><tr><th>expert method</th><th>expert pairs kept</th><th>shared pairs</th><th>tau vs smoothed crowd</th>
<th>tau vs raw share</th></tr>{method_rows}</table>
{figures}
</body></html>
"""


def _policy_section(data_dir: Path, folder: Path) -> tuple[_Plot, dict[str, str]]:
    """Child-image probe precision-recall (image-grouped out-of-fold) + query blocking on the held-out phrasings.

    Uses the shipped default model's encoders; features come from the embedding cache after `retrieve train`."""

    cfg = load_model().config
    queries = REPO_ROOT / "tests" / "fixtures" / "policy_queries.tsv"
    res = evaluate_policy(data_dir, cfg.image_encoder, cfg.text_encoder, cfg.image_views,
                          queries=queries if queries.is_file() else None, plot=folder / "child_pr.png")
    img = res["image_probe"]
    nums = {f"child image probe ({cfg.image_encoder}) AUC": f"{img.get('auc', float('nan')):.3f}",
            "child image probe recall / precision at threshold": f"{img.get('recall', float('nan')):.3f} / "
                                                                  f"{img.get('precision', float('nan')):.3f}"}
    for rule, m in res.get("queries", {}).items():
        nums[f"held-out queries blocked by {rule}: child / adult"] = f"{m['child_blocked']:.1%} / {m['adult_blocked']:.1%}"
    return _Plot("child_pr.png", "Child-content policy",
                 "Image probe precision-recall on image-grouped out-of-fold predictions; dot = operating threshold."), nums


def write_report(data_dir: Path, out_dir: Path, policy: bool = False) -> Path:
    """Write out_dir/index.html (+ PNGs) describing the course data in `data_dir`; returns the html path.

    `policy=True` adds the child-content probe section (needs the real encoders; cached features make it fast)."""
    course = load_course(data_dir)
    out_dir = Path(out_dir)
    with atomic_folder(out_dir) as tmp:
        targets = build_targets(course)
        methods = compare_expert_methods(course)
        plots: list[_Plot] = []
        numbers: dict[str, str] = {"train images": f"{len(course.train_image_names):,}",
                                   "train_dataset.csv rows": f"{len(course.train):,}"}

        def add(section: tuple[_Plot, dict[str, str]]) -> None:
            plots.append(section[0])
            numbers.update(section[1])

        add(_expert_plot(course, tmp))
        add(_crowd_plot(course, tmp))
        plots.append(_shared_plot(targets, course, tmp))
        default = methods.set_index("method").loc[DEFAULT_EXPERT_METHOD]
        numbers["pairs rated by experts and crowd"] = f"{int(default['shared_pairs']):,}"
        numbers[f"Kendall tau expert ({DEFAULT_EXPERT_METHOD}) vs crowd"] = f"{default['tau']:.3f}"
        plots.append(_target_plot(targets, tmp))
        numbers["target rows (unique image, query_id)"] = f"{len(targets):,}"
        numbers["own-caption pairs (target 1.0)"] = f"{int(targets['own_caption'].sum()):,}"
        numbers["mean target"] = f"{targets['target'].mean():.3f}"
        add(_length_plot(course, tmp))
        add(_child_plot(course, tmp))
        if policy:
            add(_policy_section(Path(data_dir), tmp))
        if course.test_queries is not None:
            numbers["test queries / test images"] = (
                f"{len(course.test_queries):,} / {len(course.test_image_names):,}")
        (tmp / "index.html").write_text(_html(f"Course data report: {course.root.name}", numbers, methods, plots),
                                        encoding="utf-8")
    return out_dir / "index.html"
