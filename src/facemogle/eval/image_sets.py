"""Image folders for evaluation: listing, pairing by file stem, prompts, and image loading.

The **generated** folder defines the evaluated set. Every other input is looked up by file stem
(``27000.png`` pairs with ``27000.jpg``): the real photo, the input mask, the prompt. A generated
image without a partner is an error that names the missing stems; partners without a generated
image are ignored (so ``--real`` may be the dataset's whole ``face/`` folder while the generated
folder holds the 3,000 test images).

Prompts come from one of:

* a JSON file ``{"27000": "a prompt", ...}`` (stem -> prompt);
* a JSON file in MM-CelebA-HQ's ``text.json`` layout, ``{"27000.jpg": ["sentence 1", ...], ...}``:
  keys may carry an image extension, and the **first** sentence of each list is the prompt (the
  paper evaluates with the first sentence of each test caption);
* a folder of ``<stem>.txt`` files (MM-CelebA-HQ's ``text/``): the first line is the prompt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image

from facemogle.errors import InputError
from facemogle.files import IMAGE_EXTENSIONS, files_by_stem
from facemogle.images import read_photo

#: How many offending names an error message lists.
_SHOWN_IN_ERRORS = 5


def _examples(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN_IN_ERRORS])
    return shown + (", ..." if len(names) > _SHOWN_IN_ERRORS else "")


def list_images(directory: str | os.PathLike, *, what: str = "image") -> dict[str, Path]:
    """Images of ``directory`` by stem, in natural order. Hidden files are skipped.

    Raises:
        InputError: the folder does not exist, holds no images, or two files share a stem.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{what} folder {directory} does not exist or is not a folder")
    by_stem = files_by_stem(directory, extensions=IMAGE_EXTENSIONS)
    if not by_stem:
        raise InputError(
            f"{what} folder {directory} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
        )
    return by_stem


def paired_files(
    stems: list[str], directory: str | os.PathLike, *, what: str
) -> list[Path]:
    """The image of ``directory`` for each stem, in the order of ``stems``.

    Raises:
        InputError: the folder is unusable, or some stems have no image there.
    """
    available = list_images(directory, what=what)
    missing = [stem for stem in stems if stem not in available]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(stems)} generated images have no {what} in {directory} "
            f"(paired by file stem): {_examples(missing)}"
        )
    return [available[stem] for stem in stems]


def load_prompts(source: str | os.PathLike, stems: list[str]) -> list[str]:
    """The prompt of each stem from a JSON file or a folder of ``.txt`` files (see module docstring).

    Raises:
        InputError: unreadable source, malformed entries, or stems without a prompt.
    """
    source = Path(source)
    if source.is_dir():
        prompts = _prompts_from_text_folder(source, stems)
    elif source.is_file():
        prompts = _prompts_from_json(source)
    else:
        raise InputError(f"prompts file {source} does not exist")
    missing = [stem for stem in stems if stem not in prompts]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(stems)} generated images have no prompt in {source} "
            f"(keys are file stems or file names): {_examples(missing)}"
        )
    return [prompts[stem] for stem in stems]


def _prompts_from_json(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"prompts file {path} is not JSON: {error}") from None
    except RecursionError:
        raise InputError(f"prompts file {path} nests its JSON too deeply to be a prompts file") from None
    if not isinstance(data, dict):
        raise InputError(
            f"prompts file {path} must hold a JSON object {{stem: prompt}} or "
            f'{{"<stem>.jpg": [sentences]}}, got a {type(data).__name__}'
        )
    prompts: dict[str, str] = {}
    for key, value in data.items():
        stem = Path(key).stem if Path(key).suffix.lower() in IMAGE_EXTENSIONS else key
        if isinstance(value, list):
            if not value or not isinstance(value[0], str):
                raise InputError(f"prompts file {path}: entry {key!r} must be a non-empty list of sentences")
            value = value[0]
        if not isinstance(value, str):
            raise InputError(
                f"prompts file {path}: entry {key!r} must be a prompt string or a list of sentences, "
                f"got {type(value).__name__}"
            )
        prompts[stem] = value.strip()
    return prompts


def _prompts_from_text_folder(directory: Path, stems: list[str]) -> dict[str, str]:
    prompts: dict[str, str] = {}
    for stem in stems:
        path = directory / f"{stem}.txt"
        if path.is_file():
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as error:
                raise InputError(f"prompt file {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
            prompts[stem] = lines[0].strip() if lines else ""
    return prompts


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB (decoded now, file closed), with the checks of every image reader
    (:func:`facemogle.images.read_photo`: regular file, pixel cap from the header, no truncation).

    Raises:
        InputError: the file is not a readable image, is truncated, or is too large to decode.
    """
    return read_photo(path, what="photo")
