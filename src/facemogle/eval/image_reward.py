"""ImageReward v1.0 scores (the paper's "IR" column), an optional extra.

Needs the ``ImageReward`` package (``pip install image-reward``; not a facemogle dependency) and a
folder with its files: ``ImageReward.pt`` and ``med_config.json`` (ImageReward's BLIP backbone also
loads the ``bert-base-uncased`` tokenizer through transformers, which must be in the local hub
cache when offline). The score of an image is ``model.score(prompt, [path])``; the metric is the
mean over images, as in the paper's evaluation script.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from facemogle.errors import CheckpointError, InputError

IMAGE_REWARD_MODEL_NAME = "ImageReward-v1.0"
IMAGE_REWARD_FILES: tuple[str, ...] = ("ImageReward.pt", "med_config.json")


def load_image_reward(folder: str | os.PathLike, *, device: str = "cpu"):
    """The ImageReward model from a local folder.

    Raises:
        InputError: the ``ImageReward`` package is not installed.
        CheckpointError: the folder or one of its files is missing.
    """
    try:
        import ImageReward  # noqa: N813 (the package's own name)
    except ImportError:
        raise InputError(
            "metric 'ir' needs the optional ImageReward package (pip install image-reward), which is not installed"
        ) from None
    folder = Path(folder).expanduser()
    missing = [name for name in IMAGE_REWARD_FILES if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"ImageReward folder {folder} lacks {', '.join(missing)}")
    return ImageReward.load(
        str(folder / IMAGE_REWARD_FILES[0]),
        device=device,
        download_root=str(folder),
        med_config=str(folder / IMAGE_REWARD_FILES[1]),
    )


def image_reward_scores(model, prompts: Sequence[str], paths: Sequence[str | os.PathLike], *,
                        progress: bool = True) -> np.ndarray:
    """``(N,)`` ImageReward score of each (prompt, image file) pair."""
    scores = [
        float(model.score(prompt, [os.fspath(path)]))
        for prompt, path in tqdm(list(zip(prompts, paths)), desc="ImageReward", disable=not progress)
    ]
    return np.asarray(scores, dtype=np.float64)
