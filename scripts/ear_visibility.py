"""Why the tiny model's earrings do not follow the text: how often its text-only faces from the
earrings prompt show an ear at all (parsed by the shipped parser), against the dataset's masks shrunk
to the same size, and how often earrings are read back from those faces
(``facemogle.eval.text_control.share_showing``). Every mask of the dataset is counted (no split:
nothing is trained or tuned on this).

    python scripts/ear_visibility.py [--model src/facemogle/weights/tiny] [--samples 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(REPO / "src" / "facemogle" / "weights" / "tiny"))
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "celebamask-hq-mini"))
    p.add_argument("--samples", type=int, default=32, help="text-only faces drawn (seeds 0..N-1)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--parser", default=None, help="face parser weights (default: the shipped parser)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the numbers here")
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
    from facemogle.eval.text_control import EAR_CLASSES, PROMPTS, Sampler, read_attributes, share_showing
    from facemogle.files import atomic_write_text
    from facemogle.masks import load_mask, resize_mask
    from facemogle.specs import checkpoint_spec, load_pipeline

    torch.set_num_threads(args.threads)
    masks = [resize_mask(load_mask(r.mask), args.size) for r in index_dataset(args.data, layout="folder").records.values()]
    spec, options = checkpoint_spec(Path(args.model))
    pipe = load_pipeline(spec, **options)
    pipe.set_progress_bar_config(disable=True)
    parser = load_face_parser(args.parser)
    prompt = PROMPTS["earrings"][True]
    faces = Sampler(pipe, size=args.size, seed=0).draw([prompt] * args.samples)
    numbers = {"prompt": prompt, "samples": args.samples, "size": args.size, "ear_classes": list(EAR_CLASSES),
               "text_only_faces_showing_an_ear": share_showing(parser.parse(faces)),
               "text_only_faces_read_as_wearing_earrings": sum(bool(r.get("earrings")) for r in
                                                               read_attributes(parser, faces)) / args.samples,
               "masks": len(masks), "masks_showing_an_ear": share_showing(masks)}
    text = json.dumps(numbers, indent=1)
    if args.json:
        atomic_write_text(args.json, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
