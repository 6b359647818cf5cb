"""Course loader: happy path on the committed fixture, one broken copy per validation error, junk ignored."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from retrieval.data import load_course, load_test_queries, read_queries_file
from retrieval.data.course import list_images
from retrieval.errors import DatasetError
from tests.conftest import require_course_data

FIXTURE = Path(__file__).parent / "fixtures" / "course_tiny"
TRAIN_NAMES = ("1001_aa.jpg", "1002_bb.jpg", "1003_cc.jpg", "1004_dd.jpg", "1005_ee.jpg", "1006_ff.jpg")


@pytest.fixture()
def course_dir(tmp_path: Path) -> Path:
    """A writable copy of the fixture, to break one file at a time."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "course"))


def _edit_line(path: Path, line: int, old: str, new: str) -> None:
    """Replace `old` by `new` on 1-based `line` of `path`."""
    lines = path.read_text().splitlines(keepends=True)
    assert old in lines[line - 1], (old, lines[line - 1])
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    path.write_text("".join(lines))


def _error(course_dir: Path) -> str:
    with pytest.raises(DatasetError) as info:
        load_course(course_dir)
    message = str(info.value)
    assert "\n" not in message and "fix:" in message
    return message


def test_load_fixture_tables_and_columns() -> None:
    course = load_course(FIXTURE)
    assert list(course.train.columns) == ["image", "query_id", "query_text"]
    assert list(course.expert.columns) == ["image", "query_id", "e1", "e2", "e3"]
    assert list(course.crowd.columns) == ["image", "query_id", "share_yes", "n_yes", "n_no"]
    assert list(course.extra_captions.columns) == ["query_id", "image", "query_text"]
    assert list(course.test_queries.columns) == ["query_id", "query_text", "image"]
    assert (len(course.train), len(course.expert), len(course.crowd), len(course.extra_captions)) == (10, 10, 9, 30)
    assert course.expert[["e1", "e2", "e3"]].to_numpy().min() == 1
    assert course.crowd["n_yes"].sum() == 16
    # Quoted comma inside a caption survives; the '"' inside an extra caption is kept verbatim (QUOTE_NONE).
    assert "A man stands by a road , holding a sign ." in set(course.train["query_text"])
    assert 'A man holds a sign reading " HELP " near a road .' in set(course.extra_captions["query_text"])
    assert course.train_images_dir == FIXTURE / "train_images"
    assert course.test_images_dir == FIXTURE / "test_images"
    # captions: unique per query_id, covering the crowd's query that is only in extra_captions.tsv.
    captions = course.captions
    assert captions["query_id"].is_unique and "1002_bb.jpg#1" in set(captions["query_id"])


def test_junk_files_in_image_folders_are_ignored() -> None:
    course = load_course(FIXTURE)
    assert course.train_image_names == TRAIN_NAMES
    assert course.test_image_names == ("2001_xx.jpg", "2002_yy.jpg")
    for junk in (".DS_Store", ".hidden.jpg", "notes.txt"):
        assert (FIXTURE / "train_images" / junk).exists()
    assert list_images(FIXTURE / "train_images") == TRAIN_NAMES


def test_optional_files_may_be_absent(course_dir: Path) -> None:
    (course_dir / "extra_captions.tsv").unlink()
    (course_dir / "test_queries.csv").unlink()
    shutil.rmtree(course_dir / "test_images")
    course = load_course(course_dir)
    assert course.extra_captions is None and course.test_queries is None and course.test_images_dir is None


def test_missing_file_is_named(course_dir: Path) -> None:
    (course_dir / "ExpertAnnotations.tsv").unlink()
    message = _error(course_dir)
    assert "ExpertAnnotations.tsv" in message and "not found" in message


def test_missing_image_folder(course_dir: Path) -> None:
    shutil.rmtree(course_dir / "train_images")
    assert "train_images" in _error(course_dir)


def test_too_many_columns_names_line(course_dir: Path) -> None:
    _edit_line(course_dir / "ExpertAnnotations.tsv", 3, "\n", "\t1\n")
    message = _error(course_dir)
    assert "ExpertAnnotations.tsv, line 3" in message and "columns" in message


def test_too_few_columns_names_line(course_dir: Path) -> None:
    _edit_line(course_dir / "CrowdAnnotations.tsv", 4, "\t2\n", "\n")
    message = _error(course_dir)
    assert "CrowdAnnotations.tsv, line 4" in message and "fields" in message


def test_too_many_columns_in_csv_with_header(course_dir: Path) -> None:
    _edit_line(course_dir / "train_dataset.csv", 5, " .\n", " .,extra\n")
    assert "train_dataset.csv, line 5" in _error(course_dir)


def test_wrong_file_wide_column_count(course_dir: Path) -> None:
    path = course_dir / "ExpertAnnotations.tsv"
    path.write_text("".join(line.rsplit("\t", 1)[0] + "\n" for line in path.read_text().splitlines()))
    message = _error(course_dir)
    assert "ExpertAnnotations.tsv" in message and "expected 5 columns, found 4" in message


def test_grade_outside_range_names_line(course_dir: Path) -> None:
    _edit_line(course_dir / "ExpertAnnotations.tsv", 2, "\t2\t2\n", "\t2\t5\n")
    message = _error(course_dir)
    assert "ExpertAnnotations.tsv, line 2" in message and "outside 1-4" in message and "'5'" in message


def test_non_numeric_grade_names_line(course_dir: Path) -> None:
    _edit_line(course_dir / "ExpertAnnotations.tsv", 7, "\t1\t1\t1\n", "\t1\tx\t1\n")
    assert "ExpertAnnotations.tsv, line 7" in _error(course_dir)


def test_share_outside_range_names_line(course_dir: Path) -> None:
    _edit_line(course_dir / "CrowdAnnotations.tsv", 5, "\t0.666667\t", "\t1.5\t")
    message = _error(course_dir)
    assert "CrowdAnnotations.tsv, line 5" in message and "outside 0-1" in message


def test_bad_query_id_names_line(course_dir: Path) -> None:
    _edit_line(course_dir / "CrowdAnnotations.tsv", 3, "1001_aa.jpg#2", "1001_aa.jpg-2")
    message = _error(course_dir)
    assert "CrowdAnnotations.tsv, line 3" in message and "<image>#<n>" in message


def test_bad_query_id_in_train_csv_names_line(course_dir: Path) -> None:
    _edit_line(course_dir / "train_dataset.csv", 4, "1002_bb.jpg#2", "1002_bb.jpg")
    assert "train_dataset.csv, line 4" in _error(course_dir)


def test_absent_image_names_line(course_dir: Path) -> None:
    _edit_line(course_dir / "CrowdAnnotations.tsv", 6, "1004_dd.jpg\t", "9999_zz.jpg\t")
    message = _error(course_dir)
    assert "CrowdAnnotations.tsv, line 6" in message and "9999_zz.jpg" in message


def test_hidden_file_does_not_count_as_image(course_dir: Path) -> None:
    _edit_line(course_dir / "ExpertAnnotations.tsv", 4, "1002_bb.jpg\t1002", ".hidden.jpg\t1002")
    assert "ExpertAnnotations.tsv, line 4" in _error(course_dir)


def test_conflicting_duplicate_names_both_lines(course_dir: Path) -> None:
    path = course_dir / "ExpertAnnotations.tsv"
    first = path.read_text().splitlines()[0]
    path.write_text(path.read_text() + first.rsplit("\t", 1)[0] + "\t3\n")
    message = _error(course_dir)
    assert "ExpertAnnotations.tsv, line 11" in message and "line 1 " in message


def test_exact_duplicate_lines_are_dropped(course_dir: Path) -> None:
    path = course_dir / "CrowdAnnotations.tsv"
    path.write_text(path.read_text() * 2)
    assert len(load_course(course_dir).crowd) == 9


def test_test_queries_loaded_and_validated(course_dir: Path) -> None:
    frame = load_test_queries(course_dir / "test_queries.csv")
    assert len(frame) == 10 and frame["query_id"].iloc[0] == "2001_xx.jpg#0"
    _edit_line(course_dir / "test_queries.csv", 8, "|2002_yy.jpg\n", "|2003_zz.jpg\n")
    message = _error(course_dir)
    assert "test_queries.csv, line 8" in message and "2003_zz.jpg" in message


def test_test_queries_bad_header(course_dir: Path) -> None:
    _edit_line(course_dir / "test_queries.csv", 1, "|query_text|", "|text|")
    with pytest.raises(DatasetError, match=r"test_queries.csv, line 1: header"):
        load_test_queries(course_dir / "test_queries.csv")


def test_read_queries_file_plain_and_course_format(tmp_path: Path) -> None:
    plain = tmp_path / "q.txt"
    plain.write_text("a dog on a beach\n\n  two people hiking \n")
    assert read_queries_file(plain) == ["a dog on a beach", "two people hiking"]
    texts = read_queries_file(FIXTURE / "test_queries.csv")
    assert len(texts) == 10 and texts[0] == "A black dog swims in a lake ."
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(DatasetError, match="empty.txt: no queries"):
        read_queries_file(empty)
    with pytest.raises(DatasetError, match="missing.txt: file not found"):
        read_queries_file(tmp_path / "missing.txt")


@pytest.mark.slow
def test_real_course_data_counts() -> None:
    root = require_course_data()
    course = load_course(root)
    assert len(course.expert) == 5822 and len(course.train) == 5822
    assert len(course.crowd) == 47830 and len(course.train_image_names) == 1000
    assert len(course.extra_captions) == 5000
    shared = course.expert.merge(course.crowd, on=["image", "query_id"], validate="one_to_one")
    assert len(shared) == 2329


def test_short_line_in_csv_names_line(course_dir: Path) -> None:
    _edit_line(course_dir / "train_dataset.csv", 7, ",1006_ff.jpg#2,A man scales a steep rock .", ",1006_ff.jpg#2")
    message = _error(course_dir)
    assert "train_dataset.csv, line 7" in message and "missing column" in message


def test_line_numbers_count_blank_lines(course_dir: Path) -> None:
    path = course_dir / "ExpertAnnotations.tsv"
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(1, "\n")  # old line 5 becomes line 6
    assert lines[5].endswith("\t1\t1\t2\n")
    lines[5] = lines[5].replace("\t1\t1\t2\n", "\t1\t1\t0\n")
    path.write_text("".join(lines))
    assert "ExpertAnnotations.tsv, line 6" in _error(course_dir)


def test_short_first_line_in_tsv_names_line_1(course_dir: Path) -> None:
    _edit_line(course_dir / "ExpertAnnotations.tsv", 1, "\t4\t4\t4\n", "\t4\t4\n")
    assert "ExpertAnnotations.tsv, line 1: expected 5 columns, found 4" in _error(course_dir)


def test_missing_course_data_skips_for_users_and_fails_in_ci(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RETRIEVAL_COURSE_DATA", str(tmp_path))
    monkeypatch.delenv("RETRIEVAL_REQUIRE_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception, match="set RETRIEVAL_COURSE_DATA"):
        require_course_data()
    monkeypatch.setenv("RETRIEVAL_REQUIRE_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="RETRIEVAL_REQUIRE_DATA is set"):
        require_course_data()
    (tmp_path / "ExpertAnnotations.tsv").write_text("")
    assert require_course_data() == tmp_path
