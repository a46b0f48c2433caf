"""``facemogle generate``: faces from a mask, a prompt, or both."""

from __future__ import annotations

import argparse
from pathlib import Path

from facemogle.cli.model_options import add_model_arguments, resolve_model
from facemogle.errors import InputError

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
                   help="classifier-free guidance on the mask (default: the model's: 1.0 = off for flux-dev, 2.0 for tiny)")
    p.add_argument("--size", type=int, default=None, help="output height and width in pixels (default: the model's)")
    p.add_argument("--num-images", type=int, default=1,
                   help=f"images to generate (1..{MAX_IMAGES}, made {BATCH} at a time); with more than one a grid is written too")
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
    checks.output_file("-o", args.output, make_folder=True)
    image_paths, grid_path = output_paths(args.output, args.num_images)
    checks.output_files("-o", image_paths + ([grid_path] if grid_path else []), make_folder=True)
    if args.mask is not None:  # decoded and checked (format, colours, ids) before the model loads
        from facemogle.masks import load_mask

        checks.input_file("--mask", args.mask)
        load_mask(args.mask, order=args.mask_order)


def run(args: argparse.Namespace) -> int:
    from facemogle.cli import checks
    from facemogle.provenance import mark_image
    from facemogle.specs import available_specs, load_pipeline

    if args.list_models:
        for name, description in available_specs().items():
            print(f"{name:12s} {description}")
        return 0
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
        mask_order=args.mask_order,
        watermark=not args.no_watermark,
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
