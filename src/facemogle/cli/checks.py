"""The command line's argument checks, shared by every command: run before any model is loaded.

Each check raises :class:`~facemogle.errors.InputError` with one line that names the argument and
what it allows, e.g. ``--steps must be in 1..1000, got 100000``.

* numbers: :func:`int_in_range`, :func:`finite`, :func:`seed`;
* the sampling options ``generate``, ``edit`` and ``evaluate --protocol`` share (steps, size,
  guidance, mask guidance, prompt, device, seed): :func:`sampling_options`;
* files read: :func:`input_file` (exists, a regular file: a FIFO would block) and
  :func:`input_folder`;
* files written: :func:`output_file` (an allowed suffix, its folder exists, not a folder, not a
  symlink: writing through a link would replace the file it points to) and :func:`output_files`
  for a command that writes several (all checked before the first is written, no name twice).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Sequence

from facemogle.errors import InputError

#: Seeds torch's generators take: [0, 2**64).
SEED_LIMIT = 2**64
#: Smallest --size a command accepts (one 16 px token of a /8 model).
MIN_SIZE = 16


def int_in_range(name: str, value, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``low..high`` (``high`` None: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f"in {low}..{high}" if high is not None else f">= {low}"
        raise InputError(f"{name} must be {allowed}, got {value}")
    return value


def finite(name: str, value, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a finite float, within [low, high] where given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (f"in [{low:g}, {high:g}]" if low is not None and high is not None
                  else f">= {low:g}" if low is not None else f"<= {high:g}")
        raise InputError(f"{name} must be {bounds}, got {value:g}")
    return float(value)


def seed(name: str, value) -> int:
    """A seed torch accepts: an integer in [0, 2**64)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise InputError(f"{name} must be in [0, 2**64) (an integer), got {value}")
    return value


def _existing(name: str, path, accepts, refusal: str) -> Path:
    """``path`` exists and ``accepts(path)``; otherwise one line naming the argument."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{name} {path} does not exist")
    if not accepts(path):
        raise InputError(f"{name} {path} is {refusal}")
    return path


def input_file(name: str, path) -> Path:
    """An existing regular file (not a folder, FIFO or device)."""
    return _existing(name, path, Path.is_file, "not a regular file")


def input_folder(name: str, path) -> Path:
    """An existing folder."""
    return _existing(name, path, Path.is_dir, "not a folder")


def input_file_or_folder(name: str, path) -> Path:
    """An existing regular file or folder (not a FIFO or device)."""
    return _existing(name, path, lambda p: p.is_file() or p.is_dir(), "neither a regular file nor a folder")


def sampling_options(args, *, seed_count: int = 1) -> None:
    """The sampling options of ``generate``, ``edit`` and ``evaluate --protocol``, where ``args``
    has them (attributes ``steps``, ``size``, ``guidance``, ``mask_guidance``, ``text_only_guidance``, ``prompt``,
    ``device``, ``seed``; None: the model's default): steps and size within the pipeline's bounds,
    finite guidance, a UTF-8 prompt of bounded length, a device this torch can use, and seeds
    ``seed .. seed + seed_count - 1`` within torch's range."""
    from facemogle.masks import MAX_GENERATION_SIDE
    from facemogle.pipeline import MAX_STEPS, check_prompt

    if getattr(args, "steps", None) is not None:
        int_in_range("--steps", args.steps, 1, MAX_STEPS)
    if getattr(args, "size", None) is not None:
        int_in_range("--size", args.size, MIN_SIZE, MAX_GENERATION_SIDE)
    for option in ("guidance", "mask_guidance", "text_only_guidance"):
        if getattr(args, option, None) is not None:
            finite(f"--{option.replace('_', '-')}", getattr(args, option))
    if getattr(args, "prompt", None) is not None:
        check_prompt(args.prompt)
    if getattr(args, "device", None):
        from facemogle.specs import check_device

        check_device(args.device)
    if getattr(args, "seed", None) is not None:
        seed("--seed", args.seed)
        if args.seed + seed_count > SEED_LIMIT:
            raise InputError(f"--seed {args.seed} + {seed_count} images runs past 2**64")


def size_fits_model(size: int | None, model: str) -> None:
    """``--size`` a multiple of what the model ``model`` needs, where its spec says so (before it loads)."""
    from facemogle.specs import get_spec

    multiple = get_spec(model).size_multiple
    if size is not None and multiple is not None and size % multiple:
        raise InputError(f"--size must be a multiple of {multiple} for --model {model}, got {size}")


def output_file(name: str, path, suffixes: Sequence[str] | None = None, *, allow_symlink: bool = False,
                make_folder: bool = False) -> Path:
    """A path a file may be written to: an allowed suffix, an existing folder (or, with
    ``make_folder``, one the command will create under an existing one), not a folder itself, and
    not a symlink unless ``allow_symlink`` (the write would land on the link's target)."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise InputError(f"{name} {path} must end in {', '.join(suffixes)}")
    if path.is_symlink() and not allow_symlink:
        raise InputError(f"{name} {path} is a symbolic link; writing it would replace {os.path.realpath(path)} "
                         "(remove the link or give another name)")
    if path.is_dir():
        raise InputError(f"{name} {path} is a folder; give a file name")
    parent = path.parent
    if not parent.exists() and make_folder:  # created later: its nearest existing ancestor must do
        parent = next(p for p in path.parents if p.exists())
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{name} {path}: {parent} is not a folder")
    if not parent.exists():
        raise InputError(f"{name} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{name} {path}: the folder {parent} is not writable")
    return path


def output_files(name: str, paths: Iterable, suffixes: Sequence[str] | None = None, *,
                 make_folder: bool = False) -> list[Path]:
    """:func:`output_file` for each of several outputs, all before the first is written; the same
    file named twice is refused."""
    checked = [output_file(name, p, suffixes, make_folder=make_folder) for p in paths]
    seen: dict[str, Path] = {}
    for path in checked:
        key = os.path.realpath(path)
        if key in seen:
            raise InputError(f"{name}: {seen[key]} and {path} are the same file")
        seen[key] = path
    return checked
