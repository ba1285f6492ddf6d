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


def captioned_grid(
    tiles: list[list[Image.Image]], column_titles: list[str] | None = None, captions: list[list[str]] | None = None,
    pad: int = 4, caption_height: int = 16,
) -> Image.Image:
    """Rows of equally sized tiles on white, with optional column titles on top and a caption under each tile."""
    rows, cols = len(tiles), len(tiles[0])
    tile_w, tile_h = tiles[0][0].size
    title_h = caption_height + pad if column_titles else 0
    cap_h = caption_height if captions else 0
    canvas = Image.new("RGB", (cols * (tile_w + pad) + pad, title_h + rows * (tile_h + cap_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    text_font = font(max(10, caption_height - 4))
    for c, title in enumerate(column_titles or []):
        draw.text((pad + c * (tile_w + pad), pad), title, fill="black", font=text_font)
    for r, row in enumerate(tiles):
        y = title_h + pad + r * (tile_h + cap_h + pad)
        for c, tile in enumerate(row):
            x = pad + c * (tile_w + pad)
            canvas.paste(tile.convert("RGB"), (x, y))
            if captions:
                draw.text((x, y + tile_h + 1), captions[r][c], fill="black", font=text_font)
    return canvas
