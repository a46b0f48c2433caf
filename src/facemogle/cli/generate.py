"""``facemogle generate``: faces from a mask, a prompt, or both."""

from __future__ import annotations

import argparse
from pathlib import Path

from facemogle.cli.model_options import add_model_arguments, resolve_model
from facemogle.errors import InputError
from facemogle.forward_cache import CONDITION_CACHE_HELP, STEP_CACHE_HELP

PAPER_SEED = 42
#: Most images one command makes (--num-images), and how many go through the model at once: memory
#: stays that of BATCH images whatever the request; image k is the same as in a single-image call.
MAX_IMAGES = 64
BATCH = 4


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate faces from a mask and/or a prompt",
        description="Generate faces from a semantic mask (any supported format), a text prompt, or both. "
        "Without --mask the face is generated from text alone (empty mask); without --prompt from the mask alone.",
    )
    p.add_argument("--mask", help="mask image (palette/greyscale ids or colour-rendered map)")
    p.add_argument("--prompt", default="", help="text prompt (default: none, mask-only generation)")
    p.add_argument("--mask-order", choices=["official", "bisenet"], default="official", help="label order of an id mask")
    p.add_argument("--list-models", action="store_true", help="list the model specs and exit")
    add_model_arguments(p)
    p.add_argument("--seed", type=int, default=PAPER_SEED, help=f"seed of the first image; image k gets seed+k (default {PAPER_SEED})")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None,
                   help="FLUX guidance scale (default: the model's: 3.5 for flux-dev, 1.0 for tiny)")
    p.add_argument("--mask-guidance", type=float, default=None,
                   help="classifier-free guidance on the mask (default: the model's: 1.0 = off for flux-dev, 4.0 for tiny)")
    p.add_argument("--text-only-guidance", type=float, default=None,
                   help="the guidance of text-only images (no --mask; default: the model's: --mask-guidance's for "
                        "flux-dev, 6.0 for tiny)")
    p.add_argument("--size", type=int, default=None, help="output height and width in pixels (default: the model's)")
    p.add_argument("--num-images", type=int, default=1,
                   help=f"images to generate (1..{MAX_IMAGES}, made {BATCH} at a time); with more than one a grid is written too")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--condition-cache", default="off", metavar="MODE",
                   help=f"fast, approximate: {CONDITION_CACHE_HELP} (default off; README, 'Speed')")
    p.add_argument("--step-cache", default="off", metavar="MODE",
                   help=f"fast, approximate: {STEP_CACHE_HELP} (default off)")
    p.add_argument("--no-watermark", action="store_true",
                   help="write the images without the invisible watermark and provenance metadata (see README: "
                   "images under 512 px are otherwise upscaled to 512 px to carry the mark)")
    p.add_argument("--mask-folder", metavar="DIR",
                   help="one face per mask of DIR (with --prompt for each), written to --output-folder as <mask name>.png; "
                        "seeds from --seed and each mask's name, images that exist are kept (a run resumes); "
                        "shards over `accelerate launch` processes (README, 'Sets across processes')")
    p.add_argument("--output-folder", metavar="DIR", help="with --mask-folder: where the faces go")
    p.add_argument("-o", "--output", default="out.png", help="output PNG (with --num-images K > 1: OUT-0.png .. and OUT-grid.png)")
    p.set_defaults(func=run)


def output_paths(output: str | Path, count: int) -> tuple[list[Path], Path | None]:
    """Where the images (and the grid, for several) go."""
    output = Path(output)
    if output.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise InputError(f"output {output} must end in .png, .jpg or .webp")
    if count == 1:
        return [output], None
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)], output.with_name(
        f"{output.stem}-grid{output.suffix}"
    )


def write_all(outputs: list) -> None:
    """Save every (image, path) or none (:class:`facemogle.files.AllOrNothing`): if a write fails
    or is interrupted, every destination keeps what it held before."""
    from facemogle.files import AllOrNothing
    from facemogle.provenance import save_image

    with AllOrNothing() as out:
        for image, path in outputs:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image(image, out.partial(path))


def image_grid(images, columns: int | None = None):
    """Paste equally sized PIL images into one grid image."""
    from PIL import Image

    columns = columns or min(len(images), 4)
    rows = (len(images) + columns - 1) // columns
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h))
    for i, img in enumerate(images):
        grid.paste(img, ((i % columns) * w, (i // columns) * h))
    return grid


def check_arguments(args: argparse.Namespace) -> None:
    """The numbers and the output path, before any model is loaded (the model checks the size's
    multiple and the prompt again)."""
    from facemogle.cli import checks

    checks.int_in_range("--num-images", args.num_images, 1, MAX_IMAGES)
    checks.sampling_options(args, seed_count=args.num_images)
    from facemogle.forward_cache import cache_policy

    policy = cache_policy(args.condition_cache, args.step_cache)
    if not policy.condition_stream and args.mask is not None:
        raise InputError("--condition-cache none runs no condition stream, so it takes no --mask")
    checks.output_file("-o", args.output, make_folder=True)
    image_paths, grid_path = output_paths(args.output, args.num_images)
    checks.output_files("-o", image_paths + ([grid_path] if grid_path else []), make_folder=True)
    if args.mask is not None:  # decoded and checked (format, colours, ids) before the model loads
        from facemogle.masks import load_mask

        checks.input_file("--mask", args.mask)
        load_mask(args.mask, order=args.mask_order)


def run_folder(args: argparse.Namespace) -> int:
    """``--mask-folder DIR --output-folder OUT``: one face per mask, shared among launched processes."""
    from facemogle.cli import checks
    from facemogle.distributed import processes
    from facemogle.eval.paper_protocol import GenerationSettings, ProtocolImage, generate_images
    from facemogle.files import IMAGE_EXTENSIONS, files_by_stem, natural_key
    from facemogle.masks import load_mask
    from facemogle.specs import get_spec, load_pipeline

    if args.mask is not None or args.num_images != 1 or args.output != "out.png":
        raise InputError("--mask-folder takes neither --mask, --num-images nor -o (the faces go to --output-folder)")
    if args.output_folder is None:
        raise InputError("--mask-folder needs --output-folder DIR")
    checks.sampling_options(args)
    from facemogle.forward_cache import cache_policy

    if not cache_policy(args.condition_cache, args.step_cache).condition_stream:
        raise InputError("--condition-cache none runs no condition stream, so it takes no --mask-folder")
    checks.input_folder("--mask-folder", args.mask_folder)
    out = Path(args.output_folder)
    if out.exists() and not out.is_dir():
        raise InputError(f"--output-folder {out} exists and is not a folder")
    masks = files_by_stem(Path(args.mask_folder), extensions=IMAGE_EXTENSIONS)
    if not masks:
        raise InputError(f"--mask-folder {args.mask_folder} holds no mask image ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    stems = sorted(masks, key=natural_key)
    for stem in stems:  # every mask decoded and checked before the model loads
        load_mask(masks[stem], order=args.mask_order)
    model, options = resolve_model(args)
    checks.size_fits_model(args.size, model)
    group = processes()
    if args.device:
        options["device"] = args.device
    elif group.device is not None:
        options["device"] = group.device

    size, steps, guidance = get_spec(model).inference or (None, None, None)  # None: the pipeline's defaults

    def given(value, default):
        return default if value is None else value

    images = [ProtocolImage(stem, None, masks[stem], args.prompt) for stem in stems]
    settings = GenerationSettings(model=model, steps=given(args.steps, steps), guidance=given(args.guidance, guidance),
                                  size=given(args.size, size), seed=args.seed, batch_size=BATCH)
    call_options = {"mask_order": args.mask_order, "condition_cache": args.condition_cache,
                    "step_cache": args.step_cache}
    if args.mask_guidance is not None:
        call_options["mask_guidance_scale"] = args.mask_guidance
    made = generate_images(lambda: load_pipeline(model, **options), images, "mask+text", settings, out, processes=group,
                           watermark=not args.no_watermark, call_options=call_options)
    group.wait()
    if group.count > 1:
        print(f"{out}: {len(made)} faces made by {group.describe()}")
    else:
        print(f"{out}: {len(made)} faces made, {len(stems) - len(made)} kept from an earlier run")
    return 0


def run(args: argparse.Namespace) -> int:
    from facemogle.cli import checks
    from facemogle.provenance import mark_image
    from facemogle.specs import available_specs, load_pipeline

    if args.list_models:
        for name, description in available_specs().items():
            print(f"{name:12s} {description}")
        return 0
    if args.mask_folder is not None:
        return run_folder(args)
    if args.output_folder is not None:
        raise InputError("--output-folder goes with --mask-folder")
    check_arguments(args)
    model, options = resolve_model(args)
    checks.size_fits_model(args.size, model)
    image_paths, grid_path = output_paths(args.output, args.num_images)

    if args.device:
        options["device"] = args.device
    pipe = load_pipeline(model, **options)
    call = dict(
        mask=args.mask,
        prompt=args.prompt,
        guidance_scale=args.guidance,
        mask_guidance_scale=args.mask_guidance,
        text_only_guidance_scale=args.text_only_guidance,
        mask_order=args.mask_order,
        watermark=not args.no_watermark,
        condition_cache=args.condition_cache,
        step_cache=args.step_cache,
    )
    if args.steps is not None:
        call["num_inference_steps"] = args.steps
    if args.size is not None:
        call.update(height=args.size, width=args.size)
    images = []
    for first in range(0, args.num_images, BATCH):  # image k: seed + k, whatever the batch
        count = min(BATCH, args.num_images - first)
        images += pipe(**call, num_images_per_prompt=count, seed=[args.seed + first + k for k in range(count)]).images

    outputs = list(zip(images, image_paths))
    if grid_path is not None:
        grid = image_grid(images)
        if not args.no_watermark:
            grid = mark_image(grid, pipe.model_spec, {"grid_of": [str(p) for p in image_paths]})
        outputs.append((grid, grid_path))
    write_all(outputs)
    for _, path in outputs:
        print(path)
    return 0
