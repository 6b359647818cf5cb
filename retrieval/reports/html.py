"""Static HTML pages of search results (demo page, evaluate sheets).

Input is already policy-applied JSON (`apply_policy` output), so a withheld image has no name or path here and is
drawn as the disclaimer tile.
"""
from __future__ import annotations

import html
import os
from pathlib import Path

from retrieval.atomic import write_text
from typing import Any, Callable, Iterable

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;background:#fafafa;color:#222}
h1{font-size:22px} h2{font-size:17px;margin:28px 0 8px}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{width:320px;background:#fff;border:1px solid #ddd;border-radius:8px;overflow:hidden;flex:none}
.pic{position:relative;width:320px;height:240px;background:#111;overflow:hidden}
.pic img{width:100%;height:100%;object-fit:contain;display:block}
.pic .box{position:absolute;border:2px solid #3c3;box-sizing:border-box}
.pic .box.child{border-color:#e33}
.pic .box span{position:absolute;top:-16px;left:-2px;font-size:11px;background:rgba(0,0,0,.6);color:#fff;padding:0 3px}
.meta{padding:6px 8px;font-size:12px;height:64px;overflow:hidden;overflow-wrap:anywhere}
.why{color:#555;font-size:11px;margin-top:2px}
.bar{height:6px;background:#eee;border-radius:3px;margin-top:4px}.bar>span{display:block;height:6px;border-radius:3px;background:#2a7}
.blocked{width:320px;height:240px;display:flex;align-items:center;justify-content:center;text-align:center;
 background:#333;color:#fff;font-size:14px;padding:24px;box-sizing:border-box;overflow-wrap:anywhere}
.note{background:#fff3cd;border:1px solid #e0c36c;padding:8px 12px;border-radius:6px;display:inline-block}
"""


def _boxes(why: dict[str, Any]) -> str:
    """The detector's face boxes as absolutely placed divs, in % of the image (object-fit: contain keeps the
    aspect, so the picture's own box is computed from its size)."""
    size = why.get("size") or [0, 0]
    w, h = float(size[0] or 0), float(size[1] or 0)
    if not (w and h) or not why.get("boxes"):
        return ""
    fit = min(320 / w, 240 / h)
    pw, ph = w * fit, h * fit
    ox, oy = (320 - pw) / 2, (240 - ph) / 2
    out = []
    for b in why["boxes"]:
        x0, y0, x1, y1 = b["box"]
        cls = "box child" if b["child_prob"] >= 0.5 else "box"
        out.append(f'<div class="{cls}" style="left:{ox + x0 * fit:.0f}px;top:{oy + y0 * fit:.0f}px;'
                   f'width:{(x1 - x0) * fit:.0f}px;height:{(y1 - y0) * fit:.0f}px">'
                   f'<span>P(child) {b["child_prob"]:.2f}</span></div>')
    return "".join(out)


def _tile(hit: dict[str, Any], src: Callable[[dict[str, Any]], str]) -> str:
    score = float(hit["score"])
    meta = f'<div class="meta">#{hit["rank"]} &middot; score {score:.2f}<div class="bar"><span style="width:{score * 100:.0f}%"></span></div>'
    if hit.get("image") is None:
        body = f'<div class="blocked">{html.escape(hit.get("disclaimer") or "")}</div>'
    else:
        flag = " &middot; <b>restricted</b>" if hit.get("restricted") else ""
        meta += f'<div>{html.escape(hit["image"])}{flag}</div>'
        why = hit.get("why") or {}
        if why:
            meta += f'<div class="why">{html.escape(str(why.get("reason", "")))}</div>'
        body = (f'<div class="pic"><img loading="lazy" src="{html.escape(src(hit))}" alt="{html.escape(hit["image"])}">'
                f'{_boxes(why)}</div>')
    return f'<div class="card">{body}{meta}</div></div>'


def results_page(title: str, results: Iterable[dict[str, Any]], out_html: Path, intro: str = "",
                 src: Callable[[dict[str, Any]], str] | None = None) -> Path:
    """Write a page with one row of tiles per query. `src(hit)` gives the <img> URL (default: path relative to the page)."""
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    if src is None:
        src = lambda hit: Path(os.path.relpath(hit["path"], out_html.parent)).as_posix()  # noqa: E731
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style>",
             f"<h1>{html.escape(title)}</h1>", intro]
    for res in results:
        parts.append(f'<h2>&ldquo;{html.escape(res["query"])}&rdquo;</h2>')
        if res.get("restricted") and not res["hits"]:
            parts.append(f'<div class="note">{html.escape(res.get("disclaimer") or "")}</div>')
        elif not res["hits"]:
            parts.append('<div class="note">No image scored above the threshold.</div>')
        else:
            parts.append('<div class="grid">' + "".join(_tile(h, src) for h in res["hits"]) + "</div>")
    return write_text(out_html, "\n".join(parts))
