#!/usr/bin/env python
"""Train the shipped face parser (``facemogle.eval.parser.FaceParser``) on a CelebAMask-HQ-style folder.

The shipped weights (``src/facemogle/weights/parser``) come from four runs of this script, which
``make parser`` chains (CPU, one thread, about 3 h): 50 epochs from scratch; then fine-tuning
stages, each from the previous one's weights (``--init-from``, a fresh warm-up + cosine schedule):
repeat-factor sampling so that images with rare classes (necklace, hat, eyeglasses) are drawn about
twice as often (``--rare-class-threshold``), Dice over the classes present in each batch
(``--dice-classes present``), and last a Lovasz-softmax term (``--lovasz-weight``) with copy-paste
of rare objects from other training photos (``--copy-paste-classes``), saved with multi-scale
testing (``--test-time-sizes``). The model card lists every stage's command. (``--swa-epochs``,
weight averaging, measured +0.002 after the Dice stage and nothing after the Lovasz one; it is not
in the shipped recipe. ``--epochs 0`` re-packages a parser with new inference settings and measures
it again.)

What it does:

1. Splits the folder's stems with ``facemogle.data.splits`` (``--num-val`` val images, hash rule) and
   writes the split to ``WORK_DIR/split.json``.
2. Decodes every training pair once at the model's ``sample_size`` (photos with the parser's own
   ``resize_photo``, masks with nearest neighbour) and keeps them in memory as uint8.
3. Trains (from scratch, or from ``--init-from``) with batch-level augmentation in torch (optional
   copy-paste of rare objects, horizontal flip with left/right class swap,
   small rotation/scale/shift, brightness/contrast/saturation jitter, rare greyscale), loss =
   cross-entropy + soft Dice (+ Lovasz-softmax), AdamW, one warm-up epoch then a cosine decay to
   zero (or, with weight averaging, to a constant held for the averaged epochs; the BatchNorm
   statistics of the averaged weights are re-estimated on the training photos); bf16 autocast
   where the CPU supports it. Seeded: the same command gives the same weights on the same machine.
4. Checkpoints every epoch to ``WORK_DIR/checkpoint.pt`` (``--resume`` continues from it).
5. Saves the final weights with ``save_pretrained`` to ``--output``, re-loads them with
   ``load_parser``, measures validation IoU with ``evaluate_parser`` (full resolution) and the CPU
   time of ``parse`` on one 512 x 512 photo, and writes ``MODEL_CARD.md`` + ``metrics.json`` there.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from facemogle.data.splits import DEFAULT_NUM_VAL, DEFAULT_SALT, SPLIT_RULE, split_folder, write_split
from facemogle.eval.parser import (
    FaceParser,
    evaluate_parser,
    find_image,
    iou_per_class,
    confusion_matrix,
    load_parser,
    mirrored_class_ids,
    resize_photo,
)
from facemogle.labels import CLASS_NAMES, NUM_CLASSES, class_id
from facemogle.masks import load_mask

CHECKPOINT_NAME = "checkpoint.pt"
SPLIT_NAME = "split.json"
TIMING_PHOTO_SIZE = 512
TIMING_THREADS = (1, 2)
TIMING_REPEATS = 10


def flip_lut() -> torch.Tensor:
    """``lut[id]`` = the id after a horizontal flip (left/right eye, eyebrow and ear swapped)."""
    return mirrored_class_ids()


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def load_pairs(data_dir: Path, stems: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, size, size, 3) uint8 photos and (N, size, size) uint8 official ids."""
    photos = np.empty((len(stems), size, size, 3), dtype=np.uint8)
    masks = np.empty((len(stems), size, size), dtype=np.uint8)
    for index, stem in enumerate(tqdm(stems, desc="decoding", mininterval=5, file=sys.stdout)):
        with Image.open(find_image(data_dir / "images", stem)) as photo:
            photos[index] = resize_photo(photo, size)
        ids = load_mask(data_dir / "masks" / f"{stem}.png")
        masks[index] = np.asarray(Image.fromarray(ids).resize((size, size), Image.NEAREST))
    return torch.from_numpy(photos), torch.from_numpy(masks)


def augment(
    photos: torch.Tensor, masks: torch.Tensor, args: argparse.Namespace, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, S, 3) uint8 + (B, S, S) uint8 -> (B, 3, S, S) float in [-1, 1] + (B, S, S) int64."""
    batch = photos.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator)

    images = photos.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, S, S)
    labels = masks.long()  # (B, S, S)

    flip = torch.rand(batch, generator=generator) < 0.5
    images[flip] = images[flip].flip(-1)
    labels[flip] = FLIP_LUT[labels[flip].flip(-1)]

    # Rotation / scale / shift; theta maps output coordinates to input coordinates.
    angle = torch.deg2rad(uniform(-args.max_rotation, args.max_rotation))
    zoom = torch.exp(uniform(-math.log(args.max_scale), math.log(args.max_scale)))
    shift = torch.stack([uniform(-args.max_shift, args.max_shift), uniform(-args.max_shift, args.max_shift)], 1)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (B, S, S, 2)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    labels = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="reflection", align_corners=False)
    labels = labels[:, 0].round().long()

    # Colour: brightness, contrast, saturation, occasional greyscale.
    grey = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)  # (B, 1, S, S)
    saturation = uniform(1 - args.color_jitter, 1 + args.color_jitter).view(batch, 1, 1, 1)
    saturation[torch.rand(batch, generator=generator) < args.greyscale_prob] = 0.0
    images = grey + saturation * (images - grey)
    contrast = uniform(1 - args.color_jitter, 1 + args.color_jitter).view(batch, 1, 1, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = mean + contrast * (images - mean)
    images = images * uniform(1 - args.color_jitter, 1 + args.color_jitter).view(batch, 1, 1, 1)
    images = images.clamp(0.0, 1.0) * 2.0 - 1.0
    return images, labels


FLIP_LUT = flip_lut()


def copy_paste_pool(masks: torch.Tensor, class_ids: list[int], min_pixels: int) -> dict[int, list[int]]:
    """class id -> indices of the training images in which that class covers at least ``min_pixels``
    pixels: the objects ``copy_paste`` may paste (classes with none are left out). masks: (N, S, S) uint8 ids."""
    counts = torch.stack([torch.bincount(m.reshape(-1).long(), minlength=NUM_CLASSES) for m in masks])  # (N, C)
    pool = {c: torch.nonzero(counts[:, c] >= min_pixels)[:, 0].tolist() for c in class_ids}
    return {c: images for c, images in pool.items() if images}


def copy_paste(
    photos: torch.Tensor,
    masks: torch.Tensor,
    source_photos: torch.Tensor,
    source_masks: torch.Tensor,
    pool: dict[int, list[int]],
    probability: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Simple Copy-Paste (Ghiasi et al., CVPR 2021) for rare classes: with ``probability``, each image
    gets one object pasted where it was in its own photo, mirrored half the time (left/right classes
    swapped then): a class drawn uniformly from ``pool``, then one of that class's images; the
    object's pixels take that photo's colours and the class.

    CelebA-HQ faces are aligned, so an object's own place (a necklace below the chin, glasses over the
    eyes, a hat above the forehead) is a plausible place on another face. Hard edges, no blending.
    photos (B, S, S, 3) uint8 and masks (B, S, S) uint8 are the batch; source_* the whole training set.
    Returns new tensors; the inputs are not modified.
    """
    photos, masks = photos.clone(), masks.clone()
    classes = sorted(pool)
    for i in range(len(photos)):
        if not classes or torch.rand((), generator=generator) >= probability:
            continue
        class_index = classes[int(torch.randint(len(classes), (), generator=generator))]
        images = pool[class_index]
        source = images[int(torch.randint(len(images), (), generator=generator))]
        region = source_masks[source] == class_index  # (S, S)
        pixels = source_photos[source]  # (S, S, 3)
        label = class_index
        if torch.rand((), generator=generator) < 0.5:  # mirrored: a left eye would become a right eye
            region, pixels, label = region.flip(-1), pixels.flip(-2), int(FLIP_LUT[class_index])
        photos[i][region] = pixels[region]
        masks[i][region] = label
    return photos, masks


# --------------------------------------------------------------------------------------------
# Loss, schedule, quick validation
# --------------------------------------------------------------------------------------------


def lovasz_softmax_loss(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovasz-softmax (Berman et al., CVPR 2018): a convex surrogate of 1 - IoU, per class over the batch.

    For each class c present in ``labels``, the pixel errors |[y = c] - p_c| are sorted in decreasing
    order and weighted by the increments of the Jaccard loss along that order (the gradient of its
    Lovasz extension); the loss is the mean over those classes. probabilities (B, C, H, W) softmax
    output, labels (B, H, W) int64.
    """
    num_classes = probabilities.shape[1]
    flat = probabilities.permute(0, 2, 3, 1).reshape(-1, num_classes)  # (P, C)
    flat_labels = labels.reshape(-1)  # (P,)
    losses = []
    for c in torch.unique(flat_labels).tolist():
        foreground = (flat_labels == c).to(flat.dtype)  # (P,)
        errors, order = torch.sort((foreground - flat[:, c]).abs(), descending=True)
        foreground = foreground[order]
        total = foreground.sum()
        jaccard = 1.0 - (total - foreground.cumsum(0)) / (total + (1.0 - foreground).cumsum(0))  # (P,)
        increments = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(errors, increments))
    return torch.stack(losses).mean()


def segmentation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    dice_weight: float,
    dice_classes: str = "all",
    lovasz_weight: float = 0.0,
    lovasz_stride: int = 2,
) -> torch.Tensor:
    """Cross-entropy + ``dice_weight`` x (1 - soft Dice averaged over classes, pooled over the batch)
    + ``lovasz_weight`` x Lovasz-softmax.

    The Lovasz term is taken on every ``lovasz_stride``-th pixel in each direction: its sorts dominate
    the cost, and the logits are upsampled from half resolution, so stride 2 loses little.

    ``dice_classes="all"`` averages the Dice of every class; ``"present"`` only of the classes the
    batch's labels hold. With "all", a class absent from the batch still scores
    1 / (sum of its probabilities + 1), which pushes rare classes (necklace) down in almost every batch.

    logits (B, C, S, S) float32, labels (B, S, S) int64. The Dice terms are gathered per class with
    ``index_add`` / ``bincount`` instead of a one-hot tensor (same value, far less memory traffic).
    """
    num_classes = logits.shape[1]
    log_probabilities = logits.log_softmax(dim=1)  # (B, C, S, S)
    loss = F.nll_loss(log_probabilities, labels)  # cross-entropy
    probabilities = log_probabilities.exp()
    if lovasz_weight:
        step = lovasz_stride
        loss = loss + lovasz_weight * lovasz_softmax_loss(probabilities[:, :, ::step, ::step], labels[:, ::step, ::step])
    if dice_weight == 0:
        return loss
    flat_labels = labels.reshape(-1)
    true_class_probability = probabilities.gather(1, labels[:, None]).reshape(-1)  # (B*S*S,)
    intersection = torch.zeros(num_classes).index_add(0, flat_labels, true_class_probability)  # (C,)
    target_count = torch.bincount(flat_labels, minlength=num_classes).to(probabilities.dtype)  # (C,)
    total = probabilities.sum(dim=(0, 2, 3)) + target_count  # (C,)
    dice = (2.0 * intersection + 1.0) / (total + 1.0)
    if dice_classes == "present":
        dice = dice[target_count > 0]
    return loss + dice_weight * (1.0 - dice.mean())


def repeat_factors(masks: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N,) draw weight per training image: max over the classes it holds of max(1, sqrt(threshold / f_c)).

    ``f_c`` is the fraction of images holding class c (LVIS-style repeat-factor sampling), so images
    with rare classes (necklace, hat, eyeglasses) are drawn more often. masks: (N, S, S) uint8 ids.
    """
    present = torch.stack([torch.bincount(m.reshape(-1).long(), minlength=NUM_CLASSES) > 0 for m in masks])  # (N, C)
    fraction = present.float().mean(0).clamp_min(1.0 / len(masks))  # (C,)
    per_class = (threshold / fraction).sqrt().clamp_min(1.0)  # (C,)
    return torch.where(present, per_class, torch.zeros(())).amax(1).clamp_min(1.0)  # (N,)


def epoch_order(num_images: int, weights: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """One epoch of training indices: a permutation, or ``num_images`` weighted draws with replacement."""
    if weights is None:
        return torch.randperm(num_images, generator=generator)
    return torch.multinomial(weights, num_images, replacement=True, generator=generator)


def lr_factor(step: int, warmup_steps: int, total_steps: int, final: float = 0.0, constant_steps: int = 0) -> float:
    """Linear warm-up, cosine decay from 1 to ``final``, then ``final`` for the last ``constant_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - constant_steps - warmup_steps)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class WeightAverage:
    """Equal-weight running mean of a model's parameters (stochastic weight averaging, Izmailov et al. 2018)."""

    def __init__(self, state: dict | None = None):
        self.mean: dict[str, torch.Tensor] = dict(state["mean"]) if state else {}
        self.count: int = int(state["count"]) if state else 0

    def update(self, model: torch.nn.Module) -> None:
        self.count += 1
        for name, parameter in model.named_parameters():
            value = parameter.detach().float().clone()
            if name in self.mean:
                value = self.mean[name] + (value - self.mean[name]) / self.count
            self.mean[name] = value

    def state_dict(self) -> dict:
        return {"mean": self.mean, "count": self.count}

    def copy_to(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                parameter.copy_(self.mean[name])


@torch.no_grad()
def recompute_batch_norm(model: FaceParser, photos: torch.Tensor, batch_size: int) -> None:
    """Re-estimate every BatchNorm's running mean/variance as a plain average over ``photos`` (N, S, S, 3) uint8.

    Averaged weights need their own statistics: those kept during training belong to the last weights.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches
    was_training = model.training
    model.train()
    for start in range(0, len(photos), batch_size):
        model(FaceParser.normalize(photos[start : start + batch_size].permute(0, 3, 1, 2)))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.train(was_training)


@torch.no_grad()
def quick_val_iou(model: FaceParser, photos: torch.Tensor, masks: torch.Tensor, batch_size: int) -> np.ndarray:
    """Per-class IoU at the model's sample size (cheap progress signal; the card uses evaluate_parser)."""
    model.eval()
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for start in range(0, len(photos), batch_size):
        pixels = FaceParser.normalize(photos[start : start + batch_size].permute(0, 3, 1, 2))
        predicted = model(pixels, output_size=tuple(masks.shape[-2:])).argmax(1)
        confusion += confusion_matrix(predicted.numpy(), masks[start : start + batch_size].numpy())
    model.train()
    return iou_per_class(confusion)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data/celebamask-hq-mini"))
    p.add_argument("--output", type=Path, default=Path("src/facemogle/weights/parser"))
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/facemogle-parser"))
    p.add_argument("--resume", action="store_true", help="continue from WORK_DIR/checkpoint.pt")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from the weights of a saved parser (a previous run's --output); its architecture is kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for training")
    p.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL)
    p.add_argument("--split-salt", default=DEFAULT_SALT)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--max-train-minutes", type=float, default=None, help="stop early (sanity runs)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--dice-weight", type=float, default=1.0)
    p.add_argument("--dice-classes", choices=("all", "present"), default="all",
                   help="classes the Dice term averages over: all, or those present in the batch")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast")
    p.add_argument("--block-channels", type=int, nargs="+", default=[24, 48, 96, 160, 256])
    p.add_argument("--convs-per-block", type=int, default=2)
    p.add_argument("--sample-size", type=int, default=256)
    p.add_argument("--max-rotation", type=float, default=12.0, help="degrees")
    p.add_argument("--max-scale", type=float, default=1.15)
    p.add_argument("--max-shift", type=float, default=0.06, help="fraction of the half-width")
    p.add_argument("--color-jitter", type=float, default=0.25)
    p.add_argument("--greyscale-prob", type=float, default=0.05)
    p.add_argument("--rare-class-threshold", type=float, default=0.0,
                   help="repeat-factor sampling: an image's draw weight is max(1, sqrt(T / f)) over its classes, "
                        "f = fraction of training images holding the class (0 = plain shuffling)")
    p.add_argument("--copy-paste-classes", nargs="*", default=[], choices=CLASS_NAMES, metavar="CLASS",
                   help="paste objects of these classes (names, e.g. necklace) from other training images (Simple Copy-Paste)")
    p.add_argument("--copy-paste-prob", type=float, default=0.5, help="fraction of batch images that get a pasted object")
    p.add_argument("--copy-paste-min-pixels", type=int, default=16, help="smallest object pasted, in pixels at sample size")
    p.add_argument("--test-time-sizes", type=int, nargs="*", default=None,
                   help="extra input sizes parse averages over (multi-scale testing; saved in the config; "
                        "default: none from scratch, as loaded with --init-from)")
    p.add_argument("--lovasz-weight", type=float, default=0.0, help="add this x Lovasz-softmax loss (0 = off)")
    p.add_argument("--lovasz-stride", type=int, default=2, help="Lovasz loss on every N-th pixel per direction")
    p.add_argument("--swa-epochs", type=int, default=0,
                   help="stochastic weight averaging: average the weights at the end of each of the last N epochs "
                        "(run at the constant lr x --swa-lr-factor), then re-estimate BatchNorm statistics")
    p.add_argument("--swa-lr-factor", type=float, default=0.25, help="learning-rate factor of the averaging epochs")
    p.add_argument("--val-every", type=int, default=5, help="quick val IoU every N epochs")
    p.add_argument("--weights-dtype", choices=("float16", "float32"), default="float16", help="storage dtype")
    p.add_argument("--no-final", action="store_true", help="skip save/evaluate/card (sanity runs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    recipe_args = [a for a in (argv or sys.argv[1:]) if a != "--resume"]  # resuming does not change the result
    command = "python scripts/train_parser.py " + " ".join(shlex.quote(a) for a in recipe_args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.work_dir.mkdir(parents=True, exist_ok=True)

    split = split_folder(args.data, num_val=args.num_val, salt=args.split_salt)
    write_split(split, args.work_dir / SPLIT_NAME)
    print(f"split: {len(split.train)} train / {len(split.val)} val, val fingerprint {split.fingerprint[:16]}")
    if args.init_from is not None:
        model = load_parser(args.init_from).float()  # stored float16; train in float32
        if not isinstance(model, FaceParser):
            sys.exit(f"--init-from {args.init_from}: not a FaceParser folder")
        args.block_channels = list(model.config.block_channels)
        args.convs_per_block, args.sample_size = model.config.convs_per_block, model.config.sample_size
        print(f"initialised from {args.init_from}")
    else:
        model = FaceParser(
            block_channels=tuple(args.block_channels),
            convs_per_block=args.convs_per_block,
            sample_size=args.sample_size,
        )
    print(f"FaceParser: {sum(p.numel() for p in model.parameters()):,} parameters")
    train_photos, train_masks = load_pairs(args.data, list(split.train), args.sample_size)
    val_photos, val_masks = load_pairs(args.data, list(split.val), args.sample_size)
    weights = repeat_factors(train_masks, args.rare_class_threshold) if args.rare_class_threshold > 0 else None
    if weights is not None:
        print(f"repeat-factor sampling (threshold {args.rare_class_threshold}): weights {weights.min():.2f}..{weights.max():.2f}, "
              f"{int((weights > 1).sum())} of {len(weights)} images above 1")
    paste_ids = [class_id(name) for name in args.copy_paste_classes]
    paste_pool = copy_paste_pool(train_masks, paste_ids, args.copy_paste_min_pixels) if paste_ids else {}
    if paste_ids:
        print(f"copy-paste, p = {args.copy_paste_prob}: " + ", ".join(
            f"{CLASS_NAMES[c]} from {len(images)} images" for c, images in paste_pool.items()))
    model = model.to(memory_format=torch.channels_last)  # faster oneDNN convolutions on CPU
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(train_photos) // args.batch_size
    total_steps = steps_per_epoch * args.epochs
    final_factor = args.swa_lr_factor if args.swa_epochs else 0.0
    constant_steps = steps_per_epoch * args.swa_epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, total_steps, final_factor, constant_steps)
    )
    average = WeightAverage()
    generator = torch.Generator().manual_seed(args.seed)
    start_epoch, train_seconds = 0, 0.0
    checkpoint_path = args.work_dir / CHECKPOINT_NAME
    if args.resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        average = WeightAverage(state.get("weight_average"))
        start_epoch, train_seconds = int(state["epoch"]), float(state["train_seconds"])
        print(f"resumed after epoch {start_epoch} ({train_seconds / 60:.1f} min trained)")

    use_bf16 = args.bf16 and torch.backends.mkldnn.is_available()
    model.train()
    for epoch in range(start_epoch, args.epochs):
        epoch_start = time.time()
        order = epoch_order(len(train_photos), weights, generator)
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", mininterval=20, file=sys.stdout)
        for step in bar:
            index = order[step * args.batch_size : (step + 1) * args.batch_size]
            photos, masks = train_photos[index], train_masks[index]
            if paste_pool:
                photos, masks = copy_paste(photos, masks, train_photos, train_masks, paste_pool,
                                           args.copy_paste_prob, generator)
            images, labels = augment(photos, masks, args, generator)
            images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(images, output_size=tuple(labels.shape[-2:]))
            logits = logits.float().contiguous()  # (B, C, S, S)
            loss = segmentation_loss(logits, labels, args.dice_weight, args.dice_classes,
                                     args.lovasz_weight, args.lovasz_stride)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
        bar.close()
        if epoch >= args.epochs - args.swa_epochs:
            average.update(model)
        train_seconds += time.time() - epoch_start
        message = f"epoch {epoch + 1}: loss {np.mean(losses):.4f}, {time.time() - epoch_start:.0f} s"
        if (epoch + 1) % args.val_every == 0 or epoch + 1 == args.epochs:
            ious = quick_val_iou(model, val_photos, val_masks, args.batch_size)
            message += f", quick val mIoU {np.nanmean(ious):.4f} " + " ".join(f"{v:.2f}" for v in ious)
        print(message, flush=True)
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "weight_average": average.state_dict(),
                "epoch": epoch + 1,
                "train_seconds": train_seconds,
            },
            checkpoint_path,
        )
        if args.max_train_minutes is not None and train_seconds > 60 * args.max_train_minutes:
            print(f"stopping: {args.max_train_minutes} min of training reached")
            break
    if average.count:
        average.copy_to(model)
        recompute_batch_norm(model, train_photos, args.batch_size)
        ious = quick_val_iou(model, val_photos, val_masks, args.batch_size)
        print(f"averaged the weights of the last {average.count} epochs; quick val mIoU {np.nanmean(ious):.4f} "
              + " ".join(f"{v:.2f}" for v in ious), flush=True)
    if args.no_final:
        return 0

    model = model.to(memory_format=torch.contiguous_format).eval()
    if args.test_time_sizes is not None:
        model.register_to_config(test_time_sizes=list(args.test_time_sizes))
    args.test_time_sizes = list(model.config.test_time_sizes)
    args.output.mkdir(parents=True, exist_ok=True)
    model.to(getattr(torch, args.weights_dtype)).save_pretrained(args.output)  # load_parser computes in float32
    config_file = args.output / FaceParser.config_name
    config = json.loads(config_file.read_text())
    # Keep the class/version keys and FaceParser's own arguments: not the --init-from path (a trace of
    # this machine) nor keys an older FaceParser wrote that this one ignores.
    known = set(inspect.signature(FaceParser.__init__).parameters) | {"_class_name", "_diffusers_version"}
    if set(config) - known:
        config_file.write_text(json.dumps({k: v for k, v in config.items() if k in known}, indent=2, sort_keys=True) + "\n")
    parser = load_parser(args.output)
    metrics = evaluate_parser(parser, args.data, split.val)
    seconds = {}
    for threads in TIMING_THREADS:
        torch.set_num_threads(threads)
        seconds[threads] = time_parse(parser, args.data / "images", split.val[0])
    weights_bytes = sum(p.stat().st_size for p in args.output.glob("*.safetensors"))
    earlier_stages = []  # the runs that made the --init-from weights, first to last (unknown without metrics.json)
    init_metrics = None if args.init_from is None else args.init_from / "metrics.json"
    if init_metrics is not None and init_metrics.is_file():
        init_report = json.loads(init_metrics.read_text())
        earlier_stages = init_report.get("earlier_stages", []) + [
            {key: init_report.get(key) for key in ("command", "epochs", "train_minutes", "mean_iou", "threads", "args")}]
    report = {
        "command": command,
        "earlier_stages": earlier_stages,
        "train_minutes": round(train_seconds / 60, 1),
        "epochs": args.epochs,
        "threads": args.threads,
        "parameters": sum(p.numel() for p in parser.parameters()),
        "weights_bytes": weights_bytes,
        "split": {"rule": SPLIT_RULE, "salt": split.salt, "num_val": len(split.val), "num_train": len(split.train),
                  "val_fingerprint": split.fingerprint},
        "mean_iou": metrics["mean_iou"],
        "per_class_iou": metrics["per_class_iou"],
        "parse_seconds_512": {f"{threads}_threads": value for threads, value in seconds.items()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    (args.output / "metrics.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.output / "MODEL_CARD.md").write_text(model_card(report))
    print(json.dumps({k: report[k] for k in ("mean_iou", "train_minutes", "parse_seconds_512")}))
    return 0


def time_parse(parser, images_dir: Path, stem: str) -> float:
    """Median wall time of ``parser.parse`` on one photo resized to 512 x 512, 2 threads."""
    with Image.open(find_image(images_dir, stem)) as photo:
        photo = photo.convert("RGB").resize((TIMING_PHOTO_SIZE, TIMING_PHOTO_SIZE), Image.BILINEAR)
    parser.parse(photo)  # warm-up
    times = []
    for _ in range(TIMING_REPEATS):
        start = time.perf_counter()
        parser.parse(photo)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def recipe_text(report: dict) -> str:
    """The command(s) that made the weights: one, or each stage (from scratch, then fine-tuning ones)."""
    stages = report.get("earlier_stages") or []
    if not stages:
        return f"```\n{report['command']}\n```"
    items = [f"{i}. {'From scratch' if i == 1 else f'Fine-tuned from stage {i - 1} (`--init-from`)'}, "
             f"{stage['epochs']} epochs ({stage['train_minutes']} min on {stage['threads']} thread(s); "
             f"val mIoU {stage['mean_iou']:.4f}):\n   ```\n   {stage['command']}\n   ```"
             for i, stage in enumerate(stages, start=1)]
    last = len(stages) + 1
    what = (f"No further training (`--epochs 0`): stage {last - 1}'s weights, saved with the inference settings "
            "below and measured again" if report["epochs"] == 0 else f"Fine-tuned from stage {last - 1} (`--init-from`)")
    items.append(f"{last}. {what}, the shipped weights:\n   ```\n   {report['command']}\n   ```")
    return (f"{len(stages) + 1} stages (`make parser` runs them all; the commands below are as each stage ran, "
            "`make parser` keeps the intermediate weights under `out/parser-work`):\n\n" + "\n".join(items))


def sampling_text(threshold: float) -> str:
    if not threshold:
        return "Sampling: every training image once per epoch, shuffled."
    return (f"Sampling: repeat-factor sampling, threshold {threshold} (an image is drawn with weight max(1, sqrt({threshold} / f)) "
            "over its classes, f = fraction of training images holding the class; rare classes such as necklace, hat "
            "and eyeglasses are seen about twice as often).")


def sizes_text(args: dict) -> str:
    sizes = args.get("test_time_sizes") or []
    if not sizes:
        return ""
    listed = " and ".join(f"{size}x{size}" for size in sizes)
    return (f"; the same again with the photo resized to {listed} and the log-probabilities of all sizes averaged "
            "(multi-scale testing; config `test_time_sizes`)")


def lovasz_text(args: dict) -> str:
    weight = args.get("lovasz_weight", 0.0)
    return f" + {weight} x Lovasz-softmax (on a stride-{args['lovasz_stride']} pixel grid)" if weight else ""


def averaging_text(args: dict) -> str:
    epochs = args.get("swa_epochs", 0)
    if not epochs:
        return ""
    return (f"Weight averaging (SWA): the cosine decays to {args['swa_lr_factor']} x lr, held for the last {epochs} epochs; "
            f"the weights at the end of each of those epochs are averaged and the BatchNorm statistics re-estimated "
            "on the (unaugmented) training photos.\n")


def copy_paste_text(args: dict) -> str:
    classes = args.get("copy_paste_classes") or []
    if not classes:
        return ""
    return (f" Copy-paste (before the above): with p={args['copy_paste_prob']} an image gets one object of "
            f"{', '.join(classes)} (a class drawn uniformly, then one of the training images holding at least "
            f"{args['copy_paste_min_pixels']} of its pixels) pasted at its own place, mirrored half the time.")


def model_card(report: dict) -> str:
    stages = report.get("earlier_stages") or []
    trained, label = report, " (last stage)" if stages else ""
    if report["epochs"] == 0 and stages and stages[-1].get("args"):  # a re-packaging step: describe the last training
        trained, label = stages[-1], f" (stage {len(stages)}, the last that trained)"
    targs = trained["args"]
    rows = "\n".join(
        f"| {i} | {name} | {report['per_class_iou'][name]:.4f} |" for i, name in enumerate(CLASS_NAMES)
    )
    split = report["split"]
    timings = "\n".join(
        f"- {name.replace('_', ' ')}: **{seconds * 1000:.0f} ms**" for name, seconds in report["parse_seconds_512"].items()
    )
    return f"""# facemogle face parser (FaceParser, compact U-Net)

Photo -> face mask in the official CelebAMask-HQ label order (19 classes). Loaded by
`facemogle.eval.parser.load_parser()` and used by `facemogle parse`.

## Licence: non-commercial research and education only

Trained on **celebamask-hq-mini**: 900 real CelebAMask-HQ 512x512 image/mask pairs (the "mini" set of
a university face-parsing course, as committed in the public GitHub repo
anamikakolady/CelebAMask-Face-Parsing, commit 2501c452, folder CelebAMask_Face_Parsing/dev-public/train).
CelebAMask-HQ is licensed for **non-commercial research and educational purposes only**; these
weights carry the same restriction. The facemogle code is Apache-2.0; the weights are not.

## Model

- `FaceParser`: {report['parameters']:,} parameters, safetensors weights {report['weights_bytes'] / 1e6:.1f} MB (stored as
  {report['args']['weights_dtype']}, computed in float32; every number below is measured on the stored weights).
- Input: RGB photo resized to {report['args']['sample_size']}x{report['args']['sample_size']} (bilinear), scaled to [-1, 1], plus (y, x)
  coordinate channels; logits at half that size, averaged with the logits of the mirrored photo
  (left/right classes swapped back; config `test_time_flip`){sizes_text(report['args'])}, bilinearly upsampled to the photo's
  size, argmax.
- Trained from scratch (no pretrained backbone).

## Recipe

{recipe_text(report)}

Training{label}: {trained['epochs']} epochs, batch {targs['batch_size']}, AdamW (lr {targs['lr']}, weight decay
{targs['weight_decay']}), 1 warm-up epoch then cosine decay, cross-entropy + {targs['dice_weight']} x soft Dice{lovasz_text(targs)},
bf16 autocast = {targs['bf16']}, seed {targs['seed']}. Augmentation: horizontal flip with left/right eye,
eyebrow and ear swap; rotation +-{targs['max_rotation']} deg, scale x/÷{targs['max_scale']}, shift +-{targs['max_shift']};
brightness/contrast/saturation +-{targs['color_jitter']}, greyscale p={targs['greyscale_prob']}.{copy_paste_text(targs)}
Dice averaged over {'the classes present in each batch' if targs.get('dice_classes') == 'present' else 'all classes'}.
{averaging_text(targs)}{sampling_text(targs.get('rare_class_threshold', 0.0))}
Training time{' of that stage' if trained is not report else ' of this stage' if stages else ''}: **{trained['train_minutes']} min** on {trained['threads']} CPU thread(s) (Intel Xeon, 2 cores shared).

## Validation split

`facemogle.data.splits.split_folder(data, num_val={split['num_val']}, salt={split['salt']!r})`: {split['rule']}.
{split['num_train']} train / {split['num_val']} val images. Val fingerprint (sha256 of the sorted val stems):
`{split['val_fingerprint']}`.

## Validation IoU

Protocol (`facemogle.eval.parser.evaluate_parser`): every val photo parsed at its full 512x512
resolution, one confusion matrix accumulated over all val pixels, IoU = TP / (TP + FP + FN) per class.

Validation mean IoU ({NUM_CLASSES} classes): **{report['mean_iou']:.4f}**

| id | class | IoU |
| --- | --- | --- |
{rows}

## Speed

`parse` on one 512x512 photo, CPU, float32, test-time flip on ({2 * (1 + len(report['args'].get('test_time_sizes') or []))} forward passes), decoding
excluded, resize and upsampling included, median of {TIMING_REPEATS}:
{timings}

Measured on a 2-core Intel Xeon (Sapphire Rapids) VM shared with other jobs. When other processes
keep the cores busy, OpenMP's spin-waiting makes two torch threads much slower than one; starting
Python with `OMP_WAIT_POLICY=PASSIVE` (or using one thread) avoids that.
"""


if __name__ == "__main__":
    sys.exit(main())
