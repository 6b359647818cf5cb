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
naming the file, the 1-based line number in that file, what was found and how to fix it. Fields are stripped
of surrounding whitespace; exact duplicate lines are dropped, a key repeated with other values is an error. Junk in image
folders (hidden files such as .DS_Store, non-image extensions, sub-folders) is ignored, never an error.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from retrieval.config import IMAGE_EXTENSIONS
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


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise _error(path, None, f"not UTF-8 text ({err.reason})", "save the file as UTF-8") from None


def _fields_fix(columns: Sequence[str], sep: str) -> str:
    return f"each line needs exactly {len(columns)} {sep!r}-separated fields: {', '.join(columns)}"


def _read_table(path: Path, columns: Sequence[str], *, sep: str) -> pd.DataFrame:
    """Headerless, unquoted file -> string frame indexed by 1-based file line; blank lines are skipped.

    Field counts are checked per line (vectorised) so both too many and too few fields name the exact line.
    """
    text = _read_text(path)
    # Split only on \n (as the parser does), not on the exotic separators str.splitlines also knows.
    lines = pd.Series(text.replace("\r\n", "\n").split("\n"), dtype=object)
    lines.index = lines.index + 1
    lines = lines[lines != ""]
    if lines.empty:
        raise _error(path, None, "file is empty", _fields_fix(columns, sep))
    n_fields = lines.str.count(re.escape(sep)) + 1
    bad = (n_fields != len(columns)).to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise _error(path, int(lines.index[pos]),
                     f"expected {len(columns)} columns, found {int(n_fields.iloc[pos])}", _fields_fix(columns, sep))
    frame = pd.read_csv(io.StringIO(text), sep=sep, header=None, names=list(columns), dtype=str,
                        keep_default_na=False, na_filter=False, quoting=csv.QUOTE_NONE, skip_blank_lines=True)
    if len(frame) != len(lines):
        raise _error(path, None, f"parsed {len(frame)} rows from {len(lines)} lines (stray carriage returns?)",
                     "save the file with plain \\n line endings and one record per line")
    frame.index = lines.index
    return frame.apply(lambda col: col.str.strip())  # stray spaces around fields are noise


def _read_quoted(path: Path, header: Sequence[str], columns: Sequence[str], *, sep: str) -> pd.DataFrame:
    """CSV with a header row and quoting -> string frame indexed by file line (header = line 1).

    The header fixes the width: the parser rejects longer lines; shorter ones leave empty fields, which are
    refused because every course column is required.
    """
    _read_text(path)  # UTF-8 check with a clear message
    fix = _fields_fix(columns, sep)
    try:
        frame = pd.read_csv(path, sep=sep, header=0, dtype=str, keep_default_na=False, na_filter=False,
                            quoting=csv.QUOTE_MINIMAL, skip_blank_lines=True)
    except pd.errors.EmptyDataError:
        raise _error(path, None, "file is empty", fix) from None
    except pd.errors.ParserError as err:
        found = _LINE_IN_PARSER_ERROR.search(str(err))
        raise _error(path, int(found.group(1)) if found else None,
                     f"wrong number of columns ({str(err).splitlines()[-1]})", fix) from None
    found_header = ["" if str(c).startswith("Unnamed:") else str(c) for c in frame.columns]
    if found_header != list(header):
        shown = sep.join(found_header)
        raise _error(path, 1, f"header is {shown!r}", f"use the header {sep.join(header)!r}")
    frame.columns = list(columns)
    frame.index = frame.index + 2
    frame = frame.apply(lambda col: col.str.strip())  # stray spaces around fields are noise
    empty = (frame[[c for c in columns if c != "index"]] == "").any(axis=1)
    _raise_first(path, empty.to_numpy(), frame.index, lambda i: "empty field or missing column", fix)
    return frame


def _raise_first(path: Path, bad: npt.NDArray[np.bool_], lines: pd.Index,
                 problem: Callable[[int], str], fix: str) -> None:
    """Raise for the first True in `bad`; `lines` holds each row's 1-based line number in the file."""
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise _error(path, int(lines[pos]), problem(pos), fix)


def _numeric(frame: pd.DataFrame, path: Path, column: str, kind: str) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    _raise_first(path, values.isna().to_numpy(), frame.index,
                 lambda i: f"{column}={frame[column].iloc[i]!r} is not a {kind}",
                 f"write a {kind} in column {column}")
    return values


def _check_query_ids(frame: pd.DataFrame, path: Path) -> None:
    ok = frame["query_id"].str.match(QUERY_ID_PATTERN).to_numpy(dtype=bool)
    _raise_first(path, ~ok, frame.index,
                 lambda i: f"query_id {frame['query_id'].iloc[i]!r} is not of the form <image>#<n>",
                 "write query ids as the image file name, '#', and the caption number (e.g. 123_ab.jpg#2)")


def _check_images(frame: pd.DataFrame, path: Path, names: frozenset[str], folder: Path) -> None:
    missing = ~frame["image"].isin(names).to_numpy()
    _raise_first(path, missing, frame.index,
                 lambda i: f"image {frame['image'].iloc[i]!r} is not in {folder}",
                 f"add the image to {folder.name}/ or remove the line")


def _check_duplicates(frame: pd.DataFrame, path: Path, keys: Sequence[str]) -> pd.DataFrame:
    """Drop exact repeats silently; refuse a key that appears twice with different values. Resets the index."""
    frame = frame.drop_duplicates()
    clash = frame.duplicated(list(keys), keep=False).to_numpy()
    if clash.any():
        first, second = frame.index[np.flatnonzero(clash)[:2]]
        raise _error(path, int(second),
                     f"{'/'.join(keys)} {tuple(frame.loc[first, list(keys)])} is also on line {int(first)} "
                     "with different values", "keep one line per key")
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
    frame = _read_quoted(path, TRAIN_COLUMNS, TRAIN_COLUMNS, sep=",")
    _check_query_ids(frame, path)
    _check_images(frame, path, images, folder)
    texts = frame.groupby("query_id")["query_text"].transform("nunique")
    _raise_first(path, (texts > 1).to_numpy(), frame.index,
                 lambda i: f"query_id {frame['query_id'].iloc[i]!r} has two different query_text values",
                 "give each query_id one text")
    return _check_duplicates(frame, path, ("image", "query_id"))


def _load_expert(path: Path, images: frozenset[str], folder: Path) -> pd.DataFrame:
    _require_file(path, "headerless image, query_id, e1, e2, e3 grades 1-4")
    frame = _read_table(path, EXPERT_COLUMNS, sep="\t")
    for col in GRADE_COLUMNS:
        values = _numeric(frame, path, col, "whole number 1-4")
        _raise_first(path, ~values.isin([1, 2, 3, 4]).to_numpy(), frame.index,
                     lambda i, c=col: f"grade {c}={frame[c].iloc[i]!r} is outside 1-4",
                     "expert grades must be 1, 2, 3 or 4")
        frame[col] = values.astype(np.int8)
    _check_query_ids(frame, path)
    _check_images(frame, path, images, folder)
    return _check_duplicates(frame, path, ("image", "query_id"))


def _load_crowd(path: Path, images: frozenset[str], folder: Path) -> pd.DataFrame:
    _require_file(path, "headerless image, query_id, share_yes, n_yes, n_no")
    frame = _read_table(path, CROWD_COLUMNS, sep="\t")
    share = _numeric(frame, path, "share_yes", "number 0-1")
    _raise_first(path, ~share.between(0.0, 1.0).to_numpy(), frame.index,
                 lambda i: f"share_yes={frame['share_yes'].iloc[i]!r} is outside 0-1",
                 "share_yes is the fraction of workers who said yes, between 0 and 1")
    frame["share_yes"] = share.astype(np.float64)
    for col in ("n_yes", "n_no"):
        counts = _numeric(frame, path, col, "whole number >= 0")
        _raise_first(path, ~((counts >= 0) & (counts == counts.round())).to_numpy(), frame.index,
                     lambda i, c=col: f"{c}={frame[c].iloc[i]!r} is not a count >= 0",
                     f"{col} must be a whole number of votes")
        frame[col] = counts.astype(np.int64)
    _check_query_ids(frame, path)
    _check_images(frame, path, images, folder)
    return _check_duplicates(frame, path, ("image", "query_id"))


def _load_extra(path: Path) -> pd.DataFrame:
    frame = _read_table(path, ("query_id", "query_text"), sep="\t")
    _check_query_ids(frame, path)
    frame = _check_duplicates(frame, path, ("query_id",))
    frame["image"] = frame["query_id"].str.split("#", n=1).str[0]
    return frame[list(EXTRA_COLUMNS)]


def load_test_queries(path: Path | str, images_dir: Path | str | None = None, *,
                      check_images: bool = True) -> pd.DataFrame:
    """Read the course `|`-separated test_queries.csv -> columns query_id, query_text, image.

    With `check_images`, every `image` must be in `images_dir` (default: a `test_images/` folder next to the
    file, checked only if that folder exists).
    """
    path = Path(path)
    _require_file(path, "'|'-separated table with header |query_id|query_text|image")
    frame = _read_quoted(path, ("",) + TEST_COLUMNS, ("index",) + TEST_COLUMNS, sep="|")
    frame = frame[list(TEST_COLUMNS)]
    _check_query_ids(frame, path)
    folder = Path(images_dir) if images_dir is not None else path.parent / TEST_IMAGES
    if check_images and (images_dir is not None or folder.is_dir()):
        _check_images(frame, path, frozenset(list_images(folder)), folder)
    return _check_duplicates(frame, path, ("query_id",))


def read_queries_file(path: Path | str) -> list[str]:
    """Queries for `retrieve query --queries-file`: one per line, or a course test_queries.csv (its query_text).

    Blank lines are skipped. A file whose first line is the course header `|query_id|query_text|image`
    is read with `load_test_queries` (image folder not checked: only the texts are needed).
    """
    path = Path(path)
    _require_file(path, "queries file, one query per line")
    lines = _read_text(path).splitlines()
    if lines and lines[0].strip().split("|")[1:] == list(TEST_COLUMNS):
        return load_test_queries(path, check_images=False)["query_text"].str.strip().tolist()
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
