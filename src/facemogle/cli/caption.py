"""``facemogle caption DIR``: write captions for a dataset folder that has photos and masks but no text.

Reads ``DIR/images/<stem>.jpg`` (or ``DIR/face/``) and ``DIR/masks/<stem>.png`` (or ``DIR/mask/``),
and writes ``text/<stem>.txt`` (one sentence per line) and ``text.json`` in the MM-CelebA-HQ layout
to ``--out`` (default: DIR itself). See ``facemogle.data.captions`` and docs/captions.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from facemogle.data.captions import DEFAULT_SENTENCES, EVIDENCE_JSON, TEXT_FOLDER, TEXT_JSON, caption_folder
from facemogle.errors import InputError


#: Most sentences per image (each is a different wording of the same facts; the paper's data has 10).
MAX_SENTENCES = 100


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "caption",
        help="write captions for photos + masks (hair, accessories, mouth, colours)",
        description=(
            "Write semi-automatic captions (text/<stem>.txt and text.json, the MM-CelebA-HQ layout) "
            "for a folder of photos and masks. Captions never guess gender, age or ethnicity."
        ),
    )
    parser.add_argument("folder", metavar="DIR", type=Path, help="dataset folder with images/ (or face/) and masks/ (or mask/)")
    parser.add_argument(
        "--out", metavar="DIR", type=Path, default=None,
        help=f"folder to write {TEXT_FOLDER}/ and {TEXT_JSON} to (default: DIR itself)",
    )
    parser.add_argument(
        "--sentences", metavar="N", type=int, default=DEFAULT_SENTENCES,
        help=f"sentences per image (default {DEFAULT_SENTENCES})",
    )
    parser.add_argument("--seed", metavar="S", type=int, default=0, help="seed of the wordings (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace captions that already exist in the output folder")
    parser.add_argument(
        "--evidence", action="store_true",
        help=f"also write {EVIDENCE_JSON}: the measurements behind every caption",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facemogle.cli import checks

    checks.input_folder("DIR", args.folder)
    checks.int_in_range("--sentences", args.sentences, 1, MAX_SENTENCES)
    checks.seed("--seed", args.seed)
    out = args.folder if args.out is None else args.out
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is not a folder")
    checks.output_file("--out", out / TEXT_JSON, make_folder=True)
    captions = caption_folder(
        args.folder,
        out,
        sentences=args.sentences,
        seed=args.seed,
        overwrite=args.overwrite,
        evidence=args.evidence,
    )
    print(f"wrote {len(captions)} captions ({args.sentences} sentences each) to {out / TEXT_FOLDER}/ and {out / TEXT_JSON}")
    return 0
