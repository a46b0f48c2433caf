"""The ceiling of the tiny model's text-control table: how often the project's parser + captioner read
each prompted attribute back from REAL photos shrunk to the model's size, taking their reading of the
full-size photo as the truth (``facemogle.eval.text_control.readback_ceiling``). Every photo of the
dataset is read (no split: nothing is trained or tuned on this).

    python scripts/attribute_readback.py [--data ../shared/data/celebamask-hq-mini] [--size 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "celebamask-hq-mini"))
    p.add_argument("--size", type=int, default=128, help="side the photos are shrunk to (default 128: the tiny model's)")
    p.add_argument("--parser", default=None, help="face parser weights (default: the shipped parser)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the table here")
    args = p.parse_args(argv)
    if args.json:  # a bad output path is refused before minutes of work, not after
        from facemogle.cli.checks import output_file
        from facemogle.errors import InputError

        try:
            output_file("--json", args.json, (".json",))
        except InputError as error:
            p.error(str(error))

    import torch

    from facemogle.data.datasets import index_dataset
    from facemogle.eval.evaluate import load_face_parser
    from facemogle.eval.text_control import readback_ceiling
    from facemogle.files import atomic_write_text

    torch.set_num_threads(args.threads)
    index = index_dataset(args.data, layout="folder")
    photos = [record.image for record in index.records.values()]
    table = {"photos": len(photos), "size": args.size,
             "readback": readback_ceiling(load_face_parser(args.parser), photos, args.size, progress=True)}
    text = json.dumps(table, indent=1)
    if args.json:
        atomic_write_text(args.json, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
