"""facemogle.data.splits: deterministic hash-ranked train/val splits and their JSON files."""

from __future__ import annotations

import hashlib
import json

import pytest

from facemogle.data.splits import (
    Split,
    list_stems,
    make_split,
    read_split,
    split_fingerprint,
    split_folder,
    write_split,
)
from facemogle.errors import InputError

STEMS = [f"{i:05d}" for i in range(50)]


def test_split_follows_the_documented_rule():
    split = make_split(STEMS, num_val=7, salt="s")
    ranked = sorted(STEMS, key=lambda stem: hashlib.sha256(f"s:{stem}".encode()).hexdigest())
    assert split.val == tuple(sorted(ranked[:7]))
    assert split.train == tuple(sorted(ranked[7:]))
    assert len(split.val) == 7 and len(split.train) == 43


def test_split_ignores_input_order_and_duplicates_and_depends_on_salt():
    reference = make_split(STEMS, num_val=10)
    assert make_split(list(reversed(STEMS)) + STEMS[:5], num_val=10) == reference
    assert make_split(STEMS, num_val=10, salt="other").val != reference.val


def test_adding_stems_keeps_most_of_val():
    before = make_split(STEMS, num_val=10)
    after = make_split(STEMS + ["extra-a", "extra-b"], num_val=10)
    assert len(set(before.val) & set(after.val)) >= 8


def test_bad_num_val_and_overlap_raise():
    with pytest.raises(InputError, match="num_val"):
        make_split(STEMS, num_val=len(STEMS))
    with pytest.raises(InputError, match="both train and val"):
        Split(train=("a", "b"), val=("b",))


def test_folder_split_uses_only_complete_pairs(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for stem in STEMS:
        (tmp_path / "images" / f"{stem}.jpg").write_bytes(b"")
        (tmp_path / "masks" / f"{stem}.png").write_bytes(b"")
    (tmp_path / "images" / "orphan.jpg").write_bytes(b"")
    (tmp_path / "masks" / ".hidden.png").write_bytes(b"")
    assert list_stems(tmp_path) == STEMS
    assert split_folder(tmp_path, num_val=5) == make_split(STEMS, num_val=5)
    with pytest.raises(InputError, match="no 'masks' sub-folder"):
        list_stems(tmp_path / "images", subfolders=("masks",))


def test_split_file_round_trip_and_fingerprint(tmp_path):
    split = make_split(STEMS, num_val=5)
    path = write_split(split, tmp_path / "sub" / "split.json")
    payload = json.loads(path.read_text())
    assert payload["val_fingerprint"] == split_fingerprint(split.val) == split.fingerprint
    assert split.fingerprint == hashlib.sha256("\n".join(sorted(split.val)).encode()).hexdigest()
    assert read_split(path) == split


def test_malformed_split_files_raise(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_split(bad)
    bad.write_text(json.dumps({"train": ["a"], "val": [1]}))
    with pytest.raises(InputError, match="'train' and 'val'"):
        read_split(bad)
    with pytest.raises(InputError, match="does not exist"):
        read_split(tmp_path / "missing.json")
