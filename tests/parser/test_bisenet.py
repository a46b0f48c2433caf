"""facemogle.parser.bisenet: face-parsing.PyTorch BiSeNet checkpoints behind the parse API."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facemogle.errors import CheckpointError
from facemogle.labels import BISENET_CLASS_NAMES, BISENET_TO_OFFICIAL, class_id
from facemogle.parser import BISENET_INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD, BiSeNetParser, load_parser

from .conftest import random_photo

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
