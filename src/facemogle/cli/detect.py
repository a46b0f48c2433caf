"""``facemogle detect``: does an image carry facemogle's watermark, and what does its metadata say?"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facemogle.errors import FaceMoGLEError

#: Exit status: every file marked / some file unmarked / some file unreadable (unreadable wins).
EXIT_MARKED, EXIT_UNMARKED, EXIT_UNREADABLE = 0, 1, 2


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "detect", help="tell whether images carry facemogle's invisible watermark",
        description="For each IMAGE: whether facemogle's invisible watermark is present (with its decoded payload: "
        "the model spec), and the provenance metadata (generation parameters, IPTC digital source type). "
        f"Exit status {EXIT_MARKED}: all marked, {EXIT_UNMARKED}: some unmarked, {EXIT_UNREADABLE}: some unreadable.")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facemogle.provenance import read_provenance

    status = EXIT_MARKED
    for path in args.images:
        try:
            found = read_provenance(path)
        except FaceMoGLEError as error:
            print(f"facemogle detect: error: {error}", file=sys.stderr)
            status = EXIT_UNREADABLE
            continue
        mark = found.mark
        if not found.marked:
            status = max(status, EXIT_UNMARKED)
        record = {"file": str(path), "marked": found.marked, "model_spec": mark.model_spec,
                  "matching_bits": mark.matching_bits, "readable_size": mark.readable,
                  "trained_algorithmic_media": found.trained_algorithmic_media, "parameters": found.parameters}
        if args.json:
            print(json.dumps(record, ensure_ascii=False))
            continue
        if found.marked:
            verdict = f"marked (facemogle, model {mark.model_spec}; {mark.matching_bits}/48 bits)"
        elif not mark.readable:
            verdict = "unmarked (too small to carry the mark: under 257 px a side)"
        else:
            verdict = f"unmarked ({mark.matching_bits}/48 bits match, below the threshold)"
        metadata = "metadata: "
        metadata += "IPTC trainedAlgorithmicMedia" if found.trained_algorithmic_media else "no IPTC source type"
        if found.parameters is not None:
            metadata += f"; parameters {json.dumps(found.parameters, ensure_ascii=False)}"
        print(f"{path}: {verdict}; {metadata}")
    return status
