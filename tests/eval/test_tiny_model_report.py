"""The bundled model's evaluation report: scores, reuse of generated images, grid, card section."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from facemogle.eval.gate_weights import GateStep
from facemogle.eval.tiny_model_report import (
    SETTINGS_FILE,
    SIZE,
    SMALL_PARTS,
    min_small_part_iou,
    caption_scores,
    card_metrics_section,
    forget_images_made_otherwise,
    mask_control_confusions,
    mean_gate_steps,
    mean_iou,
    per_class_iou,
    sample_grid,
    weights_digest,
    write_card_metrics,
)
from facemogle.labels import CLASS_NAMES


def metrics(ratio: float = 0.407, small_part: float = 0.35) -> dict:
    """A metrics dict shaped like ``metrics.json`` (only the keys the card reads)."""
    return {
        "validation_faces": 100, "size": 128, "steps": 20, "guidance": 1.0, "mask_guidance": 1.0,
        "miou": {"generated": ratio * 0.7, "real": 0.65, "real_full_size": 0.7, "generated_vs_other_mask": 0.1},
        "miou_ratio": ratio,
        "pixel_accuracy": {"generated": 0.6, "real": 0.9},
        "small_parts_min_iou": {"per_part": {part: small_part for part in SMALL_PARTS}, "min": small_part},
        "fid_style_parser_features": {"generated_vs_real_val": 3.51, "real_train_vs_real_val": 0.8},
        "text_score": {"generated_own_caption": 30.0, "generated_other_caption": 20.0,
                       "real_own_caption": 40.0, "real_other_caption": 10.0},
        "text_only": {"samples": 100, "all_parts": 0.97, "per_part": {}, "real_photos_all_parts": 0.96},
        "text_control": {"samples_per_prompt": 16,
                         "text_only": {"hair_colour": {"black": {"agreement": 0.75, "chance": 0.25, "samples": 16},
                                                       "blond": {"agreement": 0.625, "chance": 0.0, "samples": 16}},
                                       "hat": {"true": {"agreement": 0.5, "chance": 0.0625, "samples": 16}}},
                         "with_masks": {"hair_colour": {"black": {"agreement": 0.8, "chance": 0.1, "samples": 16}}}},
        "bench_generate": {"runs": 5, "threads": 2, "mask_text_median_s": 2.39, "text_only_median_s": 1.53},
    }


class MaskParser:
    """Reads every picture back as the id map stored in its top-left pixel's red value."""

    def parse(self, pictures):
        return [np.full((SIZE, SIZE), np.asarray(p)[0, 0, 0], np.int64) for p in pictures]


def picture(value: int) -> Image.Image:
    return Image.new("RGB", (SIZE, SIZE), (value, value, value))


def test_mask_control_scores_against_own_and_next_mask():
    stems = ["1", "2"]
    masks = {"1": np.full((SIZE, SIZE), 1), "2": np.full((SIZE, SIZE), 2)}
    real = {"1": picture(1), "2": picture(2)}  # parsed exactly as its mask
    generated = {"1": picture(1), "2": picture(3)}  # the second misses its mask
    confusions = mask_control_confusions(MaskParser(), stems, generated, real, masks)
    assert set(confusions) == {"generated", "real", "generated_vs_other_mask"}
    assert all(c.sum() == 2 * SIZE * SIZE for c in confusions.values())
    assert mean_iou(confusions["real"]) == pytest.approx(1.0)
    assert mean_iou(confusions["generated"]) == pytest.approx(1 / 3)  # classes 1 (hit), 2 and 3 (missed)
    assert mean_iou(confusions["generated_vs_other_mask"]) == pytest.approx(0.0)
    by_name = per_class_iou(confusions["real"])
    assert list(by_name) == list(CLASS_NAMES)
    assert by_name[CLASS_NAMES[1]] == 1.0 and by_name[CLASS_NAMES[0]] is None


def test_caption_scores_pair_each_face_with_own_and_next_caption():
    seen = []

    def score(batch, texts):
        assert batch.dtype == torch.uint8 and batch.shape[1:] == (3, SIZE, SIZE)
        seen.append(list(texts))
        return torch.tensor([float(t == "match") for t in texts])

    scores = caption_scores(score, [picture(0)] * 2, [picture(9)] * 2, ["match", "other"])
    assert scores == {"generated_own_caption": 0.5, "generated_other_caption": 0.5,
                      "real_own_caption": 0.5, "real_other_caption": 0.5}
    assert seen[:2] == [["match", "other"], ["other", "match"]]


def test_gate_weights_are_averaged_over_batches_step_by_step():
    first = [GateStep(t, ("global", "eyes"), (0.2, 0.8)) for t in (0.9, 0.5)]
    second = [GateStep(t + 0.01, ("global", "eyes"), (0.4, 0.6)) for t in (0.9, 0.5)]
    averaged = mean_gate_steps(first + second, steps=2)
    assert [s.timestep for s in averaged] == [0.9, 0.5]
    assert [s.global_weight for s in averaged] == pytest.approx([0.3, 0.3])
    assert [s.local_weight for s in averaged] == pytest.approx([0.7, 0.7])


def test_weights_digest_follows_names_and_bytes(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "a.safetensors").write_bytes(b"one")
    (tmp_path / "notes.txt").write_text("not weights", encoding="utf-8")
    digest = weights_digest(tmp_path)
    (tmp_path / "notes.txt").write_text("changed", encoding="utf-8")
    assert weights_digest(tmp_path) == digest
    (tmp_path / "vae" / "a.safetensors").write_bytes(b"two")
    assert weights_digest(tmp_path) != digest


def test_generated_images_are_kept_only_for_the_same_settings(tmp_path):
    folder = tmp_path / "generated"
    forget_images_made_otherwise(folder, {"weights": "abc", "steps": 20})
    (folder / "1.png").write_bytes(b"png")
    forget_images_made_otherwise(folder, {"weights": "abc", "steps": 20})
    assert (folder / "1.png").is_file()
    forget_images_made_otherwise(folder, {"weights": "def", "steps": 20})
    assert sorted(p.name for p in folder.iterdir()) == [SETTINGS_FILE]
    assert json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8")) == {"weights": "def", "steps": 20}


def test_sample_grid_lays_out_mask_generated_real_rows():
    mask_rgb = np.zeros((64, 64, 3), np.uint8)
    grid = sample_grid([(mask_rgb, picture(100), picture(200))] * 2, gap=4)
    assert grid.size == (3 * SIZE + 8, 2 * SIZE + 4)
    assert grid.getpixel((0, 0)) == (0, 0, 0) and grid.getpixel((SIZE + 4, 0)) == (100, 100, 100)
    assert grid.getpixel((2 * SIZE + 8, SIZE + 4)) == (200, 200, 200) and grid.getpixel((SIZE, 0)) == (255, 255, 255)


def test_card_section_states_numbers_and_verdict():
    below = card_metrics_section(metrics(0.407))
    assert below.startswith("## Metrics\n") and "python scripts/evaluate_tiny_model.py" in below
    assert "| **ratio** (target >= 0.8) | 0.395 | 0.842 | **0.407** |" in below  # before: 0.2768 / 0.7, 0.5894 / 0.7
    assert "**Mask control is below the target**" in below
    assert "| s/image, mask + text (median of 5, 2 threads; target <= 3 s) | 2.39 | 2.81 | 2.39 |" in below
    assert "| hair colour as prompted, text-only (target >= 70 %) | n/m | 58 % | 69 % |" in below  # mean of 75, 62.5
    assert "| text-only | hat | true | 50 % | 6 % | 16 | 0 % / 0 % |" in below
    assert "| with-masks | hair_colour | black | 80 % | 10 % | 16 | 88 % / 25 % |" in below
    assert "| IoU ears (lowest of its classes; target > 0.3) | 0.000 | 0.470 | 0.350 |" in below
    assert "| ceiling: real validation photos at 128 px with every part |  |  | 96 % |" in below
    assert "Mask control meets the target" in card_metrics_section(metrics(0.85))
    assert "text-only images" not in below  # same guidance for every image: said once
    own = card_metrics_section({**metrics(0.85), "mask_guidance": 4.0, "text_guidance": True, "text_only_guidance": 6.0})
    assert "mask guidance 4.0 (with text guidance), text-only images 6.0;" in own.replace("\n", " ")
    assert "below the target" in card_metrics_section(metrics(0.85, small_part=0.2))  # a small part fails
    assert "schedule shift" not in below  # metrics written before the shift was recorded
    assert "12 steps, schedule shift 3, guidance" in card_metrics_section({**metrics(0.85), "steps": 12,
                                                                          "schedule_shift": 3.0}).replace("\n", " ")


def test_schedule_shift_is_e_to_the_mu_at_the_images_token_count():
    import math
    from types import SimpleNamespace

    from diffusers import FlowMatchEulerDiscreteScheduler

    from facemogle.eval.tiny_model_report import schedule_shift_at
    from facemogle.specs import FLUX_SCHEDULER

    pipe = SimpleNamespace(vae_scale_factor=4)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(**{**FLUX_SCHEDULER, "base_shift": math.log(3.0)})
    side = 16 * 2 * pipe.vae_scale_factor  # 16 x 16 = 256 tokens: base_image_seq_len, mu = base_shift
    assert schedule_shift_at(pipe, side) == 3.0
    assert schedule_shift_at(pipe, 2 * side) > 3.0  # 1024 tokens: mu moves towards max_shift
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    assert schedule_shift_at(pipe, side) == round(math.exp(0.5), 4)


def test_small_parts_take_the_lowest_class_of_each_part():
    per_class = {name: 0.5 for name in CLASS_NAMES}
    per_class["right ear"] = 0.1
    per_class["inner mouth"] = None  # absent in every mask: counts as 0
    result = min_small_part_iou(per_class)
    assert result["per_part"]["ears"] == 0.1 and result["per_part"]["inner mouth"] == 0.0
    assert result["per_part"]["eyes"] == 0.5 and result["min"] == 0.0


def test_card_metrics_replace_only_their_section(tmp_path):
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# tiny\n\n## Metrics\n\nFilled in later.\n\n## Known limits\n\n- small\n", encoding="utf-8")
    write_card_metrics(card, metrics())
    text = card.read_text(encoding="utf-8")
    assert text == "# tiny\n\n" + card_metrics_section(metrics()) + "## Known limits\n\n- small\n"
    write_card_metrics(card, metrics(0.5))
    assert card.read_text(encoding="utf-8").count("## Metrics") == 1 and "**0.500**" in card.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MODEL_CARD.md"]


def test_card_without_a_metrics_section_gets_one_appended(tmp_path):
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# tiny\n\n", encoding="utf-8")
    write_card_metrics(card, metrics())
    assert card.read_text(encoding="utf-8") == "# tiny\n\n" + card_metrics_section(metrics())


def test_card_only_rewrites_the_metrics_section_from_metrics_json(tmp_path):
    """scripts/evaluate_tiny_model.py --card-only: the card's Metrics section from the saved numbers,
    nothing measured; a folder without the card or the numbers gets a one-line error."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "evaluate_tiny_model.py"
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# tiny\n\n## Metrics\n\nFilled in later.\n\n## Known limits\n\n- small\n", encoding="utf-8")
    missing = subprocess.run([sys.executable, str(script), "--model", str(tmp_path), "--card-only"],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and missing.stderr.strip().splitlines() == [
        f"error: --card-only needs {tmp_path / 'metrics.json'}"]
    (tmp_path / "metrics.json").write_text(json.dumps(metrics()), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), "--model", str(tmp_path), "--card-only"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert card.read_text(encoding="utf-8") == "# tiny\n\n" + card_metrics_section(metrics()) + "## Known limits\n\n- small\n"
