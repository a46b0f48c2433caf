"""facemogle.eval.parser / bisenet and `facemogle parse`: photo -> official-id face masks."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facemogle.cli import main as cli_main
from facemogle.data.splits import split_folder
from facemogle.errors import CheckpointError, InputError
from facemogle.eval.bisenet import BISENET_INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD, BiSeNet
from facemogle.eval.parser import (
    SHIPPED_PARSER_DIR,
    BiSeNetParser,
    FaceParser,
    confusion_matrix,
    evaluate_parser,
    iou_per_class,
    load_parser,
    mirrored_class_ids,
    resize_photo,
)
from facemogle.labels import BISENET_CLASS_NAMES, BISENET_TO_OFFICIAL, NUM_CLASSES, PALETTE, class_id

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_CARD = SHIPPED_PARSER_DIR / "MODEL_CARD.md"
CARD_MEAN_IOU = re.compile(r"Validation mean IoU \(\d+ classes\): \*\*([0-9.]+)\*\*")
CARD_FINGERPRINT = re.compile(r"Val fingerprint.*?`([0-9a-f]{64})`", re.DOTALL)
CARD_TOLERANCE = 0.005
EXAMPLE_BISENET_KEYS = {  # names and shapes of face-parsing.PyTorch's 79999_iter.pth
    "cp.resnet.conv1.weight": (64, 3, 7, 7),
    "cp.resnet.layer1.0.conv1.weight": (64, 64, 3, 3),
    "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "cp.resnet.layer4.1.bn2.running_var": (512,),
    "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
    "cp.arm32.conv_atten.weight": (128, 128, 1, 1),
    "cp.arm32.bn_atten.weight": (128,),
    "cp.conv_head32.bn.running_mean": (128,),
    "cp.conv_avg.conv.weight": (128, 512, 1, 1),
    "ffm.convblk.conv.weight": (256, 256, 1, 1),
    "ffm.conv1.weight": (64, 256, 1, 1),
    "ffm.conv2.weight": (256, 64, 1, 1),
    "conv_out.conv.conv.weight": (256, 256, 3, 3),
    "conv_out.conv_out.weight": (19, 256, 1, 1),
    "conv_out16.conv.conv.weight": (64, 128, 3, 3),
    "conv_out32.conv_out.weight": (19, 64, 1, 1),
}


def random_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def tiny_parser() -> FaceParser:
    torch.manual_seed(0)
    parser = FaceParser(block_channels=(4, 8), convs_per_block=1, sample_size=32)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a lost buffer would show
        for module in parser.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return parser.eval()


@pytest.fixture(scope="module")
def shipped_parser():
    if not (SHIPPED_PARSER_DIR / "config.json").is_file():
        pytest.fail(f"the shipped parser weights are missing from {SHIPPED_PARSER_DIR}")
    return load_parser()


# --------------------------------------------------------------------------------------------
# FaceParser and the parse API
# --------------------------------------------------------------------------------------------


def test_shipped_parser_outputs_ids_at_each_input_size(shipped_parser):
    assert isinstance(shipped_parser, FaceParser) and not shipped_parser.training
    ids = shipped_parser.parse(random_photo(300, 200))
    assert ids.shape == (200, 300) and ids.dtype == np.uint8 and ids.max() < NUM_CLASSES
    batch = shipped_parser.parse([random_photo(64, 64, 1), random_photo(64, 64, 2)])
    assert batch.shape == (2, 64, 64) and batch.dtype == np.uint8
    mixed = shipped_parser.parse([random_photo(40, 30), random_photo(20, 50)])
    assert [m.shape for m in mixed] == [(30, 40), (50, 20)]
    assert np.array_equal(shipped_parser.parse(random_photo(300, 200)), ids)  # deterministic


def test_shipped_parser_weights_are_small():
    sizes = [p.stat().st_size for p in SHIPPED_PARSER_DIR.glob("*.safetensors")]
    assert len(sizes) == 1 and sizes[0] < 16 * 2**20
    assert "non-commercial" in MODEL_CARD.read_text()


def test_shipped_parser_finds_the_face_on_real_photos(shipped_parser, fixtures_dir):
    """MaskGAN sample photos (1024 px, not in the training data) against their 512 px masks."""
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for index in range(4):
        photo = Image.open(fixtures_dir / "maskgan-samples" / f"{index}.jpg").convert("RGB")
        target = np.asarray(Image.open(fixtures_dir / "maskgan-samples" / f"{index}.png"))
        predicted = shipped_parser.parse(photo.resize(target.shape[::-1], Image.BILINEAR))
        confusion += confusion_matrix(predicted, target)
    iou = iou_per_class(confusion)
    for name in ("background", "face skin", "hair"):
        assert iou[class_id(name)] > 0.75, (name, iou[class_id(name)])
    assert np.nanmean(iou) > 0.5


def test_shipped_parser_validation_miou_matches_model_card(shipped_parser, mini_dataset_dir):
    """Recompute the card's number: full-resolution IoU over the 100 val images of the split rule."""
    card = MODEL_CARD.read_text()
    split = split_folder(mini_dataset_dir)
    assert split.fingerprint == CARD_FINGERPRINT.search(card).group(1)
    metrics = evaluate_parser(shipped_parser, mini_dataset_dir, split.val)
    assert metrics["num_images"] == len(split.val)
    assert abs(metrics["mean_iou"] - float(CARD_MEAN_IOU.search(card).group(1))) <= CARD_TOLERANCE


def test_face_parser_round_trips_through_save_pretrained(tmp_path):
    parser = tiny_parser()
    parser.save_pretrained(tmp_path)
    loaded = load_parser(tmp_path)
    assert isinstance(loaded, FaceParser) and not loaded.training
    for key in ("num_classes", "convs_per_block", "sample_size", "use_coord_channels"):
        assert loaded.config[key] == parser.config[key], key
    assert tuple(loaded.config.block_channels) == (4, 8)
    for (name, expected), (_, actual) in zip(parser.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(expected, actual), name
    photo = random_photo(48, 40)
    assert np.array_equal(loaded.parse(photo), parser.parse(photo))


def test_parse_matches_forward_and_accepts_paths(tmp_path):
    parser = tiny_parser()
    parser.register_to_config(test_time_flip=False)  # parse == argmax(forward) exactly
    photo = random_photo(32, 32, seed=3)
    photo.save(tmp_path / "face.png")
    pixels = torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    with torch.no_grad():
        expected = parser(pixels, output_size=(32, 32)).argmax(1)[0].numpy()
    assert np.array_equal(parser.parse(tmp_path / "face.png"), expected)
    assert np.array_equal(parser.parse([str(tmp_path / "face.png")])[0], expected)


def test_image_features_are_the_pooled_bottleneck(tmp_path):
    parser = tiny_parser()
    photos = [random_photo(32, 32, seed=seed) for seed in (1, 2)]
    features = parser.image_features(photos)
    assert features.shape == (2, parser.config.block_channels[-1]) and features.dtype == torch.float32
    pixels = torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in photos]).float() / 127.5 - 1.0
    with torch.no_grad():
        bottleneck = parser._encode(pixels)[-1]  # same size as the model input: no resize involved
    torch.testing.assert_close(features, bottleneck.mean(dim=(2, 3)))
    assert not torch.allclose(features[0], features[1])
    with pytest.raises(InputError):
        parser.image_features([])


def test_parse_keeps_training_mode_and_rejects_bad_input(tmp_path):
    parser = tiny_parser().train()
    parser.parse(random_photo(16, 16))
    assert parser.training
    (tmp_path / "not_an_image.jpg").write_text("hello")
    with pytest.raises(InputError, match="not a readable image"):
        parser.parse(tmp_path / "not_an_image.jpg")
    with pytest.raises(InputError, match="at least one image"):
        parser.parse([])
    with pytest.raises(InputError, match="PIL image or an image path"):
        parser.parse([np.zeros((4, 4, 3))])


def test_load_parser_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_parser(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no FaceParser config"):
        load_parser(tmp_path)


def test_confusion_and_iou():
    target = np.array([[0, 0, 1], [1, 2, 2]])
    predicted = np.array([[0, 1, 1], [1, 2, 0]])
    confusion = confusion_matrix(predicted, target, num_classes=4)
    assert confusion.sum() == 6 and confusion[0, 1] == 1 and confusion[2, 0] == 1
    iou = iou_per_class(confusion)
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 1 / 2])
    assert np.isnan(iou[3])


# --------------------------------------------------------------------------------------------
# BiSeNet (face-parsing.PyTorch) checkpoints
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_bisenet() -> BiSeNet:
    torch.manual_seed(0)
    return BiSeNet().eval()


def test_bisenet_parameter_names_match_the_released_checkpoint(random_bisenet):
    state = random_bisenet.state_dict()
    for key, shape in EXAMPLE_BISENET_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(key.startswith(("sp.", "cp.resnet.fc")) for key in state)  # no spatial path, no classifier
    outputs = random_bisenet(torch.zeros(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outputs] == [(1, len(BISENET_CLASS_NAMES), 64, 64)] * 3


def test_bisenet_pth_loads_and_parses_in_official_order(tmp_path, random_bisenet):
    state = random_bisenet.state_dict()
    path = tmp_path / "79999_iter.pth"
    torch.save(state, path)
    parser = load_parser(path)
    assert isinstance(parser, BiSeNetParser) and not parser.training
    for key, value in parser.net.state_dict().items():
        assert torch.equal(value, state[key]), key

    photo = random_photo(BISENET_INPUT_SIZE, BISENET_INPUT_SIZE, seed=5)
    pixels = torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None].float() / 255.0
    pixels = (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        bisenet_ids = random_bisenet(pixels)[0].argmax(1)[0].numpy()
    expected = np.asarray(BISENET_TO_OFFICIAL, dtype=np.uint8)[bisenet_ids]
    ids = parser.parse(photo)
    assert np.mean(ids == expected) > 0.999  # same model, same convention (ties aside)


def test_bisenet_labels_are_remapped_to_official(tmp_path, random_bisenet):
    """A head that only ever votes BiSeNet 'hair' must yield official 'hair' ids."""
    state = {k: v.clone() for k, v in random_bisenet.state_dict().items()}
    head = torch.zeros_like(state["conv_out.conv_out.weight"])
    head[BISENET_CLASS_NAMES.index("hair")] = 1.0
    state["conv_out.conv_out.weight"] = head
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "hair.pth")  # DataParallel prefix
    ids = load_parser(tmp_path / "hair.pth").parse(random_photo(100, 80))
    assert ids.shape == (80, 100)
    assert np.mean(ids == class_id("hair")) > 0.9
    assert class_id("hair") != BISENET_CLASS_NAMES.index("hair")


def test_bisenet_without_batchnorm_counters_loads(tmp_path, random_bisenet):
    state = {k: v for k, v in random_bisenet.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    assert isinstance(load_parser(tmp_path / "old.pth"), BiSeNetParser)


def test_wrong_files_are_refused_with_the_key_names(tmp_path, random_bisenet):
    state = dict(random_bisenet.state_dict())
    del state["ffm.conv1.weight"]
    state["head.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="missing keys: ffm.conv1.weight") as info:
        load_parser(tmp_path / "wrong.pth")
    assert "unexpected keys: head.extra.weight" in str(info.value)

    resnet_only = {k: v for k, v in random_bisenet.state_dict().items() if k.startswith("cp.resnet.")}
    torch.save(resnet_only, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: .*\(\d+ in all\)"):
        load_parser(tmp_path / "resnet.pth")

    state = dict(random_bisenet.state_dict())
    state["conv_out.conv_out.weight"] = torch.zeros(5, 256, 1, 1)
    torch.save(state, tmp_path / "classes.pth")
    with pytest.raises(CheckpointError, match="shape mismatches: conv_out.conv_out.weight"):
        load_parser(tmp_path / "classes.pth")

    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_parser(tmp_path / "text.pth")


# --------------------------------------------------------------------------------------------
# Training recipe
# --------------------------------------------------------------------------------------------


def load_recipe():
    spec = importlib.util.spec_from_file_location("train_parser", REPO_ROOT / "scripts" / "train_parser.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_flip_swaps_left_and_right_classes():
    recipe = load_recipe()
    lut = recipe.flip_lut()
    assert torch.equal(lut, mirrored_class_ids())
    for left, right in (("left eye", "right eye"), ("left eyebrow", "right eyebrow"), ("left ear", "right ear")):
        assert lut[class_id(left)] == class_id(right) and lut[class_id(right)] == class_id(left)
    assert torch.equal(lut[lut], torch.arange(NUM_CLASSES))
    assert int((lut != torch.arange(NUM_CLASSES)).sum()) == 6

    # A batch whose only augmentation is a flip: the left eye must come back mirrored as the right eye.
    args = recipe.parse_args(["--max-rotation", "0", "--max-scale", "1", "--max-shift", "0", "--color-jitter", "0",
                              "--greyscale-prob", "0"])
    photos = torch.zeros(16, 8, 8, 3, dtype=torch.uint8)
    masks = torch.zeros(16, 8, 8, dtype=torch.uint8)
    masks[:, 2, 1] = class_id("left eye")
    _, labels = recipe.augment(photos, masks, args, torch.Generator().manual_seed(0))
    flipped = labels[:, 2, 6] == class_id("right eye")
    kept = labels[:, 2, 1] == class_id("left eye")
    assert torch.all(flipped ^ kept) and 0 < int(flipped.sum()) < 16


def test_recipe_loss_is_cross_entropy_plus_dice():
    recipe = load_recipe()
    torch.manual_seed(0)
    logits, labels = torch.randn(2, NUM_CLASSES, 8, 8), torch.randint(0, NUM_CLASSES, (2, 8, 8))
    probabilities = logits.softmax(1)
    one_hot = torch.nn.functional.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float()
    dice = (2 * (probabilities * one_hot).sum((0, 2, 3)) + 1) / (probabilities.sum((0, 2, 3)) + one_hot.sum((0, 2, 3)) + 1)
    expected = torch.nn.functional.cross_entropy(logits, labels) + 0.5 * (1 - dice.mean())
    torch.testing.assert_close(recipe.segmentation_loss(logits, labels, 0.5), expected)

    # "present": only the classes the labels hold enter the Dice mean (absent ones no longer push down).
    labels = torch.randint(0, 3, (2, 8, 8))  # classes 0, 1, 2 only
    one_hot = torch.nn.functional.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float()
    dice = (2 * (probabilities * one_hot).sum((0, 2, 3)) + 1) / (probabilities.sum((0, 2, 3)) + one_hot.sum((0, 2, 3)) + 1)
    cross_entropy = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(recipe.segmentation_loss(logits, labels, 0.5, "present"),
                               cross_entropy + 0.5 * (1 - dice[:3].mean()))
    torch.testing.assert_close(recipe.segmentation_loss(logits, labels, 0.5, "all"),
                               cross_entropy + 0.5 * (1 - dice.mean()))


def test_recipe_lovasz_loss_is_one_minus_iou_on_hard_predictions():
    recipe = load_recipe()
    torch.manual_seed(0)
    labels, predicted = torch.randint(0, 4, (2, 6, 6)), torch.randint(0, 5, (2, 6, 6))
    probabilities = torch.nn.functional.one_hot(predicted, NUM_CLASSES).permute(0, 3, 1, 2).float()
    # On 0/1 probabilities the Lovasz extension equals the Jaccard loss: 1 - IoU, over the classes in labels.
    expected = np.mean([1 - float(((labels == c) & (predicted == c)).sum()) / float(((labels == c) | (predicted == c)).sum())
                        for c in range(4)])
    assert float(recipe.lovasz_softmax_loss(probabilities, labels)) == pytest.approx(expected, abs=1e-6)
    assert float(recipe.lovasz_softmax_loss(torch.nn.functional.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float(),
                                            labels)) == 0.0  # perfect prediction

    logits = torch.randn(2, NUM_CLASSES, 8, 8, requires_grad=True)
    labels = torch.randint(0, NUM_CLASSES, (2, 8, 8))
    loss = recipe.segmentation_loss(logits, labels, 0.0, lovasz_weight=0.5, lovasz_stride=2)
    lovasz = recipe.lovasz_softmax_loss(logits.softmax(1)[:, :, ::2, ::2], labels[:, ::2, ::2])
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, labels) + 0.5 * lovasz)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_recipe_weight_averaging_and_batch_norm_statistics():
    recipe = load_recipe()
    model = tiny_parser()
    average = recipe.WeightAverage()
    for value in (1.0, 2.0, 6.0):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(value)
        average.update(model)
    restored = recipe.WeightAverage(average.state_dict())  # the checkpoint round trip
    assert restored.count == 3
    restored.copy_to(model)
    assert all(torch.all(parameter == 3.0) for parameter in model.parameters())  # mean of 1, 2, 6

    model = tiny_parser()
    for module in model.modules():  # statistics from a long "training": they must not leak into the new ones
        if isinstance(module, torch.nn.BatchNorm2d):
            module.num_batches_tracked.fill_(1000)
    photos = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)
    recipe.recompute_batch_norm(model, photos, batch_size=3)  # two equal batches: the mean of their means
    first_norm = model.encoder[0][0][1]
    with torch.no_grad():
        features = model.encoder[0][0][0](model._with_coords(FaceParser.normalize(photos.permute(0, 3, 1, 2))))
    torch.testing.assert_close(first_norm.running_mean, features.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    assert first_norm.momentum == 0.1 and not model.training  # restored

    factors = [recipe.lr_factor(step, 10, 100, final=0.25, constant_steps=30) for step in range(100)]
    assert factors[9] == 1.0 and factors[69] == pytest.approx(0.25, abs=1e-3) and set(factors[70:]) == {0.25}
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))  # warm-up, then never rising


def test_recipe_repeat_factors_favour_images_with_rare_classes():
    recipe = load_recipe()
    masks = torch.zeros(4, 6, 6, dtype=torch.uint8)  # background everywhere
    masks[:, 0, 0] = class_id("face skin")  # in every image: factor 1
    masks[0, 1, 1] = class_id("necklace")  # in 1 of 4 images: f = 0.25
    masks[1, 1, 1] = masks[2, 1, 1] = class_id("hat")  # in 2 of 4 images: f = 0.5
    weights = recipe.repeat_factors(masks, threshold=1.0)
    torch.testing.assert_close(weights, torch.tensor([2.0, 2**0.5, 2**0.5, 1.0]))  # max(1, sqrt(T / f))
    assert torch.equal(recipe.repeat_factors(masks, threshold=0.25), torch.ones(4))  # every f >= T: no repeats

    generator = torch.Generator().manual_seed(0)
    assert torch.equal(recipe.epoch_order(5, None, generator).sort().values, torch.arange(5))  # a permutation
    draws = torch.cat([recipe.epoch_order(4, torch.tensor([1.0, 1.0, 1.0, 9.0]), generator) for _ in range(500)])
    assert len(draws) == 2000 and abs(float((draws == 3).float().mean()) - 0.75) < 0.03


def test_recipe_copy_paste_puts_rare_objects_at_their_own_place():
    recipe = load_recipe()
    necklace, left_eye, right_eye = class_id("necklace"), class_id("left eye"), class_id("right eye")
    source_photos = torch.zeros(3, 8, 8, 3, dtype=torch.uint8)
    source_masks = torch.zeros(3, 8, 8, dtype=torch.uint8)
    source_masks[0, 6, 1:3] = necklace  # 2 px: too small for min_pixels=3
    source_masks[1, 6, 1:4] = necklace  # 3 px
    source_photos[1, 6, 1:4] = torch.tensor([200, 100, 50], dtype=torch.uint8)
    source_masks[2, 2, 1:4] = left_eye
    source_photos[2, 2, 1:4] = torch.tensor([10, 20, 30], dtype=torch.uint8)
    pool = recipe.copy_paste_pool(source_masks, [necklace, left_eye, class_id("hat")], min_pixels=3)
    assert pool == {necklace: [1], left_eye: [2]}  # no hat anywhere: left out

    photos = torch.full((64, 8, 8, 3), 7, dtype=torch.uint8)
    masks = torch.full((64, 8, 8), class_id("face skin"), dtype=torch.uint8)
    before = photos.clone(), masks.clone()
    new_photos, new_masks = recipe.copy_paste(photos, masks, source_photos, source_masks, pool, 1.0,
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

    untouched = recipe.copy_paste(photos, masks, source_photos, source_masks, pool, 0.0, torch.Generator())
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


def test_recipe_fine_tunes_from_a_saved_parser_and_the_card_names_both_stages(tmp_path, capsys):
    recipe = load_recipe()
    data = write_tiny_face_folder(tmp_path / "faces")
    common = ["--data", str(data), "--num-val", "1", "--epochs", "1", "--batch-size", "2", "--no-bf16",
              "--weights-dtype", "float32"]
    stage_1 = ["--output", str(tmp_path / "stage1"), "--work-dir", str(tmp_path / "w1"),
               "--block-channels", "4", "8", "--sample-size", "32"]
    assert recipe.main(common + stage_1) == 0
    stage_2 = ["--output", str(tmp_path / "stage2"), "--work-dir", str(tmp_path / "w2"),
               "--init-from", str(tmp_path / "stage1"), "--rare-class-threshold", "0.3", "--lr", "0"]
    assert recipe.main(common + stage_2) == 0  # lr 0: the fine-tuned weights are the stage-1 weights
    first, second = load_parser(tmp_path / "stage1"), load_parser(tmp_path / "stage2")
    assert list(second.config.block_channels) == list(first.config.block_channels) == [4, 8]  # architecture kept
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters()):  # (norm statistics move)
        torch.testing.assert_close(a, b, msg=name)
    card = (tmp_path / "stage2" / "MODEL_CARD.md").read_text()
    assert "2 stages" in card and "--init-from" in card and "repeat-factor sampling, threshold 0.3" in card
    assert " ".join(stage_1[:2]) in card  # stage 1's own command, read from its metrics.json
    assert "_name_or_path" not in (tmp_path / "stage2" / "config.json").read_text()  # no path of this machine

    stage_3 = ["--output", str(tmp_path / "stage3"), "--work-dir", str(tmp_path / "w3"),
               "--init-from", str(tmp_path / "stage2"), "--dice-classes", "present"]
    assert recipe.main(common + stage_3) == 0
    card = (tmp_path / "stage3" / "MODEL_CARD.md").read_text()
    assert "3 stages" in card and "Dice averaged over the classes present in each batch" in card
    assert "Weight averaging" not in card and "Lovasz" not in card and "Copy-paste" not in card

    stage_4 = ["--output", str(tmp_path / "stage4"), "--work-dir", str(tmp_path / "w4"), "--init-from",
               str(tmp_path / "stage3"), "--epochs", "2", "--swa-epochs", "2", "--lovasz-weight", "0.5",
               "--copy-paste-classes", "left eye", "--copy-paste-min-pixels", "2"]
    assert recipe.main(common + stage_4) == 0
    card = (tmp_path / "stage4" / "MODEL_CARD.md").read_text()
    assert "+ 0.5 x Lovasz-softmax" in card and "held for the last 2 epochs" in card and "multi-scale" not in card
    assert "one object of left eye (a class drawn uniformly" in card and "at least 2 of its pixels" in card
    printed = capsys.readouterr().out
    assert "copy-paste, p = 0.5: left eye from 4 images" in printed  # 4 train images, all with eyes
    assert "weights of the last 2 epochs" in printed

    # from a parser saved without the recipe (no metrics.json beside it): no chain of stages, the command alone
    tiny_parser().save_pretrained(tmp_path / "plain")
    plain = ["--output", str(tmp_path / "from-plain"), "--work-dir", str(tmp_path / "wp"),
             "--init-from", str(tmp_path / "plain")]
    assert recipe.main(common + plain) == 0
    card = (tmp_path / "from-plain" / "MODEL_CARD.md").read_text()
    assert "stages" not in card.split("## Recipe")[1].split("\n\n")[1] and str(tmp_path / "plain") in card

    # --epochs 0: the same weights, saved with multi-scale testing and measured again; a key an older
    # FaceParser wrote (ignored on load) is not carried into the new config
    config_file = tmp_path / "stage4" / "config.json"
    config_file.write_text(config_file.read_text().replace('"convs_per_block"', '"retired_option": 0, "convs_per_block"'))
    stage_5 = ["--output", str(tmp_path / "stage5"), "--work-dir", str(tmp_path / "w5"), "--init-from",
               str(tmp_path / "stage4"), "--test-time-sizes", "64", "--epochs", "0"]
    assert recipe.main(common + stage_5) == 0
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


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def tiny_parser_dir(tmp_path):
    tiny_parser().save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


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


def test_test_time_flip_makes_parse_mirror_symmetric():
    """With test_time_flip, parsing the mirrored photo gives the mirrored mask with left/right swapped."""
    parser = tiny_parser()
    assert parser.config.test_time_flip
    photo = random_photo(32, 32, seed=7)
    swapped = mirrored_class_ids().numpy()
    ids = parser.parse(photo)
    mirrored_ids = parser.parse(photo.transpose(Image.FLIP_LEFT_RIGHT))
    assert np.mean(mirrored_ids == swapped[ids[:, ::-1]]) > 0.999
    parser.register_to_config(test_time_flip=False)
    assert np.mean(parser.parse(photo.transpose(Image.FLIP_LEFT_RIGHT)) == swapped[ids[:, ::-1]]) < 0.99


def test_test_time_sizes_average_log_probabilities_over_input_sizes(tmp_path):
    parser = tiny_parser()
    parser.register_to_config(test_time_flip=False)
    photo = random_photo(48, 48, seed=5)

    def log_probabilities(size: int) -> torch.Tensor:
        pixels = torch.from_numpy(resize_photo(photo, size).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        with torch.no_grad():
            return parser(pixels, output_size=(32, 32)).log_softmax(1)  # at the largest size's logits (64 / 2)

    single = parser.parse(photo)
    parser.register_to_config(test_time_sizes=[64])
    expected = torch.nn.functional.interpolate((log_probabilities(32) + log_probabilities(64)) / 2, size=(48, 48),
                                               mode="bilinear", align_corners=False).argmax(1)[0].numpy()
    both = parser.parse(photo)
    assert np.array_equal(both, expected) and not np.array_equal(both, single)
    parser.save_pretrained(tmp_path)
    assert np.array_equal(load_parser(tmp_path).parse(photo), both)  # the setting travels with the config
    with pytest.raises(InputError, match="divisible"):
        FaceParser(block_channels=(4, 8), sample_size=32, test_time_sizes=(42,))
