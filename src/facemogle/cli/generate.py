"""``facemogle generate``: faces from a mask, a prompt, or both."""

from __future__ import annotations

import argparse
from pathlib import Path

from facemogle.cli.model_options import add_model_arguments, resolve_model
from facemogle.errors import InputError

PAPER_SEED = 42


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
                   help="classifier-free guidance on the mask (default: the model's: 1.0 = off for flux-dev, 3.0 for tiny)")
    p.add_argument("--size", type=int, default=None, help="output height and width in pixels (default: the model's)")
    p.add_argument("--num-images", type=int, default=1, help="images to generate; with more than one a grid is written too")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--no-watermark", action="store_true",
                   help="write the images without the invisible watermark and provenance metadata (see README: "
                   "images under 512 px are otherwise upscaled to 512 px to carry the mark)")
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
    import math

    from facemogle.masks import MAX_GENERATION_SIDE
    from facemogle.pipeline import MAX_STEPS, check_prompt
    from facemogle.specs import check_device

    if args.num_images < 1:
        raise InputError(f"--num-images must be >= 1, got {args.num_images}")
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
        raise InputError(f"--steps must be in 1..{MAX_STEPS}, got {args.steps}")
    if args.size is not None and not 16 <= args.size <= MAX_GENERATION_SIDE:
        raise InputError(f"--size must be in 16..{MAX_GENERATION_SIDE} pixels, got {args.size}")
    for name in ("guidance", "mask_guidance"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise InputError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    check_prompt(args.prompt)
    if args.device:
        check_device(args.device)
    if not 0 <= args.seed < 2**64:
        raise InputError(f"--seed must be in [0, 2**64), got {args.seed}")
    output = Path(args.output)
    if output.is_dir():
        raise InputError(f"-o {output} is a folder; give an image file name")
    if output.parent.exists() and not output.parent.is_dir():
        raise InputError(f"-o {output}: {output.parent} is not a folder")


def run(args: argparse.Namespace) -> int:
    from facemogle.provenance import mark_image, save_image
    from facemogle.specs import available_specs, load_pipeline

    if args.list_models:
        for name, description in available_specs().items():
            print(f"{name:12s} {description}")
        return 0
    check_arguments(args)
    model, options = resolve_model(args)
    if args.mask is not None and not Path(args.mask).is_file():
        raise InputError(f"mask file {args.mask} does not exist")
    image_paths, grid_path = output_paths(args.output, args.num_images)

    if args.device:
        options["device"] = args.device
    pipe = load_pipeline(model, **options)
    call = dict(
        mask=args.mask,
        prompt=args.prompt,
        num_images_per_prompt=args.num_images,
        seed=args.seed,
        guidance_scale=args.guidance,
        mask_guidance_scale=args.mask_guidance,
        mask_order=args.mask_order,
        watermark=not args.no_watermark,
    )
    if args.steps is not None:
        call["num_inference_steps"] = args.steps
    if args.size is not None:
        call.update(height=args.size, width=args.size)
    images = pipe(**call).images

    for img, path in zip(images, image_paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(img, path)
        print(path)
    if grid_path is not None:
        grid = image_grid(images)
        if not args.no_watermark:
            grid = mark_image(grid, pipe.model_spec, {"grid_of": [str(p) for p in image_paths]})
        save_image(grid, grid_path)
        print(grid_path)
    return 0
