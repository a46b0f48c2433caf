"""`facemogle parse`: photos -> palette PNG masks (or colour renders) with any parser."""

from __future__ import annotations

import numpy as np
from PIL import Image

from facemogle.cli import main as cli_main
from facemogle.labels import PALETTE
from facemogle.parser import load_parser

from .conftest import random_photo


def test_cli_parse_writes_palette_masks_at_photo_size(tmp_path, tiny_parser_dir, capsys):
    random_photo(40, 30).save(tmp_path / "a.jpg")
    assert cli_main(["parse", str(tmp_path / "a.jpg"), "-o", str(tmp_path / "a_mask.png"),
                     "--parser", str(tiny_parser_dir)]) == 0
    mask = Image.open(tmp_path / "a_mask.png")
    assert mask.mode == "P" and mask.size == (40, 30)
    assert np.array_equal(np.asarray(mask), load_parser(tiny_parser_dir).parse(tmp_path / "a.jpg"))
    assert "wrote" in capsys.readouterr().out


def test_cli_parse_many_photos_into_a_folder_with_color(tmp_path, tiny_parser_dir):
    for name, size in (("a", (40, 30)), ("b", (24, 24))):
        random_photo(*size).save(tmp_path / f"{name}.png")
    out = tmp_path / "masks"
    assert cli_main(["parse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out), "--color",
                     "--parser", str(tiny_parser_dir)]) == 0
    render = np.asarray(Image.open(out / "a.png"))
    assert render.shape == (30, 40, 3) and Image.open(out / "b.png").size == (24, 24)
    assert {tuple(c) for c in render.reshape(-1, 3)} <= set(PALETTE)


def test_cli_parse_uses_the_shipped_parser_by_default(tmp_path, shipped_parser):
    random_photo(64, 64).save(tmp_path / "face.png")
    assert cli_main(["parse", str(tmp_path / "face.png"), "-o", str(tmp_path / "mask.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "mask.png")), shipped_parser.parse(tmp_path / "face.png"))


def test_cli_parse_errors_are_one_line(tmp_path, tiny_parser_dir, capsys):
    random_photo(16, 16).save(tmp_path / "a.png")
    random_photo(16, 16).save(tmp_path / "b.png")
    cases = [
        (["parse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "x.png")], "output folder"),
        (["parse", str(tmp_path / "missing.jpg"), "-o", str(tmp_path / "x.png")], "does not exist"),
        (["parse", str(tmp_path / "a.png"), "-o", str(tmp_path / "x.jpg")], "PNG"),
        (["parse", str(tmp_path / "a.png"), "-o", str(tmp_path / "x.png"), "--parser", str(tmp_path)], "config"),
    ]
    for argv, message in cases:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("facemogle parse: error:") and message in err and "\n" not in err


def test_cli_parse_writes_all_masks_or_none(tmp_path, tiny_parser_dir, capsys):
    """An unreadable third photo is found before any work; a failure while writing keeps the old files."""
    for name in ("a", "b"):
        random_photo(16, 16).save(tmp_path / f"{name}.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "c.png").write_bytes(data[: len(data) // 2])  # truncated
    out = tmp_path / "masks"
    out.mkdir()
    (out / "a.png").write_bytes(b"old mask")
    argv = ["parse", *(str(tmp_path / f"{n}.png") for n in "abc"), "-o", str(out), "--parser", str(tiny_parser_dir)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "c.png" in err and "truncated" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.png"] and (out / "a.png").read_bytes() == b"old mask"

    import facemogle.masks

    real_save, calls = facemogle.masks.save_mask, []

    def failing(ids, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(ids, path, **kwargs)

    facemogle.masks.save_mask = failing
    try:
        assert cli_main(argv[:3] + argv[4:]) == 2
    finally:
        facemogle.masks.save_mask = real_save
    assert "none was written" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a.png"] and (out / "a.png").read_bytes() == b"old mask"
