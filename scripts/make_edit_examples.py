"""Draw docs/images/edit_examples.png: one scripted edit per kind on held-out faces, with the
bundled model (photo | source mask | edited mask | result; facemogle.eval.edit_benchmark).

Usage: python scripts/make_edit_examples.py [--data ../shared/data/celebamask-hq-mini] [-o OUT.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared/data/celebamask-hq-mini"))
    p.add_argument("-o", "--output", default=str(REPO / "docs/images/edit_examples.png"))
    p.add_argument("--offset", type=int, default=10, help="skip this many val faces first (default 10)")
    args = p.parse_args()

    from facemogle.data.datasets import index_dataset
    from facemogle.eval.edit_benchmark import example_rows
    from facemogle.files import atomic_write
    from facemogle.specs import load_pipeline

    records = index_dataset(args.data, layout="folder").split("val")[args.offset:]
    pipe = load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    sheet = example_rows(pipe, [(r.stem, r.image, r.mask) for r in records])
    atomic_write(args.output, lambda tmp: sheet.save(tmp, format="PNG"))
    print(args.output)


if __name__ == "__main__":
    main()
