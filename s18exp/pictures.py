"""Small image helpers for the pictures a run leaves behind (PIL only, no plotting library)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# Colours of class indices in mask pictures; for the trimap scheme: pet, background, border.
PALETTE = np.array([[230, 120, 20], [30, 60, 140], [250, 250, 250], [40, 160, 60]], dtype=np.uint8)


def to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 (C, H, W) with C = 1 or 3 -> PIL image."""
    array = image.detach().cpu().permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def colorize(mask: torch.Tensor | np.ndarray) -> Image.Image:
    """(H, W) class indices -> RGB picture in PALETTE colours."""
    return Image.fromarray(PALETTE[np.asarray(mask, dtype=np.int64) % len(PALETTE)])


def overlay(image: Image.Image, mask: torch.Tensor | np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The mask's colours blended over the image."""
    colours = colorize(mask).resize(image.size, Image.NEAREST)
    return Image.blend(image.convert("RGB"), colours, alpha)


def font(size: int = 12) -> ImageFont.ImageFont:
    try:  # DejaVu Sans, where installed, has arrows and accents that Pillow's default font lacks
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


MIN_FONT_SIZE = 7  # smaller is unreadable; text that does not fit at this size wraps
LINE_SPACING = 2


def _width(text: str, text_font: ImageFont.ImageFont) -> float:
    return ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=text_font)


def line_height(text_font: ImageFont.ImageFont) -> int:
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), "Ag", font=text_font)
    return box[3] + LINE_SPACING


def _cut(text: str, width: float, text_font: ImageFont.ImageFont) -> str:
    """`text` shortened to end in "..." within `width` (a single word longer than the whole width)."""
    while len(text) > 1 and _width(text + "...", text_font) > width:
        text = text[:-1]
    return text + "..."


def fit_text(text: str, width: float, size: int) -> tuple[list[str], ImageFont.ImageFont]:
    """The lines and the font that draw `text` within `width` pixels: one line at the largest size from `size`
    down to MIN_FONT_SIZE that fits; else words wrapped at MIN_FONT_SIZE, a word too long for a line cut."""
    for s in range(size, MIN_FONT_SIZE - 1, -1):
        text_font = font(s)
        if _width(text, text_font) <= width:
            return [text], text_font
    text_font = font(MIN_FONT_SIZE)
    lines: list[str] = []
    for word in text.split():
        if lines and _width(f"{lines[-1]} {word}", text_font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word if _width(word, text_font) <= width else _cut(word, width, text_font))
    return lines or [""], text_font


def common_size(texts: list[str], width: float, size: int) -> int:
    """The largest font size from `size` down at which every one of `texts` fits `width` on one line
    (MIN_FONT_SIZE when some never does): titles of one row in the same size."""
    for s in range(size, MIN_FONT_SIZE, -1):
        if all(_width(text, font(s)) <= width for text in texts):
            return s
    return MIN_FONT_SIZE


def draw_fitted(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width: float, size: int) -> None:
    lines, text_font = fit_text(text, width, size)
    for k, line in enumerate(lines):
        draw.text((xy[0], xy[1] + k * line_height(text_font)), line, fill="black", font=text_font)


def fitted_height(texts: list[str], width: float, size: int) -> int:
    """Pixels the tallest of `texts` takes when drawn by `draw_fitted` (0 for no text)."""
    heights = [len(lines) * line_height(f) for lines, f in (fit_text(t, width, size) for t in texts if t)]
    return max(heights, default=0)


def captioned_grid(
    tiles: list[list[Image.Image]], column_titles: list[str] | None = None, captions: list[list[str]] | None = None,
    pad: int = 4, caption_height: int = 16,
) -> Image.Image:
    """Rows of equally sized tiles on white, with optional column titles on top and a caption under each tile.

    Every title and caption fits its tile's width: its font shrinks (to MIN_FONT_SIZE), then it wraps, and the
    title row and caption rows grow to the tallest; `caption_height` sets the largest font (4 px less)."""
    rows, cols = len(tiles), len(tiles[0])
    tile_w, tile_h = tiles[0][0].size
    size = max(MIN_FONT_SIZE, caption_height - 4)
    title_size = common_size(column_titles or [], tile_w, size)
    title_h = max(caption_height, fitted_height(column_titles, tile_w, title_size)) + pad if column_titles else 0
    cap_h = max(caption_height, fitted_height([c for row in captions for c in row], tile_w, size)) if captions else 0
    canvas = Image.new("RGB", (cols * (tile_w + pad) + pad, title_h + rows * (tile_h + cap_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(column_titles or []):
        draw_fitted(draw, (pad + c * (tile_w + pad), pad), title, tile_w, title_size)
    for r, row in enumerate(tiles):
        y = title_h + pad + r * (tile_h + cap_h + pad)
        for c, tile in enumerate(row):
            x = pad + c * (tile_w + pad)
            canvas.paste(tile.convert("RGB"), (x, y))
            if captions:
                draw_fitted(draw, (x, y + tile_h + 1), captions[r][c], tile_w, size)
    return canvas


def titled(picture: Image.Image, title: str, size: int = 12, pad: int = 4) -> Image.Image:
    """`picture` on white under a title that fits its width (shrunk, then wrapped)."""
    title_h = fitted_height([title], picture.width - 2 * pad, size) + 2 * pad
    canvas = Image.new("RGB", (picture.width, picture.height + title_h), "white")
    draw_fitted(ImageDraw.Draw(canvas), (pad, pad), title, picture.width - 2 * pad, size)
    canvas.paste(picture, (0, title_h))
    return canvas


def side_by_side(left: Image.Image, right: Image.Image, titles: list[str], gap: int = 24, size: int = 12, pad: int = 4) -> Image.Image:
    """Two pictures next to each other on white, each under its own title, which fits its picture's width."""
    title_h = max(fitted_height([t], p.width - 2 * pad, size) for t, p in zip(titles, (left, right))) + 2 * pad
    canvas = Image.new("RGB", (left.width + gap + right.width, title_h + max(left.height, right.height)), "white")
    draw = ImageDraw.Draw(canvas)
    for x, picture, title in ((0, left, titles[0]), (left.width + gap, right, titles[1])):
        draw_fitted(draw, (x + pad, pad), title, picture.width - 2 * pad, size)
        canvas.paste(picture, (x, title_h))
    return canvas


def legend(class_names: list[str], width: int, size: int = 12, pad: int = 4) -> Image.Image:
    """A strip `width` pixels wide naming the colour of each class (PALETTE, as `overlay` blends it over
    images), items wrapped onto more rows when one row is too narrow."""
    text_font = font(size)
    swatch = line_height(text_font) - LINE_SPACING
    items = [("colours:", None)] + [(name, PALETTE[k % len(PALETTE)]) for k, name in enumerate(class_names)]
    widths = [(swatch + 4 if colour is not None else 0) + _width(name, text_font) + 3 * pad for name, colour in items]
    rows: list[list[int]] = [[]]
    used = pad
    for k, w in enumerate(widths):
        if rows[-1] and used + w > width:
            rows.append([])
            used = pad
        rows[-1].append(k)
        used += w
    row_h = swatch + 2 * pad
    strip = Image.new("RGB", (width, len(rows) * row_h), "white")
    draw = ImageDraw.Draw(strip)
    for r, row in enumerate(rows):
        x, y = pad, r * row_h + pad
        for k in row:
            name, colour = items[k]
            if colour is not None:
                draw.rectangle((x, y, x + swatch, y + swatch), fill=tuple(int(v) for v in colour), outline="black")
                x += swatch + 4
            draw.text((x, y), name, fill="black", font=text_font)
            x += round(widths[k] - (swatch + 4 if colour is not None else 0))
    return strip


def with_legend(picture: Image.Image, class_names: list[str]) -> Image.Image:
    """`picture` with the colour legend of `class_names` below it."""
    strip = legend(class_names, picture.width)
    canvas = Image.new("RGB", (picture.width, picture.height + strip.height), "white")
    canvas.paste(picture, (0, 0))
    canvas.paste(strip, (0, picture.height))
    return canvas
