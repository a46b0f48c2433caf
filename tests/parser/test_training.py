"""facemogle.parser.losses / augment / averaging / sampling / training: the recipe of the shipped parser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facemogle.errors import InputError
from facemogle.labels import NUM_CLASSES, class_id
from facemogle.parser import (
    FaceParser,
    TrainingSettings,
    WeightAverage,
    augment,
    copy_paste,
    copy_paste_pool,
    epoch_order,
    flip_lut,
    load_parser,
    lovasz_softmax_loss,
    lr_factor,
    mirrored_class_ids,
    recipe_command,
    recompute_batch_norm,
    repeat_factors,
    segmentation_loss,
    train_parser,
)

from .conftest import tiny_parser

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "train_parser.py"


def test_recipe_flip_swaps_left_and_right_classes():
    lut = flip_lut()
    assert torch.equal(lut, mirrored_class_ids())
    for left, right in (("left eye", "right eye"), ("left eyebrow", "right eyebrow"), ("left ear", "right ear")):
        assert lut[class_id(left)] == class_id(right) and lut[class_id(right)] == class_id(left)
    assert torch.equal(lut[lut], torch.arange(NUM_CLASSES))
    assert int((lut != torch.arange(NUM_CLASSES)).sum()) == 6

    # A batch whose only augmentation is a flip: the left eye must come back mirrored as the right eye.
    settings = TrainingSettings(max_rotation=0.0, max_scale=1.0, max_shift=0.0, color_jitter=0.0, greyscale_prob=0.0)
    photos = torch.zeros(16, 8, 8, 3, dtype=torch.uint8)
    masks = torch.zeros(16, 8, 8, dtype=torch.uint8)
    masks[:, 2, 1] = class_id("left eye")
    _, labels = augment(photos, masks, settings, torch.Generator().manual_seed(0))
    flipped = labels[:, 2, 6] == class_id("right eye")
    kept = labels[:, 2, 1] == class_id("left eye")
    assert torch.all(flipped ^ kept) and 0 < int(flipped.sum()) < 16


def test_recipe_loss_is_cross_entropy_plus_dice():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, NUM_CLASSES, 8, 8), torch.randint(0, NUM_CLASSES, (2, 8, 8))
    probabilities = logits.softmax(1)
    one_hot = torch.nn.functional.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float()
    dice = (2 * (probabilities * one_hot).sum((0, 2, 3)) + 1) / (probabilities.sum((0, 2, 3)) + one_hot.sum((0, 2, 3)) + 1)
    expected = torch.nn.functional.cross_entropy(logits, labels) + 0.5 * (1 - dice.mean())
    torch.testing.assert_close(segmentation_loss(logits, labels, 0.5), expected)

    # "present": only the classes the labels hold enter the Dice mean (absent ones no longer push down).
    labels = torch.randint(0, 3, (2, 8, 8))  # classes 0, 1, 2 only
    one_hot = torch.nn.functional.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float()
    dice = (2 * (probabilities * one_hot).sum((0, 2, 3)) + 1) / (probabilities.sum((0, 2, 3)) + one_hot.sum((0, 2, 3)) + 1)
    cross_entropy = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(segmentation_loss(logits, labels, 0.5, "present"),
                               cross_entropy + 0.5 * (1 - dice[:3].mean()))
    torch.testing.assert_close(segmentation_loss(logits, labels, 0.5, "all"),
                               cross_entropy + 0.5 * (1 - dice.mean()))


def test_recipe_lovasz_loss_is_one_minus_iou_on_hard_predictions():
    torch.manual_seed(0)
    labels, predicted = torch.randint(0, 4, (2, 6, 6)), torch.randint(0, 5, (2, 6, 6))
    probabilities = torch.nn.functional.one_hot(predicted, NUM_CLASSES).permute(0, 3, 1, 2).float()
    # On 0/1 probabilities the Lovasz extension equals the Jaccard loss: 1 - IoU, over the classes in labels.
    expected = np.mean([1 - float(((labels == c) & (predicted == c)).sum()) / float(((labels == c) | (predicted == c)).sum())
                        for c in range(4)])
    assert float(lovasz_softmax_loss(probabilities, labels)) == pytest.approx(expected, abs=1e-6)
    assert float(lovasz_softmax_loss(torch.nn.functional.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float(),
                                     labels)) == 0.0  # perfect prediction

    logits = torch.randn(2, NUM_CLASSES, 8, 8, requires_grad=True)
    labels = torch.randint(0, NUM_CLASSES, (2, 8, 8))
    loss = segmentation_loss(logits, labels, 0.0, lovasz_weight=0.5, lovasz_stride=2)
    lovasz = lovasz_softmax_loss(logits.softmax(1)[:, :, ::2, ::2], labels[:, ::2, ::2])
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, labels) + 0.5 * lovasz)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_recipe_weight_averaging_and_batch_norm_statistics():
    model = tiny_parser()
    average = WeightAverage()
    for value in (1.0, 2.0, 6.0):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(value)
        average.update(model)
    restored = WeightAverage(average.state_dict())  # the checkpoint round trip
    assert restored.count == 3
    restored.copy_to(model)
    assert all(torch.all(parameter == 3.0) for parameter in model.parameters())  # mean of 1, 2, 6

    model = tiny_parser()
    for module in model.modules():  # statistics from a long "training": they must not leak into the new ones
        if isinstance(module, torch.nn.BatchNorm2d):
            module.num_batches_tracked.fill_(1000)
    photos = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)
    recompute_batch_norm(model, photos, batch_size=3)  # two equal batches: the mean of their means
    first_norm = model.encoder[0][0][1]
    with torch.no_grad():
        features = model.encoder[0][0][0](model._with_coords(FaceParser.normalize(photos.permute(0, 3, 1, 2))))
    torch.testing.assert_close(first_norm.running_mean, features.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    assert first_norm.momentum == 0.1 and not model.training  # restored

    factors = [lr_factor(step, 10, 100, final=0.25, constant_steps=30) for step in range(100)]
    assert factors[9] == 1.0 and factors[69] == pytest.approx(0.25, abs=1e-3) and set(factors[70:]) == {0.25}
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))  # warm-up, then never rising


def test_recipe_repeat_factors_favour_images_with_rare_classes():
    masks = torch.zeros(4, 6, 6, dtype=torch.uint8)  # background everywhere
    masks[:, 0, 0] = class_id("face skin")  # in every image: factor 1
    masks[0, 1, 1] = class_id("necklace")  # in 1 of 4 images: f = 0.25
    masks[1, 1, 1] = masks[2, 1, 1] = class_id("hat")  # in 2 of 4 images: f = 0.5
    weights = repeat_factors(masks, threshold=1.0)
    torch.testing.assert_close(weights, torch.tensor([2.0, 2**0.5, 2**0.5, 1.0]))  # max(1, sqrt(T / f))
    assert torch.equal(repeat_factors(masks, threshold=0.25), torch.ones(4))  # every f >= T: no repeats

    generator = torch.Generator().manual_seed(0)
    assert torch.equal(epoch_order(5, None, generator).sort().values, torch.arange(5))  # a permutation
    draws = torch.cat([epoch_order(4, torch.tensor([1.0, 1.0, 1.0, 9.0]), generator) for _ in range(500)])
    assert len(draws) == 2000 and abs(float((draws == 3).float().mean()) - 0.75) < 0.03


def test_recipe_copy_paste_puts_rare_objects_at_their_own_place():
    necklace, left_eye, right_eye = class_id("necklace"), class_id("left eye"), class_id("right eye")
    source_photos = torch.zeros(3, 8, 8, 3, dtype=torch.uint8)
    source_masks = torch.zeros(3, 8, 8, dtype=torch.uint8)
    source_masks[0, 6, 1:3] = necklace  # 2 px: too small for min_pixels=3
    source_masks[1, 6, 1:4] = necklace  # 3 px
    source_photos[1, 6, 1:4] = torch.tensor([200, 100, 50], dtype=torch.uint8)
    source_masks[2, 2, 1:4] = left_eye
    source_photos[2, 2, 1:4] = torch.tensor([10, 20, 30], dtype=torch.uint8)
    pool = copy_paste_pool(source_masks, [necklace, left_eye, class_id("hat")], min_pixels=3)
    assert pool == {necklace: [1], left_eye: [2]}  # no hat anywhere: left out

    photos = torch.full((64, 8, 8, 3), 7, dtype=torch.uint8)
    masks = torch.full((64, 8, 8), class_id("face skin"), dtype=torch.uint8)
    before = photos.clone(), masks.clone()
    new_photos, new_masks = copy_paste(photos, masks, source_photos, source_masks, pool, 1.0,
                                       torch.Generator().manual_seed(0))
    assert torch.equal(photos, before[0]) and torch.equal(masks, before[1])  # inputs untouched
    seen = set()
    for photo, mask in zip(new_photos, new_masks):
        changed = mask != class_id("face skin")
        assert int(changed.sum()) == 3  # exactly one object, whole
        rows, columns = torch.nonzero(changed, as_tuple=True)
        label, mirrored = int(mask[rows[0], columns[0]]), bool(columns.min() >= 4)
        source, row = (1, 6) if label == necklace else (2, 2)
        assert torch.equal(columns.sort().values, torch.tensor([4, 5, 6] if mirrored else [1, 2, 3]))
        assert torch.all(rows == row)
        if source == 2:
            assert label == (right_eye if mirrored else left_eye)  # a mirrored left eye is a right eye
        assert torch.equal(photo[changed], source_photos[source, row, 1:4])  # its own colours (uniform here)
        assert torch.all(photo[~changed] == 7)
        seen.add((source, mirrored))
    assert seen == {(1, False), (1, True), (2, False), (2, True)}  # both classes drawn, both orientations

    untouched = copy_paste(photos, masks, source_photos, source_masks, pool, 0.0, torch.Generator())
    assert torch.equal(untouched[0], photos) and torch.equal(untouched[1], masks)


def write_tiny_face_folder(root: Path, count: int = 5, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"{index}.jpg")
        ids = np.zeros((size, size), np.uint8)
        ids[8:24, 8:24] = class_id("face skin")
        ids[12:14, 10:14] = class_id("left eye")
        Image.fromarray(ids).save(root / "masks" / f"{index}.png")
    return root


@pytest.fixture()
def restore_torch_threads():
    """train_parser sets torch's thread count (training, then the parse timings)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_script(argv: list[str]) -> str:
    """scripts/train_parser.py in a subprocess (one thread); its stdout."""
    result = subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_recipe_fine_tunes_from_a_saved_parser_and_the_card_names_both_stages(tmp_path, capsys, restore_torch_threads):
    data = write_tiny_face_folder(tmp_path / "faces")
    common = dict(data=data, num_val=1, epochs=1, batch_size=2, bf16=False, weights_dtype="float32")
    # stage 1 through the script, its flags in TrainingSettings' field order: the command it records is
    # the one TrainingSettings.command_line() writes, and every flag reaches its field (defaults agree)
    stage_1 = ["--data", str(data), "--output", str(tmp_path / "stage1"), "--work-dir", str(tmp_path / "w1"),
               "--num-val", "1", "--epochs", "1", "--batch-size", "2", "--no-bf16", "--block-channels", "4", "8",
               "--sample-size", "32", "--weights-dtype", "float32"]
    run_script(stage_1)
    settings_1 = TrainingSettings(**common, output=tmp_path / "stage1", work_dir=tmp_path / "w1", block_channels=[4, 8],
                                  sample_size=32)
    metrics_1 = json.loads((tmp_path / "stage1" / "metrics.json").read_text())
    assert metrics_1["command"] == settings_1.command_line() == recipe_command(stage_1)
    assert metrics_1["args"] == {**settings_1.to_json(), "test_time_sizes": []}  # as saved (none from scratch)

    stage_2 = TrainingSettings(**common, output=tmp_path / "stage2", work_dir=tmp_path / "w2",
                               init_from=tmp_path / "stage1", rare_class_threshold=0.3, lr=0)
    report = train_parser(stage_2)  # lr 0: the fine-tuned weights are the stage-1 weights
    assert report["command"] == stage_2.command_line() and report["earlier_stages"][0]["command"] == metrics_1["command"]
    assert stage_2.block_channels == [24, 48, 96, 160, 256]  # the caller's settings are left as they were
    first, second = load_parser(tmp_path / "stage1"), load_parser(tmp_path / "stage2")
    assert list(second.config.block_channels) == list(first.config.block_channels) == [4, 8]  # architecture kept
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters()):  # (norm statistics move)
        torch.testing.assert_close(a, b, msg=name)
    card = (tmp_path / "stage2" / "MODEL_CARD.md").read_text()
    assert "2 stages" in card and "--init-from" in card and "repeat-factor sampling, threshold 0.3" in card
    assert " ".join(stage_1[2:4]) in card and metrics_1["command"] in card  # stage 1's own command, from its metrics.json
    assert "_name_or_path" not in (tmp_path / "stage2" / "config.json").read_text()  # no path of this machine

    stage_3 = TrainingSettings(**common, output=tmp_path / "stage3", work_dir=tmp_path / "w3",
                               init_from=tmp_path / "stage2", dice_classes="present")
    assert train_parser(stage_3) is not None
    card = (tmp_path / "stage3" / "MODEL_CARD.md").read_text()
    assert "3 stages" in card and "Dice averaged over the classes present in each batch" in card
    assert "Weight averaging" not in card and "Lovasz" not in card and "Copy-paste" not in card

    stage_4 = TrainingSettings(**{**common, "epochs": 2}, output=tmp_path / "stage4", work_dir=tmp_path / "w4",
                               init_from=tmp_path / "stage3", swa_epochs=2, lovasz_weight=0.5,
                               copy_paste_classes=["left eye"], copy_paste_min_pixels=2)
    assert train_parser(stage_4) is not None
    card = (tmp_path / "stage4" / "MODEL_CARD.md").read_text()
    assert "+ 0.5 x Lovasz-softmax" in card and "held for the last 2 epochs" in card and "multi-scale" not in card
    assert "one object of left eye (a class drawn uniformly" in card and "at least 2 of its pixels" in card
    printed = capsys.readouterr().out
    assert "copy-paste, p = 0.5: left eye from 4 images" in printed  # 4 train images, all with eyes
    assert "weights of the last 2 epochs" in printed

    # from a parser saved without the recipe (no metrics.json beside it): no chain of stages, the command alone
    tiny_parser().save_pretrained(tmp_path / "plain")
    plain = TrainingSettings(**common, output=tmp_path / "from-plain", work_dir=tmp_path / "wp",
                             init_from=tmp_path / "plain")
    assert train_parser(plain) is not None
    card = (tmp_path / "from-plain" / "MODEL_CARD.md").read_text()
    assert "stages" not in card.split("## Recipe")[1].split("\n\n")[1] and str(tmp_path / "plain") in card

    # epochs=0: the same weights, saved with multi-scale testing and measured again; a key an older
    # FaceParser wrote (ignored on load) is not carried into the new config
    config_file = tmp_path / "stage4" / "config.json"
    config_file.write_text(config_file.read_text().replace('"convs_per_block"', '"retired_option": 0, "convs_per_block"'))
    stage_5 = TrainingSettings(**{**common, "epochs": 0}, output=tmp_path / "stage5", work_dir=tmp_path / "w5",
                               init_from=tmp_path / "stage4", test_time_sizes=[64])
    assert train_parser(stage_5) is not None
    fourth, fifth = load_parser(tmp_path / "stage4"), load_parser(tmp_path / "stage5")
    assert list(fifth.config.test_time_sizes) == [64] and list(fourth.config.test_time_sizes) == []
    assert "retired_option" not in (tmp_path / "stage5" / "config.json").read_text()
    for (name, a), (_, b) in zip(fourth.state_dict().items(), fifth.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    card = (tmp_path / "stage5" / "MODEL_CARD.md").read_text()
    assert "resized to 64x64 and the log-probabilities" in card and "5 stages" in card
    assert "No further training (`--epochs 0`): stage 4's weights" in card
    assert "Training (stage 4, the last that trained): 2 epochs" in card and "+ 0.5 x Lovasz-softmax" in card
    assert card.index(str(tmp_path / "stage1")) < card.index(str(tmp_path / "stage2")) < card.index(str(tmp_path / "stage3"))


def test_training_settings_render_the_script_flags():
    assert TrainingSettings().command_line() == recipe_command([])
    settings = TrainingSettings(init_from="out/stage3", lr=1e-3, bf16=False, dice_classes="present",
                                copy_paste_classes=["necklace", "left eye"], test_time_sizes=[], no_final=True, resume=True)
    assert isinstance(settings.init_from, Path)
    assert settings.command_line() == (
        "python scripts/train_parser.py --init-from out/stage3 --lr 0.001 --dice-classes present --no-bf16 "
        "--copy-paste-classes necklace 'left eye' --test-time-sizes --no-final")  # resuming changes nothing
    with pytest.raises(InputError, match="dice_classes"):
        TrainingSettings(dice_classes="some")
