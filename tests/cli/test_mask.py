"""`facemogle mask show|convert`: outputs, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facemogle.cli import EXIT_USER_ERROR, main
from facemogle.labels import NUM_CLASSES, PALETTE, class_id
from facemogle.masks import EXAMPLE_MASK, from_order, load_mask, present_classes, render_mask, save_mask



def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["mask", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == EXIT_USER_ERROR
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("facemogle mask: error: ")
    for fragment in fragments:
        assert fragment in err


def _legend_colours(path: Path, mask_width: int) -> set[tuple[int, int, int]]:
    with Image.open(path) as image:
        legend = np.asarray(image.convert("RGB"))[:, mask_width:]
    return {tuple(int(c) for c in colour) for colour in np.unique(legend.reshape(-1, 3), axis=0)}


def test_show_colour_coded_fixture(capsys, fixtures_dir, tmp_path):
    source = fixtures_dir / "masks/color-coded-1.png"
    output = tmp_path / "legend.png"
    code, out, err = _run(capsys, "show", source, "-o", output)
    assert (code, err) == (0, "")
    assert str(output) in out
    ids = load_mask(source)
    with Image.open(output) as image:
        assert image.mode == "RGB" and image.height == 512 and image.width > 512
        np.testing.assert_array_equal(np.asarray(image)[:, :512], render_mask(ids))
    # The legend has a swatch for every class present and none for the others (black text
    # anti-aliases to greys; no palette colour but background's is grey).
    legend = _legend_colours(output, 512)
    present = set(present_classes(ids))
    for class_index in range(1, NUM_CLASSES):
        assert (PALETTE[class_index] in legend) == (class_index in present), class_index


def test_show_small_mask_grows_the_canvas_for_the_legend(capsys, tmp_path):
    save_mask(np.full((8, 8), class_id("hair"), np.uint8), tmp_path / "tiny.png")
    code, _, err = _run(capsys, "show", tmp_path / "tiny.png", "-o", tmp_path / "legend.png")
    assert (code, err) == (0, "")
    with Image.open(tmp_path / "legend.png") as image:
        assert image.height > 8
    assert PALETTE[class_id("hair")] in _legend_colours(tmp_path / "legend.png", 8)


@pytest.mark.parametrize("to", ["ids", "color"])
def test_convert_colour_mask(capsys, fixtures_dir, tmp_path, to):
    source = fixtures_dir / "masks/color-coded-2.png"
    output = tmp_path / f"{to}.png"
    code, _, err = _run(capsys, "convert", source, "-o", output, "--to", to)
    assert (code, err) == (0, "")
    with Image.open(output) as image:
        assert image.mode == ("P" if to == "ids" else "RGB")
    np.testing.assert_array_equal(load_mask(output), load_mask(source))


def test_convert_bisenet_mask_to_official_ids(capsys, fixtures_dir, tmp_path):
    source = fixtures_dir / "face-parsing-order/1_mask.png"
    output = tmp_path / "official.png"
    code, _, err = _run(capsys, "convert", source, "-o", output, "--to", "ids", "--from-order", "bisenet")
    assert (code, err) == (0, "")
    with Image.open(source) as image:
        bisenet = np.asarray(image).copy()
    with Image.open(output) as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.asarray(image), from_order(bisenet, "bisenet"))


def test_show_example_mask_into_a_new_folder(capsys, tmp_path):
    # `make demo` writes into out/, which need not exist yet.
    code, _, err = _run(capsys, "show", EXAMPLE_MASK, "-o", tmp_path / "out/example.png")
    assert (code, err) == (0, "")
    assert (tmp_path / "out/example.png").is_file()


def test_lossy_jpeg_needs_a_larger_color_distance(capsys, tmp_path):
    Image.fromarray(render_mask(load_mask(EXAMPLE_MASK))).save(tmp_path / "mask.jpg", quality=85)
    code, _, err = _run(capsys, "convert", tmp_path / "mask.jpg", "-o", tmp_path / "out.png", "--to", "ids")
    _assert_one_line_error(code, err, "more than 24 from every CelebAMask-HQ palette colour")
    code, _, err = _run(
        capsys, "convert", tmp_path / "mask.jpg", "-o", tmp_path / "out.png", "--to", "ids", "--max-color-distance", "255"
    )
    assert (code, err) == (0, "")
    assert (load_mask(tmp_path / "out.png") == load_mask(EXAMPLE_MASK)).mean() > 0.97


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, fragment the error must contain)."""
    (tmp_path / "text.png").write_text("hello\n")
    (tmp_path / "empty.png").write_bytes(b"")
    save_mask(np.zeros((64, 64), np.uint8), tmp_path / "full.png", to="color")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) - 20])
    Image.fromarray(np.full((8, 8), NUM_CLASSES, np.uint8)).save(tmp_path / "id19.png")
    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(tmp_path / "white.png")
    return {
        "not an image": (tmp_path / "text.png", "is not an image file that can be read"),
        "empty": (tmp_path / "empty.png", "is an empty file"),
        "truncated": (tmp_path / "cut.png", "truncated or corrupt"),
        "id 19": (tmp_path / "id19.png", "class ids outside 0..18: 19"),
        "unknown colour": (tmp_path / "white.png", "RGB (255, 255, 255)"),
        "missing": (tmp_path / "absent.png", "does not exist"),
        "directory": (tmp_path, "is not a regular file"),
        "under a file": (tmp_path / "empty.png/mask.png", "does not exist"),
    }


@pytest.mark.parametrize("action", ["show", "convert"])
def test_bad_masks_give_one_line_errors(capsys, tmp_path, action):
    for name, (source, fragment) in _bad_inputs(tmp_path).items():
        extra = ["--to", "ids"] if action == "convert" else []
        code, _, err = _run(capsys, action, source, "-o", tmp_path / "out.png", *extra)
        _assert_one_line_error(code, err, fragment)
        assert not (tmp_path / "out.png").exists(), name


def test_bad_outputs_and_options_give_one_line_errors(capsys, tmp_path):
    save_mask(np.zeros((8, 8), np.uint8), tmp_path / "mask.png", to="color")
    code, _, err = _run(capsys, "convert", tmp_path / "mask.png", "-o", tmp_path / "out.jpg", "--to", "ids")
    _assert_one_line_error(code, err, "must end in .png")
    code, _, err = _run(capsys, "show", tmp_path / "mask.png", "-o", tmp_path / "out.gif")
    _assert_one_line_error(code, err, "must end in .png")
    (tmp_path / "file").write_text("")
    code, _, err = _run(capsys, "show", tmp_path / "mask.png", "-o", tmp_path / "file/out.png")
    _assert_one_line_error(code, err, "is not a folder")
    skin = np.zeros((8, 8, 3), np.uint8)
    skin[...] = PALETTE[class_id("face skin")]  # a colour render
    Image.fromarray(skin).save(tmp_path / "colour.png")
    code, _, err = _run(capsys, "show", tmp_path / "colour.png", "-o", tmp_path / "out.png", "--from-order", "bisenet")
    _assert_one_line_error(code, err, "applies only to id masks")
    code, _, err = _run(capsys, "show", tmp_path / "colour.png", "-o", tmp_path / "out.png", "--max-color-distance", "-3")
    _assert_one_line_error(code, err, "--max-color-distance must be in [0, 255]")


def test_a_fifo_or_a_nan_bound_is_refused_without_hanging(tmp_path, capsys):
    import os

    fifo = tmp_path / "mask.png"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    assert main(["mask", "show", str(fifo), "-o", str(tmp_path / "l.png")]) == 2
    assert "not a regular file" in capsys.readouterr().err
    from facemogle.masks import EXAMPLE_MASK as example

    for bound, message in (("nan", "must be a finite number"), ("-1", "must be in [0, 255]"), ("300", "must be in [0, 255]")):
        assert main(["mask", "show", str(example), "--max-color-distance", bound, "-o", str(tmp_path / "l.png")]) == 2
        assert f"--max-color-distance {message}" in capsys.readouterr().err
    assert not (tmp_path / "l.png").exists()
