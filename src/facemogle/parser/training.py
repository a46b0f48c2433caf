"""The face parser's training recipe: ``train_parser(TrainingSettings(...))`` (``scripts/train_parser.py``).

The shipped weights (``src/facemogle/weights/parser``) come from four runs, which ``make parser``
chains (CPU, one thread, about 3 h): 50 epochs from scratch; then fine-tuning stages, each from the
previous one's weights (``init_from``, a fresh warm-up + cosine schedule): repeat-factor sampling so
that images with rare classes (necklace, hat, eyeglasses) are drawn about twice as often
(``rare_class_threshold``, ``facemogle.parser.sampling``), Dice over the classes present in each batch
(``dice_classes="present"``), and last a Lovasz-softmax term (``lovasz_weight``,
``facemogle.parser.losses``) with copy-paste of rare objects from other training photos
(``copy_paste_classes``, ``facemogle.parser.augment``), saved with multi-scale testing
(``test_time_sizes``). The model card lists every stage's command. (``swa_epochs``, weight averaging
(``facemogle.parser.averaging``), measured +0.002 after the Dice stage and nothing after the Lovasz one;
it is not in the shipped recipe. ``epochs=0`` re-packages a parser with new inference settings and
measures it again.)

What a run does:

1. Splits the folder's stems with ``facemogle.data.splits`` (``num_val`` val images, hash rule) and
   writes the split to ``WORK_DIR/split.json``.
2. Decodes every training pair once at the model's ``sample_size`` (photos with the parser's own
   ``resize_photo``, masks with nearest neighbour) and keeps them in memory as uint8.
3. Trains (from scratch, or from ``init_from``) with batch-level augmentation in torch (optional
   copy-paste of rare objects, horizontal flip with left/right class swap, small rotation/scale/shift,
   brightness/contrast/saturation jitter, rare greyscale), loss = cross-entropy + soft Dice
   (+ Lovasz-softmax), AdamW, one warm-up epoch then a cosine decay to zero (or, with weight
   averaging, to a constant held for the averaged epochs; the BatchNorm statistics of the averaged
   weights are re-estimated on the training photos); bf16 autocast where the CPU supports it.
   Seeded: the same settings give the same weights on the same machine.
4. Checkpoints every epoch to ``WORK_DIR/checkpoint.pt`` (``resume`` continues from it).
5. Saves the final weights with ``save_pretrained`` to ``output``, re-loads them with ``load_parser``,
   measures validation IoU with ``evaluate_parser`` (full resolution) and the CPU time of ``parse`` on
   one 512 x 512 photo, and writes ``MODEL_CARD.md`` (``facemogle.parser.model_card``) +
   ``metrics.json`` there.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from facemogle.data.splits import DEFAULT_NUM_VAL, DEFAULT_SALT, SPLIT_RULE, Split, split_folder, write_split
from facemogle.errors import CheckpointError, InputError
from facemogle.files import atomic_save_pretrained, atomic_torch_save, atomic_write_text, safe_torch_load
from facemogle.labels import CLASS_NAMES, class_id
from facemogle.masks import load_mask
from facemogle.parser.augment import augment, copy_paste, copy_paste_pool
from facemogle.parser.averaging import WeightAverage, recompute_batch_norm
from facemogle.parser.evaluation import TIMING_THREADS, evaluate_parser, image_paths, quick_val_iou, time_parse
from facemogle.parser.inference import resize_photo
from facemogle.parser.loading import load_parser
from facemogle.parser.losses import segmentation_loss
from facemogle.parser.model import FaceParser
from facemogle.parser.model_card import model_card
from facemogle.parser.sampling import epoch_order, repeat_factors

CHECKPOINT_NAME = "checkpoint.pt"
SPLIT_NAME = "split.json"
#: How a recipe command is written on the card (the script that runs ``train_parser``).
RECIPE_SCRIPT = "python scripts/train_parser.py"
DICE_CLASSES = ("all", "present")
WEIGHTS_DTYPES = ("float16", "float32")


def recipe_command(argv: list[str]) -> str:
    """The command line recorded on the card: ``python scripts/train_parser.py`` + the quoted flags."""
    return f"{RECIPE_SCRIPT} " + " ".join(shlex.quote(a) for a in argv)


@dataclass
class TrainingSettings:
    """One field per flag of ``scripts/train_parser.py`` (same names, ``-`` as ``_``; its ``--help``
    explains each), in the order the flags are defined: ``metrics.json`` stores them as ``args``."""

    data: Path = Path("../shared/data/celebamask-hq-mini")  # folder with images/ and masks/
    output: Path = Path("src/facemogle/weights/parser")  # the saved parser, card and metrics
    work_dir: Path = Path("/tmp/facemogle-parser")  # split.json and checkpoint.pt
    resume: bool = False
    init_from: Path | None = None  # a saved FaceParser folder to fine-tune (its architecture is kept)
    seed: int = 0
    threads: int = 1
    num_val: int = DEFAULT_NUM_VAL
    split_salt: str = DEFAULT_SALT
    epochs: int = 60
    max_train_minutes: float | None = None
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dice_weight: float = 1.0
    dice_classes: str = "all"  # "all" or "present" (in the batch)
    bf16: bool = True
    block_channels: list[int] = field(default_factory=lambda: [24, 48, 96, 160, 256])
    convs_per_block: int = 2
    sample_size: int = 256
    max_rotation: float = 12.0  # degrees
    max_scale: float = 1.15
    max_shift: float = 0.06  # fraction of the half-width
    color_jitter: float = 0.25
    greyscale_prob: float = 0.05
    rare_class_threshold: float = 0.0  # repeat-factor sampling (0 = plain shuffling)
    copy_paste_classes: list[str] = field(default_factory=list)  # class names
    copy_paste_prob: float = 0.5
    copy_paste_min_pixels: int = 16
    test_time_sizes: list[int] | None = None  # None: none from scratch, as loaded with init_from
    lovasz_weight: float = 0.0
    lovasz_stride: int = 2
    swa_epochs: int = 0
    swa_lr_factor: float = 0.25
    val_every: int = 5
    weights_dtype: str = "float16"  # storage dtype of the saved weights
    no_final: bool = False  # skip save/evaluate/card (sanity runs)

    def __post_init__(self) -> None:
        for name in ("data", "output", "work_dir", "init_from"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))
        self.block_channels, self.copy_paste_classes = list(self.block_channels), list(self.copy_paste_classes)
        if self.test_time_sizes is not None:
            self.test_time_sizes = list(self.test_time_sizes)
        if self.dice_classes not in DICE_CLASSES:
            raise InputError(f"dice_classes must be one of {DICE_CLASSES}, got {self.dice_classes!r}")
        if self.weights_dtype not in WEIGHTS_DTYPES:
            raise InputError(f"weights_dtype must be one of {WEIGHTS_DTYPES}, got {self.weights_dtype!r}")

    def to_json(self) -> dict:
        """The settings as ``metrics.json`` stores them (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self).items()}

    def command_line(self) -> str:
        """The ``scripts/train_parser.py`` command with these settings: a flag for each one that is not
        the default, in field order (``resume`` left out: resuming does not change the result)."""
        defaults, argv = TrainingSettings(), []
        for name, value in vars(self).items():
            if name == "resume" or value is None or value == getattr(defaults, name):
                continue
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + flag[2:])
            elif isinstance(value, list):
                argv += [flag, *map(str, value)]
            else:
                argv += [flag, str(value)]
        return recipe_command(argv)


def load_pairs(data_dir: Path, stems: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, size, size, 3) uint8 photos and (N, size, size) uint8 official ids."""
    photos = np.empty((len(stems), size, size, 3), dtype=np.uint8)
    masks = np.empty((len(stems), size, size), dtype=np.uint8)
    paths = image_paths(data_dir / "images", stems)
    for index, stem in enumerate(tqdm(stems, desc="decoding", mininterval=5, file=sys.stdout)):
        with Image.open(paths[index]) as photo:
            photos[index] = resize_photo(photo, size)
        ids = load_mask(data_dir / "masks" / f"{stem}.png")
        masks[index] = np.asarray(Image.fromarray(ids).resize((size, size), Image.NEAREST))
    return torch.from_numpy(photos), torch.from_numpy(masks)


def lr_factor(step: int, warmup_steps: int, total_steps: int, final: float = 0.0, constant_steps: int = 0) -> float:
    """Linear warm-up, cosine decay from 1 to ``final``, then ``final`` for the last ``constant_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - constant_steps - warmup_steps)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_parser(settings: TrainingSettings, command: str | None = None) -> dict | None:
    """Run the recipe (see the module docstring); ``settings`` itself is not modified.

    Args:
        command: the command line recorded in ``metrics.json`` and on the card (the script passes the
            one it was run with); ``None``: ``settings.command_line()``.

    Returns:
        The ``metrics.json`` report of the saved parser, or ``None`` with ``no_final``.

    Raises:
        CheckpointError: ``init_from`` is not a FaceParser folder.
    """
    settings = dataclasses.replace(settings)  # init_from and the saved config fill in some fields
    command = settings.command_line() if command is None else command
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    settings.work_dir.mkdir(parents=True, exist_ok=True)

    split = split_folder(settings.data, num_val=settings.num_val, salt=settings.split_salt)
    write_split(split, settings.work_dir / SPLIT_NAME)
    print(f"split: {len(split.train)} train / {len(split.val)} val, val fingerprint {split.fingerprint[:16]}")
    model = initial_model(settings)
    print(f"FaceParser: {sum(p.numel() for p in model.parameters()):,} parameters")
    train_photos, train_masks = load_pairs(settings.data, list(split.train), settings.sample_size)
    val_photos, val_masks = load_pairs(settings.data, list(split.val), settings.sample_size)
    train_seconds = train_epochs(model, settings, train_photos, train_masks, val_photos, val_masks)
    if settings.no_final:
        return None
    return save_and_measure(model, settings, split, command, train_seconds)


def initial_model(settings: TrainingSettings) -> FaceParser:
    """The ``init_from`` parser in float32 (its architecture copied into ``settings``), or a new one."""
    if settings.init_from is None:
        return FaceParser(
            block_channels=tuple(settings.block_channels),
            convs_per_block=settings.convs_per_block,
            sample_size=settings.sample_size,
        )
    model = load_parser(settings.init_from).float()  # stored float16; train in float32
    if not isinstance(model, FaceParser):
        raise CheckpointError(f"--init-from {settings.init_from}: not a FaceParser folder")
    settings.block_channels = list(model.config.block_channels)
    settings.convs_per_block, settings.sample_size = model.config.convs_per_block, model.config.sample_size
    print(f"initialised from {settings.init_from}")
    return model


def train_epochs(
    model: FaceParser,
    settings: TrainingSettings,
    train_photos: torch.Tensor,
    train_masks: torch.Tensor,
    val_photos: torch.Tensor,
    val_masks: torch.Tensor,
) -> float:
    """Train ``model`` in place (photos (N, S, S, 3) uint8, masks (N, S, S) uint8 ids); the training seconds.

    Checkpoints every epoch (``resume`` continues from the checkpoint); with ``swa_epochs`` the averaged
    weights, with re-estimated BatchNorm statistics, are left in ``model``.
    """
    weights = repeat_factors(train_masks, settings.rare_class_threshold) if settings.rare_class_threshold > 0 else None
    if weights is not None:
        print(f"repeat-factor sampling (threshold {settings.rare_class_threshold}): weights "
              f"{weights.min():.2f}..{weights.max():.2f}, {int((weights > 1).sum())} of {len(weights)} images above 1")
    paste_ids = [class_id(name) for name in settings.copy_paste_classes]
    paste_pool = copy_paste_pool(train_masks, paste_ids, settings.copy_paste_min_pixels) if paste_ids else {}
    if paste_ids:
        print(f"copy-paste, p = {settings.copy_paste_prob}: " + ", ".join(
            f"{CLASS_NAMES[c]} from {len(images)} images" for c, images in paste_pool.items()))
    model = model.to(memory_format=torch.channels_last)  # faster oneDNN convolutions on CPU
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = len(train_photos) // settings.batch_size
    total_steps = steps_per_epoch * settings.epochs
    final_factor = settings.swa_lr_factor if settings.swa_epochs else 0.0
    constant_steps = steps_per_epoch * settings.swa_epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, total_steps, final_factor, constant_steps)
    )
    average = WeightAverage()
    generator = torch.Generator().manual_seed(settings.seed)
    start_epoch, train_seconds = 0, 0.0
    checkpoint_path = settings.work_dir / CHECKPOINT_NAME
    if settings.resume and checkpoint_path.exists():
        state = safe_torch_load(checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        average = WeightAverage(state.get("weight_average"))
        start_epoch, train_seconds = int(state["epoch"]), float(state["train_seconds"])
        print(f"resumed after epoch {start_epoch} ({train_seconds / 60:.1f} min trained)")

    use_bf16 = settings.bf16 and torch.backends.mkldnn.is_available()
    model.train()
    for epoch in range(start_epoch, settings.epochs):
        epoch_start = time.time()
        order = epoch_order(len(train_photos), weights, generator)
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{settings.epochs}", mininterval=20, file=sys.stdout)
        for step in bar:
            index = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            photos, masks = train_photos[index], train_masks[index]
            if paste_pool:
                photos, masks = copy_paste(photos, masks, train_photos, train_masks, paste_pool,
                                           settings.copy_paste_prob, generator)
            images, labels = augment(photos, masks, settings, generator)
            images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(images, output_size=tuple(labels.shape[-2:]))
            logits = logits.float().contiguous()  # (B, C, S, S)
            loss = segmentation_loss(logits, labels, settings.dice_weight, settings.dice_classes,
                                     settings.lovasz_weight, settings.lovasz_stride)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
        bar.close()
        if epoch >= settings.epochs - settings.swa_epochs:
            average.update(model)
        train_seconds += time.time() - epoch_start
        message = f"epoch {epoch + 1}: loss {np.mean(losses):.4f}, {time.time() - epoch_start:.0f} s"
        if (epoch + 1) % settings.val_every == 0 or epoch + 1 == settings.epochs:
            ious = quick_val_iou(model, val_photos, val_masks, settings.batch_size)
            message += f", quick val mIoU {np.nanmean(ious):.4f} " + " ".join(f"{v:.2f}" for v in ious)
        print(message, flush=True)
        atomic_torch_save(
            checkpoint_path,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "weight_average": average.state_dict(),
                "epoch": epoch + 1,
                "train_seconds": train_seconds,
            },
        )
        if settings.max_train_minutes is not None and train_seconds > 60 * settings.max_train_minutes:
            print(f"stopping: {settings.max_train_minutes} min of training reached")
            break
    if average.count:
        average.copy_to(model)
        recompute_batch_norm(model, train_photos, settings.batch_size)
        ious = quick_val_iou(model, val_photos, val_masks, settings.batch_size)
        print(f"averaged the weights of the last {average.count} epochs; quick val mIoU {np.nanmean(ious):.4f} "
              + " ".join(f"{v:.2f}" for v in ious), flush=True)
    return train_seconds


def save_and_measure(model: FaceParser, settings: TrainingSettings, split: Split, command: str,
                     train_seconds: float) -> dict:
    """Save the parser to ``output``, measure it as loaded, write ``metrics.json`` + ``MODEL_CARD.md``."""
    model = model.to(memory_format=torch.contiguous_format).eval()
    if settings.test_time_sizes is not None:
        model.register_to_config(test_time_sizes=list(settings.test_time_sizes))
    settings.test_time_sizes = list(model.config.test_time_sizes)
    # load_parser computes in float32
    atomic_save_pretrained(model.to(getattr(torch, settings.weights_dtype)), settings.output)
    config_file = settings.output / FaceParser.config_name
    config = json.loads(config_file.read_text())
    # Keep the class/version keys and FaceParser's own arguments: not the init_from path (a trace of
    # this machine) nor keys an older FaceParser wrote that this one ignores.
    known = set(inspect.signature(FaceParser.__init__).parameters) | {"_class_name", "_diffusers_version"}
    if set(config) - known:
        atomic_write_text(config_file,
                          json.dumps({k: v for k, v in config.items() if k in known}, indent=2, sort_keys=True) + "\n")
    parser = load_parser(settings.output)
    metrics = evaluate_parser(parser, settings.data, split.val)
    seconds = {}
    for threads in TIMING_THREADS:
        torch.set_num_threads(threads)
        seconds[threads] = time_parse(parser, settings.data / "images", split.val[0])
    weights_bytes = sum(p.stat().st_size for p in settings.output.glob("*.safetensors"))
    earlier_stages = []  # the runs that made the init_from weights, first to last (unknown without metrics.json)
    init_metrics = None if settings.init_from is None else settings.init_from / "metrics.json"
    if init_metrics is not None and init_metrics.is_file():
        init_report = json.loads(init_metrics.read_text())
        earlier_stages = init_report.get("earlier_stages", []) + [
            {key: init_report.get(key) for key in ("command", "epochs", "train_minutes", "mean_iou", "threads", "args")}]
    report = {
        "command": command,
        "earlier_stages": earlier_stages,
        "train_minutes": round(train_seconds / 60, 1),
        "epochs": settings.epochs,
        "threads": settings.threads,
        "parameters": sum(p.numel() for p in parser.parameters()),
        "weights_bytes": weights_bytes,
        "split": {"rule": SPLIT_RULE, "salt": split.salt, "num_val": len(split.val), "num_train": len(split.train),
                  "val_fingerprint": split.fingerprint},
        "mean_iou": metrics["mean_iou"],
        "per_class_iou": metrics["per_class_iou"],
        "parse_seconds_512": {f"{threads}_threads": value for threads, value in seconds.items()},
        "args": settings.to_json(),
    }
    atomic_write_text(settings.output / "metrics.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(settings.output / "MODEL_CARD.md", model_card(report))
    print(json.dumps({k: report[k] for k in ("mean_iou", "train_minutes", "parse_seconds_512")}))
    return report
