"""`manifest.json`: what an index folder contains and what built it, so a reader can refuse what it cannot use.

A reader refuses a newer `format_version` (IndexVersionError), an older one (IndexOutdatedError) and an index built
with other encoders / heads than the model it is asked to serve (IdentityMismatchError), each with the command that
fixes it.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from index_store.errors import IdentityMismatchError, IndexOutdatedError, IndexVersionError

#: Bump when a reader of the previous version could misread a folder written by this one.
FORMAT_VERSION = 3
#: Format 2 adds the child detector's per-image output (meta.csv `detection`: probability, face boxes, features);
#: format 3 the semantic bridge's top ImageNet classes per image (`classes`: "285:0.6120 281:0.2031 …").
MANIFEST_NAME = "manifest.json"
#: Keys compared by `check_expected` (the model/encoders an index is only valid for).
IDENTITY_KEYS = ("image_encoder", "image_encoder_sha", "text_encoder", "text_encoder_sha", "model_id", "dim", "metric")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour shapes the stored bytes (torch only if already imported); the
    application adds its own through the manifest fields' `versions`."""
    import sys

    import faiss
    import numpy

    out = {"faiss": faiss.__version__, "numpy": numpy.__version__}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = str(torch.__version__)
    return out


@dataclass(frozen=True)
class Manifest:
    count: int
    dim: int
    metric: str = "ip"
    index_type: str = "flat"
    index_params: dict[str, Any] = field(default_factory=dict)
    vector_dtype: str = "float32"
    image_encoder: str = ""
    image_encoder_sha: str = ""
    text_encoder: str = ""
    text_encoder_sha: str = ""
    model_id: str = ""
    images_root: str = ""
    created: str = ""
    updated: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    #: Unknown keys from the file or extra fields from the caller, kept verbatim.
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> "Manifest":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in fields.items() if k in names}
        extra = {**dict(fields.get("extra", {}) or {}), **{k: v for k, v in fields.items() if k not in names | {"extra"}}}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        extra = data.pop("extra")
        return {"format_version": data.pop("format_version"), **data, **extra}

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: Path) -> "Manifest":
        """Parse and version-check. Raises IndexVersionError for a newer format, ValueError if malformed."""
        path = Path(folder) / MANIFEST_NAME
        return parse_manifest(json.loads(path.read_text(encoding="utf-8")), folder, str(path))


def manifest_for(manifest_fields: Mapping[str, Any], count: int, dim: int, metric: str, params: Mapping[str, Any],
                 vector_dtype: str) -> Manifest:
    """The caller's identity fields plus what a write knows: counts, index type and parameters, library versions,
    dates (`created` kept when the caller passes the previous one). Every backend's writes build it here."""
    fields = dict(manifest_fields)
    fields.update(
        count=int(count),
        dim=int(dim),
        metric=metric,
        index_type=params.get("index_type", "flat"),
        index_params={k: v for k, v in params.items() if k != "index_type"},
        vector_dtype=vector_dtype,
        versions={**library_versions(), **dict(fields.get("versions") or {})},
        created=fields.get("created") or now_iso(),
        updated=now_iso(),
    )
    return Manifest.from_fields(fields)


def parse_manifest(data: Any, location: str | Path, source: str | None = None) -> Manifest:
    """A manifest from its JSON object, version-checked (IndexVersionError / IndexOutdatedError, ValueError if
    malformed); `location` is what the messages name (a folder, a .db, a URI)."""
    source = source or str(location)
    if not isinstance(data, dict):
        raise ValueError(f"{source} is not a JSON object")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise ValueError(f"{source} has no integer format_version")
    if version > FORMAT_VERSION:
        raise IndexVersionError(
            f"index at {str(location)!r} has format_version {version}, this version of retrieval reads up to "
            f"{FORMAT_VERSION}; upgrade retrieval or rebuild with `retrieve build-index IMAGES --index {location}`"
        )
    if version < FORMAT_VERSION:
        raise IndexOutdatedError(
            f"index at {str(location)!r} has format_version {version} (before the child detector); rebuild it "
            f"with `retrieve build-index IMAGES --index {location}`"
        )
    return Manifest.from_fields(data)


def check_expected(manifest: Manifest, expect: Mapping[str, Any] | None, folder: Path) -> None:
    """IdentityMismatchError if any key of `expect` (see IDENTITY_KEYS) differs from the manifest. Empty values skip."""
    if not expect:
        return
    stored = manifest.to_dict()
    for key, wanted in expect.items():
        if wanted in (None, ""):
            continue
        have = stored.get(key)
        if have != wanted:
            raise IdentityMismatchError(
                f"index at {str(folder)!r} was built with {key}={_show(have)} but the model uses {key}={_show(wanted)}; "
                f"rebuild with `retrieve build-index IMAGES --index {folder}`"
            )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:20] + "...'"
