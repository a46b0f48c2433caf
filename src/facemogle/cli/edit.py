"""``facemogle edit``: change regions of your own photo through its mask, keep every other pixel."""

from __future__ import annotations

import argparse
from pathlib import Path

from facemogle.cli.model_options import add_model_arguments, resolve_model
from facemogle.files import AllOrNothing
from facemogle.labels import class_ids

OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: Largest --grow (photo pixels).
MAX_GROW = 1024


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "edit", help="edit a photo through its mask (regenerate changed regions, keep the rest)",
        description="Regenerate the parts of PHOTO where the edited --mask differs from the photo's own mask "
        "(--source-mask, default: the shipped parser's reading of the photo), plus any --regions, grown by "
        "--grow pixels. Every pixel outside that region is the photo's own.")
    p.add_argument("photo", type=Path, help="the photo to edit (any size)")
    p.add_argument("--mask", type=Path, required=True, help="the edited mask (any supported format), same aspect ratio")
    p.add_argument("--source-mask", type=Path, default=None, help="the photo's own mask (default: parsed from the photo)")
    p.add_argument("--regions", default=None, metavar="NAMES",
                   help="comma-separated class names to regenerate wherever either mask has them, e.g. hair,hat")
    p.add_argument("--grow", type=int, default=None,
                   help="pixels the region is grown by (default: facemogle.editing.DEFAULT_GROW, 12)")
    p.add_argument("--strength", type=float, default=1.0,
                   help="1 = redraw the region from noise; lower keeps more of the photo (0 = no change; default 1)")
    p.add_argument("--prompt", default="", help="text prompt (default: none)")
    p.add_argument("--mask-order", choices=["official", "bisenet"], default="official", help="label order of id masks")
    add_model_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="FLUX guidance scale (default: the model's)")
    p.add_argument("--mask-guidance", type=float, default=None, help="mask guidance (default: the model's)")
    p.add_argument("--size", type=int, default=None, help="longer side the model works at (default: the model's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--show-region", type=Path, default=None, metavar="REGION.png",
                   help="also write the region it regenerates (white) as a PNG")
    p.add_argument("--no-watermark", action="store_true",
                   help="no invisible watermark / provenance metadata: then every pixel outside the region is the photo's own")
    p.add_argument("-o", "--output", type=Path, required=True, help="the edited photo (.png, .jpg or .webp)")
    p.set_defaults(func=run)


def check_arguments(args: argparse.Namespace) -> None:
    """Every argument and file, before any model is loaded (facemogle.cli.checks)."""
    from facemogle.cli import checks

    checks.input_file("photo", args.photo)
    checks.input_file("--mask", args.mask)
    if args.source_mask is not None:
        checks.input_file("--source-mask", args.source_mask)
    outputs = [checks.output_file("-o", args.output, OUTPUT_SUFFIXES)]
    if args.show_region is not None:
        outputs.append(checks.output_file("--show-region", args.show_region, (".png",)))
    checks.output_files("-o/--show-region", outputs)
    checks.finite("--strength", args.strength, 0.0, 1.0)
    if args.grow is not None:
        checks.int_in_range("--grow", args.grow, 0, MAX_GROW)
    class_ids(args.regions)
    checks.sampling_options(args)


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from facemogle.provenance import save_image
    from facemogle.specs import load_pipeline

    from facemogle.editing import plan_edit

    check_arguments(args)
    model, options = resolve_model(args)
    grow = {} if args.grow is None else {"grow": args.grow}
    plan = plan_edit(args.photo, args.mask, source_mask=args.source_mask, regions=args.regions,
                     mask_order=args.mask_order, **grow)  # every input checked before the model loads
    if args.device:
        options["device"] = args.device
    pipe = load_pipeline(model, **options)
    out = pipe.edit(plan.photo, plan.edited, source_mask=plan.source, regions=args.regions, prompt=args.prompt,
                    strength=args.strength, seed=args.seed, size=args.size, **grow,
                    num_inference_steps=args.steps, guidance_scale=args.guidance,
                    mask_guidance_scale=args.mask_guidance, watermark=not args.no_watermark)
    with AllOrNothing() as files:  # the photo and the region, both or neither
        save_image(out.images[0], files.partial(args.output))
        if args.show_region is not None:
            Image.fromarray(out.region.astype("uint8") * 255).save(files.partial(args.show_region), format="PNG")
    if args.show_region is not None:
        print(args.show_region)
    print(args.output)
    return 0
