"""``facemogle parse``: face photos -> face masks (official CelebAMask-HQ ids).

* ``facemogle parse PHOTO -o MASK.png``: one photo, one palette PNG (dataset format) at the photo's size.
* ``facemogle parse A.jpg B.jpg ... -o DIR``: one ``DIR/<stem>.png`` per photo.
* ``--color`` writes the colour render instead of the palette PNG of ids.
* ``--parser PATH`` uses another parser: a ``FaceParser`` folder (``save_pretrained``) or a
  face-parsing.PyTorch BiSeNet ``.pth`` (e.g. ``79999_iter.pth``). Default: the shipped parser
  (trained on CelebAMask-HQ data: non-commercial research and education only).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from facemogle.errors import InputError

MASK_SUFFIX = ".png"
#: Largest --batch-size (photos per forward pass).
MAX_BATCH = 64


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "parse",
        help="face photo(s) -> face mask(s)",
        description="Parse face photos into masks of the 19 CelebAMask-HQ classes (official ids), "
        "written as palette PNGs at each photo's size.",
    )
    parser.add_argument("photos", metavar="PHOTO", nargs="+", type=Path, help="face photo(s) (any size, RGB)")
    parser.add_argument(
        "-o",
        "--output",
        metavar="MASK.png|DIR",
        required=True,
        type=Path,
        help="mask file for one photo, or a folder that receives <stem>.png per photo",
    )
    parser.add_argument(
        "--parser",
        metavar="PATH",
        default=None,
        help="FaceParser folder or face-parsing.PyTorch BiSeNet .pth (default: the shipped parser)",
    )
    parser.add_argument("--color", action="store_true", help="write colour renders instead of palette ids")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N", help="photos per forward pass (default 4)")
    parser.set_defaults(func=run)


def output_paths(photos: list[Path], output: Path) -> list[Path]:
    """Where each photo's mask goes: ``output`` itself for one photo and a ``.png`` path, else
    ``output/<stem>.png``. Raises ``InputError`` for ambiguous or clashing outputs."""
    if output.suffix.lower() == MASK_SUFFIX and not output.is_dir():
        if len(photos) > 1:
            raise InputError(f"{len(photos)} photos need an output folder, not the file {str(output)!r}")
        return [output]
    if output.suffix and not output.is_dir():
        raise InputError(f"masks are written as PNG; give MASK.png or a folder, not {str(output)!r}")
    paths = [output / f"{photo.stem}{MASK_SUFFIX}" for photo in photos]
    if len(set(paths)) != len(paths):
        raise InputError("two photos share a file name stem; their masks would overwrite each other in one folder")
    return paths


def run(args: argparse.Namespace) -> int:
    from facemogle.cli import checks
    from facemogle.files import AllOrNothing
    from facemogle.images import read_photo
    from facemogle.masks import save_mask
    from facemogle.parser import load_parser

    checks.int_in_range("--batch-size", args.batch_size, 1, MAX_BATCH)
    for photo in args.photos:
        checks.input_file("photo", photo)
    destinations = output_paths(args.photos, args.output)
    checks.output_files("output", destinations, make_folder=True)
    for photo in args.photos:  # every photo decodes (pixel cap, not truncated) before any work
        read_photo(photo).close()
    parser = load_parser(args.parser)
    kind = "color" if args.color else "ids"
    written = []
    try:
        with AllOrNothing() as out:  # all masks or none: a failure keeps every old file
            for start in range(0, len(args.photos), args.batch_size):
                chunk = args.photos[start : start + args.batch_size]
                masks = parser.parse(chunk, batch_size=args.batch_size)
                for ids, destination in zip(masks, destinations[start : start + args.batch_size]):
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    save_mask(ids, out.partial(destination), to=kind)
                    written.append(f"wrote {destination} ({kind}, {ids.shape[1]}x{ids.shape[0]})")
    except OSError as err:
        raise InputError(f"cannot write the masks ({err.strerror or err}); none was written") from err
    print("\n".join(written))
    return 0
