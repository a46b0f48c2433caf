"""``facemogle bench <what>``: throughput measurements, printed as JSON.

Sub-commands (one function each, registered in ``BENCHMARKS``; add e.g. ``generate`` there):

* ``watermark``: the invisible mark's robustness and false positives (facemogle.eval.watermark_benchmark);
* ``edit``: scripted mask edits of held-out photos (facemogle.eval.edit_benchmark), scored by the parser;
* ``train``: training steps/s with the latent cache vs encoding the image, the 20 condition
  images and the text every step (the reference's way), on the tiny-random preset.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facemogle.files import atomic_write_text


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure throughput (JSON output)",
                              description="Throughput benchmarks; each prints one JSON object.")
    benches = p.add_subparsers(dest="bench", metavar="BENCH")
    for name, (help_text, add_arguments, _) in BENCHMARKS.items():
        sub = benches.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.add_argument("--json", metavar="OUT", help="also write the JSON to this file")
        sub.set_defaults(func=run, bench=name)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=20, help="timed training steps per variant (default 20)")
    p.add_argument("--resolution", type=int, default=64, help="image size in pixels (default 64)")
    p.add_argument("--batch-size", type=int, default=2, help="batch size (default 2)")
    p.add_argument("--samples", type=int, default=16, help="synthetic faces in the dataset (default 16)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _bench_train(args: argparse.Namespace) -> dict:
    import torch

    from facemogle.errors import InputError
    from facemogle.train.bench import bench_train

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.steps < 2:
        raise InputError("--steps must be >= 2 (the first step is a warm-up and not timed)")
    return bench_train(steps=args.steps, resolution=args.resolution, batch_size=args.batch_size,
                       num_samples=args.samples)


def _generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="SPEC",
                   help="model spec name, or a saved pipeline / checkpoint directory (default: the default model)")
    p.add_argument("--size", type=int, default=128, help="output height and width in pixels (default 128)")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps per image (default: the model's own: 12 for tiny, else 20)")
    p.add_argument("--runs", type=int, default=5, help="timed images per variant; the median is reported (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--prompt", default=None, help="the prompt of both variants (default: a short face description)")
    p.add_argument("--busy-core", action="store_true",
                   help="also time it in fresh processes, quiet and beside a process keeping one core busy, with "
                        "facemogle's thread policy (facemogle.cpu_threads) and with torch's defaults")
    p.add_argument("--caches", action="store_true",
                   help="also time the base model's text-only call (no condition stream), every cache setting "
                        "(condition_cache / step_cache) and the exact savings one by one")
    p.add_argument("--quality-masks", type=int, default=0, metavar="N",
                   help="with --caches: each cache setting's quality change vs exact on N faces (50 or more for the "
                        "README's table; default 0: none)")
    p.add_argument("--quality-data", default="../shared/data/celebamask-hq-mini", metavar="DIR",
                   help="dataset folder of those faces (default ../shared/data/celebamask-hq-mini)")
    p.add_argument("--quality-split", choices=["val", "train"], default="val",
                   help="which split's faces (default val; train to choose settings without looking at val)")


def _bench_generate(args: argparse.Namespace) -> dict:
    from facemogle.errors import InputError
    from facemogle.bench_generate import DEFAULT_PROMPT, bench_generate
    from facemogle.specs import DEFAULT_MODEL, checkpoint_spec

    spec, options = args.model or DEFAULT_MODEL, {}
    if Path(spec).is_dir():
        spec, options = checkpoint_spec(spec)
    if args.quality_masks and not args.caches:
        raise InputError("--quality-masks needs --caches (it measures the cache settings)")
    if args.steps is None:
        args.steps = model_default_steps(spec, options)
    report = bench_generate(spec, size=args.size, steps=args.steps, runs=args.runs, threads=args.threads,
                            spec_options=options, prompt=args.prompt if args.prompt is not None else DEFAULT_PROMPT,
                            caches=args.caches, quality_data=args.quality_data, quality_masks=args.quality_masks,
                            quality_split=args.quality_split)
    if options:
        report["model_path"] = str(args.model)
    if args.busy_core:
        from facemogle.bench_generate import bench_thread_policy

        command = ["--size", str(args.size), "--steps", str(args.steps)]
        if args.model:
            command += ["--model", str(args.model)]
        if args.prompt is not None:
            command += ["--prompt", args.prompt]
        report["thread_policy"] = bench_thread_policy(command, runs=args.runs)
    return report


def model_default_steps(spec: str, options: dict) -> int:
    """A model's default denoising steps: a saved pipeline's ``default_num_inference_steps``, else the
    spec's inference settings, else 20."""
    import json

    from facemogle.specs import get_spec, saved_pipeline_dir

    saved = saved_pipeline_dir(options["path"]) if options.get("path") else None
    index = None if saved is None else saved / "model_index.json"
    if index is not None:
        steps = json.loads(index.read_text(encoding="utf-8")).get("default_num_inference_steps")
        if isinstance(steps, int) and steps > 0:
            return steps
    inference = get_spec(spec).inference
    return inference[1] if inference else 20


def _edit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="SPEC", help="model spec name (default: the default model)")
    p.add_argument("--data", default="../shared/data/celebamask-hq-mini", metavar="DIR",
                   help="images/ + masks/ dataset; its held-out val split is edited (default ../shared/data/celebamask-hq-mini)")
    p.add_argument("--per-kind", type=int, default=20, help="edits per kind (default 20)")
    p.add_argument("--kinds", default=",".join(EDIT_KIND_NAMES), help=f"comma-separated edit kinds (default {','.join(EDIT_KIND_NAMES)})")
    p.add_argument("--amount", type=int, default=40, help="pixels (of a 512 px mask) each scripted edit moves (default 40)")
    p.add_argument("--seed", type=int, default=0, help="seed of every edit (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _bench_edit(args: argparse.Namespace) -> dict:
    import torch

    from facemogle.data.datasets import index_dataset
    from facemogle.errors import InputError
    from facemogle.eval.edit_benchmark import EDIT_KINDS, bench_edit
    from facemogle.parser import load_parser
    from facemogle.specs import DEFAULT_MODEL, load_pipeline

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(EDIT_KINDS))
    if unknown or not kinds:
        raise InputError(f"--kinds: unknown edit kind(s) {unknown}; known: {', '.join(EDIT_KINDS)}")
    if args.per_kind < 1:
        raise InputError(f"--per-kind must be >= 1, got {args.per_kind}")
    if not Path(args.data).is_dir():
        raise InputError(f"--data {args.data} is not a folder")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    records = index_dataset(args.data, layout="folder").split("val")
    pipe = load_pipeline(args.model or DEFAULT_MODEL)
    report = bench_edit(pipe, load_parser(), [(r.stem, r.image, r.mask) for r in records], kinds,
                        per_kind=args.per_kind, amount=args.amount, seed=args.seed)
    return {"model": args.model or DEFAULT_MODEL, "threads": torch.get_num_threads(), **report}


def _watermark_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="SPEC", help="model spec name (default: the default model)")
    p.add_argument("--data", default="../shared/data/celebamask-hq-mini", metavar="DIR",
                   help="dataset whose masks the faces are drawn from (default ../shared/data/celebamask-hq-mini)")
    p.add_argument("--real", nargs="*", default=["../shared/data"], metavar="DIR",
                   help="folders searched (recursively) for real images to check for false positives (default ../shared/data)")
    p.add_argument("--faces", type=int, default=200, help="generated faces (default 200)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _bench_watermark(args: argparse.Namespace) -> dict:
    import torch

    from facemogle.errors import InputError
    from facemogle.eval.watermark_benchmark import bench_watermark
    from facemogle.files import IMAGE_EXTENSIONS, files_by_stem
    from facemogle.specs import DEFAULT_MODEL, load_pipeline

    if args.faces < 1:
        raise InputError(f"--faces must be >= 1, got {args.faces}")
    masks_dir = Path(args.data) / "masks"
    if not masks_dir.is_dir():
        raise InputError(f"--data {args.data} has no masks/ folder")
    masks = list(files_by_stem(masks_dir).values())
    masks = [masks[i % len(masks)] for i in range(args.faces)]
    real = sorted(p for root in args.real for p in Path(root).rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    prompts = [WATERMARK_PROMPTS[i % len(WATERMARK_PROMPTS)] for i in range(args.faces)]
    return bench_watermark(load_pipeline(args.model or DEFAULT_MODEL), masks, prompts, real)


WATERMARK_PROMPTS = ("This person has long brown hair and is smiling.", "This person has blond hair.",
                     "This person wears eyeglasses.", "This person has black hair and a closed mouth.", "")

#: Edit kinds of ``facemogle bench edit`` (facemogle.eval.edit_benchmark.EDIT_KINDS; listed here so
#: that building the command line imports no torch).
EDIT_KIND_NAMES = ("hair-grown", "hair-shrunk", "eyeglasses-removed", "mouth-opened")

BENCHMARKS = {
    "train": ("training steps/s: cached latents vs encoding everything every step", _train_arguments, _bench_train),
    "generate": ("seconds per image (median after a warm-up): mask + text vs text-only", _generate_arguments,
                 _bench_generate),
    "edit": ("photo edits on held-out faces: region IoU of the edited classes before/after, s per edit",
             _edit_arguments, _bench_edit),
    "watermark": ("watermark detection after JPEG, resizing, cropping, re-saving; false positives on real photos",
                  _watermark_arguments, _bench_watermark),
}


#: Bounds of the benchmarks' numeric options, by attribute name (each benchmark has some of them).
OPTION_BOUNDS = {"steps": (1, 1000), "resolution": (16, 1024), "batch_size": (1, 64), "samples": (1, 10_000),
                 "threads": (1, 256), "size": (16, 2048), "runs": (1, 100), "per_kind": (1, 1000),
                 "amount": (0, 512), "faces": (1, 100_000), "quality_masks": (0, 10_000)}


def check_arguments(args: argparse.Namespace) -> None:
    """Every benchmark's numbers and its --json path, before anything is loaded or measured."""
    from facemogle.cli import checks

    for name, (low, high) in OPTION_BOUNDS.items():
        if getattr(args, name, None) is not None:
            checks.int_in_range(f"--{name.replace('_', '-')}", getattr(args, name), low, high)
    if getattr(args, "seed", None) is not None:
        checks.seed("--seed", args.seed)
    if getattr(args, "prompt", None) is not None:
        from facemogle.pipeline import check_prompt

        check_prompt(args.prompt)
    if args.json:
        checks.output_file("--json", args.json, (".json",), make_folder=True)


def run(args: argparse.Namespace) -> int:
    _, _, measure = BENCHMARKS[args.bench]
    check_arguments(args)
    report = measure(args)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, text + "\n")
    sys.stdout.flush()
    return 0
