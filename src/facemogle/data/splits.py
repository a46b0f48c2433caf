"""Deterministic train/validation splits of folder datasets, stored as small JSON files.

A *folder dataset* holds pairs that share a file stem, e.g. ``images/<stem>.jpg`` +
``masks/<stem>.png`` (CelebAMask-HQ-style). A split assigns every stem to ``train`` or ``val``.

The rule (``SPLIT_RULE``), chosen so that a split never depends on the order in which a file system
lists files, on the Python version or on a random generator:

1. Collect the stems present in *every* listed sub-folder (a stem missing its mask is not a pair).
2. Rank the stems by ``sha256(f"{salt}:{stem}")`` (hex digest, then the stem to break ties).
3. The first ``num_val`` stems of that ranking form ``val``; all others form ``train``.
4. Both lists are stored sorted by stem.

Adding files to a dataset moves only the new stems that rank among the first ``num_val`` into
``val`` (and the same number of old ones out of it); a different ``salt`` gives an independent split.
``split_fingerprint`` (sha256 of the sorted val stems) lets a model card name a split without
listing it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from facemogle.errors import InputError
from facemogle.files import atomic_write_text, files_by_stem

SPLIT_RULE = (
    "stems present in every sub-folder, ranked by sha256('<salt>:<stem>'); "
    "the first num_val stems are val, the rest train"
)
DEFAULT_SALT = "facemogle"
DEFAULT_NUM_VAL = 100
DEFAULT_SUBFOLDERS: tuple[str, ...] = ("images", "masks")
SPLIT_FILE_VERSION = 1


@dataclass(frozen=True)
class Split:
    """A train/val assignment of dataset stems (both lists sorted)."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    salt: str = DEFAULT_SALT
    rule: str = field(default=SPLIT_RULE)

    def __post_init__(self) -> None:
        overlap = set(self.train) & set(self.val)
        if overlap:
            raise InputError(f"a split lists {len(overlap)} stem(s) in both train and val, e.g. {sorted(overlap)[0]!r}")

    @property
    def fingerprint(self) -> str:
        return split_fingerprint(self.val)


def list_stems(root: str | os.PathLike, subfolders: tuple[str, ...] = DEFAULT_SUBFOLDERS) -> list[str]:
    """Sorted stems that have a file in every ``root/<subfolder>`` (hidden files ignored)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder {str(root)!r} does not exist")
    stem_sets = []
    for name in subfolders:
        folder = root / name
        if not folder.is_dir():
            raise InputError(f"dataset folder {str(root)!r} has no {name!r} sub-folder")
        stem_sets.append(set(files_by_stem(folder, extensions=None)))
    stems = sorted(set.intersection(*stem_sets))
    if not stems:
        raise InputError(f"dataset folder {str(root)!r} has no stem present in all of {', '.join(subfolders)}")
    return stems


def _rank_key(stem: str, salt: str) -> tuple[str, str]:
    return hashlib.sha256(f"{salt}:{stem}".encode("utf-8")).hexdigest(), stem


def make_split(stems, num_val: int = DEFAULT_NUM_VAL, salt: str = DEFAULT_SALT) -> Split:
    """Split ``stems`` by the module's rule: the ``num_val`` lowest-hash stems are val."""
    unique = sorted(set(stems))
    if not 0 < num_val < len(unique):
        raise InputError(f"num_val must be between 1 and {len(unique) - 1} for {len(unique)} stems, got {num_val}")
    ranked = sorted(unique, key=lambda stem: _rank_key(stem, salt))
    val = tuple(sorted(ranked[:num_val]))
    train = tuple(sorted(ranked[num_val:]))
    return Split(train=train, val=val, salt=salt)


def split_folder(
    root: str | os.PathLike,
    num_val: int = DEFAULT_NUM_VAL,
    salt: str = DEFAULT_SALT,
    subfolders: tuple[str, ...] = DEFAULT_SUBFOLDERS,
) -> Split:
    """``make_split(list_stems(root, subfolders), num_val, salt)``."""
    return make_split(list_stems(root, subfolders), num_val=num_val, salt=salt)


def split_fingerprint(val_stems) -> str:
    """sha256 (hex) of the sorted val stems joined by newlines: names a split in one line."""
    return hashlib.sha256("\n".join(sorted(val_stems)).encode("utf-8")).hexdigest()


def write_split(split: Split, path: str | os.PathLike) -> Path:
    """Write ``split`` as JSON (version, rule, salt, fingerprint, train, val)."""
    path = Path(path)
    payload = {
        "version": SPLIT_FILE_VERSION,
        "rule": split.rule,
        "salt": split.salt,
        "val_fingerprint": split.fingerprint,
        "train": list(split.train),
        "val": list(split.val),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(payload, indent=1) + "\n")


def read_split(path: str | os.PathLike) -> Split:
    """Read a split file written by ``write_split``; malformed files raise ``InputError``."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"split file {str(path)!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"split file {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(payload, dict) or not all(
        isinstance(payload.get(key), list) and all(isinstance(s, str) for s in payload[key]) for key in ("train", "val")
    ):
        raise InputError(f"split file {str(path)!r} needs 'train' and 'val' lists of stems")
    return Split(
        train=tuple(sorted(payload["train"])),
        val=tuple(sorted(payload["val"])),
        salt=str(payload.get("salt", DEFAULT_SALT)),
        rule=str(payload.get("rule", SPLIT_RULE)),
    )
