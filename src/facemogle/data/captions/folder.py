"""Captioning a dataset folder: photo/mask pairs in, MM-CelebA-HQ captions out.

A CelebAMask-HQ-style folder (``images/<stem>.jpg`` + ``masks/<stem>.png``) has no sentences, but
Face-MoGLE trains on mask + text. ``caption_folder`` writes ``text/<stem>.txt`` (one sentence per
line) and ``text.json`` = ``{"<stem>.jpg": [sentences]}`` (METHOD.md section 7), every file with
``facemogle.files.atomic_write_text``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from facemogle.data.captions.attributes import describe
from facemogle.data.captions.phrasing import DEFAULT_SENTENCES, phrase
from facemogle.data.captions.photo import read_image
from facemogle.errors import InputError
from facemogle.files import atomic_write_text, files_by_stem

#: Sub-folders searched for photos and masks, in order (CelebAMask-HQ style, then MM-CelebA-HQ).
IMAGE_FOLDERS: tuple[str, ...] = ("images", "face")
MASK_FOLDERS: tuple[str, ...] = ("masks", "mask")
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
TEXT_FOLDER = "text"
TEXT_JSON = "text.json"
EVIDENCE_JSON = "caption_attributes.json"


def _pick_folder(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise InputError(
        f"no {what} folder in {root}: expected one of {', '.join(n + '/' for n in names)} "
        "(a dataset holds images/<stem>.jpg + masks/<stem>.png, or face/ + mask/)"
    )


def find_pairs(root: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """``(stem, photo, mask)`` for every stem that has both, sorted by stem.

    Photos come from ``images/`` (else ``face/``), masks from ``masks/`` (else ``mask/``); files
    pair up by stem. Raises ``InputError`` when the folders are missing or no stem has both.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist or is not a folder")
    image_folder = _pick_folder(root, IMAGE_FOLDERS, "photo")
    mask_folder = _pick_folder(root, MASK_FOLDERS, "mask")
    images = files_by_stem(image_folder, extensions=IMAGE_SUFFIXES)
    masks = files_by_stem(mask_folder, extensions=IMAGE_SUFFIXES)
    stems = sorted(images.keys() & masks.keys())
    if not stems:
        raise InputError(
            f"no photo/mask pairs in {root}: {image_folder.name}/ has {len(images)} images and "
            f"{mask_folder.name}/ {len(masks)} masks, but no file stem is in both"
        )
    return [(stem, images[stem], masks[stem]) for stem in stems]


def image_seed(seed: int, stem: str) -> int:
    """Seed of one image's sentences: depends on ``seed`` and the stem only, never on the order of
    the files (a shared generator would make a caption depend on which images came before it)."""
    digest = hashlib.sha256(f"{seed}:{stem}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def caption_folder(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    sentences: int = DEFAULT_SENTENCES,
    seed: int = 0,
    overwrite: bool = False,
    evidence: bool = False,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Caption every photo/mask pair of a dataset folder in the MM-CelebA-HQ layout.

    Writes ``<out>/text/<stem>.txt`` (one sentence per line) and ``<out>/text.json``
    (``{"<photo file name>": [sentences]}``); with ``evidence``, also ``<out>/caption_attributes.json``
    (``{"<photo file name>": describe(...)}``). ``out`` defaults to ``root``. Every pair is read and
    described before anything is written, so a bad file leaves no half-written captions.

    Returns:
        ``{"<photo file name>": [sentences]}`` in stem order.

    Raises:
        InputError: no pairs, an unreadable photo, a photo and mask of different shapes, or existing
            captions in ``out`` without ``overwrite``.
        MaskError: an unreadable or invalid mask (the message names the file).
    """
    from tqdm import tqdm

    from facemogle.masks import load_mask

    if isinstance(sentences, bool) or not isinstance(sentences, int) or sentences < 1:
        raise InputError(f"the number of sentences must be a positive integer, got {sentences!r}")
    pairs = find_pairs(root)
    out = Path(root if out is None else out)
    text_folder = out / TEXT_FOLDER
    existing = [out / TEXT_JSON] + [text_folder / f"{stem}.txt" for stem, _, _ in pairs]
    if evidence:
        existing.append(out / EVIDENCE_JSON)
    clash = next((path for path in existing if path.exists()), None)
    if clash is not None and not overwrite:
        raise InputError(f"{clash} already exists; pass overwrite=True (--overwrite) to replace captions in {out}")

    captions: dict[str, list[str]] = {}
    measured: dict[str, dict[str, Any]] = {}
    for stem, image_path, mask_path in tqdm(pairs, desc="captioning", unit="image", disable=not progress):
        ids = load_mask(mask_path)
        photo = read_image(image_path)
        try:
            attributes = describe(photo, ids)
        except InputError as err:  # e.g. the photo and the mask do not have the same aspect ratio
            raise InputError(f"{image_path} and {mask_path}: {err}") from err
        captions[image_path.name] = phrase(attributes, sentences, image_seed(seed, stem))
        if evidence:
            measured[image_path.name] = attributes

    try:
        text_folder.mkdir(parents=True, exist_ok=True)
        for (stem, image_path, _), lines in zip(pairs, captions.values()):
            atomic_write_text(text_folder / f"{stem}.txt", "\n".join(lines) + "\n")
        atomic_write_text(out / TEXT_JSON, json.dumps(captions, indent=1, ensure_ascii=False) + "\n")
        if evidence:
            atomic_write_text(out / EVIDENCE_JSON, json.dumps(measured, indent=1) + "\n")
    except OSError as err:
        raise InputError(f"cannot write captions to {out}: {err.strerror or err}") from err
    return captions
