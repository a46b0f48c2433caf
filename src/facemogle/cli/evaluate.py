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

The paper's protocol end to end (generate the test set, then evaluate it;
``facemogle.eval.paper_protocol``)::

    facemogle evaluate --protocol mmcelebahq data/MM-CelebA-HQ --model flux-dev --checkpoint ckpt/ \
        --mode all --work-dir runs/paper --metrics fid,kid,cmmd,dino,text --inception ... --clip ...

Test ids 27000..29999 present in DATA_DIR (``--limit N``: the first N), the first caption sentence,
image <id> seeded with ``seed + id``; faces go to ``WORK/<mode>/generated/<id>.png`` (existing ones
are kept, so an interrupted run resumes), reports to ``WORK/<mode>/eval.json`` and, for all modes
together, ``-o`` / ``--table`` (default ``WORK/eval.json`` and ``WORK/eval.md``). With
``--protocol``, ``--seed`` is the generation seed (default 42) and ``--batch-size`` applies to both
generation (default 4) and metrics (default 32).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facemogle.cli.model_options import add_model_arguments, resolve_model
from facemogle.errors import InputError
from facemogle.eval.paper_protocol import (
    ALL_MODES,
    DEFAULT_GENERATION_BATCH_SIZE,
    DEFAULT_LABEL,
    MODES,
    PAPER_GUIDANCE,
    PAPER_NUM_STEPS,
    PAPER_SEED,
    PAPER_SIZE,
    PROTOCOLS,
)
from facemogle.eval.protocol import DINO_INPUT_MODES, KID_MAX_SUBSET_SIZE, KID_NUM_SUBSETS, METRICS
from facemogle.files import AllOrNothing

#: Metric batch size (both modes) and metrics of ``--protocol`` when none are given.
DEFAULT_METRIC_BATCH_SIZE = 32
#: Upper bounds of the numeric options (memory and time stay bounded whatever is asked).
MAX_BATCH_SIZE = 256
MAX_KID_SUBSETS = 10_000
MAX_KID_SUBSET_SIZE = 100_000
DEFAULT_METRICS = "fid,kid"
DEFAULT_PROTOCOL_METRICS = "fid,kid,cmmd,dino,text"
#: Options of the folder evaluation only, and of ``--protocol`` only (all default to None).
FOLDER_OPTIONS = ("generated", "real", "masks", "prompts")
PROTOCOL_OPTIONS = ("data_dir", "model", "base", "lora", "mogle", "checkpoint", "mode", "limit", "steps",
                    "guidance", "size", "work_dir")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="FID / KID / CMMD / DINO / CLIP text / ImageReward / mask mIoU of generated faces",
        description="Evaluate a folder of generated faces with the paper's metrics (and the project's mask "
        "mIoU). Other inputs are paired with the generated images by file stem.",
    )
    p.add_argument("--generated", type=Path, metavar="DIR", help="folder of generated images")
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
        help=f"comma-separated, from {','.join(METRICS)} or 'all' "
        f"(default: {DEFAULT_METRICS}; with --protocol {DEFAULT_PROTOCOL_METRICS})",
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
    p.add_argument(
        "--batch-size", type=int,
        help=f"images per batch (default {DEFAULT_METRIC_BATCH_SIZE}; with --protocol also per generation call, "
        f"default {DEFAULT_GENERATION_BATCH_SIZE})",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--offline", action="store_true", help="load hub ids from the local cache only, never download")
    p.add_argument("--kid-subsets", type=int, default=KID_NUM_SUBSETS, help=f"KID subsets (default {KID_NUM_SUBSETS})")
    p.add_argument(
        "--kid-subset-size", type=int, default=KID_MAX_SUBSET_SIZE, help=f"KID max subset size (default {KID_MAX_SUBSET_SIZE})"
    )
    p.add_argument(
        "--seed", type=int,
        help=f"seed of the KID subsets (default 0); with --protocol the generation seed: image <id> gets "
        f"seed + id (default {PAPER_SEED}; KID subsets then use 0)",
    )
    p.add_argument("--cache-dir", type=Path, metavar="DIR", help="feature cache folder (default: .facemogle_cache in each image folder)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached features")
    p.add_argument(
        "--label",
        help=f"row name in the table (default: the generated folder's name; with --protocol '{DEFAULT_LABEL}', "
        "followed by the mode)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("-o", "--output", type=Path, metavar="OUT.json",
                   help="JSON report to write (required without --protocol; default WORK/eval.json)")
    p.add_argument("--table", type=Path, metavar="OUT.md", help="markdown table to write (--protocol: default WORK/eval.md)")

    protocol = p.add_argument_group("the paper's protocol (generate the test set, then evaluate it)")
    protocol.add_argument("--protocol", choices=list(PROTOCOLS),
                          help="mmcelebahq: test ids 27000..29999, first caption sentence; mmffhq: a zero-shot "
                          "set in the same layout (every image, one seeded sentence each)")
    protocol.add_argument("data_dir", nargs="?", type=Path, metavar="DATA_DIR",
                          help="with --protocol: dataset folder (face/, mask/, text/ or text.json)")
    add_model_arguments(protocol)
    protocol.add_argument("--mode", choices=[*MODES, ALL_MODES],
                          help="mask+text (default), mask (empty prompt), text (empty mask) or all three")
    protocol.add_argument("--limit", type=int, metavar="N", help="evaluate the first N images only (smoke runs)")
    protocol.add_argument("--steps", type=int,
                          help=f"denoising steps (default {PAPER_NUM_STEPS}; tiny: its own default)")
    protocol.add_argument("--guidance", type=float, help=f"FLUX guidance scale (default {PAPER_GUIDANCE}; tiny: 1.0)")
    protocol.add_argument("--size", type=int, help=f"generated height and width in pixels (default {PAPER_SIZE}; tiny: 128)")
    protocol.add_argument("--work-dir", type=Path, metavar="DIR", help="where the generated faces and reports go")
    p.set_defaults(func=run)


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return ["--" + name.replace("_", "-") if name != "data_dir" else "DATA_DIR" for name in names
            if getattr(args, name) is not None]


def _evaluation_settings(args: argparse.Namespace, metrics: str, seed: int):
    import torch

    from facemogle.eval.evaluate import EvaluationSettings, parse_metrics
    from facemogle.specs import check_device

    return EvaluationSettings(
        generated=args.generated,
        metrics=parse_metrics(metrics),
        real=args.real,
        masks=args.masks,
        prompts=args.prompts,
        inception=args.inception,
        clip=args.clip,
        clip_large=args.clip_large,
        dino=args.dino,
        parser=args.parser,
        image_reward=args.image_reward,
        batch_size=DEFAULT_METRIC_BATCH_SIZE if args.batch_size is None else args.batch_size,
        device=str(check_device(args.device)) if args.device else ("cuda" if torch.cuda.is_available() else "cpu"),
        local_files_only=args.offline,
        cache=not args.no_cache,
        cache_dir=args.cache_dir,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        seed=seed,
        dino_input=args.dino_input,
        label=args.label,
        progress=not args.quiet,
    )


def _write(report: dict, table: str, output: Path, table_path: Path | None) -> None:
    """The JSON report and the table, both or neither."""
    with AllOrNothing() as files:
        output.parent.mkdir(parents=True, exist_ok=True)
        files.partial(output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if table_path is not None:
            table_path.parent.mkdir(parents=True, exist_ok=True)
            files.partial(table_path).write_text(table, encoding="utf-8")
    print(table, end="")
    print(f"wrote {output}" + (f" and {table_path}" if table_path is not None else ""))


def check_arguments(args: argparse.Namespace) -> None:
    """The numbers, folders and output paths of both forms, before any model or image is loaded."""
    from facemogle.cli import checks

    if args.batch_size is not None:
        checks.int_in_range("--batch-size", args.batch_size, 1, MAX_BATCH_SIZE)
    checks.int_in_range("--kid-subsets", args.kid_subsets, 1, MAX_KID_SUBSETS)
    checks.int_in_range("--kid-subset-size", args.kid_subset_size, 2, MAX_KID_SUBSET_SIZE)
    if args.limit is not None:
        checks.int_in_range("--limit", args.limit, 1)
    checks.sampling_options(args, seed_count=1)
    for name in ("generated", "real", "masks", "data_dir"):
        if getattr(args, name) is not None:
            checks.input_folder("DATA_DIR" if name == "data_dir" else f"--{name}", getattr(args, name))
    if args.prompts is not None:
        checks.input_file_or_folder("--prompts", args.prompts)
    for name in ("cache_dir", "work_dir"):
        folder = getattr(args, name)
        if folder is not None and folder.exists() and not folder.is_dir():
            raise InputError(f"--{name.replace('_', '-')} {folder} is not a folder")
    outputs = []
    if args.output is not None:
        outputs.append(checks.output_file("-o", args.output, (".json",), make_folder=True))
    if args.table is not None:
        outputs.append(checks.output_file("--table", args.table, (".md",), make_folder=True))
    checks.output_files("-o/--table", outputs, make_folder=True)


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    if args.protocol is not None:
        return run_protocol(args)
    if args.generated is None:
        raise InputError("give --generated DIR (a folder of generated images) or --protocol NAME DATA_DIR")
    stray = _given(args, PROTOCOL_OPTIONS)
    if stray:
        raise InputError(f"{', '.join(stray)} only apply with --protocol")
    if args.output is None:
        raise InputError("give -o OUT.json, the JSON report to write")
    if args.output.suffix.lower() != ".json":
        raise InputError(f"output {args.output} must end in .json")

    from facemogle.eval.evaluate import evaluate
    from facemogle.eval.report import render_markdown

    report = evaluate(_evaluation_settings(args, args.metrics or DEFAULT_METRICS, 0 if args.seed is None else args.seed))
    _write(report, render_markdown(report), args.output, args.table)
    return 0


def run_protocol(args: argparse.Namespace) -> int:
    """``--protocol NAME DATA_DIR``: generate the protocol's images, then evaluate them."""
    from facemogle.cli import checks
    from facemogle.eval import paper_protocol
    from facemogle.specs import check_device

    stray = _given(args, FOLDER_OPTIONS)
    if stray:
        raise InputError(f"{', '.join(stray)} cannot be combined with --protocol (they come from DATA_DIR)")
    if args.data_dir is None or args.work_dir is None:
        raise InputError(f"--protocol {args.protocol} needs DATA_DIR and --work-dir DIR")
    model, model_options = resolve_model(args)
    checks.size_fits_model(args.size, model)
    output = args.output or args.work_dir / paper_protocol.REPORT_NAME
    table_path = args.table or args.work_dir / paper_protocol.TABLE_NAME
    if output.suffix.lower() != ".json":
        raise InputError(f"output {output} must end in .json")

    from facemogle.specs import get_spec

    # the paper's setting (512 px, 28 steps, guidance 3.5) unless the model was made for another
    size, steps, guidance = get_spec(model).inference or (PAPER_SIZE, PAPER_NUM_STEPS, PAPER_GUIDANCE)
    generation = paper_protocol.GenerationSettings(
        model=model,
        model_options=model_options,
        steps=steps if args.steps is None else args.steps,
        guidance=guidance if args.guidance is None else args.guidance,
        size=size if args.size is None else args.size,
        seed=PAPER_SEED if args.seed is None else args.seed,
        batch_size=DEFAULT_GENERATION_BATCH_SIZE if args.batch_size is None else args.batch_size,
        device=str(check_device(args.device)) if args.device else None,
    )
    settings = paper_protocol.ProtocolSettings(
        protocol=args.protocol,
        data_dir=args.data_dir,
        work_dir=args.work_dir,
        modes=paper_protocol.parse_modes(args.mode or "mask+text"),
        limit=args.limit,
        generation=generation,
        label=args.label or DEFAULT_LABEL,
        progress=not args.quiet,
    )
    evaluation = _evaluation_settings(args, args.metrics or DEFAULT_PROTOCOL_METRICS, 0)
    result = paper_protocol.run_protocol(settings, evaluation)
    if result.get("main_process") is False:  # under accelerate launch: the main process reports
        return 0
    _write(result, paper_protocol.render_protocol_markdown(result), output, table_path)
    return 0
