"""``facemogle edit`` and ``facemogle bench edit``: a photo edited through its mask, from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from facemogle.cli import main
from facemogle.eval.edit_benchmark import scripted_edit
from facemogle.masks import load_mask, save_mask


@pytest.fixture(scope="module")
def files(mini_dataset_dir, tmp_path_factory):
    from facemogle.data.datasets import index_dataset

    record = index_dataset(mini_dataset_dir, layout="folder").split("val")[1]
    folder = tmp_path_factory.mktemp("edit")
    source = load_mask(record.mask)
    save_mask(scripted_edit(source, "hair-shrunk"), folder / "edited.png", to="color")  # any mask format
    return record.image, record.mask, folder / "edited.png", folder


def test_edit_writes_the_photo_with_only_the_region_changed(files, capsys):
    photo, source, edited, folder = files
    out, region = folder / "out.png", folder / "region.png"
    assert main(["edit", str(photo), "--mask", str(edited), "--source-mask", str(source), "--model", "tiny-random",
                 "--steps", "2", "--seed", "1", "--show-region", str(region), "--no-watermark", "-o", str(out)]) == 0
    assert capsys.readouterr().out.split() == [str(region), str(out)]
    inside = np.asarray(Image.open(region)) == 255
    result, pixels = np.asarray(Image.open(out)), np.asarray(Image.open(photo).convert("RGB"))
    assert 0 < inside.mean() < 0.5 and np.array_equal(result[~inside], pixels[~inside])
    assert not np.array_equal(result[inside], pixels[inside])


@pytest.mark.parametrize("extra, message", [
    (["--regions", "hair,halo"], "unknown class name.*'halo'"),
    (["--strength", "2"], "--strength"),
    (["--strength", "nan"], "--strength"),
    (["--grow", "-3"], "--grow"),
    (["--show-region", "region.jpg"], "--show-region"),
    (["-o", "out.gif"], "must end in"),
    (["-o", "missing-folder/out.png"], "folder does not exist"),
])
def test_bad_arguments_are_one_line_errors_before_the_model_loads(files, capsys, monkeypatch, extra, message):
    import facemogle.specs

    photo, source, edited, folder = files
    monkeypatch.chdir(folder)
    monkeypatch.setattr(facemogle.specs, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    args = ["edit", str(photo), "--mask", str(edited), "--source-mask", str(source), "-o", "out.png"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("facemogle edit: error:")
    assert __import__("re").search(message, err), err


def test_masks_that_cannot_be_an_edit_are_refused(files, tmp_path, capsys, monkeypatch):
    import facemogle.specs

    photo, source, edited, _ = files
    monkeypatch.setattr(facemogle.specs, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    narrow = tmp_path / "narrow.png"
    save_mask(load_mask(edited)[:, :300], narrow)
    (tmp_path / "empty.jpg").write_bytes(b"")
    for args, message in (([str(photo), "--mask", str(narrow)], "aspect ratios differ"),
                          ([str(photo), "--mask", str(source), "--source-mask", str(source)], "nothing to edit"),
                          ([str(tmp_path / "empty.jpg"), "--mask", str(edited)], "empty.jpg"),
                          ([str(tmp_path / "none.jpg"), "--mask", str(edited)], "does not exist")):
        assert main(["edit", *args, "-o", str(tmp_path / "o.png")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o.png").exists()


def test_bench_edit_reports_every_kind(mini_dataset_dir, tmp_path, capsys):
    from facemogle.cli.bench import EDIT_KIND_NAMES
    from facemogle.eval.edit_benchmark import EDIT_KINDS

    assert EDIT_KIND_NAMES == EDIT_KINDS
    out = tmp_path / "edit.json"
    assert main(["bench", "edit", "--model", "tiny-random", "--data", str(mini_dataset_dir), "--per-kind", "1",
                 "--kinds", "hair-shrunk,eyeglasses-removed", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["kinds"]) == {"hair-shrunk", "eyeglasses-removed"}
    for kind in report["kinds"].values():
        assert kind["edits"] == 1 and kind["outside_identical_fraction"] == 1.0 and 0 <= kind["iou_before"] <= 1
    assert main(["bench", "edit", "--kinds", "hair-curled"]) == 2
