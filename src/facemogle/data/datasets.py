"""Face datasets on disk: image + mask pairs (+ optional captions) that share a file stem.

Two layouts are recognised (``detect_layout``):

=================  ===================  ==================  ==================================
layout             images               masks               captions (optional)
=================  ===================  ==================  ==================================
``mm-celeba-hq``   ``face/<i>.jpg``     ``mask/<i>.png``    ``text/<i>.txt`` (one sentence per
                                                            line) or ``text.json``
                                                            (``{"<i>.jpg": [sentences]}``)
``folder``         ``images/<s>.<ext>`` ``masks/<s>.<ext>`` the same two forms, by stem ``<s>``
=================  ===================  ==================  ==================================

Masks may be in any format :func:`facemogle.masks.load_mask` reads (palette / greyscale ids,
colour renders; ``mask_order="bisenet"`` for BiSeNet-ordered ids). A stem needs both an image and
a mask (the pairing rule of :func:`facemogle.data.splits.list_stems`); a caption file is optional
and may live in another folder with the same ``text/`` + ``text.json`` layout (``captions_dir``,
e.g. what ``facemogle caption --out`` wrote for a read-only dataset).

Splits (``train`` / ``val`` / ``test``), in this order of precedence:

1. a JSON split file (``train`` and ``val`` lists as written by
   :func:`facemogle.data.splits.write_split`, plus an optional ``test`` list);
2. the layout's default split, which is deterministic and depends only on the stems present:

   * ``mm-celeba-hq``: CelebA-HQ's official split, which the paper uses: ids below
     ``MM_CELEBA_HQ_FIRST_TEST_ID`` (27000) are train, the others test (with all 30,000 ids:
     0..26999 train, 27000..29999 test). ``num_val`` (default 0) stems are moved from train
     to val by :func:`facemogle.data.splits.make_split`'s hash rule.
   * ``folder``: :func:`facemogle.data.splits.make_split` (``num_val`` lowest-hash stems are val,
     default ``splits.DEFAULT_NUM_VAL``); no test split.

Images are resized to ``resolution`` x ``resolution`` with a bicubic or area (box) filter, masks
with nearest neighbour; a non-square pair is centre-cropped to a square first.
"""

from __future__ import annotations

import dataclasses

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facemogle.data import splits as split_rules
from facemogle.errors import InputError
from facemogle.files import files_by_stem
from facemogle.masks import load_mask, resize_mask

#: CelebA-HQ's official split (also MM-CelebA-HQ's and the paper's): ids >= this are test.
MM_CELEBA_HQ_FIRST_TEST_ID = 27000
IMAGE_FILTERS = {"bicubic": Image.BICUBIC, "area": Image.BOX}
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetLayout:
    """Sub-folder names of a dataset layout."""

    name: str
    image_dir: str
    mask_dir: str
    text_dir: str = "text"
    text_json: str = "text.json"
    default_num_val: int = 0


MM_CELEBA_HQ = DatasetLayout("mm-celeba-hq", image_dir="face", mask_dir="mask", default_num_val=0)
FOLDER = DatasetLayout("folder", image_dir="images", mask_dir="masks", default_num_val=split_rules.DEFAULT_NUM_VAL)
LAYOUTS: dict[str, DatasetLayout] = {layout.name: layout for layout in (MM_CELEBA_HQ, FOLDER)}


@dataclass(frozen=True)
class FaceRecord:
    """One sample on disk. ``caption_file``: the file its captions came from (None: no caption).
    ``mirrored``: the sample is the photo and mask flipped left-right (:func:`with_mirrored`)."""

    stem: str
    image: Path
    mask: Path
    captions: tuple[str, ...] = ()
    caption_file: Path | None = None
    mirrored: bool = False


#: Suffix of a mirrored sample's stem.
MIRRORED_SUFFIX = "~mirrored"


def with_mirrored(records: list[FaceRecord]) -> list[FaceRecord]:
    """``records`` followed by their mirror images (photo and mask flipped left-right, the
    left/right classes of the mask swapped): horizontal-flip augmentation as twice the samples,
    so the seeded stream, the cache and resume treat them like any others."""
    return list(records) + [dataclasses.replace(r, stem=r.stem + MIRRORED_SUFFIX, mirrored=True) for r in records]


@dataclass
class DatasetIndex:
    """Every sample of a dataset folder, and its split into train / val / test stems."""

    root: Path
    layout: DatasetLayout
    records: dict[str, FaceRecord]
    splits: dict[str, tuple[str, ...]]
    split_source: str = field(default="default")

    def split(self, name: str) -> list[FaceRecord]:
        """The records of split ``name`` (sorted by stem)."""
        if name not in SPLIT_NAMES:
            raise InputError(f"unknown split {name!r}; known: {', '.join(SPLIT_NAMES)}")
        return [self.records[stem] for stem in self.splits.get(name, ())]


# ---------------------------------------------------------------------------------------- index


def detect_layout(root: str | os.PathLike) -> DatasetLayout:
    """The layout whose image and mask sub-folders exist in ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist")
    found = [layout for layout in LAYOUTS.values()
             if (root / layout.image_dir).is_dir() and (root / layout.mask_dir).is_dir()]
    if len(found) != 1:
        expected = " or ".join(f"{l.image_dir}/ + {l.mask_dir}/" for l in LAYOUTS.values())
        what = "both layouts" if found else "neither layout"
        raise InputError(f"dataset folder {root} matches {what}: expected {expected}")
    return found[0]


def _read_caption_json(path: Path) -> dict[str, list[str]]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"caption file {path} is not valid JSON: {error}") from None
    if not isinstance(payload, dict) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in payload.values()
    ):
        raise InputError(f"caption file {path} must map file names to lists of sentences")
    return payload


def _captions(root: Path, layout: DatasetLayout, stem: str, image: Path, table: dict | None):
    text_file = root / layout.text_dir / f"{stem}.txt"
    if text_file.is_file():
        try:
            lines = text_file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise InputError(f"caption file {text_file} is not UTF-8 text") from None
        return tuple(line.strip() for line in lines if line.strip()), text_file
    if table is not None:
        sentences = table.get(image.name, table.get(stem))
        if sentences is not None:
            return tuple(s.strip() for s in sentences if s.strip()), root / layout.text_json
    return (), None


def default_splits(layout: DatasetLayout, stems: list[str], num_val: int | None = None,
                   salt: str = split_rules.DEFAULT_SALT) -> dict[str, tuple[str, ...]]:
    """The layout's default split of ``stems`` (see the module docstring)."""
    num_val = layout.default_num_val if num_val is None else num_val
    if layout is MM_CELEBA_HQ:
        not_ids = [s for s in stems if not s.isdigit()]
        if not_ids:
            raise InputError(f"mm-celeba-hq file names must be integer ids, found {not_ids[0]!r} "
                             "(use layout: folder, or a split file)")
        train = [s for s in stems if int(s) < MM_CELEBA_HQ_FIRST_TEST_ID]
        test = [s for s in stems if int(s) >= MM_CELEBA_HQ_FIRST_TEST_ID]
    else:
        train, test = list(stems), []
    val: tuple[str, ...] = ()
    if num_val:
        split = split_rules.make_split(train, num_val=num_val, salt=salt)
        train, val = list(split.train), split.val
    return {"train": tuple(sorted(train, key=_stem_order)), "val": tuple(sorted(val, key=_stem_order)),
            "test": tuple(sorted(test, key=_stem_order))}


def _stem_order(stem: str):
    """Numeric stems in numeric order (2 < 10), others by name after them."""
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def read_split_file(path: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """A JSON split file: ``train`` and ``val`` (read by ``splits.read_split``) + optional ``test``."""
    split = split_rules.read_split(path)
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    test = payload.get("test", [])
    if not isinstance(test, list) or not all(isinstance(s, str) for s in test):
        raise InputError(f"split file {path}: 'test' must be a list of stems")
    overlap = (set(split.train) | set(split.val)) & set(test)
    if overlap:
        raise InputError(f"split file {path} lists {len(overlap)} stem(s) in test and in train/val, "
                         f"e.g. {sorted(overlap)[0]!r}")
    return {"train": tuple(sorted(split.train, key=_stem_order)), "val": tuple(sorted(split.val, key=_stem_order)),
            "test": tuple(sorted(test, key=_stem_order))}


def index_dataset(root: str | os.PathLike, layout: str = "auto", split_file: str | os.PathLike | None = None,
                  num_val: int | None = None, salt: str = split_rules.DEFAULT_SALT,
                  captions_dir: str | os.PathLike | None = None) -> DatasetIndex:
    """List the samples of a dataset folder and split them.

    Args:
        root: the dataset folder.
        layout: ``"auto"``, ``"mm-celeba-hq"`` or ``"folder"``.
        split_file: JSON split file; default: the layout's default split.
        num_val: default split only: stems held out for val (None: the layout's default).
        salt: default split only: the hash salt of ``splits.make_split``.
        captions_dir: where ``text/<stem>.txt`` / ``text.json`` live, if not in ``root`` (e.g. the
            ``--out`` of ``facemogle caption`` for a read-only dataset).
    """
    root = Path(root)
    caption_root = Path(captions_dir) if captions_dir is not None else root
    if layout == "auto":
        resolved = detect_layout(root)
    elif layout in LAYOUTS:
        resolved = LAYOUTS[layout]
    else:
        raise InputError(f"unknown dataset layout {layout!r}; known: auto, {', '.join(LAYOUTS)}")
    stems = split_rules.list_stems(root, (resolved.image_dir, resolved.mask_dir))
    images = files_by_stem(root / resolved.image_dir, extensions=None, stems=stems)
    masks = files_by_stem(root / resolved.mask_dir, extensions=None, stems=stems)
    table_path = caption_root / resolved.text_json
    table = _read_caption_json(table_path) if table_path.is_file() else None
    records = {}
    for stem in stems:
        captions, caption_file = _captions(caption_root, resolved, stem, images[stem], table)
        records[stem] = FaceRecord(stem, images[stem], masks[stem], captions, caption_file)

    if split_file is not None:
        splits, source = read_split_file(split_file), str(split_file)
        missing = sorted({s for names in splits.values() for s in names} - set(records))
        if missing:
            raise InputError(f"split file {split_file} lists {len(missing)} stem(s) without an image/mask pair in "
                             f"{root}, e.g. {missing[0]!r}")
    else:
        splits, source = default_splits(resolved, stems, num_val, salt), f"default ({resolved.name})"
    return DatasetIndex(root=root, layout=resolved, records=records, splits=splits, split_source=source)


# ---------------------------------------------------------------------------------------- loading


def _centre_square(size: tuple[int, int]) -> tuple[int, int, int, int]:
    width, height = size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def load_image(path: str | os.PathLike, resolution: int, image_resize: str = "bicubic") -> torch.Tensor:
    """An RGB image, centre-cropped to a square and resized: (3, resolution, resolution) uint8."""
    if image_resize not in IMAGE_FILTERS:
        raise InputError(f"unknown image_resize {image_resize!r}; known: {', '.join(IMAGE_FILTERS)}")
    from facemogle.images import read_photo

    try:
        image = read_photo(path, what="training image")
    except (FileNotFoundError, IsADirectoryError, PermissionError) as error:
        raise InputError(f"cannot read image {path}: {error.strerror or error}") from None
    if image.width != image.height:
        image = image.crop(_centre_square(image.size))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), IMAGE_FILTERS[image_resize])
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


def load_mask_ids(path: str | os.PathLike, resolution: int, order: str = "official") -> np.ndarray:
    """A mask in any supported format as official ids, centre-cropped and NEAREST-resized: (H, W) uint8."""
    ids = load_mask(path, order=order)
    height, width = ids.shape
    if height != width:
        left, top, right, bottom = _centre_square((width, height))
        ids = ids[top:bottom, left:right]
    if ids.shape != (resolution, resolution):
        ids = resize_mask(ids, resolution)
    return ids


class FaceDataset(torch.utils.data.Dataset):
    """Image + mask + captions of a list of records, at one resolution.

    Item ``i``: ``{"index": i, "stem": str, "image": (3, R, R) uint8, "mask": (R, R) uint8 ids,
    "captions": list[str]}``. Use :func:`collate_faces` as the DataLoader's ``collate_fn``.
    """

    def __init__(self, records: list[FaceRecord], resolution: int, image_resize: str = "bicubic",
                 mask_order: str = "official"):
        if resolution < 1:
            raise InputError(f"resolution must be positive, got {resolution}")
        self.records = list(records)
        self.resolution = resolution
        self.image_resize = image_resize
        self.mask_order = mask_order

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        image = load_image(record.image, self.resolution, self.image_resize)
        mask = load_mask_ids(record.mask, self.resolution, self.mask_order)
        if record.mirrored:
            from facemogle.parser.mirror import mirrored_class_ids

            image = image.flip(-1).contiguous()
            mask = mirrored_class_ids().to(torch.uint8).numpy()[mask[:, ::-1]]
        return {"index": index, "stem": record.stem, "image": image, "mask": torch.from_numpy(mask),
                "captions": list(record.captions)}


def collate_faces(items: list[dict]) -> dict:
    """Stack images (B, 3, R, R) and masks (B, R, R); keep stems and caption lists as lists."""
    return {
        "index": torch.tensor([item["index"] for item in items]),
        "stem": [item["stem"] for item in items],
        "image": torch.stack([item["image"] for item in items]),
        "mask": torch.stack([item["mask"] for item in items]),
        "captions": [item["captions"] for item in items],
    }
