"""facemogle.files: atomic writes, weight files read without unpickling, folders indexed by stem."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from facemogle.errors import CheckpointError, InputError
from facemogle.files import (atomic_directory, atomic_save_pretrained, atomic_save_safetensors, atomic_write,
                             atomic_write_text, files_by_stem, natural_key, read_state_dict_file)


def test_a_failing_write_leaves_no_file(tmp_path):
    def explode(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "f.bin", explode)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_write_keeps_the_previous_file(tmp_path):
    target = atomic_write_text(tmp_path / "report.json", "old\n")

    def explode(tmp):
        tmp.write_text("new but cut", encoding="utf-8")
        raise KeyboardInterrupt  # an interrupt half way through the write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, explode)
    assert target.read_text(encoding="utf-8") == "old\n" and sorted(tmp_path.iterdir()) == [target]
    atomic_write_text(target, "new\n")
    assert target.read_text(encoding="utf-8") == "new\n" and sorted(tmp_path.iterdir()) == [target]


def test_the_file_appears_only_when_complete(tmp_path):
    target = tmp_path / "out.bin"
    seen = []

    def write(tmp):
        tmp.write_bytes(b"payload")
        seen.append((tmp.parent == tmp_path, tmp.name.startswith("."), target.exists()))

    atomic_write(target, write)
    assert seen == [(True, True, False)] and target.read_bytes() == b"payload"


def test_safetensors_round_trip_and_refused_pickles(tmp_path):
    tensors = {"a": torch.arange(6.0).reshape(2, 3).t(), "b": torch.ones(2, dtype=torch.int64)}  # non-contiguous too
    path = atomic_save_safetensors(tmp_path / "w.safetensors", tensors, metadata={"k": "v"})
    loaded = read_state_dict_file(path)
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "ran"),))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Payload(), protocol=2))
    with pytest.raises(CheckpointError, match="not a readable weights file"):
        read_state_dict_file(tmp_path / "evil.pt")
    assert not (tmp_path / "ran").exists()
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_state_dict_file(tmp_path / "missing.pt")
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="empty"):
        read_state_dict_file(tmp_path / "empty.pt")


def test_files_by_stem_filters_sorts_naturally_and_refuses_ambiguous_stems(tmp_path):
    for name in ("10.png", "2.jpg", "1.PNG", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "3.png").mkdir()  # a folder is not a file
    assert list(files_by_stem(tmp_path)) == ["1", "2", "10"]
    assert list(files_by_stem(tmp_path, extensions=None)) == ["1", "2", "10", "notes"]
    assert list(files_by_stem(tmp_path, stems=["10", "notes", "9"])) == ["10"]
    (tmp_path / "2.png").write_bytes(b"x")
    with pytest.raises(InputError, match="same stem '2'"):
        files_by_stem(tmp_path)
    assert sorted(["a10", "a2", "b1", "a1"], key=natural_key) == ["a1", "a2", "a10", "b1"]


def test_a_directory_is_replaced_whole_or_not_at_all(tmp_path):
    export = tmp_path / "model"
    export.mkdir()
    (export / "weights.bin").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(export) as staging:
            (staging / "weights.bin").write_bytes(b"new, half")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert [p.name for p in export.iterdir()] == ["weights.bin"] and (export / "weights.bin").read_bytes() == b"old"
    with atomic_directory(export) as staging:
        (staging / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging or old folder left
    assert [p.name for p in export.iterdir()] == ["config.json"]


class _Saver:
    """A stand-in for a diffusers model: save_pretrained writes two files, or one and is interrupted."""

    def __init__(self, interrupt: bool):
        self.interrupt = interrupt

    def save_pretrained(self, directory, **options):
        (Path(directory) / "config.json").write_text('{"new": true}')
        if self.interrupt:
            raise KeyboardInterrupt
        (Path(directory) / "model.safetensors").write_bytes(b"new weights")


def test_save_pretrained_files_land_only_when_all_are_written(tmp_path):
    folder = tmp_path / "parser"
    folder.mkdir()
    (folder / "config.json").write_text('{"old": true}')
    (folder / "metrics.json").write_text("{}")  # not the model's: kept
    with pytest.raises(KeyboardInterrupt):
        atomic_save_pretrained(_Saver(interrupt=True), folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "metrics.json"]
    assert (folder / "config.json").read_text() == '{"old": true}'
    atomic_save_pretrained(_Saver(interrupt=False), folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    assert (folder / "config.json").read_text() == '{"new": true}'


def test_weights_holding_nan_or_inf_are_refused_by_name(tmp_path):
    torch.save({"ok": torch.ones(2), "bad": torch.tensor([0.0, float("inf")])}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"w\.pt: tensor bad holds NaN or infinite values"):
        read_state_dict_file(tmp_path / "w.pt")
    torch.save({"steps": torch.tensor([3])}, tmp_path / "ints.pt")  # integer tensors have no NaN
    assert read_state_dict_file(tmp_path / "ints.pt")["steps"].item() == 3
