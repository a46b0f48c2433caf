"""Helpers and fixtures of the face parser tests: random photos, a tiny FaceParser, the shipped one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facemogle.parser import SHIPPED_PARSER_DIR, BiSeNet, FaceParser, load_parser


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


@pytest.fixture(scope="session")
def shipped_parser():
    if not (SHIPPED_PARSER_DIR / "config.json").is_file():
        pytest.fail(f"the shipped parser weights are missing from {SHIPPED_PARSER_DIR}")
    return load_parser()


@pytest.fixture()
def tiny_parser_dir(tmp_path):
    tiny_parser().save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


@pytest.fixture(scope="module")
def random_bisenet() -> BiSeNet:
    torch.manual_seed(0)
    return BiSeNet().eval()
