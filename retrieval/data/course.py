"""Load a folder in the course layout into typed, validated tables.

Layout (names are fixed by the course)::

    train_dataset.csv        image,query_id,query_text         (header, comma-separated, quoted)
    ExpertAnnotations.tsv    image query_id e1 e2 e3           (no header; grades 1-4)
    CrowdAnnotations.tsv     image query_id share_yes n_yes n_no (no header; share in 0-1)
    train_images/            the JPEGs named in the `image` columns
    extra_captions.tsv       image#n caption                   (optional, no header)
    test_queries.csv         |query_id|query_text|image        (optional, '|'-separated, unnamed index)
    test_images/             (optional, with test_queries.csv)

Every check is vectorised over the table and reports the *first* bad line as one `DatasetError` message
naming the file, the 1-based line number in that file, what was found and how to fix it. Junk in image
folders (hidden files such as .DS_Store, non-image extensions, sub-folders) is ignored, never an error.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from retrieval.errors import DatasetError

TRAIN_CSV = "train_dataset.csv"
EXPERT_TSV = "ExpertAnnotations.tsv"
CROWD_TSV = "CrowdAnnotations.tsv"
EXTRA_TSV = "extra_captions.tsv"
TEST_CSV = "test_queries.csv"
TRAIN_IMAGES = "train_images"
TEST_IMAGES = "test_images"

TRAIN_COLUMNS = ("image", "query_id", "query_text")
EXPERT_COLUMNS = ("image", "query_id", "e1", "e2", "e3")
CROWD_COLUMNS = ("image", "query_id", "share_yes", "n_yes", "n_no")
EXTRA_COLUMNS = ("query_id", "image", "query_text")
TEST_COLUMNS = ("query_id", "query_text", "image")
GRADE_COLUMNS = ("e1", "e2", "e3")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
#: `<image file>#<caption number>`, e.g. 1056338697_4f7d7ce270.jpg#2.
QUERY_ID_PATTERN = r"^[^#\s]+#\d+$"
_LINE_IN_PARSER_ERROR = re.compile(r"line (\d+)")


@dataclass(frozen=True, eq=False)
class CourseData:
    """The course tables with fixed column names (see module docstring); frames are not to be mutated.

    `captions` maps every known query_id to its text (train_dataset.csv first, then extra_captions.tsv),
    which is how crowd pairs whose query is not in train_dataset.csv get a text.
    """

    root: Path
    train: pd.DataFrame
    expert: pd.DataFrame
    crowd: pd.DataFrame
    extra_captions: pd.DataFrame | None
    train_images_dir: Path
    train_image_names: tuple[str, ...]
    test_queries: pd.DataFrame | None = None
    test_images_dir: Path | None = None
    test_image_names: tuple[str, ...] = ()

    @property
    def captions(self) -> pd.DataFrame:
        """Unique (query_id, query_text), train_dataset.csv texts taking precedence over extra captions."""
        parts = [self.train[["query_id", "query_text"]]]
        if self.extra_captions is not None:
            parts.append(self.extra_captions[["query_id", "query_text"]])
        return pd.concat(parts, ignore_index=True).drop_duplicates("query_id").reset_index(drop=True)


def _error(path: Path, line: int | None, problem: str, fix: str) -> DatasetError:
    where = f"{path}" if line is None else f"{path}, line {line}"
    return DatasetError(f"{where}: {problem}; fix: {fix}")


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise _error(path, None, f"file not found ({what})",
                     f"point --data at a folder in the course layout that contains {path.name}")


def _read_table(path: Path, columns: Sequence[str], *, sep: str, header: bool, quoted: bool) -> pd.DataFrame:
    """Read every field as a string; wrong field counts become a DatasetError with the line number."""
    first_data_line = 2 if header else 1
    try:
        frame = pd.read_csv(
            path, sep=sep, header=0 if header else None, dtype=str, keep_default_na=False,
            quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE, skip_blank_lines=True,
            engine="c",
        )
    except pd.errors.EmptyDataError:
        raise _error(path, None, "file is empty", f"write {len(columns)} columns: {', '.join(columns)}") from None
    except pd.errors.ParserError as err:
        found = _LINE_IN_PARSER_ERROR.search(str(err))
        line = int(found.group(1)) if found else None
        raise _error(path, line, f"wrong number of columns ({err})".replace("\n", " "),
                     f"each line needs exactly {len(columns)} fields: {', '.join(columns)}") from None
    except UnicodeDecodeError as err:
        raise _error(path, None, f"not UTF-8 text ({err.reason})", "save the file as UTF-8") from None
    if frame.shape[1] != len(columns):
        raise _error(path, first_data_line - (1 if header else 0),
                     f"expected {len(columns)} columns, found {frame.shape[1]}",
                     f"each line needs exactly {len(columns)} fields: {', '.join(columns)}")
    if header and tuple(frame.columns) != tuple(columns):
        raise _error(path, 1, f"header is {list(frame.columns)}", f"use the header {','.join(columns)}")
    frame.columns = list(columns)
    # Short lines are padded with NaN by the parser: report them as a column-count problem.
    short = frame.isna().any(axis=1).to_numpy()
    _raise_first(path, short, frame.index, first_data_line,
                 lambda i: f"expected {len(columns)} fields, found fewer",
                 f"each line needs exactly {len(columns)} fields: {', '.join(columns)}")
    return frame.reset_index(drop=True)


def _raise_first(path: Path, bad: np.ndarray, index: pd.Index, first_data_line: int,
                 problem, fix: str) -> None:
    """Raise for the first True in `bad` (position i -> file line first_data_line + i)."""
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise _error(path, first_data_line + pos, problem(pos), fix)


def _numeric(frame: pd.DataFrame, path: Path, column: str, first_line: int, kind: str) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    _raise_first(path, values.isna().to_numpy(), frame.index, first_line,
                 lambda i: f"{column}={frame[column].iloc[i]!r} is not a {kind}",
                 f"write a {kind} in column {column}")
    return values


def _check_query_ids(frame: pd.DataFrame, path: Path, first_line: int) -> None:
    ok = frame["query_id"].str.match(QUERY_ID_PATTERN).to_numpy(dtype=bool)
    _raise_first(path, ~ok, frame.index, first_line,
                 lambda i: f"query_id {frame['query_id'].iloc[i]!r} is not of the form <image>#<n>",
                 "write query ids as the image file name, '#', and the caption number (e.g. 123_ab.jpg#2)")


def _check_images(frame: pd.DataFrame, path: Path, first_line: int, names: frozenset[str], folder: Path) -> None:
    missing = ~frame["image"].isin(names).to_numpy()
    _raise_first(path, missing, frame.index, first_line,
                 lambda i: f"image {frame['image'].iloc[i]!r} is not in {folder}",
                 f"add the image to {folder.name}/ or remove the line")


def _check_duplicates(frame: pd.DataFrame, path: Path, first_line: int, keys: Sequence[str]) -> pd.DataFrame:
    """Drop exact repeats silently; refuse a key that appears twice with different values."""
    frame = frame.drop_duplicates()
    clash = frame.duplicated(list(keys), keep=False).to_numpy()
    if clash.any():
        first = frame.index[np.flatnonzero(clash)[:2]]
        raise _error(path, first_line + int(first[-1]),
                     f"{'/'.join(keys)} {tuple(frame.loc[first[0], list(keys)])} also on line "
                     f"{first_line + int(first[0])} with different values",
                     "keep one line per key")
    return frame.reset_index(drop=True)


def list_images(folder: Path) -> tuple[str, ...]:
    """Sorted image file names in `folder`; hidden files, sub-folders and non-image extensions are skipped."""
    if not folder.is_dir():
        raise _error(folder, None, "image folder not found",
                     f"put the JPEGs in {folder.name}/ next to the annotation files")
    names = [p.name for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS]
    return tuple(sorted(names))


def _load_train(path: Path, images: frozenset[str], folder: Path) -> pd.DataFrame:
    _require_file(path, "image,query_id,query_text table")
    frame = _read_table(path, TRAIN_COLUMNS, sep=",", header=True, quoted=True)
    _check_query_ids(frame, path, 2)
    _check_images(frame, path, 2, images, folder)
    frame = _check_duplicates(frame, path, 2, ("image", "query_id"))
    texts = frame.groupby("query_id")["query_text"].nunique()
    if (texts > 1).any():
        qid = texts.index[texts.to_numpy() > 1][0]
        line = 2 + int(np.flatnonzero(frame["query_id"].to_numpy() == qid)[1])
        raise _error(path, line, f"query_id {qid!r} has two different query_text values",
                     "give each query_id one text")
    return frame


def _load_expert(path: Path, images: frozenset[str], folder: Path) -> pd.DataFrame:
    _require_file(path, "headerless image, query_id, e1, e2, e3 grades 1-4")
    frame = _read_table(path, EXPERT_COLUMNS, sep="\t", header=False, quoted=False)
    for col in GRADE_COLUMNS:
        values = _numeric(frame, path, col, 1, "whole number 1-4")
        bad = ~values.isin([1, 2, 3, 4]).to_numpy()
        _raise_first(path, bad, frame.index, 1, lambda i, c=col: f"grade {c}={frame[c].iloc[i]!r} is outside 1-4",
                     "expert grades must be 1, 2, 3 or 4")
        frame[col] = values.astype(np.int8)
    _check_query_ids(frame, path, 1)
    _check_images(frame, path, 1, images, folder)
    return _check_duplicates(frame, path, 1, ("image", "query_id"))


def _load_crowd(path: Path, images: frozenset[str], folder: Path) -> pd.DataFrame:
    _require_file(path, "headerless image, query_id, share_yes, n_yes, n_no")
    frame = _read_table(path, CROWD_COLUMNS, sep="\t", header=False, quoted=False)
    share = _numeric(frame, path, "share_yes", 1, "number 0-1")
    bad = ~share.between(0.0, 1.0).to_numpy()
    _raise_first(path, bad, frame.index, 1, lambda i: f"share_yes={frame['share_yes'].iloc[i]!r} is outside 0-1",
                 "share_yes is the fraction of workers who said yes, between 0 and 1")
    frame["share_yes"] = share.astype(np.float64)
    for col in ("n_yes", "n_no"):
        counts = _numeric(frame, path, col, 1, "whole number >= 0")
        bad = ~((counts >= 0) & (counts == counts.round())).to_numpy()
        _raise_first(path, bad, frame.index, 1, lambda i, c=col: f"{c}={frame[c].iloc[i]!r} is not a count >= 0",
                     f"{col} must be a whole number of votes")
        frame[col] = counts.astype(np.int64)
    _check_query_ids(frame, path, 1)
    _check_images(frame, path, 1, images, folder)
    return _check_duplicates(frame, path, 1, ("image", "query_id"))


def _load_extra(path: Path) -> pd.DataFrame:
    frame = _read_table(path, ("query_id", "query_text"), sep="\t", header=False, quoted=False)
    _check_query_ids(frame, path, 1)
    frame = _check_duplicates(frame, path, 1, ("query_id",))
    frame["image"] = frame["query_id"].str.split("#", n=1).str[0]
    return frame[list(EXTRA_COLUMNS)]


def load_test_queries(path: Path | str, images_dir: Path | str | None = None) -> pd.DataFrame:
    """Read the course `|`-separated test_queries.csv -> columns query_id, query_text, image.

    If `images_dir` is given (or a `test_images/` folder sits next to the file) every `image` must be in it.
    """
    path = Path(path)
    _require_file(path, "'|'-separated table with header |query_id|query_text|image")
    try:
        head = path.open(encoding="utf-8").readline().rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise _error(path, None, f"not UTF-8 text ({err.reason})", "save the file as UTF-8") from None
    if head.split("|")[1:] != list(TEST_COLUMNS):
        raise _error(path, 1, f"header is {head!r}", "use the course header |query_id|query_text|image")
    frame = _read_table(path, ("index",) + TEST_COLUMNS, sep="|", header=False, quoted=True)
    frame = frame.iloc[1:][list(TEST_COLUMNS)].reset_index(drop=True)
    _check_query_ids(frame, path, 2)
    folder = Path(images_dir) if images_dir is not None else path.parent / TEST_IMAGES
    if images_dir is not None or folder.is_dir():
        _check_images(frame, path, 2, frozenset(list_images(folder)), folder)
    return _check_duplicates(frame, path, 2, ("query_id",))


def read_queries_file(path: Path | str) -> list[str]:
    """Queries for `retrieve query --queries-file`: one per line, or a course test_queries.csv (its query_text).

    Blank lines are skipped. A file whose first line is the course header `|query_id|query_text|image`
    is read with `load_test_queries` (image folder not checked: only the texts are needed).
    """
    path = Path(path)
    _require_file(path, "queries file, one query per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise _error(path, None, f"not UTF-8 text ({err.reason})", "save the file as UTF-8") from None
    lines = text.splitlines()
    if lines and lines[0].strip().split("|")[1:] == list(TEST_COLUMNS):
        return load_test_queries(path)["query_text"].str.strip().tolist()
    queries = [line.strip() for line in lines if line.strip()]
    if not queries:
        raise _error(path, None, "no queries found", "write one query per line")
    return queries


def load_course(data_dir: Path | str) -> CourseData:
    """Load and validate a course-layout folder (see module docstring) into a `CourseData`."""
    root = Path(data_dir)
    if not root.is_dir():
        raise _error(root, None, "data folder not found", "pass --data DIR pointing at the course-train folder")
    train_dir = root / TRAIN_IMAGES
    names = list_images(train_dir)
    images = frozenset(names)
    train = _load_train(root / TRAIN_CSV, images, train_dir)
    expert = _load_expert(root / EXPERT_TSV, images, train_dir)
    crowd = _load_crowd(root / CROWD_TSV, images, train_dir)
    extra = _load_extra(root / EXTRA_TSV) if (root / EXTRA_TSV).is_file() else None
    test, test_dir, test_names = None, None, ()
    if (root / TEST_CSV).is_file():
        test_dir = root / TEST_IMAGES
        test_names = list_images(test_dir)
        test = load_test_queries(root / TEST_CSV, test_dir)
    return CourseData(root=root, train=train, expert=expert, crowd=crowd, extra_captions=extra,
                      train_images_dir=train_dir, train_image_names=names, test_queries=test,
                      test_images_dir=test_dir, test_image_names=test_names)
