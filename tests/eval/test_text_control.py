"""Text-only faces and text control, read back: the counting, on hand-made parses and attributes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from facemogle.eval.text_control import (FACE_PARTS, MIN_PART_PIXELS, PROMPTS, Sampler, agreement_table, parts_found,
                                         readback_table, share_showing, share_with_every_part, text_control, text_only_faces)
from facemogle.labels import class_id


def face_ids(missing: str | None = None) -> np.ndarray:
    ids = np.zeros((32, 32), np.uint8)
    for k, names in enumerate(FACE_PARTS):
        if names[0] != missing:
            ids[k * 4:k * 4 + 3, :3] = class_id(names[-1])  # 9 pixels each (>= MIN_PART_PIXELS)
    return ids


def test_parts_found_needs_every_part_with_enough_pixels():
    assert all(parts_found(face_ids()).values())
    found = parts_found(face_ids(missing="left eye"))
    assert not found["left eye"] and sum(found.values()) == len(FACE_PARTS) - 1
    speck = np.zeros((32, 32), np.uint8)
    speck[0, : MIN_PART_PIXELS - 1] = class_id("nose")
    assert not parts_found(speck)["nose"]
    lower_lip_only = face_ids()
    assert parts_found(lower_lip_only)["upper lip / lower lip"]  # either lip counts


def test_agreement_and_chance():
    read = {
        ("hair_colour", "black"): [{"hair_colour": "black"}] * 3 + [{"hair_colour": None}],
        ("hair_colour", "blond"): [{"hair_colour": "blond"}] * 2 + [{"hair_colour": "black"}] * 2,
        ("hat", True): [{"hat": True}] * 4,
        ("smiling", True): [{"smiling": False, "hat": True}] + [{"smiling": True}] * 3,
    }
    table = agreement_table(read)
    assert table["hair_colour"]["black"] == {"agreement": 0.75, "chance": 0.5, "samples": 4}
    assert table["hair_colour"]["blond"]["agreement"] == 0.5 and table["hair_colour"]["blond"]["chance"] == 0.0
    # a yes/no attribute's chance: how often the faces made for every other prompt have it
    assert table["hat"]["true"]["agreement"] == 1.0
    assert table["hat"]["true"]["chance"] == pytest.approx(1 / 12)
    assert table["smiling"]["true"]["chance"] == 0.0


def test_an_attribute_with_one_prompted_value_takes_its_chance_from_every_other_prompt():
    read = {
        ("hair_length", "long"): [{"hair_length": "long"}] * 3 + [{"hair_length": None}],
        ("hat", True): [{"hair_length": "long", "hat": True}] + [{"hair_length": None, "hat": True}] * 3,
        ("hair_colour", "black"): [{"hair_length": None}] * 4,
        ("hair_colour", "brown"): [{"hair_length": "long"}] * 4,
    }
    table = agreement_table(read)
    assert table["hair_length"]["long"] == {"agreement": 0.75, "chance": pytest.approx(5 / 12), "samples": 4}
    assert table["hair_colour"]["black"]["chance"] == 0.0  # two colours asked: only the other colour counts


class FakePipe:
    """Returns grey images and records the calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, mask, prompt, height, width, num_inference_steps, seed, watermark):
        self.calls.append({"mask": mask, "prompt": list(prompt), "seed": list(seed), "watermark": watermark})

        class Out:
            images = [Image.new("RGB", (width, height), (128, 128, 128)) for _ in prompt]
        return Out()


class FakeParser:
    def __init__(self, missing_every: int = 0):
        self.count, self.missing_every = 0, missing_every

    def parse(self, images):
        out = []
        for _ in images:
            self.count += 1
            gap = self.missing_every and self.count % self.missing_every == 0
            out.append(face_ids(missing="nose" if gap else None))
        return out


def test_text_only_faces_counts_and_seeds():
    pipe = FakePipe()
    result = text_only_faces(Sampler(pipe, size=32, seed=10), FakeParser(missing_every=4), ["a"] * 10)
    assert result["samples"] == 10 and result["all_parts"] == pytest.approx(0.8)  # 8 of 10 have a nose
    assert result["per_part"]["nose"] == pytest.approx(0.8) and result["per_part"]["hair"] == 1.0
    assert [s for c in pipe.calls for s in c["seed"]] == list(range(10, 20))
    assert all(c["mask"] is None and c["watermark"] is False for c in pipe.calls)


def test_share_with_every_part_reads_the_parses():
    assert share_with_every_part(FakeParser(missing_every=5), [Image.new("RGB", (8, 8))] * 10) == pytest.approx(0.8)
    assert math.isnan(share_with_every_part(FakeParser(), []))


def test_share_showing_counts_maps_whose_classes_cover_enough_pixels():
    bare = np.zeros((16, 16), np.uint8)
    left, right, split = bare.copy(), bare.copy(), bare.copy()
    left[:1, :MIN_PART_PIXELS] = class_id("left ear")                # exactly enough
    right[:1, :MIN_PART_PIXELS - 1] = class_id("right ear")          # one pixel short
    split[:1, :2], split[1:2, :3] = class_id("left ear"), class_id("right ear")  # enough only together
    assert share_showing([left, right, split, bare]) == pytest.approx(0.5)
    assert share_showing([right], min_pixels=MIN_PART_PIXELS - 1) == 1.0
    assert share_showing([left], classes=("hair",)) == 0.0
    assert math.isnan(share_showing([]))


def test_text_control_pairs_seeds_and_masks():
    pipe = FakePipe()
    result = text_control(Sampler(pipe, size=32, seed=0), FakeParser(), samples=2, masks=["m0", "m1", "m2"])
    assert set(result["text_only"]) == {"hair_colour", "hair_length", "eyeglasses", "hat", "earrings", "necklace",
                                        "smiling", "mouth_open", "background_colour"}
    assert set(result["with_masks"]) == {"hair_colour", "background_colour"}
    assert set(result["with_masks"]["background_colour"]) == {"white", "black", "grey"}
    text_only_calls = [c for c in pipe.calls if c["mask"] is None]
    assert all(c["seed"] == [0, 1] for c in text_only_calls)  # sample k of every prompt: seed k
    assert all(c["mask"] == ["m0", "m1"] for c in pipe.calls if c["mask"] is not None)
    with pytest.raises(ValueError, match="needs 2 masks"):
        text_control(Sampler(pipe, size=32), FakeParser(), samples=2, masks=["m0"])


def test_sampler_passes_its_options_to_every_call():
    calls = []

    def pipe(**kwargs):
        calls.append(kwargs)

        class Out:
            images = [Image.new("RGB", (8, 8))] * len(kwargs["prompt"])
        return Out()

    Sampler(pipe, size=8, options={"mask_guidance_scale": 6.0}).draw(["a"] * 5)
    assert len(calls) == 2 and all(c["mask_guidance_scale"] == 6.0 and c["watermark"] is False for c in calls)
    Sampler(pipe, size=8).draw(["a"])
    assert "mask_guidance_scale" not in calls[-1]


def test_progress_bar_counts_every_image_drawn(capsys):
    pipe = FakePipe()
    text_control(Sampler(pipe, size=32), FakeParser(), samples=2, masks=["m0", "m1"], progress=True)
    drawn = sum(len(c["prompt"]) for c in pipe.calls)
    assert drawn == 2 * (13 + 6)  # 13 text-only prompts, 6 over masks (3 hair + 3 background colours)
    err = capsys.readouterr().err
    assert "text control" in err and f"{drawn}/{drawn}" in err
    text_only_faces(Sampler(pipe, size=32), FakeParser(), ["a"] * 3, progress=True)
    assert "text-only faces" in capsys.readouterr().err
    text_control(Sampler(pipe, size=32), FakeParser(), samples=1)  # progress off: silent
    assert capsys.readouterr().err == ""


def test_readback_table_counts_recall_and_false_alarms_per_prompted_value():
    full = [{"necklace": True, "hair_colour": "black"}, {"necklace": True, "hair_colour": "blond"},
            {"necklace": False, "hair_colour": "black"}, {"necklace": False, "hair_colour": None}]
    small = [{"necklace": True, "hair_colour": "black"}, {"necklace": False, "hair_colour": "blond"},
             {"necklace": True, "hair_colour": "brown"}, {"necklace": False, "hair_colour": None}]
    table = readback_table(full, small)
    assert table["necklace"]["true"] == {"faces": 2, "read_when_true": 0.5, "read_when_not": 0.5}
    assert table["hair_colour"]["black"] == {"faces": 2, "read_when_true": 0.5, "read_when_not": 0.0}
    assert table["hair_colour"]["brown"]["faces"] == 0 and math.isnan(table["hair_colour"]["brown"]["read_when_true"])
    assert table["hair_colour"]["brown"]["read_when_not"] == 0.25
    assert set(table) == set(PROMPTS)  # every prompted attribute, whether or not a photo has it
    with pytest.raises(ValueError, match="same photos twice"):
        readback_table(full, small[:3])


def test_readback_ceiling_reads_each_photo_at_full_size_and_shrunk(monkeypatch):
    import facemogle.eval.text_control as text_control_module

    seen = []

    def fake_read(parser, images):
        seen.append([image.size for image in images])
        return [{"hat": image.size[0] > 64} for image in images]  # the hat is lost when shrunk

    monkeypatch.setattr(text_control_module, "read_attributes", fake_read)
    photos = [Image.new("RGB", (256, 256))] * 3
    table = text_control_module.readback_ceiling(object(), photos, size=64, batch=2)
    assert seen == [[(256, 256)] * 2, [(64, 64)] * 2, [(256, 256)], [(64, 64)]]
    assert (table["hat"]["true"]["faces"], table["hat"]["true"]["read_when_true"]) == (3, 0.0)
    assert math.isnan(table["hat"]["true"]["read_when_not"])  # no photo without a hat at full size


@pytest.mark.parametrize("script", ["attribute_readback.py", "ear_visibility.py"])
def test_the_diagnosis_scripts_refuse_a_bad_json_path_before_any_work(script, tmp_path):
    """Both scripts take minutes; a --json they could not write is a one-line error (exit 2) first,
    with nothing loaded (--data points nowhere: reading it would be a different error)."""
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / script
    for bad, says in ((tmp_path / "table.txt", "must end in .json"), (tmp_path / "no" / "t.json", "does not exist")):
        run = subprocess.run([sys.executable, str(path), "--data", str(tmp_path / "absent"), "--json", str(bad)],
                             capture_output=True, text=True)
        assert run.returncode == 2 and says in run.stderr.strip().splitlines()[-1], run.stderr
