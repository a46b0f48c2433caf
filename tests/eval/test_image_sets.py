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
    with pytest.raises(InputError, match="not a readable image"):
        load_rgb(broken)
