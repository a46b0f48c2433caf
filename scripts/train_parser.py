#!/usr/bin/env python
"""Train the shipped face parser (``facemogle.parser.FaceParser``) on a CelebAMask-HQ-style folder.

A command-line wrapper: the flags fill a ``facemogle.parser.TrainingSettings`` (same names, ``-`` as
``_``, same defaults) and ``facemogle.parser.train_parser`` runs the recipe; its module docstring
(``facemogle/parser/training.py``) describes what a run does. ``make parser`` chains the four runs that
made the shipped weights (``src/facemogle/weights/parser``; its ``MODEL_CARD.md`` lists each command).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facemogle.errors import CheckpointError
from facemogle.labels import CLASS_NAMES
from facemogle.parser.training import DICE_CLASSES, WEIGHTS_DTYPES, TrainingSettings, recipe_command, train_parser

DEFAULTS = TrainingSettings()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = DEFAULTS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=d.data)
    p.add_argument("--output", type=Path, default=d.output)
    p.add_argument("--work-dir", type=Path, default=d.work_dir)
    p.add_argument("--resume", action="store_true", help="continue from WORK_DIR/checkpoint.pt")
    p.add_argument("--init-from", type=Path, default=d.init_from,
                   help="start from the weights of a saved parser (a previous run's --output); its architecture is kept")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads for training")
    p.add_argument("--num-val", type=int, default=d.num_val)
    p.add_argument("--split-salt", default=d.split_salt)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--max-train-minutes", type=float, default=d.max_train_minutes, help="stop early (sanity runs)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--dice-weight", type=float, default=d.dice_weight)
    p.add_argument("--dice-classes", choices=DICE_CLASSES, default=d.dice_classes,
                   help="classes the Dice term averages over: all, or those present in the batch")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=d.bf16, help="bf16 autocast")
    p.add_argument("--block-channels", type=int, nargs="+", default=d.block_channels)
    p.add_argument("--convs-per-block", type=int, default=d.convs_per_block)
    p.add_argument("--sample-size", type=int, default=d.sample_size)
    p.add_argument("--max-rotation", type=float, default=d.max_rotation, help="degrees")
    p.add_argument("--max-scale", type=float, default=d.max_scale)
    p.add_argument("--max-shift", type=float, default=d.max_shift, help="fraction of the half-width")
    p.add_argument("--color-jitter", type=float, default=d.color_jitter)
    p.add_argument("--greyscale-prob", type=float, default=d.greyscale_prob)
    p.add_argument("--rare-class-threshold", type=float, default=d.rare_class_threshold,
                   help="repeat-factor sampling: an image's draw weight is max(1, sqrt(T / f)) over its classes, "
                        "f = fraction of training images holding the class (0 = plain shuffling)")
    p.add_argument("--copy-paste-classes", nargs="*", default=d.copy_paste_classes, choices=CLASS_NAMES, metavar="CLASS",
                   help="paste objects of these classes (names, e.g. necklace) from other training images (Simple Copy-Paste)")
    p.add_argument("--copy-paste-prob", type=float, default=d.copy_paste_prob,
                   help="fraction of batch images that get a pasted object")
    p.add_argument("--copy-paste-min-pixels", type=int, default=d.copy_paste_min_pixels,
                   help="smallest object pasted, in pixels at sample size")
    p.add_argument("--test-time-sizes", type=int, nargs="*", default=d.test_time_sizes,
                   help="extra input sizes parse averages over (multi-scale testing; saved in the config; "
                        "default: none from scratch, as loaded with --init-from)")
    p.add_argument("--lovasz-weight", type=float, default=d.lovasz_weight, help="add this x Lovasz-softmax loss (0 = off)")
    p.add_argument("--lovasz-stride", type=int, default=d.lovasz_stride, help="Lovasz loss on every N-th pixel per direction")
    p.add_argument("--swa-epochs", type=int, default=d.swa_epochs,
                   help="stochastic weight averaging: average the weights at the end of each of the last N epochs "
                        "(run at the constant lr x --swa-lr-factor), then re-estimate BatchNorm statistics")
    p.add_argument("--swa-lr-factor", type=float, default=d.swa_lr_factor, help="learning-rate factor of the averaging epochs")
    p.add_argument("--val-every", type=int, default=d.val_every, help="quick val IoU every N epochs")
    p.add_argument("--weights-dtype", choices=WEIGHTS_DTYPES, default=d.weights_dtype, help="storage dtype")
    p.add_argument("--no-final", action="store_true", help="skip save/evaluate/card (sanity runs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    settings = TrainingSettings(**vars(parse_args(argv)))
    recipe_args = [a for a in (argv or sys.argv[1:]) if a != "--resume"]  # resuming does not change the result
    try:
        train_parser(settings, command=recipe_command(recipe_args))
    except CheckpointError as err:  # e.g. --init-from a BiSeNet .pth
        sys.exit(f"train_parser.py: error: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
