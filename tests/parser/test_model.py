"""facemogle.parser.model / inference: FaceParser, the parse API, test-time flip and sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facemogle.errors import InputError
from facemogle.parser import FaceParser, load_parser, mirrored_class_ids, resize_photo

from .conftest import random_photo, tiny_parser


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
    with pytest.raises(InputError, match="is not an image file that can be read"):
        parser.parse(tmp_path / "not_an_image.jpg")
    with pytest.raises(InputError, match="at least one image"):
        parser.parse([])
    with pytest.raises(InputError, match="PIL image or an image path"):
        parser.parse([np.zeros((4, 4, 3))])


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
