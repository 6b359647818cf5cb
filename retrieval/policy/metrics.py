"""Measuring the legal policy: probe metrics, held-out query blocking rates, and a precision-recall plot."""
from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from retrieval.errors import DatasetError
from retrieval.policy.lexicon import mentions_child

__all__ = ["policy_metrics", "query_policy_metrics", "load_policy_queries", "read_policy_file", "plot_child_pr"]


def policy_metrics(y_true: npt.ArrayLike, scores: npt.ArrayLike, threshold: float) -> dict[str, float]:
    """AUC, average precision and precision / recall / FPR at `threshold` (scores >= threshold = child)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y_true, bool)
    s = np.asarray(scores, np.float64)
    pred = s >= threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    both = 0 < y.sum() < len(y)
    return {
        "n": float(len(y)),
        "positives": float(y.sum()),
        "auc": float(roc_auc_score(y, s)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, s)) if both else float("nan"),
        "threshold": float(threshold),
        "recall": tp / max(int(y.sum()), 1),
        "precision": tp / max(tp + fp, 1),
        "fpr": fp / max(int((~y).sum()), 1),
        "flagged_share": float(pred.mean()) if len(y) else 0.0,
    }


def query_policy_metrics(
    texts: Sequence[str], is_child: npt.ArrayLike, probe_probs: npt.ArrayLike | None, threshold: float
) -> dict[str, dict[str, float]]:
    """Blocking rates of lexicon, probe and lexicon-OR-probe on labelled queries.

    Returns {"lexicon"|"probe"|"combined": {"child_blocked", "adult_blocked", "n_child", "n_adult"}}.
    """
    y = np.asarray(is_child, bool)
    lex = mentions_child(texts)
    rules = {"lexicon": lex}
    if probe_probs is not None:
        probe = np.asarray(probe_probs, np.float64) >= threshold
        rules["probe"] = probe
        rules["combined"] = lex | probe

    def rates(blocked: np.ndarray) -> dict[str, float]:
        return {
            "child_blocked": float(blocked[y].mean()) if y.any() else float("nan"),
            "adult_blocked": float(blocked[~y].mean()) if (~y).any() else float("nan"),
            "n_child": float(y.sum()),
            "n_adult": float((~y).sum()),
        }

    return {name: rates(b) for name, b in rules.items()}


def load_policy_queries(path: Path) -> tuple[list[str], npt.NDArray[np.bool_]]:
    """Read a `text<TAB>label[<TAB>kind]` file (label child|adult, '#' comment lines) -> (texts, is_child)."""
    texts, labels, _ = read_policy_file(path)
    return texts, labels


def read_policy_file(path: Path) -> tuple[list[str], npt.NDArray[np.bool_], list[str] | None]:
    """(texts, is_child, kinds): kinds is the optional third column (e.g. ordinary|hard for adult queries), None
    when the file has only `text<TAB>label`."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"no policy query file at {str(path)!r}; expected a TSV with columns text, label")
    texts, labels, kinds = [], [], []
    with open(path, encoding="utf-8", newline="") as fh:
        rows = csv.reader((line for line in fh if not line.startswith("#")), delimiter="\t")
        header = next(rows, None)
        if header not in (["text", "label"], ["text", "label", "kind"]):
            raise DatasetError(f"{path}: header must be `text<TAB>label` or `text<TAB>label<TAB>kind`, got {header!r}")
        for lineno, row in enumerate(rows, 2):
            if len(row) != len(header) or row[1] not in ("child", "adult"):
                raise DatasetError(f"{path}: row {lineno} must be `{'<TAB>'.join(header)}` with label child|adult, "
                                   f"got {row!r}")
            texts.append(row[0])
            labels.append(row[1] == "child")
            kinds.append(row[2] if len(header) == 3 else "")
    return texts, np.array(labels, dtype=bool), kinds if len(header) == 3 else None


def plot_child_pr(
    curves: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]],
    path: Path,
    operating_points: Mapping[str, float] | None = None,
    title: str = "Child detection: precision-recall",
) -> Path:
    """Save a precision-recall PNG: one curve per name -> (y_true, scores); a dot at each operating threshold.

    Args:
        curves: e.g. {"image probe (lite0, LR)": (labels, oof_probs), ...}.
        path: output .png (written atomically).
        operating_points: name -> threshold to mark on that curve.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (y, s) in curves.items():
        y, s = np.asarray(y, bool), np.asarray(s, np.float64)
        prec, rec, _ = precision_recall_curve(y, s)
        line, = ax.plot(rec, prec, label=f"{name} (AP {average_precision_score(y, s):.2f})")
        if operating_points and name in operating_points:
            m = policy_metrics(y, s, operating_points[name])
            ax.plot([m["recall"]], [m["precision"]], "o", color=line.get_color())
            ax.annotate(f"t={m['threshold']:.2f}", (m["recall"], m["precision"]), textcoords="offset points",
                        xytext=(-40, -12), fontsize=8)
    ax.axvline(0.97, color="grey", lw=0.8, ls=":")
    ax.axhline(0.80, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="recall (children found)", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
