"""Pictures: titles and captions stay inside their tile at every size, and the colour legend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s18exp.atomic_files import atomic_save_image
from s18exp.pictures import (
    LEGEND_HEIGHT, PALETTE, TITLE_HEIGHT, captioned_grid, font, legend, mask_picture, shared_size, side_by_side, text_width,
    titled, with_legend, wrap,
)
from s18exp.report.figures import grid_only, without_legend
from s18exp.tasks.segmentation import predictions_title

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


# --- text that fits, in one size ------------------------------------------------------------------------


@pytest.mark.parametrize("width", [12, 30, 64, 192])
def test_a_wrapped_name_keeps_every_character_and_each_line_fits(width: int) -> None:
    name = "Staffordshire_bull_terrier_142 and a_few more_words"
    text_font = font(shared_size([name], width, 13))
    lines = wrap(name, width, text_font)
    assert "".join(lines).replace(" ", "") == name.replace(" ", "")  # nothing cut off
    assert all(text_width(line, text_font) <= width or len(line) == 1 for line in lines)


def test_every_text_of_a_grid_is_drawn_in_one_size() -> None:
    long_name = "american_bulldog_209"
    size = shared_size(["ab", long_name], 96, 12)
    assert size < 12 and size == shared_size([long_name], 96, 12)
    assert text_width(long_name, font(size)) <= 96 < text_width(long_name, font(size + 1))

    def caption_height(captions: list[str]) -> int:
        grid = captioned_grid([[Image.new("RGB", (96, 96), "white")] * len(captions)], captions=[captions])
        rows = np.nonzero((np.asarray(grid.convert("L"))[:, PAD : PAD + 96] < 128).any(axis=1))[0]
        return int(rows.max() - rows.min())

    # "ab" beside a long name is drawn in the long name's size, smaller than "ab" alone
    assert caption_height(["ab", long_name]) < caption_height(["ab"])


def test_small_tiles_are_enlarged_to_the_minimum_tile() -> None:
    grid = captioned_grid([[Image.new("RGB", (64, 48), "red")] * 3], ["image", "ground truth", "prediction"], min_tile=192)
    assert grid.width == 3 * (192 + PAD) + PAD
    red = np.nonzero((np.asarray(grid) == (255, 0, 0)).all(axis=-1).any(axis=1))[0]
    assert len(red) == 144  # 48 * 192 / 64, the aspect kept


def test_column_titles_are_centred_over_their_tiles() -> None:
    grid = captioned_grid([[Image.new("RGB", (120, 60), "white")] * 2], ["image", "x"])
    for c in range(2):
        left, right = PAD + c * (120 + PAD), PAD + c * (120 + PAD) + 120
        xs = dark_columns(grid, 0, 20)
        xs = xs[(xs >= left) & (xs < right)]
        assert abs((xs.min() + xs.max()) / 2 - (left + right) / 2) <= 2


# --- mask files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[1, 2, 3], [0, 1]])
def test_a_mask_file_keeps_its_values_and_shows_the_class_colours(tmp_path: Path, values: list[int]) -> None:
    classes = np.random.default_rng(0).integers(0, len(values), (37, 53))
    mask_picture(classes, values).save(tmp_path / "mask.png")
    with Image.open(tmp_path / "mask.png") as saved:
        assert saved.mode == "P"
        stored = np.asarray(saved)
        shown = np.asarray(saved.convert("RGB"))
    assert np.array_equal(stored, np.asarray(values)[classes])  # the data set's coding, not colour indices
    for k in range(len(values)):
        assert (shown[classes == k] == PALETTE[k]).all()


# --- the report's view of a run's picture --------------------------------------------------------------


def test_the_report_takes_off_the_title_and_legend_a_picture_records(tmp_path: Path) -> None:
    names = ["pet", "background", "border"]
    grid = captioned_grid([[Image.new("RGB", (40, 40), "grey")] * 3], ["image", "ground truth", "prediction"])
    framed = titled(grid, "run-s0: test mIoU 0.716")
    picture = with_legend(framed, names, size=13)
    bands = {TITLE_HEIGHT: str(framed.height - grid.height), LEGEND_HEIGHT: str(picture.height - framed.height)}
    atomic_save_image(picture, tmp_path / "new.png", text=bands)
    assert np.array_equal(np.asarray(grid_only(tmp_path / "new.png", tuple(names))), np.asarray(grid))
    # an older run's picture has no bands recorded: its legend (drawn at size 12) still comes off
    with_legend(grid, names).save(tmp_path / "old.png")
    assert np.array_equal(np.asarray(grid_only(tmp_path / "old.png", tuple(names))), np.asarray(grid))
    # bands that do not fit the picture are not trusted
    atomic_save_image(picture, tmp_path / "odd.png", text={TITLE_HEIGHT: "99999", LEGEND_HEIGHT: "-3"})
    assert grid_only(tmp_path / "odd.png", tuple(names)).size == picture.size


def test_the_predictions_title_names_the_run_and_its_score() -> None:
    assert predictions_title("mp_tr_dicece-s0", {"miou": 0.71649}, 298, 8) == "mp_tr_dicece-s0: test mIoU 0.716 (298 test images; 8 shown)"
    assert predictions_title("mp_tr_dicece-s0", None, 298, 8) == "mp_tr_dicece-s0 (298 test images; 8 shown)"
