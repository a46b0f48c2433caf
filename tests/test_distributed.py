"""Sets of images across processes (:mod:`facemogle.distributed`): two CPU processes started by
``accelerate launch`` share a folder of masks; every image equals the single-process one, and a
run resumes."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from PIL import Image

from facemogle.distributed import Processes
from launch import run_facemogle as run

GENERATE = ["generate", "--model", "tiny-random", "--size", "64", "--steps", "2",
            "--prompt", "a face", "--no-watermark", "--seed", "5"]


@pytest.fixture(scope="module")
def mask_folder(tmp_path_factory, fixtures_dir):
    from facemogle.example_mask import draw_example_mask
    from facemogle.masks import render_mask

    folder = tmp_path_factory.mktemp("masks")
    shutil.copy(fixtures_dir / "masks" / "27000.png", folder / "27000.png")
    for k in range(4):  # more faces: the example mask, shifted
        ids = np.roll(draw_example_mask(), 12 * k, axis=1)
        Image.fromarray(render_mask(ids)).save(folder / f"face-{k}.png")
    return folder


def pixels(folder):
    return {path.name: np.asarray(Image.open(path)) for path in sorted(folder.glob("*.png"))}


def test_two_processes_make_the_single_process_images_and_resume(mask_folder, tmp_path):
    single, shared = tmp_path / "single", tmp_path / "shared"
    out = run([*GENERATE, "--mask-folder", str(mask_folder), "--output-folder", str(single)])
    assert "5 faces made, 0 kept" in out.stdout
    out = run([*GENERATE, "--mask-folder", str(mask_folder), "--output-folder", str(shared)], processes=2)
    assert "faces made by process 1/2" in out.stdout and "faces made by process 2/2" in out.stdout
    expected, got = pixels(single), pixels(shared)
    assert sorted(got) == sorted(expected) == ["27000.png", *(f"face-{k}.png" for k in range(4))]
    for name in expected:
        assert np.array_equal(got[name], expected[name]), name
    assert len({arr.tobytes() for arr in got.values()}) == 5  # five different faces

    # resume: two images lost, the rest kept untouched
    kept = (shared / "face-0.png").stat().st_mtime_ns
    (shared / "27000.png").unlink()
    (shared / "face-3.png").unlink()
    out = run([*GENERATE, "--mask-folder", str(mask_folder), "--output-folder", str(shared)], processes=2)
    made = sum(int(count) for count in re.findall(r"(\d+) faces made by process", out.stdout))
    assert made == 2
    assert (shared / "face-0.png").stat().st_mtime_ns == kept
    for name, array in pixels(shared).items():
        assert np.array_equal(array, expected[name]), name


def test_share_takes_every_count_th_item_from_index():
    items = list(range(7))
    parts = [Processes(index, 3).share(items) for index in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(parts, [])) == items
    assert Processes().share(items) == items and Processes().is_main and Processes().device is None
