"""PNG contact sheets of policy-applied results (the evaluate sheet, strict beside audit).

Every tile has the same size whatever it shows: a thumbnail fitted inside it, or -- for a withheld image -- the
disclaimer wrapped inside the tile; under audit the detector's face boxes are drawn on the thumbnail with their
P(child), and the tile's caption says why it would be withheld.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

from retrieval.atomic import atomic_path

TILE_W, TILE_H = 320, 240
CAPTION_H = 60
PAD = 8
TITLE_H = 26


def _font(size: int) -> Any:
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def _wrapped(draw: Any, text: str, box: tuple[int, int, int, int], font: Any, fill: str) -> None:
    """`text` wrapped to the box width and centred in it (never spills into the next tile)."""
    x0, y0, x1, y1 = box
    width_chars = max(8, int((x1 - x0) / (font.size * 0.55)))
    lines = textwrap.wrap(text, width_chars)
    line_h = font.size + 4
    y = y0 + max(0, ((y1 - y0) - line_h * len(lines)) // 2)
    for line in lines:
        if y + line_h > y1:
            break
        w = draw.textlength(line, font=font)
        draw.text((x0 + ((x1 - x0) - w) / 2, y), line, fill=fill, font=font)
        y += line_h


def _thumbnail(hit: dict[str, Any]) -> tuple[Any, float, tuple[int, int]]:
    """(thumbnail fitted in a tile, scale from the detector's upright image to it, paste offset)."""
    from PIL import Image

    from retrieval.index.imageio import load_image

    im = load_image(hit["path"])  # JPEG draft decode: a tile needs no full resolution; boxes scale by width
    w, h = im.size
    scale = min(TILE_W / w, TILE_H / h)
    thumb = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    why = hit.get("why") or {}
    size = why.get("size") or [w, h]
    box_scale = thumb.width / max(float(size[0]), 1.0)
    return thumb, box_scale, ((TILE_W - thumb.width) // 2, (TILE_H - thumb.height) // 2)


def _tile(hit: dict[str, Any] | None, restricted_query: str | None) -> Any:
    from PIL import Image, ImageDraw

    tile = Image.new("RGB", (TILE_W, TILE_H + CAPTION_H), "white")
    draw = ImageDraw.Draw(tile)
    small, tiny = _font(13), _font(11)
    if hit is None:
        if restricted_query:
            draw.rectangle([0, 0, TILE_W - 1, TILE_H - 1], fill="#333")
            _wrapped(draw, restricted_query, (12, 0, TILE_W - 12, TILE_H), small, "white")
        return tile
    if not hit.get("path"):
        draw.rectangle([0, 0, TILE_W - 1, TILE_H - 1], fill="#333")
        _wrapped(draw, hit.get("disclaimer") or "", (12, 0, TILE_W - 12, TILE_H), small, "white")
        caption = f"#{hit['rank']}  score {float(hit['score']):.2f}"
    else:
        thumb, s, (ox, oy) = _thumbnail(hit)
        tile.paste(thumb, (ox, oy))
        why = hit.get("why") or {}
        for b in why.get("boxes", []):
            x0, y0, x1, y1 = (v * s for v in b["box"])
            colour = "#e33" if b["child_prob"] >= 0.5 else "#3c3"
            draw.rectangle([ox + x0, oy + y0, ox + x1, oy + y1], outline=colour, width=2)
            draw.text((ox + x0 + 2, oy + max(y0 - 13, 0)), f"{b['child_prob']:.2f}", fill=colour, font=tiny)
        flag = "  RESTRICTED" if hit.get("restricted") else ""
        caption = f"#{hit['rank']}  score {float(hit['score']):.2f}{flag}"
        if why:
            caption += f"\n{why.get('reason', '')}"
    lines = caption.split("\n")
    draw.text((4, TILE_H + 3), lines[0], fill="#b00" if "RESTRICTED" in lines[0] else "black", font=small)
    if len(lines) > 1:  # the reason, on two lines at most (the second shortened with [...] if it runs on)
        wrapped = textwrap.wrap(lines[1], 56)
        if len(wrapped) > 2:
            wrapped = [wrapped[0], textwrap.shorten(" ".join(wrapped[1:]), 56)]
        for k, part in enumerate(wrapped):
            draw.text((4, TILE_H + 21 + 15 * k), part, fill="#555", font=tiny)
    return tile


def write_sheet(results: Sequence[dict[str, Any]], path: Path, k: int, title: str = "") -> Path:
    """One row per query: its text, then k fixed-size tiles. Written atomically."""
    from PIL import Image, ImageDraw

    path = Path(path)
    cols = max(k, 1)
    row_h = TITLE_H + TILE_H + CAPTION_H + PAD
    head = TITLE_H + PAD if title else 0
    sheet = Image.new("RGB", (PAD + cols * (TILE_W + PAD), head + PAD + row_h * max(len(results), 1)), "#eee")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((PAD, PAD), title, fill="black", font=_font(18))
    for r, res in enumerate(results):
        y = head + PAD + r * row_h
        draw.text((PAD, y + 4), textwrap.shorten(f"\u201c{res['query']}\u201d", 150), fill="black", font=_font(15))
        hits = list(res["hits"])
        for j in range(cols):
            hit = hits[j] if j < len(hits) else None
            note = res.get("disclaimer") if (j == 0 and res.get("restricted") and not hits) else None
            sheet.paste(_tile(hit, note), (PAD + j * (TILE_W + PAD), y + TITLE_H))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
