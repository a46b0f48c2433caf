"""Tiny random feature extractors for the evaluation tests, saved to disk like real ones.

Each fixture builds a model from a config with a fixed seed, saves it the way users get it (the
pytorch-fid ``.pth`` state dict, a transformers folder with tokenizer and preprocessor config), and
returns the path, so tests go through the real loading code. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from facemogle.labels import NUM_CLASSES

TINY_CLIP_IMAGE_SIZE = 24
TINY_CLIP_PATCH = 8
TINY_CLIP_CONTEXT = 16
TINY_DINO_IMAGE_SIZE = 16
TINY_DINO_PATCH = 4
TINY_HIDDEN = 32
TINY_PROJECTION = 16


def random_inception(seed: int = 0):
    """The full FID Inception-v3 with He-initialised convolutions (features vary between images)."""
    from facemogle.eval.inception import FIDInceptionV3

    torch.manual_seed(seed)
    model = FIDInceptionV3()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model.eval()


@pytest.fixture(scope="session")
def tiny_inception_file(tmp_path_factory) -> Path:
    """A pytorch-fid-style ``.pth`` state dict (no ``num_batches_tracked``, like the 2019 file)."""
    model = random_inception()
    state_dict = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state_dict, path)
    return path


def _tiny_clip_tokenizer():
    """A byte-level CLIP tokenizer with no merges: every byte is a token (plus its end-of-word form)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in sorted(ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
        vocab[symbol + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A 2-layer random ``CLIPModel`` folder with tokenizer and ``preprocessor_config.json``."""
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = _tiny_clip_tokenizer()
    common = dict(hidden_size=TINY_HIDDEN, intermediate_size=2 * TINY_HIDDEN, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), max_position_embeddings=TINY_CLIP_CONTEXT,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, **common,
        ),
        vision_config=dict(image_size=TINY_CLIP_IMAGE_SIZE, patch_size=TINY_CLIP_PATCH, **common),
        projection_dim=TINY_PROJECTION,
    )
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("clip")
    CLIPModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessorPil(
        size={"shortest_edge": TINY_CLIP_IMAGE_SIZE},
        crop_size={"height": TINY_CLIP_IMAGE_SIZE, "width": TINY_CLIP_IMAGE_SIZE},
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_dino_dir(tmp_path_factory) -> Path:
    """A 2-layer random ``ViTModel`` folder (DINO layout) with an ImageNet ``preprocessor_config.json``."""
    from transformers import ViTConfig, ViTModel
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    from facemogle.eval.preprocess import IMAGENET_MEAN, IMAGENET_STD

    config = ViTConfig(
        hidden_size=TINY_HIDDEN, intermediate_size=2 * TINY_HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        image_size=TINY_DINO_IMAGE_SIZE, patch_size=TINY_DINO_PATCH, qkv_bias=True,
    )
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("dino")
    ViTModel(config, add_pooling_layer=False).eval().save_pretrained(path)
    ViTImageProcessorPil(
        size={"height": TINY_DINO_IMAGE_SIZE, "width": TINY_DINO_IMAGE_SIZE},
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
    ).save_pretrained(path)
    return path


def face_like_image(seed: int, size: int = 32) -> Image.Image:
    """A deterministic RGB test picture: a colour gradient, a disc and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    centre = rng.uniform(0.3, 0.7, 2)
    disc = ((y - centre[0]) ** 2 + (x - centre[1]) ** 2) < rng.uniform(0.04, 0.1)
    base = np.stack([x, y, 1 - x], -1) * rng.uniform(80, 200, 3)
    base[disc] = rng.uniform(0, 255, 3)
    noisy = base + rng.normal(0, 12, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def random_id_map(seed: int, size: int = 32) -> np.ndarray:
    """A blocky ``(size, size)`` uint8 id map with a few classes."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, NUM_CLASSES, (4, 4)).astype(np.uint8)
    return np.kron(blocks, np.ones((size // 4, size // 4), dtype=np.uint8))


@pytest.fixture(scope="session")
def make_image():
    """``make_image(seed, size=32) -> PIL.Image``: see ``face_like_image``."""
    return face_like_image


@pytest.fixture(scope="session")
def make_id_map():
    """``make_id_map(seed, size=32) -> (size, size) uint8``: see ``random_id_map``."""
    return random_id_map
