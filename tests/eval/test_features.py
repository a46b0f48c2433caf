"""Feature extractors, their preprocessing and loading code, and the feature cache.

Models are tiny random ones saved to tmp folders (tests/eval/conftest.py) and loaded back through
the real loaders; preprocessing is checked against transformers' own PIL image processors.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from facemogle.errors import CheckpointError, InputError
from facemogle.eval.cache import FeatureCache, cache_key
from facemogle.eval.features import ClipEncoder, DinoKeys, InceptionFeatures, resolve_source
from facemogle.eval.inception import INCEPTION_FEATURE_DIM, INCEPTION_IMAGE_SIZE, FIDInceptionV3
from facemogle.eval.preprocess import ImagePreprocessor, clean_resize

from .conftest import TINY_CLIP_IMAGE_SIZE, TINY_DINO_IMAGE_SIZE, TINY_DINO_PATCH, TINY_HIDDEN, TINY_PROJECTION

# --------------------------------------------------------------------------------------------
# Inception
# --------------------------------------------------------------------------------------------

# A sample of the pytorch-fid file's keys and shapes (pt_inception-2015-12-05-6726825d.pth).
PYTORCH_FID_KEYS = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7dbl_5.conv.weight": (192, 128, 1, 7),
    "Mixed_6e.branch7x7_3.conv.weight": (192, 192, 7, 1),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}
#: Parameters of the FID Inception (torchvision's Inception-v3 without aux head, 1008 classes).
FID_INCEPTION_PARAMETERS = 23_850_960


@pytest.fixture(scope="module")
def loaded_inception(tiny_inception_file) -> InceptionFeatures:
    """Loaded from the folder that holds the .pth (the folder route finds the file by name)."""
    return InceptionFeatures.from_pretrained(tiny_inception_file.parent)


def test_inception_parameter_names_match_the_pytorch_fid_file():
    model = FIDInceptionV3()
    state = model.state_dict()
    for key, shape in PYTORCH_FID_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert sum(p.numel() for p in model.parameters()) == FID_INCEPTION_PARAMETERS
    assert not any(key.startswith("AuxLogits") for key in state)


def test_inception_loads_the_pth_file_and_a_safetensors_copy(loaded_inception, tiny_inception_file, tmp_path):
    saved = torch.load(tiny_inception_file, weights_only=True)
    loaded = loaded_inception.model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in saved.items())
    assert loaded_inception.identity.startswith("fid-inception-v3|") and tiny_inception_file.name in loaded_inception.identity
    # The cache identity is known without loading the weights, and changes with the input normalisation.
    assert InceptionFeatures.identity_of(tiny_inception_file) == loaded_inception.identity
    assert InceptionFeatures.identity_of(tiny_inception_file, input_offset=127.5) != loaded_inception.identity

    copy = tmp_path / "inception.safetensors"
    save_file({key: value.contiguous() for key, value in saved.items()}, str(copy))
    reloaded = FIDInceptionV3.from_weights_file(copy).state_dict()
    assert all(torch.equal(reloaded[key], value) for key, value in saved.items())


def test_inception_features_of_small_images(loaded_inception, make_image):
    images = [make_image(0), make_image(1, size=40)]
    pixels = loaded_inception.preprocess(images)
    assert pixels.shape == (2, 3, INCEPTION_IMAGE_SIZE, INCEPTION_IMAGE_SIZE)
    features = loaded_inception(images)
    assert features.shape == (2, INCEPTION_FEATURE_DIM) and features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert not torch.allclose(features[0], features[1])


def test_inception_refuses_bad_weights(tmp_path):
    with pytest.raises(CheckpointError, match="do not exist"):
        InceptionFeatures.from_pretrained(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="found 0"):
        InceptionFeatures.from_pretrained(tmp_path)
    # Small stand-ins keep the files tiny: every key present, but with placeholder tensors.
    keys = [key for key in FIDInceptionV3().state_dict() if not key.endswith("num_batches_tracked")]
    partial = tmp_path / "partial.pth"
    torch.save({key: torch.zeros(1) for key in keys if not key.startswith("Mixed_7c")}, partial)
    with pytest.raises(CheckpointError, match="missing keys .*Mixed_7c"):
        FIDInceptionV3.from_weights_file(partial)
    wrong = tmp_path / "wrong.pth"
    torch.save({key: torch.zeros(1) for key in keys}, wrong)
    with pytest.raises(CheckpointError, match=r"Conv2d_1a_3x3.conv.weight has shape \(1,\), expected \(32, 3, 3, 3\)"):
        FIDInceptionV3.from_weights_file(wrong)
    extra = tmp_path / "extra.pth"
    torch.save({**{key: torch.zeros(1) for key in keys}, "head.weight": torch.zeros(1)}, extra)
    with pytest.raises(CheckpointError, match="unexpected keys .*head.weight"):
        FIDInceptionV3.from_weights_file(extra)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable weights file"):
        FIDInceptionV3.from_weights_file(garbage)


def test_clean_resize_is_unquantised_pil_bicubic(make_image):
    image = make_image(3, size=48)
    resized = clean_resize(image, 20)
    assert resized.shape == (20, 20, 3) and resized.dtype == np.float32
    assert 0.0 <= resized.min() and resized.max() <= 255.0
    assert not np.allclose(resized, np.round(resized))  # no quantisation back to uint8
    quantised = np.asarray(image.resize((20, 20), Image.Resampling.BICUBIC)).astype(np.float32)
    # PIL's uint8 path computes the same filter in fixed point and rounds: within one grey level.
    assert np.abs(resized - quantised).max() <= 1.0
    same_size = clean_resize(image, 48)
    np.testing.assert_array_equal(same_size, np.asarray(image).astype(np.float32))


# --------------------------------------------------------------------------------------------
# Preprocessing against transformers' PIL image processors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(40, 30), (30, 40), (24, 24), (17, 33)])
def test_clip_preprocessing_matches_transformers(tiny_clip_dir, make_image, size):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image = make_image(4, size=64).resize(size)
    ours = ImagePreprocessor.from_pretrained(
        tiny_clip_dir, default=ImagePreprocessor.clip_default(224), default_to_square=False, local_files_only=True
    )
    assert ours.crop_size == (TINY_CLIP_IMAGE_SIZE, TINY_CLIP_IMAGE_SIZE)
    theirs = CLIPImageProcessorPil.from_pretrained(tiny_clip_dir)(images=[image], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(ours([image]).numpy(), theirs, atol=1e-5)


def test_vit_preprocessing_matches_transformers(tiny_dino_dir, make_image):
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    image = make_image(5, size=50).resize((50, 37))
    ours = ImagePreprocessor.from_pretrained(
        tiny_dino_dir, default=ImagePreprocessor.imagenet_default(224), default_to_square=True, local_files_only=True
    )
    assert ours.resize_mode == "exact" and ours.crop_size is None
    theirs = ViTImageProcessorPil.from_pretrained(tiny_dino_dir)(images=[image], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(ours([image]).numpy(), theirs, atol=1e-5)


def test_legacy_processor_configs_of_the_paper_models_are_read():
    # The integer-size layouts of openai/clip-vit-large-patch14-336 and facebook/dino-vitb8.
    clip_large = ImagePreprocessor.from_processor_config(
        {"crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True, "resample": 3, "size": 336},
        default=ImagePreprocessor.clip_default(224), default_to_square=False,
    )
    assert (clip_large.resize_mode, clip_large.resize_to, clip_large.crop_size) == ("shortest_edge", (336,), (336, 336))
    cmmd = clip_large.for_cmmd()
    assert (cmmd.square_crop_first, cmmd.resize_mode, cmmd.resize_to, cmmd.crop_size) == (True, "exact", (336, 336), None)
    dino = ImagePreprocessor.from_processor_config(
        {"do_normalize": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406],
         "image_std": [0.229, 0.224, 0.225], "resample": 2, "size": 224},
        default=ImagePreprocessor.imagenet_default(224), default_to_square=True,
    )
    assert (dino.resize_mode, dino.resize_to, dino.crop_size, dino.resample) == ("exact", (224, 224), None, 2)
    assert dino.mean == (0.485, 0.456, 0.406)


def test_cmmd_preprocessing_crops_the_centre_square_then_resizes(make_image):
    image = make_image(6, size=60).resize((60, 40))
    preprocessor = ImagePreprocessor.clip_default(16).for_cmmd()
    expected = np.asarray(image.crop((10, 0, 50, 40)).resize((16, 16), Image.Resampling.BICUBIC)).astype(np.float32)
    expected = (expected / 255.0 - np.array(preprocessor.mean)) / np.array(preprocessor.std)
    np.testing.assert_allclose(preprocessor([image])[0].numpy(), expected.transpose(2, 0, 1), atol=1e-5)


def test_identity_preprocessing_is_pixels_over_255(make_image):
    image = make_image(7, size=20)
    values = ImagePreprocessor.identity()([image])[0].numpy()
    np.testing.assert_allclose(values, np.asarray(image).transpose(2, 0, 1) / 255.0, atol=1e-7)


# --------------------------------------------------------------------------------------------
# CLIP
# --------------------------------------------------------------------------------------------


def test_clip_encoder_matches_transformers_end_to_end(tiny_clip_dir, make_image):
    from transformers import AutoTokenizer, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    encoder = ClipEncoder.from_pretrained(tiny_clip_dir, local_files_only=True)
    images = [make_image(8), make_image(9, size=40).resize((40, 30))]
    texts = ["a smiling woman with blond hair", "a man " * 40]  # the second one exceeds the context

    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_clip_dir)
    pixel_values = CLIPImageProcessorPil.from_pretrained(tiny_clip_dir)(images=images, return_tensors="pt")["pixel_values"]
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=model.config.text_config.max_position_embeddings,
                       return_tensors="pt")
    with torch.no_grad():
        image_expected = model.visual_projection(model.vision_model(pixel_values=pixel_values.float()).pooler_output)
        text_expected = model.text_projection(model.text_model(**tokens).pooler_output)

    image_embeddings = encoder.encode_images(images)
    text_embeddings = encoder.encode_texts(texts)
    assert image_embeddings.shape == text_embeddings.shape == (2, TINY_PROJECTION)
    torch.testing.assert_close(image_embeddings, torch.nn.functional.normalize(image_expected, dim=-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(text_embeddings, torch.nn.functional.normalize(text_expected, dim=-1), atol=1e-5, rtol=1e-4)
    assert torch.allclose(image_embeddings.norm(dim=-1), torch.ones(2))


def test_clip_encoder_cmmd_mode_and_identity(tiny_clip_dir):
    plain = ClipEncoder.from_pretrained(tiny_clip_dir, local_files_only=True, with_tokenizer=False)
    cmmd = ClipEncoder.from_pretrained(tiny_clip_dir, preprocessing="cmmd", local_files_only=True, with_tokenizer=False)
    assert cmmd.preprocessor.square_crop_first and not plain.preprocessor.square_crop_first
    assert cmmd.identity != plain.identity  # different features, different cache entries
    with pytest.raises(InputError, match="without a tokenizer"):
        plain.encode_texts(["a face"])


def test_clip_and_dino_loading_errors(tmp_path, tiny_dino_dir):
    with pytest.raises(CheckpointError, match="does not exist"):
        ClipEncoder.from_pretrained(tmp_path / "no" / "such" / "clip", local_files_only=True)
    with pytest.raises(CheckpointError, match="weights of a CLIPModel are missing"):
        ClipEncoder.from_pretrained(tiny_dino_dir, local_files_only=True)  # a ViT folder, not CLIP
    with pytest.raises(CheckpointError, match="cannot load the DINO ViT"):
        DinoKeys.from_pretrained(tmp_path, local_files_only=True)  # an empty folder
    with pytest.raises(CheckpointError, match="locally"):  # a hub id that is not cached: no download attempted
        DinoKeys.from_pretrained("facemogle-tests/not-a-cached-model", local_files_only=True)
    assert resolve_source("org/name", what="model") == "org/name"


# --------------------------------------------------------------------------------------------
# DINO
# --------------------------------------------------------------------------------------------


def manual_last_layer_keys(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Keys recomputed from the hidden states: layer norm of the last layer's input, then k_proj."""
    with torch.no_grad():
        hidden = model(pixel_values=pixel_values, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
        last = model.layers[-1]
        return last.attention.k_proj(last.layernorm_before(hidden[-2]))


def test_dino_keys_are_the_last_layer_key_projection(tiny_dino_dir, make_image):
    from transformers import ViTModel

    images = [make_image(10, size=24), make_image(11, size=24)]
    reference = DinoKeys.from_pretrained(tiny_dino_dir, local_files_only=True)
    keys = reference.keys(images)
    tokens = 1 + (24 // TINY_DINO_PATCH) ** 2  # full resolution, CLS first
    assert keys.shape == (2, tokens, TINY_HIDDEN)
    model = ViTModel.from_pretrained(tiny_dino_dir, add_pooling_layer=False).eval()
    expected = manual_last_layer_keys(model, ImagePreprocessor.identity()(images))
    torch.testing.assert_close(keys, expected, atol=1e-5, rtol=1e-4)

    similarity = reference.self_similarity(images)
    assert similarity.shape == (2, tokens, tokens)
    torch.testing.assert_close(similarity, similarity.transpose(1, 2))
    torch.testing.assert_close(torch.diagonal(similarity, dim1=1, dim2=2), torch.ones(2, tokens), atol=1e-5, rtol=0)


def test_dino_imagenet_mode_uses_the_model_resolution(tiny_dino_dir, make_image):
    imagenet = DinoKeys.from_pretrained(tiny_dino_dir, input_mode="imagenet", local_files_only=True)
    keys = imagenet.keys([make_image(12, size=24), make_image(13, size=40)])  # mixed sizes are fine here
    assert keys.shape == (2, 1 + (TINY_DINO_IMAGE_SIZE // TINY_DINO_PATCH) ** 2, TINY_HIDDEN)
    reference = DinoKeys.from_pretrained(tiny_dino_dir, local_files_only=True)
    assert reference.identity != imagenet.identity
    with pytest.raises(InputError, match="one size per batch"):
        reference.keys([make_image(12, size=24), make_image(13, size=40)])
    with pytest.raises(InputError, match="input mode"):
        DinoKeys(imagenet.model, imagenet.preprocessor, input_mode="raw")
    # reference mode feeds images at their own size: one smaller than a patch is a clear error, not a
    # convolution traceback; imagenet mode resizes it
    assert reference.patch_size == TINY_DINO_PATCH
    with pytest.raises(InputError, match=f"at least {TINY_DINO_PATCH}x{TINY_DINO_PATCH} pixels"):
        reference.keys([make_image(14, size=TINY_DINO_PATCH - 1)])
    assert imagenet.keys([make_image(14, size=TINY_DINO_PATCH - 1)]).shape[0] == 1


# --------------------------------------------------------------------------------------------
# Feature cache
# --------------------------------------------------------------------------------------------


def test_feature_cache_reuses_and_invalidates(tmp_path):
    files = []
    for index in range(3):
        path = tmp_path / f"{index}.bin"
        path.write_bytes(bytes([index]))
        files.append(path)
    calls = []

    def compute():
        calls.append(1)
        return {"features": torch.arange(6.0).reshape(3, 2) + len(calls)}

    cache = FeatureCache(tmp_path / "cache")
    first = cache.get_or_compute("inception", files, "model-a", compute)["features"]
    again = cache.get_or_compute("inception", files, "model-a", compute)["features"]
    assert len(calls) == 1 and torch.equal(first, again)
    assert len(list((tmp_path / "cache").glob("inception-*.safetensors"))) == 1

    cache.get_or_compute("inception", files, "model-b", compute)  # another extractor
    assert len(calls) == 2
    key = cache_key(files, "model-a")
    os.utime(files[1], ns=(0, 10**9))  # a touched file
    assert cache_key(files, "model-a") != key
    cache.get_or_compute("inception", files, "model-a", compute)
    assert len(calls) == 3
    assert cache_key(files[:2], "model-a") != cache_key(files, "model-a")

    FeatureCache(None).get_or_compute("inception", files, "model-a", compute)  # disabled: always computes
    assert len(calls) == 4


def test_feature_cache_that_cannot_be_written_only_warns(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    files = [blocker]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = FeatureCache(blocker / "cache").get_or_compute(
            "kind", files, "id", lambda: {"features": torch.ones(1, 2)}
        )
    assert torch.equal(result["features"], torch.ones(1, 2))
    assert any("could not write the feature cache" in str(w.message) for w in caught)
