"""``facemogle evaluate``: the paper's metrics on a folder of generated faces.

    facemogle evaluate --generated OUT/ --real data/face --prompts data/text.json \\
        --metrics fid,kid,cmmd,dino,text --inception pt_inception-2015-12-05-6726825d.pth \\
        --clip openai/clip-vit-base-patch16 --clip-large openai/clip-vit-large-patch14-336 \\
        --dino facebook/dino-vitb8 -o eval.json --table eval.md

Images are paired by file stem: every generated image needs a real photo (``--real``), a mask
(``--masks``) and a prompt (``--prompts``) of the same stem when the metric uses them. ``--prompts``
is a JSON file ``{stem: prompt}``, a ``text.json``-style JSON file ``{"<stem>.jpg": [sentences]}``
(the first sentence is used), or a folder of ``<stem>.txt`` files (first line). Writes every number
to a JSON file and, with ``--table``, a markdown table laid out like the paper's Table 1.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facemogle.errors import InputError
from facemogle.eval.protocol import DINO_INPUT_MODES, KID_MAX_SUBSET_SIZE, KID_NUM_SUBSETS, METRICS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="FID / KID / CMMD / DINO / CLIP text / ImageReward / mask mIoU of generated faces",
        description="Evaluate a folder of generated faces with the paper's metrics (and the project's mask "
        "mIoU). Other inputs are paired with the generated images by file stem.",
    )
    p.add_argument("--generated", required=True, type=Path, metavar="DIR", help="folder of generated images")
    p.add_argument("--real", type=Path, metavar="DIR", help="folder of real photos (fid, kid, cmmd, dino)")
    p.add_argument("--masks", type=Path, metavar="DIR", help="folder of the input masks (miou)")
    p.add_argument(
        "--prompts",
        type=Path,
        metavar="FILE",
        help='prompts (text, ir): JSON {stem: prompt}, text.json-style {"<stem>.jpg": [sentences]} '
        "(first sentence), or a folder of <stem>.txt (first line)",
    )
    p.add_argument(
        "--metrics",
        default="fid,kid",
        help=f"comma-separated, from {','.join(METRICS)} or 'all' (default: fid,kid)",
    )
    p.add_argument("--inception", metavar="PATH", help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth)")
    p.add_argument("--clip", metavar="PATH_OR_ID", help="CLIP ViT-B/16 for the text score (openai/clip-vit-base-patch16)")
    p.add_argument(
        "--clip-large", metavar="PATH_OR_ID", help="CLIP ViT-L/14-336 for CMMD (openai/clip-vit-large-patch14-336)"
    )
    p.add_argument("--dino", metavar="PATH_OR_ID", help="DINO ViT-B/8 for the structure distance (facebook/dino-vitb8)")
    p.add_argument("--parser", metavar="PATH", help="face parser for miou (default: the shipped one)")
    p.add_argument("--image-reward", metavar="DIR", help="ImageReward folder (ImageReward.pt, med_config.json) for ir")
    p.add_argument(
        "--dino-input",
        choices=DINO_INPUT_MODES,
        default="reference",
        help="reference: pixels/255 at full resolution, as the paper's script (default); "
        "imagenet: resize + ImageNet normalisation",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--offline", action="store_true", help="load hub ids from the local cache only, never download")
    p.add_argument("--kid-subsets", type=int, default=KID_NUM_SUBSETS, help=f"KID subsets (default {KID_NUM_SUBSETS})")
    p.add_argument(
        "--kid-subset-size", type=int, default=KID_MAX_SUBSET_SIZE, help=f"KID max subset size (default {KID_MAX_SUBSET_SIZE})"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the KID subsets (default 0)")
    p.add_argument("--cache-dir", type=Path, metavar="DIR", help="feature cache folder (default: .facemogle_cache in each image folder)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached features")
    p.add_argument("--label", help="row name in the table (default: the generated folder's name)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.json", help="JSON report to write")
    p.add_argument("--table", type=Path, metavar="OUT.md", help="markdown table to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from facemogle.eval.evaluate import EvaluationSettings, evaluate, parse_metrics
    from facemogle.eval.report import render_markdown

    if args.output.suffix.lower() != ".json":
        raise InputError(f"output {args.output} must end in .json")
    settings = EvaluationSettings(
        generated=args.generated,
        metrics=parse_metrics(args.metrics),
        real=args.real,
        masks=args.masks,
        prompts=args.prompts,
        inception=args.inception,
        clip=args.clip,
        clip_large=args.clip_large,
        dino=args.dino,
        parser=args.parser,
        image_reward=args.image_reward,
        batch_size=args.batch_size,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        local_files_only=args.offline,
        cache=not args.no_cache,
        cache_dir=args.cache_dir,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        seed=args.seed,
        dino_input=args.dino_input,
        label=args.label,
        progress=not args.quiet,
    )
    report = evaluate(settings)
    table = render_markdown(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.table is not None:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table, encoding="utf-8")
    print(table, end="")
    print(f"wrote {args.output}" + (f" and {args.table}" if args.table is not None else ""))
    return 0
