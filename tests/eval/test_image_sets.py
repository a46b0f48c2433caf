"""Listing, pairing by stem, and the prompt file formats of facemogle.eval.image_sets."""

from __future__ import annotations

import json

import pytest

from facemogle.errors import InputError
from facemogle.eval.image_sets import list_images, load_prompts, load_rgb, paired_files


def test_list_images_natural_order_skips_hidden_and_other_files(tmp_path, make_image):
    for stem in ("10", "9", "100", "a2", "a10"):
        make_image(0, size=8).save(tmp_path / f"{stem}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / ".facemogle_cache").mkdir()
    assert list(list_images(tmp_path)) == ["9", "10", "100", "a2", "a10"]


def test_list_images_refuses_duplicate_stems_and_empty_folders(tmp_path, make_image):
    with pytest.raises(InputError, match="holds no images"):
        list_images(tmp_path, what="generated image")
    make_image(0, size=8).save(tmp_path / "1.png")
    make_image(0, size=8).save(tmp_path / "1.jpg")
    with pytest.raises(InputError, match="same stem"):
        list_images(tmp_path)


def test_paired_files_follow_the_generated_order_and_name_missing_stems(tmp_path, make_image):
    for stem in ("3", "1", "2", "extra"):
        make_image(0, size=8).save(tmp_path / f"{stem}.jpg")
    assert [p.stem for p in paired_files(["2", "3", "1"], tmp_path, what="real photo")] == ["2", "3", "1"]
    with pytest.raises(InputError, match="1 of 2 generated images have no mask .*: 7"):
        paired_files(["1", "7"], tmp_path, what="mask")


def test_prompts_from_stem_json_text_json_and_text_folder(tmp_path):
    simple = tmp_path / "prompts.json"
    simple.write_text(json.dumps({"1": " a face ", "2": "another"}))
    assert load_prompts(simple, ["2", "1"]) == ["another", "a face"]

    text_json = tmp_path / "text.json"
    text_json.write_text(json.dumps({"1.jpg": ["first sentence", "second"], "2.jpg": ["only one"]}))
    assert load_prompts(text_json, ["1", "2"]) == ["first sentence", "only one"]

    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "1.txt").write_text("line one\nline two\n")
    assert load_prompts(folder, ["1"]) == ["line one"]
    with pytest.raises(InputError, match="1 of 2 generated images have no prompt"):
        load_prompts(folder, ["1", "2"])


@pytest.mark.parametrize(
    "content, message",
    [("not json", "is not JSON"), ("[1, 2]", "must hold a JSON object"), ('{"1": []}', "non-empty list"),
     ('{"1": 5}', "prompt string or a list")],
)
def test_malformed_prompt_files_are_refused(tmp_path, content, message):
    path = tmp_path / "prompts.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_prompts(path, ["1"])
    with pytest.raises(InputError, match="does not exist"):
        load_prompts(tmp_path / "missing.json", ["1"])


def test_load_rgb_converts_and_refuses_non_images(tmp_path, make_image):
    path = tmp_path / "grey.png"
    make_image(0, size=8).convert("L").save(path)
    assert load_rgb(path).mode == "RGB"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(InputError, match="broken.png is not an image file that can be read"):
        load_rgb(broken)


def test_load_rgb_refuses_truncated_and_oversized_images_in_one_line(tmp_path, make_image):
    """The checks of every image reader (facemogle.images): a PNG that ends early, and a header that
    declares more pixels than Pillow's bomb limit, are one-line InputErrors (not zero-filled pixels
    or a PIL DecompressionBombError traceback)."""
    import struct
    import zlib

    good = tmp_path / "good.png"
    make_image(1, size=32).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(InputError, match="truncated.png"):
        load_rgb(truncated)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = tmp_path / "bomb.png"  # 20000 x 20000 declared, a few bytes of data
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
                     + chunk(b"IEND", b""))
    with pytest.raises(InputError, match="bomb.png declares an image too large"):
        load_rgb(bomb)


def test_prompt_files_that_are_not_text_are_one_line_errors(tmp_path):
    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "1.txt").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(InputError, match="1.txt is not UTF-8 text"):
        load_prompts(folder, ["1"])
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    with pytest.raises(InputError, match="nests its JSON too deeply"):
        load_prompts(deep, ["1"])
