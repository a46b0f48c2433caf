"""``facemogle mask``: look at and convert face masks.

* ``facemogle mask show MASK -o OUT.png``: the colour render with a legend of the classes present
  (swatch, official id, name, share of the pixels).
* ``facemogle mask convert MASK -o OUT.png --to ids|color``: rewrite a mask in any accepted format
  as a palette PNG of official ids (what dataset files look like) or as a colour render.

``--from-order bisenet`` reads id masks in the face-parsing.PyTorch / BiSeNet order.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from facemogle.errors import InputError
from facemogle.files import atomic_write
from facemogle.labels import CLASS_NAMES, LABEL_ORDERS, PALETTE
from facemogle.masks import DEFAULT_MAX_COLOR_DISTANCE, class_fractions, load_mask, render_mask, save_mask

LEGEND_FONT_SIZE = 16
LEGEND_MARGIN = 12
LEGEND_ROW_GAP = 6
LEGEND_SWATCH = 18
LEGEND_TEXT = (0, 0, 0)
LEGEND_BACKGROUND = (255, 255, 255)
SWATCH_OUTLINE = (96, 96, 96)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mask",
        help="show or convert a face mask",
        description="Show a face mask with a legend, or convert it to a palette PNG of ids or a colour render.",
    )
    actions = parser.add_subparsers(dest="mask_command", metavar="ACTION", required=True)

    show = actions.add_parser("show", help="render a mask with a legend of the classes present")
    _add_common_arguments(show, output_help="legend image to write (.png)")

    convert = actions.add_parser("convert", help="rewrite a mask as official ids or as a colour render")
    _add_common_arguments(convert, output_help="mask to write (.png)")
    convert.add_argument(
        "--to",
        choices=("ids", "color"),
        required=True,
        help="ids: palette PNG of official class ids (dataset format); color: RGB colour render",
    )
    parser.set_defaults(func=run)


def _add_common_arguments(parser: argparse.ArgumentParser, *, output_help: str) -> None:
    parser.add_argument("mask", metavar="MASK", help="mask file: palette/greyscale ids or a colour render (PNG)")
    parser.add_argument("-o", "--output", metavar="OUT.png", required=True, type=Path, help=output_help)
    parser.add_argument(
        "--from-order",
        choices=LABEL_ORDERS,
        default="official",
        help="label order of an id mask (default: official CelebAMask-HQ; bisenet: face-parsing.PyTorch)",
    )
    parser.add_argument(
        "--max-color-distance",
        type=float,
        default=DEFAULT_MAX_COLOR_DISTANCE,
        metavar="D",
        help="colour masks: snap colours at most D (per channel) from a palette colour "
        f"(default {DEFAULT_MAX_COLOR_DISTANCE}; 255 accepts lossy JPEGs, snapping every colour)",
    )


def run(args: argparse.Namespace) -> int:
    from facemogle.cli import checks

    checks.input_file("MASK", args.mask)
    checks.output_file("-o", args.output, (".png",), make_folder=True)
    checks.finite("--max-color-distance", args.max_color_distance, 0.0, 255.0)
    ids = load_mask(args.mask, order=args.from_order, max_color_distance=args.max_color_distance)
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        if args.mask_command == "show":
            legend = legend_image(ids)
            atomic_write(args.output, lambda tmp: legend.save(tmp, format="PNG"))
        else:
            save_mask(ids, args.output, to=args.to)
    except OSError as err:  # e.g. a read-only folder, a full disk
        raise InputError(f"cannot write {args.output}: {err.strerror or err}") from err
    print(f"wrote {args.output}" + (f" ({args.to})" if args.mask_command == "convert" else ""))
    return 0


def _legend_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=LEGEND_FONT_SIZE)  # scalable when Pillow has FreeType
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def legend_image(ids: np.ndarray) -> Image.Image:
    """Colour render of ``ids`` (H, W) with, on its right, one legend row per class present:
    colour swatch, official id, class name, share of the pixels."""
    render = Image.fromarray(render_mask(ids))
    fractions = class_fractions(ids)
    font = _legend_font()
    title = "classes present (id, name, area)"
    columns = [  # (texts, right-aligned?)
        ([str(class_id) for class_id in fractions], True),
        ([CLASS_NAMES[class_id] for class_id in fractions], False),
        ([f"{100 * share:.1f}%" for share in fractions.values()], True),
    ]

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        box = measure.textbbox((0, 0), text, font=font)
        return box[2], box[3]

    column_widths = [max(text_size(text)[0] for text in texts) for texts, _ in columns]
    text_height = max(text_size(text)[1] for texts, _ in columns for text in [title, *texts])
    row_height = max(LEGEND_SWATCH, text_height) + LEGEND_ROW_GAP
    rows_width = LEGEND_SWATCH + sum(LEGEND_MARGIN + width for width in column_widths)
    legend_width = 2 * LEGEND_MARGIN + max(rows_width, text_size(title)[0])
    legend_height = 2 * LEGEND_MARGIN + row_height * (len(fractions) + 1)

    canvas = Image.new("RGB", (render.width + legend_width, max(render.height, legend_height)), LEGEND_BACKGROUND)
    canvas.paste(render, (0, 0))
    draw = ImageDraw.Draw(canvas)
    left = render.width + LEGEND_MARGIN
    draw.text((left, LEGEND_MARGIN), title, fill=LEGEND_TEXT, font=font)
    for row_index, class_id in enumerate(fractions):
        top = LEGEND_MARGIN + (row_index + 1) * row_height
        draw.rectangle(
            (left, top, left + LEGEND_SWATCH - 1, top + LEGEND_SWATCH - 1),
            fill=PALETTE[class_id],
            outline=SWATCH_OUTLINE,
        )
        x = left + LEGEND_SWATCH
        for (texts, right_aligned), width in zip(columns, column_widths):
            x += LEGEND_MARGIN
            text = texts[row_index]
            offset = width - text_size(text)[0] if right_aligned else 0
            draw.text((x + offset, top), text, fill=LEGEND_TEXT, font=font)
            x += width
    return canvas
