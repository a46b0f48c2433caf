"""Tests of facemogle.data.captions.folder and `facemogle caption`: the MM-CelebA-HQ output layout,
per-image seeds, and one-line errors."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import numpy as np
from PIL import Image

from facemogle.cli import main
from facemogle.data.captions import caption_folder
from facemogle.masks import save_mask

from .caption_faces import HAIR_RGB, SIZE, synthetic_face


def write_pair(folder: Path, stem: str, *, image_dir="images", mask_dir="masks", photo_scale=1, **face) -> None:
    photo, ids = synthetic_face(**face)
    (folder / image_dir).mkdir(parents=True, exist_ok=True)
    (folder / mask_dir).mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(photo)
    if photo_scale != 1:
        image = image.resize((SIZE * photo_scale, SIZE * photo_scale), Image.BICUBIC)
    image.save(folder / image_dir / f"{stem}.jpg", quality=95)
    save_mask(ids, folder / mask_dir / f"{stem}.png")


def test_cli_writes_mm_celeba_layout(tmp_path, capsys):
    dataset, out = tmp_path / "dataset", tmp_path / "out"
    write_pair(dataset, "a1", hair_rgb=HAIR_RGB["blond"], glasses="eyeglasses")
    write_pair(dataset, "b2", hair=None, hat=True, mouth="smile")
    (dataset / "images" / "notes.txt").write_text("not an image")
    before = sorted(path.relative_to(dataset) for path in dataset.rglob("*"))

    assert main(["caption", str(dataset), "--out", str(out), "--sentences", "4", "--seed", "3"]) == 0
    assert "wrote 2 captions" in capsys.readouterr().out
    assert sorted(path.relative_to(dataset) for path in dataset.rglob("*")) == before  # dataset untouched

    captions = json.loads((out / "text.json").read_text())
    assert list(captions) == ["a1.jpg", "b2.jpg"]
    assert sorted(path.name for path in (out / "text").iterdir()) == ["a1.txt", "b2.txt"]
    for stem in ("a1", "b2"):
        lines = (out / "text" / f"{stem}.txt").read_text().splitlines()
        assert lines == captions[f"{stem}.jpg"] and len(lines) == 4
    assert "blond hair" in captions["a1.jpg"][0] and "eyeglasses" in captions["a1.jpg"][0]
    assert "hat" in captions["b2.jpg"][0] and "smil" in captions["b2.jpg"][0]

    # Existing captions are kept unless --overwrite; the same seed gives the same captions.
    assert main(["caption", str(dataset), "--out", str(out), "--sentences", "4", "--seed", "3"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["caption", str(dataset), "--out", str(out), "--sentences", "4", "--seed", "3", "--overwrite"]) == 0
    assert json.loads((out / "text.json").read_text()) == captions


def test_caption_folder_mm_layout_with_large_photos_and_evidence(tmp_path):
    write_pair(tmp_path, "0", image_dir="face", mask_dir="mask", photo_scale=2, hair_rgb=HAIR_RGB["red"])
    captions = caption_folder(tmp_path, sentences=3, seed=0, evidence=True, progress=False)
    assert list(captions) == ["0.jpg"] and "red hair" in captions["0.jpg"][0]
    assert (tmp_path / "text" / "0.txt").read_text().splitlines() == captions["0.jpg"]
    evidence = json.loads((tmp_path / "caption_attributes.json").read_text())
    assert evidence["0.jpg"]["hair_colour"]["value"] == "red"


def test_captions_do_not_depend_on_the_other_images(tmp_path):
    write_pair(tmp_path / "one", "m", hair_rgb=HAIR_RGB["blond"], earrings=True, mouth="smile")
    for stem in ("a", "m", "z"):
        write_pair(tmp_path / "three", stem, hair_rgb=HAIR_RGB["blond"], earrings=True, mouth="smile")
    alone = caption_folder(tmp_path / "one", tmp_path / "out1", sentences=6, seed=1, progress=False)
    among = caption_folder(tmp_path / "three", tmp_path / "out3", sentences=6, seed=1, progress=False)
    assert alone["m.jpg"] == among["m.jpg"]
    assert among["a.jpg"] != among["m.jpg"]  # per-image seeds differ


def test_cli_errors_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    assert main(["caption", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no photo/mask pairs" in capsys.readouterr().err

    assert main(["caption", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err

    broken = tmp_path / "broken"
    write_pair(broken, "x")
    (broken / "images" / "x.jpg").write_bytes(b"not a jpeg")
    assert main(["caption", str(broken), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "is not an image file that can be read" in err and "x.jpg" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing half-written

    write_pair(broken, "x")
    (broken / "masks" / "x.png").write_bytes(b"not a png")
    assert main(["caption", str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "x.png" in capsys.readouterr().err

    assert main(["caption", str(broken), "--sentences", "0"]) == 2
    assert "--sentences" in capsys.readouterr().err


def test_caption_command_bounds_the_sentences(tmp_path, capsys):
    from facemogle.cli import main

    assert main(["caption", str(tmp_path), "--sentences", "1000000000"]) == 2
    assert "--sentences must be in 1..100" in capsys.readouterr().err


class _TrackedIds(np.ndarray):
    """A class-id array that can be watched with a weak reference (plain ndarrays cannot)."""


def test_caption_folder_decodes_one_pair_at_a_time(tmp_path, monkeypatch):
    """A big folder streams: each photo and mask is decoded, described and dropped before the next is read,
    so the number of decoded images alive at once does not grow with the folder."""
    import facemogle.data.captions.folder as folder_module
    import facemogle.masks

    count = 5
    for index in range(count):
        write_pair(tmp_path, f"{index:02d}", hair_rgb=list(HAIR_RGB.values())[index % len(HAIR_RGB)])
    events: list[str] = []
    alive = {"photo": 0, "mask": 0}
    most = {"photo": 0, "mask": 0}

    def tracked(kind, value):
        def gone():
            alive[kind] -= 1

        weakref.finalize(value, gone)
        alive[kind] += 1
        most[kind] = max(most[kind], alive[kind])
        events.append(kind)
        return value

    real_read, real_load, real_describe = folder_module.read_image, facemogle.masks.load_mask, folder_module.describe
    monkeypatch.setattr(folder_module, "read_image", lambda path: tracked("photo", real_read(path)))
    monkeypatch.setattr(facemogle.masks, "load_mask",
                        lambda path, **kw: tracked("mask", real_load(path, **kw).view(_TrackedIds)))

    def describe(photo, ids):
        events.append("describe")
        return real_describe(photo, ids)

    monkeypatch.setattr(folder_module, "describe", describe)
    captions = caption_folder(tmp_path, sentences=2, progress=False)

    assert len(captions) == count
    assert events == ["mask", "photo", "describe"] * count  # read lazily, pair by pair
    assert max(most.values()) <= 2 < count  # the pair being read, and at most the previous one
    assert alive == {"photo": 0, "mask": 0}
