"""Operator review: a person's word on what an image shows, stored in the index folder and honoured before the
detector (`apply.hit_is_restricted`: a human "child" always withholds, a human "none" shows).

Files, in the index folder under `reviews/` (`IndexStore.write` carries the folder across rebuilds):
    decisions.json  {"format": 1, "decisions": {sha256: {decision, operator, time, rel_path}}}
    log.jsonl       one line per change (decision, clear, import, refit), appended and fsynced: the audit trail
    refit.json      the image-side policy refitted on the decisions (`policy.refit`), when one was made
Decisions are keyed by the file's sha256, so they follow a photo through renames, moves and rebuilds. Every write
holds the index folder's lock and replaces decisions.json atomically.
"""
from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

from index_store import backend_for
from retrieval.atomic import write_text
from retrieval.errors import InvalidQueryError, RetrievalError

ReviewDecision = Literal["child", "none"]
DECISIONS: tuple[str, ...] = ("child", "none")
REVIEW_DIR = "reviews"
DECISIONS_FILE = "decisions.json"
LOG_FILE = "log.jsonl"
FORMAT = 1


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def default_operator() -> str:
    """$RETRIEVAL_OPERATOR, else the login name."""
    name = os.environ.get("RETRIEVAL_OPERATOR", "").strip()
    if name:
        return name
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "operator"


@dataclass(frozen=True)
class Decision:
    """One operator's answer about one image (by content hash)."""

    sha256: str
    decision: ReviewDecision
    operator: str
    time: str
    rel_path: str = ""  # where the image was when decided (for people reading the list)

    def to_dict(self) -> dict[str, str]:
        out = asdict(self)
        out.pop("sha256")
        return out

    @classmethod
    def parse(cls, sha256: str, data: Mapping[str, Any], source: str) -> "Decision":
        """Validate one entry of a decisions file; RetrievalError naming the file and the bad entry."""
        sha = str(sha256).lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise RetrievalError(f"{source}: {str(sha256)[:20]!r} is not a sha256 hex digest; export decisions with "
                                 "`retrieve review --export` to get a valid file")
        if not isinstance(data, Mapping) or data.get("decision") not in DECISIONS:
            raise RetrievalError(f"{source}: decision for {sha[:12]} must be one of {', '.join(DECISIONS)}")
        return cls(sha, data["decision"], str(data.get("operator") or "unknown"), str(data.get("time") or ""),
                   str(data.get("rel_path") or ""))


def check_decision(value: str) -> ReviewDecision:
    if value not in DECISIONS:
        raise InvalidQueryError(f"unknown decision {value!r}; use --decision with one of: {', '.join(DECISIONS)}, clear")
    return value  # type: ignore[return-value]


def review_root(location: str | os.PathLike[str]) -> Path:
    """The local folder that holds an index's `reviews/`: the index folder itself, or a Milvus index's sidecar."""
    return Path(backend_for(location).sidecar_root())


class ReviewStore:
    """Reads and writes the `reviews/` folder under an index's review root (see module docstring, `review_root`)."""

    def __init__(self, index_dir: str | os.PathLike[str]) -> None:
        self.index_dir = Path(index_dir)
        self.folder = self.index_dir / REVIEW_DIR
        self._cache: tuple[float, dict[str, Decision]] | None = None

    @property
    def path(self) -> Path:
        return self.folder / DECISIONS_FILE

    # ---------------------------------------------------------------- reading
    def decisions(self) -> dict[str, Decision]:
        """sha256 -> Decision (empty when nobody reviewed yet); re-read only when the file changed."""
        try:
            stamp = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        if self._cache is not None and self._cache[0] == stamp:
            return dict(self._cache[1])
        found = read_decisions(self.path)
        self._cache = (stamp, found)
        return dict(found)

    def log(self) -> list[dict[str, Any]]:
        path = self.folder / LOG_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    # ---------------------------------------------------------------- writing
    def record(self, decisions: Iterable[Decision], event: str = "decision") -> int:
        """Add or replace decisions (the newest answer per image wins); returns how many changed."""
        new = list(decisions)
        with self._locked():
            current = read_decisions(self.path) if self.path.is_file() else {}
            changed = [d for d in new if current.get(d.sha256) != d]
            for d in changed:
                current[d.sha256] = d
            if changed:
                self._write(current, [{"event": event, "sha256": d.sha256, **d.to_dict()} for d in changed])
        return len(changed)

    def clear(self, sha256: str, operator: str) -> bool:
        """Remove the decision about one image (logged); False when there was none."""
        with self._locked():
            current = read_decisions(self.path) if self.path.is_file() else {}
            old = current.pop(sha256, None)
            if old is not None:
                self._write(current, [{"event": "clear", "sha256": sha256, "operator": operator, "time": now_iso(),
                                       "was": old.decision}])
        return old is not None

    def append_log(self, entry: Mapping[str, Any]) -> None:
        with self._locked():
            self._append(dict(entry))

    def export(self, out: str | os.PathLike[str]) -> int:
        """Write every decision to `out` (the same JSON as decisions.json); returns the count."""
        found = self.decisions()
        write_text(out, _dumps(found))
        return len(found)

    def import_file(self, source: str | os.PathLike[str]) -> tuple[int, int]:
        """Merge a file written by `export`: per image the later decision wins. Returns (changed, read)."""
        incoming = read_decisions(Path(source))
        with self._locked():
            current = read_decisions(self.path) if self.path.is_file() else {}
            changed = [d for sha, d in incoming.items() if sha not in current or (d != current[sha] and d.time >= current[sha].time)]
            for d in changed:
                current[d.sha256] = d
            if changed:
                self._write(current, [{"event": "import", "source": str(source), "sha256": d.sha256, **d.to_dict()}
                                      for d in changed])
        return len(changed), len(incoming)

    # ---------------------------------------------------------------- internals
    def _locked(self) -> Any:
        from index_store.store import IndexStore

        if not self.index_dir.is_dir():
            raise RetrievalError(f"no index at {str(self.index_dir)!r}; run `retrieve build-index IMAGES --index "
                                 f"{self.index_dir}` before reviewing")
        return IndexStore.lock(self.index_dir)  # the same lock file the index's own writes take

    def _write(self, decisions: Mapping[str, Decision], log_entries: list[dict[str, Any]]) -> None:
        self.folder.mkdir(exist_ok=True)
        for entry in log_entries:
            self._append(entry)
        write_text(self.path, _dumps(decisions), durable=True)
        self._cache = None

    def _append(self, entry: dict[str, Any]) -> None:
        self.folder.mkdir(exist_ok=True)
        with open(self.folder / LOG_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def read_decisions(path: Path) -> dict[str, Decision]:
    """Parse a decisions file (decisions.json or an export); RetrievalError naming the file when it is malformed."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RetrievalError(f"no decisions file at {str(path)!r}; pass a file written by `retrieve review --export`") from None
    except (OSError, ValueError) as exc:
        raise RetrievalError(f"{str(path)!r} is not a readable decisions JSON ({type(exc).__name__}); pass a file "
                             "written by `retrieve review --export`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("decisions"), dict):
        raise RetrievalError(f"{str(path)!r} is not a decisions file (format {FORMAT}); pass a file written by "
                             "`retrieve review --export`")
    out = {}
    for sha, entry in data["decisions"].items():
        d = Decision.parse(sha, entry, str(path))
        out[d.sha256] = d
    return out


def _dumps(decisions: Mapping[str, Decision]) -> str:
    body = {sha: decisions[sha].to_dict() for sha in sorted(decisions)}
    return json.dumps({"format": FORMAT, "decisions": body}, indent=1, ensure_ascii=False) + "\n"
