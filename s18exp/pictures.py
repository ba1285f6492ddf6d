"""Small image helpers for the pictures a run leaves behind (PIL only, no plotting library)."""

from __future__ import annotations

from functools import lru_cache

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
    return Image.fromarray(np.take(PALETTE, np.asarray(mask), axis=0, mode="wrap"))  # wrap: index modulo the palette


def overlay(image: Image.Image, mask: torch.Tensor | np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The mask's colours blended over the image (the mask resized NEAREST to the image when their sizes differ)."""
    colours = colorize(mask)
    if colours.size != image.size:
        colours = colours.resize(image.size, Image.NEAREST)
    return Image.blend(image.convert("RGB"), colours, alpha)


def mask_picture(classes: np.ndarray, values: list[int]) -> Image.Image:
    """A mask as its file holds it: pixel value `values[k]` for class k (the data set's 1/2/3 of a trimap, or
    0/1), in mode "P" with a palette that shows each value in its class's PALETTE colour, so that an image
    viewer shows the classes where plain values 1, 2 and 3 would look black; reading the file gives the
    values back."""
    picture = Image.fromarray(np.asarray(values, dtype=np.uint8)[np.asarray(classes)])
    palette = np.zeros((256, 3), dtype=np.uint8)
    for k, value in enumerate(values):
        palette[value] = PALETTE[k % len(PALETTE)]
    picture.putpalette(palette.tobytes())  # an "L" picture becomes "P", its pixel values unchanged
    return picture


def font(size: int = 12) -> ImageFont.ImageFont:
    try:  # DejaVu Sans, where installed, has arrows and accents that Pillow's default font lacks
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


# PNG text chunks of a run's picture: the heights in pixels of the title band over its grid and of the legend
# under it, which the report takes off before it splits the grid into columns.
TITLE_HEIGHT = "s18exp-title-height"
LEGEND_HEIGHT = "s18exp-legend-height"
MIN_FONT_SIZE = 7  # smaller is unreadable; text that does not fit at this size wraps
LINE_SPACING = 2


def text_width(text: str, text_font: ImageFont.ImageFont) -> float:
    """Pixels `text` takes on a line in `text_font`."""
    return ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=text_font)


def line_height(text_font: ImageFont.ImageFont) -> int:
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), "Ag", font=text_font)
    return box[3] + LINE_SPACING


def wrap(text: str, width: float, text_font: ImageFont.ImageFont) -> list[str]:
    """`text` on lines no wider than `width`: words joined while they fit; a word wider than a whole line is
    broken between characters, so that nothing is cut off (a file name stays readable at any tile size)."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_width(f"{lines[-1]} {word}", text_font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
            continue
        while len(word) > 1 and text_width(word, text_font) > width:
            cut = 1
            while cut < len(word) and text_width(word[: cut + 1], text_font) <= width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines or [""]


def shared_size(texts: list[str], width: float, size: int) -> int:
    """One font size for every one of `texts`: the largest from `size` down to MIN_FONT_SIZE at which each
    of their words fits `width`, so that wrapping at spaces is enough; MIN_FONT_SIZE when some word never
    fits (it is then broken, see `wrap`). Text of one picture in one size reads as one picture."""
    words = [word for text in texts for word in text.split()]
    for s in range(size, MIN_FONT_SIZE, -1):
        text_font = font(s)
        if all(text_width(word, text_font) <= width for word in words):
            return s
    return MIN_FONT_SIZE


def fit_text(text: str, width: float, size: int) -> tuple[list[str], ImageFont.ImageFont]:
    """The lines and the font that draw `text` within `width` pixels: one line at the largest size from `size`
    down to MIN_FONT_SIZE that fits; else wrapped (`wrap`) at the size where each word fits."""
    for s in range(size, MIN_FONT_SIZE - 1, -1):
        text_font = font(s)
        if text_width(text, text_font) <= width:
            return [text], text_font
    text_font = font(shared_size([text], width, size))
    return wrap(text, width, text_font), text_font


def draw_lines(draw: ImageDraw.ImageDraw, xy: tuple[float, float], lines: list[str], text_font: ImageFont.ImageFont, width: float | None = None) -> None:
    """`lines` from `xy` down; centred in `width` pixels from x when given."""
    for k, line in enumerate(lines):
        x = xy[0] + (width - text_width(line, text_font)) / 2 if width is not None else xy[0]
        draw.text((x, xy[1] + k * line_height(text_font)), line, fill="black", font=text_font)


def draw_fitted(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width: float, size: int) -> None:
    lines, text_font = fit_text(text, width, size)
    draw_lines(draw, xy, lines, text_font)


def fitted_height(texts: list[str], width: float, size: int) -> int:
    """Pixels the tallest of `texts` takes when drawn by `draw_fitted` (0 for no text)."""
    heights = [len(lines) * line_height(f) for lines, f in (fit_text(t, width, size) for t in texts if t)]
    return max(heights, default=0)


def scaled_up(tile: Image.Image, min_width: int) -> Image.Image:
    """`tile` enlarged (bicubic, its aspect kept) to at least `min_width` pixels wide; as it is when wider."""
    if tile.width >= min_width:
        return tile
    return tile.resize((min_width, max(1, round(tile.height * min_width / tile.width))), Image.BICUBIC)


def captioned_grid(
    tiles: list[list[Image.Image]], column_titles: list[str] | None = None, captions: list[list[str]] | None = None,
    pad: int = 4, caption_height: int = 16, min_tile: int = 0,
) -> Image.Image:
    """Rows of equally sized tiles on white, with optional column titles centred over their columns and a
    caption under each tile.

    Every title and caption is drawn in one font size, the largest up to `caption_height` - 4 at which each
    word fits a tile's width (`shared_size`), wrapped at spaces (a word too long even then is broken, never
    cut); the title row and the caption rows grow to the tallest. `min_tile`: tiles narrower than this are
    enlarged to it first, so that small images still leave room for readable names."""
    if min_tile:
        tiles = [[scaled_up(tile, min_tile) for tile in row] for row in tiles]
    rows, cols = len(tiles), len(tiles[0])
    tile_w, tile_h = tiles[0][0].size
    texts = [*(column_titles or []), *(c for row in captions or [] for c in row)]
    text_font = font(shared_size(texts, tile_w, max(MIN_FONT_SIZE, caption_height - 4)))

    def height(items: list[str]) -> int:
        return max((len(wrap(t, tile_w, text_font)) * line_height(text_font) for t in items if t), default=0)

    title_h = max(caption_height, height(column_titles)) + pad if column_titles else 0
    cap_h = max(caption_height, height([c for row in captions for c in row])) if captions else 0
    canvas = Image.new("RGB", (cols * (tile_w + pad) + pad, title_h + rows * (tile_h + cap_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(column_titles or []):
        draw_lines(draw, (pad + c * (tile_w + pad), pad), wrap(title, tile_w, text_font), text_font, width=tile_w)
    for r, row in enumerate(tiles):
        y = title_h + pad + r * (tile_h + cap_h + pad)
        for c, tile in enumerate(row):
            x = pad + c * (tile_w + pad)
            canvas.paste(tile.convert("RGB"), (x, y))
            if captions and captions[r][c]:
                draw_lines(draw, (x, y + tile_h + 1), wrap(captions[r][c], tile_w, text_font), text_font)
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
    widths = [(swatch + 4 if colour is not None else 0) + text_width(name, text_font) + 3 * pad for name, colour in items]
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


@lru_cache(maxsize=64)
def _legend_strip(class_names: tuple[str, ...], width: int, size: int) -> Image.Image:
    return legend(list(class_names), width, size)  # `predict` draws one per image: most share a width


def with_legend(picture: Image.Image, class_names: list[str], size: int = 12) -> Image.Image:
    """`picture` with the colour legend of `class_names` below it, in a font of `size`."""
    strip = _legend_strip(tuple(class_names), picture.width, size)
    canvas = Image.new("RGB", (picture.width, picture.height + strip.height), "white")
    canvas.paste(picture, (0, 0))
    canvas.paste(strip, (0, picture.height))
    return canvas
