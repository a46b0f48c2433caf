"""Files: atomic writes, the official weight file names, reading weight files, folders indexed by stem.

Every file the project writes goes through :func:`atomic_write` (a temporary file in the same
folder, flushed to disk, then renamed into place), so an interrupt leaves either the old file or
the new one, never half of one. Weight files are read without unpickling anything
(:func:`read_state_dict_file`: safetensors, or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from facemogle.errors import CheckpointError, InputError

if TYPE_CHECKING:  # torch is imported where it is needed: masks and labels do without it
    import torch

#: The official Face-MoGLE release's file names: the condition LoRA (diffusers LoRA format, keys
#: ``transformer.<module>.lora_A.weight``) and the MoGLE weights. Checkpoints and saved pipelines use them too.
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
MOGLE_WEIGHT_NAME = "global_local_mask_moe.pt"

#: Image files the project reads from folders (photos, masks, generated sets).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


# ----------------------------------------------------------------------------------- writing


def fsync_dir(directory: str | os.PathLike) -> None:
    """Flush a directory entry (a rename) to disk where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_path)`` on a hidden temporary file beside ``path``, flush it to disk, then
    rename it to ``path``. On any error (or interrupt) the temporary file is removed and ``path``
    is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


class AllOrNothing:
    """Several output files written all or none (``with AllOrNothing() as out:``).

    ``out.partial(path)`` names a hidden file beside ``path`` to write instead; when the block ends
    normally every partial file is renamed onto its destination, and when it raises (an unreadable
    input, a full disk, Ctrl-C) the partial files are deleted and every destination keeps what it
    held before. Memory does not grow with the number of files: each can be written as it is made.
    """

    def __init__(self):
        self.staged: list[tuple[Path, Path]] = []

    def partial(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        hidden = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
        self.staged.append((hidden, path))
        return hidden

    def __enter__(self) -> "AllOrNothing":
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        try:
            if exc_type is None:
                for hidden, _ in self.staged:  # on disk before any is renamed
                    with open(hidden, "rb+") as handle:
                        os.fsync(handle.fileno())
                for hidden, path in self.staged:
                    os.replace(hidden, path)
                for folder in {path.parent for _, path in self.staged}:
                    fsync_dir(folder)
        finally:
            for hidden, _ in self.staged:
                hidden.unlink(missing_ok=True)
        return False


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """A folder written whole or not at all (``with atomic_directory(DIR) as staging:``): the block
    writes into ``staging``, a hidden folder beside ``path``; when it ends normally ``staging``
    replaces ``path`` (an old ``path`` is moved aside first and then removed), and when it raises
    (or is interrupted) ``staging`` is removed and ``path`` is left as it was. For
    ``save_pretrained`` exports, which write several files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
        for written in staging.rglob("*"):
            if written.is_file():
                with open(written, "rb+") as handle:
                    os.fsync(handle.fileno())
        if path.exists():
            os.replace(path, old)
        os.replace(staging, path)
        fsync_dir(path.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()


def atomic_save_pretrained(model, path: str | os.PathLike, **options) -> Path:
    """``model.save_pretrained(path, **options)`` (diffusers / transformers) with every file it
    writes renamed into ``path`` only once all are on disk: an interrupt leaves each file old or
    new, never half written. Other files already in ``path`` are kept (it may be a user's folder;
    :func:`atomic_directory` replaces a whole folder)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    staging = path / f".save_pretrained.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        model.save_pretrained(str(staging), **options)
        written = sorted(p for p in staging.rglob("*") if p.is_file())
        for file in written:
            with open(file, "rb+") as handle:
                os.fsync(handle.fileno())
        for file in written:
            target = path / file.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
        fsync_dir(path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return path


def atomic_torch_save(path: str | os.PathLike, obj) -> Path:
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_save_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                            metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    contiguous = {name: tensor.contiguous() for name, tensor in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))


# ----------------------------------------------------------------------------------- reading


def read_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a plain state dict from ``.pt``/``.pth``/``.bin`` (weights only) or ``.safetensors``.

    Raises:
        CheckpointError: the file is missing, not a checkpoint, not a dict of tensors, or a
        floating-point tensor holds NaN or infinite values.
    """
    import torch
    from safetensors.torch import load_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if path.endswith(".safetensors"):
            state_dict = load_file(path, device="cpu")
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling / zip / header errors all mean "not a checkpoint"
        raise CheckpointError(f"{path}: not a readable weights file ({type(error).__name__}: {first_line(error)})") from None
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise CheckpointError(f"{path}: not a state dict (a mapping of names to tensors)")
    if not state_dict:
        raise CheckpointError(f"{path}: the state dict is empty")
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor {name} holds NaN or infinite values")
    return dict(state_dict)


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (torch's unpickling errors run to a page), shortened."""
    text = (str(error).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def safe_torch_load(path: str | os.PathLike):
    """``torch.load(weights_only=True)`` with a CheckpointError naming the file."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling / zip errors all mean "not a valid state file"
        raise CheckpointError(f"{path}: not a readable state file ({type(error).__name__}: {first_line(error)})") from None


# ----------------------------------------------------------------------------------- folders


def natural_key(stem: str) -> tuple:
    """Sort key that orders ``"2" < "10"`` (digit runs compare as numbers)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", stem) if part)


def files_by_stem(folder: str | os.PathLike, *, extensions: Iterable[str] | None = IMAGE_EXTENSIONS,
                  stems: Iterable[str] | None = None) -> dict[str, Path]:
    """The regular, non-hidden files of ``folder`` by file stem, in natural stem order.

    Args:
        extensions: keep only these suffixes (lower-case, with the dot; ``None``: any file).
        stems: keep only these stems.

    Raises:
        InputError: two kept files share a stem (files are paired by stem, so that is ambiguous).
    """
    folder = Path(folder)
    allowed = None if extensions is None else {e.lower() for e in extensions}
    wanted = None if stems is None else set(stems)
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if allowed is not None and path.suffix.lower() not in allowed:
            continue
        if wanted is not None and path.stem not in wanted:
            continue
        if path.stem in found:
            raise InputError(f"{folder} has two files with the same stem {path.stem!r} ({found[path.stem].name} and "
                             f"{path.name}): files are paired by stem")
        found[path.stem] = path
    return {stem: found[stem] for stem in sorted(found, key=natural_key)}
