"""Pictures: titles and captions stay inside their tile at every size, and the colour legend."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from s18exp.pictures import PALETTE, captioned_grid, legend, side_by_side, titled, with_legend
from s18exp.report.figures import without_legend

PAD = 4


def dark_columns(picture: Image.Image, top: int, bottom: int) -> np.ndarray:
    """x of the pixels darker than mid-grey between rows top and bottom (text is black on white)."""
    grey = np.asarray(picture.convert("L"))[top:bottom]
    return np.nonzero((grey < 128).any(axis=0))[0]


@pytest.mark.parametrize("tile", [16, 32, 64, 128])
def test_column_titles_and_captions_stay_inside_their_tile(tile: int) -> None:
    titles = ["image", "ground truth", "prediction"]
    white = Image.new("RGB", (tile, tile), "white")
    for c in range(3):
        only = ["" if k != c else t for k, t in enumerate(titles)]
        grid = captioned_grid([[white] * 3], only, [["" if k != c else "Staffordshire_bull_terrier_42" for k in range(3)]])
        left, right = PAD + c * (tile + PAD), PAD + c * (tile + PAD) + tile
        xs = dark_columns(grid, 0, grid.height)
        assert len(xs) > 0, "the text is drawn"
        assert xs.min() >= left and xs.max() < right, (tile, titles[c], xs.min(), xs.max(), left, right)


def test_a_caption_too_long_for_one_line_wraps_and_the_row_grows() -> None:
    white = Image.new("RGB", (40, 40), "white")
    one = captioned_grid([[white]], captions=[["cat"]])
    wrapped = captioned_grid([[white]], captions=[["a very long caption of many words"]])
    assert wrapped.height > one.height
    assert dark_columns(wrapped, 0, wrapped.height).max() < PAD + 40


def test_titles_fit_the_width_of_their_picture() -> None:
    picture = Image.new("RGB", (60, 30), "white")
    framed = titled(picture, "each row: one label; columns: 8 samples z ~ N(0, I) decoded with that label")
    assert framed.width == 60 and framed.height > 30
    assert dark_columns(framed, 0, framed.height - 30).max() < 60
    pair = side_by_side(picture, picture, ["test inputs, captioned with their true class", "the same inputs given a wrong label"], gap=10)
    xs = dark_columns(pair, 0, pair.height - 30)
    assert not ((xs >= 60) & (xs < 70)).any(), "no title runs into the gap"


def test_the_legend_shows_each_class_colour_and_comes_off_again() -> None:
    names = ["pet", "background", "border"]
    grid = captioned_grid([[Image.new("RGB", (64, 64), "grey")] * 3], ["image", "ground truth", "prediction"])
    shown = with_legend(grid, names)
    assert shown.width == grid.width and shown.height > grid.height
    strip = np.asarray(shown)[grid.height :]
    for k in range(len(names)):
        assert (strip == PALETTE[k]).all(axis=-1).sum() > 20, names[k]
    assert np.array_equal(np.asarray(shown)[: grid.height], np.asarray(grid))
    # the report takes the legend off each run's picture before splitting it into columns
    assert np.array_equal(np.asarray(without_legend(shown, tuple(names))), np.asarray(grid))
    assert without_legend(grid, tuple(names)) is grid  # a picture without it stays whole
    assert legend(names, 50).height > legend(names, 600).height  # a narrow strip wraps onto more rows
