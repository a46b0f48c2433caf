"""Face parsing (photo -> mask of official CelebAMask-HQ ids): the shipped ``FaceParser`` and loaders.

``load_parser(None)`` returns the parser shipped in ``facemogle/weights/parser`` (trained by
``scripts/train_parser.py`` on celebamask-hq-mini, see its ``MODEL_CARD.md``: non-commercial research
and education only). ``load_parser(DIR)`` loads a ``FaceParser`` saved with ``save_pretrained``;
``load_parser(FILE.pth)`` a face-parsing.PyTorch BiSeNet state dict (``facemogle.eval.bisenet``).
Every parser has ``parse(images) -> (B, H, W) uint8`` official ids at each image's own size.

``FaceParser`` is a compact U-Net. Photos are resized to ``sample_size`` x ``sample_size``
(bilinear, antialiased, aspect ratio not kept: faces are expected roughly square and centred, as in
CelebA-HQ/FFHQ), scaled to [-1, 1], and two channels of normalised (y, x) coordinates are appended
(they make left/right classes a matter of position, which the flip-with-swap augmentation keeps
consistent). A stride-2 stem and ``len(block_channels) - 1`` further stride-2 stages make the encoder;
a global-average context vector is added at the bottleneck; the decoder upsamples and fuses the
skip features back to ``sample_size / 2``; a 1x1 head gives the logits, which are upsampled
(bilinear) to each photo's size before the argmax.

The validation protocol (``evaluate_parser``) accumulates a confusion matrix over every pixel of
the validation images at their full resolution; per-class IoU = TP / (TP + FP + FN) from those
totals, mean IoU = mean over the classes with a non-empty union.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from PIL import Image, UnidentifiedImageError
from torch import nn

from facemogle.eval.metrics import confusion_matrix, iou_per_class
from facemogle.errors import CheckpointError, InputError
from facemogle.eval.bisenet import BISENET_INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD, BiSeNet, load_bisenet
from facemogle.labels import CLASS_NAMES, NUM_CLASSES, OFFICIAL_TO_BISENET, class_id

#: Folder of the shipped parser (config.json + safetensors + MODEL_CARD.md).
SHIPPED_PARSER_DIR = Path(__file__).resolve().parents[1] / "weights" / "parser"
#: Extensions tried for ``images/<stem>.*`` in a folder dataset.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
DEFAULT_BATCH_SIZE = 8
COORD_CHANNELS = 2  # (y, x) in [-1, 1]
RGB_CHANNELS = 3

ImageSource = Union[Image.Image, str, os.PathLike]

#: Left/right class pairs that trade places when a face is mirrored horizontally.
MIRRORED_CLASS_PAIRS: tuple[tuple[str, str], ...] = (
    ("left eye", "right eye"),
    ("left eyebrow", "right eyebrow"),
    ("left ear", "right ear"),
)


def mirrored_class_ids() -> torch.Tensor:
    """``(NUM_CLASSES,)`` int64: ``ids[k]`` is class ``k``'s id in the mirrored face (an involution)."""
    ids = torch.arange(NUM_CLASSES)
    for left, right in MIRRORED_CLASS_PAIRS:
        ids[class_id(left)], ids[class_id(right)] = class_id(right), class_id(left)
    return ids


# --------------------------------------------------------------------------------------------
# Images in, ids out
# --------------------------------------------------------------------------------------------


def open_image(source: ImageSource) -> Image.Image:
    """An RGB PIL image from a PIL image or a path; unreadable files raise ``InputError``."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"cannot parse a {type(source).__name__}; give a PIL image or an image path")
    path = Path(source)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"{str(path)!r} is not a readable image: {err}") from None


def resize_photo(image: Image.Image, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8 RGB: bilinear (antialiased) resize, the parser's input convention.

    The training recipe pre-decodes its data with this same function.
    """
    return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)


class PhotoParserMixin:
    """``parse``: photos -> official ids. Subclasses give the input tensor and official-order logits."""

    def _pixel_values(self, photos: list[Image.Image]) -> torch.Tensor:
        """(B, 3, S, S) float model input."""
        raise NotImplementedError

    def _official_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, NUM_CLASSES, h, w) logits, channel ``k`` = official class ``k``."""
        raise NotImplementedError

    def _photo_logits(self, photos: list[Image.Image]) -> torch.Tensor:
        """(B, NUM_CLASSES, h, w) official-order scores of a batch of photos (argmax = the ids)."""
        return self._official_logits(self._pixel_values(photos))

    @torch.no_grad()
    def parse(
        self, images: ImageSource | Sequence[ImageSource], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> np.ndarray | list[np.ndarray]:
        """Face masks of photos, official CelebAMask-HQ ids.

        Args:
            images: a list of PIL images / image paths (any sizes), or a single one.
            batch_size: photos per forward pass.

        Returns:
            ``(B, H, W)`` uint8 ids for a list of same-size photos (a list of ``(H_i, W_i)`` arrays
            when sizes differ); ``(H, W)`` for a single photo. Deterministic; runs in eval mode.
        """
        single = isinstance(images, (Image.Image, str, os.PathLike))
        sources = [images] if single else list(images)
        if not sources:
            raise InputError("parse needs at least one image")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        was_training = self.training
        self.eval()
        try:
            masks = []
            for start in range(0, len(sources), batch_size):
                photos = [open_image(source) for source in sources[start : start + batch_size]]
                logits = self._photo_logits(photos).float()  # (b, C, h, w)
                for photo, photo_logits in zip(photos, logits):
                    masks.append(logits_to_ids(photo_logits, (photo.height, photo.width)))
        finally:
            self.train(was_training)
        if single:
            return masks[0]
        if len({mask.shape for mask in masks}) == 1:
            return np.stack(masks)
        return masks


def logits_to_ids(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """``(C, h, w)`` logits -> ``(H, W)`` uint8 argmax ids after a bilinear upsampling to ``size``."""
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    # ``max(...).indices`` gives the argmax ids several times faster than ``argmax`` on CPU.
    return logits.max(dim=0).indices.to(torch.uint8).cpu().numpy()


# --------------------------------------------------------------------------------------------
# The shipped architecture
# --------------------------------------------------------------------------------------------


class ConvNormAct(nn.Sequential):
    """3x3 conv (no bias) + BatchNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def _conv_stack(in_channels: int, out_channels: int, num_convs: int, stride: int = 1) -> nn.Sequential:
    layers = [ConvNormAct(in_channels, out_channels, stride)]
    layers += [ConvNormAct(out_channels, out_channels) for _ in range(num_convs - 1)]
    return nn.Sequential(*layers)


class FaceParser(ModelMixin, ConfigMixin, PhotoParserMixin):
    """Compact U-Net face parser (see the module docstring).

    Args:
        num_classes: output classes (official order).
        block_channels: channels of the encoder stages, at 1/2, 1/4, ... of ``sample_size``.
        convs_per_block: 3x3 convolutions per encoder and decoder stage.
        sample_size: side of the square model input; logits come out at ``sample_size // 2``.
        use_coord_channels: append (y, x) coordinate channels to the RGB input.
        test_time_flip: ``parse`` averages the logits of the photo and of its mirror image (with the
            left/right classes swapped back); ``forward`` is never affected.
        test_time_sizes: extra input sides for ``parse`` (multi-scale testing): the photo is also
            resized to each, and the log-probabilities of all sizes are averaged (at the largest
            size's logit resolution); ``forward`` is never affected.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        block_channels: tuple[int, ...] = (24, 48, 96, 160, 256),
        convs_per_block: int = 2,
        sample_size: int = 256,
        use_coord_channels: bool = True,
        test_time_flip: bool = True,
        test_time_sizes: tuple[int, ...] = (),
    ):
        super().__init__()
        block_channels = tuple(block_channels)
        if len(block_channels) < 2 or convs_per_block < 1:
            raise InputError("FaceParser needs at least two stages and one conv per stage")
        for size in (sample_size, *test_time_sizes):
            if size % (2 ** len(block_channels)):
                raise InputError(f"input size {size} must be divisible by 2**{len(block_channels)}")
        in_channels = RGB_CHANNELS + (COORD_CHANNELS if use_coord_channels else 0)
        self.encoder = nn.ModuleList()
        for channels in block_channels:
            self.encoder.append(_conv_stack(in_channels, channels, convs_per_block, stride=2))
            in_channels = channels
        bottleneck = block_channels[-1]
        self.global_context = nn.Sequential(nn.Conv2d(bottleneck, bottleneck, 1), nn.ReLU(inplace=True))
        self.decoder = nn.ModuleList()
        for deep, shallow in zip(block_channels[:0:-1], block_channels[-2::-1]):
            self.decoder.append(_conv_stack(deep + shallow, shallow, convs_per_block))
        self.head = nn.Conv2d(block_channels[0], num_classes, 1)
        self.register_buffer("mirrored_class_ids", mirrored_class_ids(), persistent=False)

    def _with_coords(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 5, S, S) with (y, x) in [-1, 1] appended (unchanged without coord channels)."""
        if not self.config.use_coord_channels:
            return pixel_values
        batch, _, height, width = pixel_values.shape
        ys = torch.linspace(-1.0, 1.0, height, device=pixel_values.device, dtype=pixel_values.dtype)
        xs = torch.linspace(-1.0, 1.0, width, device=pixel_values.device, dtype=pixel_values.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (S, S) each
        coords = torch.stack([grid_y, grid_x]).expand(batch, COORD_CHANNELS, height, width)
        return torch.cat([pixel_values, coords], dim=1)

    def _encode(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) RGB in [-1, 1] -> the output of every encoder stage, (B, C_i, S/2**(i+1), ...)."""
        x = self._with_coords(pixel_values)  # (B, 5, S, S)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        return skips

    @torch.no_grad()
    def image_features(self, images: Sequence[ImageSource]) -> torch.Tensor:
        """(B, C_last) float32: the bottleneck averaged over space, a face-specific image embedding.

        Used for FID-style distances where Inception weights are not at hand (the bundled model's
        card); such numbers compare runs with each other, never with Inception FIDs.
        """
        photos = [open_image(image) for image in images]
        if not photos:
            raise InputError("image_features needs at least one image")
        return self._encode(self._pixel_values(photos))[-1].float().mean(dim=(2, 3))

    def forward(self, pixel_values: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, 3, S, S) RGB in [-1, 1] -> (B, num_classes, S/2, S/2) logits (or at ``output_size``)."""
        skips = self._encode(pixel_values)
        x = skips.pop()  # (B, C_last, S/2**n, S/2**n)
        x = x + self.global_context(F.adaptive_avg_pool2d(x, 1))  # (B, C_last, 1, 1) broadcast
        for stage in self.decoder:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        logits = self.head(x)  # (B, num_classes, S/2, S/2)
        if output_size is not None:
            logits = F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
        return logits

    @staticmethod
    def normalize(photos_uint8: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 (or 0..255 floats) -> float in [-1, 1]."""
        return photos_uint8.float() / 127.5 - 1.0

    def _pixel_values(self, photos: list[Image.Image], size: int | None = None) -> torch.Tensor:
        size = size or self.config.sample_size
        batch = np.stack([resize_photo(photo, size) for photo in photos])  # (B, S, S, 3)
        pixels = self.normalize(torch.from_numpy(batch).permute(0, 3, 1, 2))
        return pixels.to(device=self.device, dtype=self.dtype)

    def _official_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        logits = self(pixel_values)  # (B, C, S/2, S/2)
        if self.config.test_time_flip:
            mirrored = self(pixel_values.flip(-1)).flip(-1)[:, self.mirrored_class_ids]
            logits = (logits + mirrored) / 2
        return logits

    def _photo_logits(self, photos: list[Image.Image]) -> torch.Tensor:
        sizes = sorted({self.config.sample_size, *self.config.test_time_sizes}, reverse=True)
        if len(sizes) == 1:
            return super()._photo_logits(photos)
        total = None
        for size in sizes:  # largest first: its logits set the common resolution
            logits = self._official_logits(self._pixel_values(photos, size))  # (B, C, ~size/2, ~size/2)
            if total is not None:
                logits = F.interpolate(logits, size=total.shape[-2:], mode="bilinear", align_corners=False)
            log_probabilities = logits.float().log_softmax(dim=1)
            total = log_probabilities if total is None else total + log_probabilities
        return total / len(sizes)


# --------------------------------------------------------------------------------------------
# BiSeNet wrapper
# --------------------------------------------------------------------------------------------


class BiSeNetParser(nn.Module, PhotoParserMixin):
    """A face-parsing.PyTorch BiSeNet behind the ``parse`` API (official ids out).

    Photos are resized to 512 x 512 and ImageNet-normalised (``facemogle.eval.bisenet``); the main
    head's logits are reordered to the official label order, upsampled to 512 x 512
    (``align_corners=True``, as in the original), then to each photo's size.
    """

    def __init__(self, net: BiSeNet):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, RGB_CHANNELS, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, RGB_CHANNELS, 1, 1), persistent=False)
        self.register_buffer("official_to_bisenet", torch.tensor(OFFICIAL_TO_BISENET), persistent=False)

    def _pixel_values(self, photos: list[Image.Image]) -> torch.Tensor:
        batch = np.stack([resize_photo(photo, BISENET_INPUT_SIZE) for photo in photos])  # (B, 512, 512, 3)
        pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float().to(self.mean.device) / 255.0
        return (pixels - self.mean) / self.std

    def _official_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        logits = self.net.predict_logits(pixel_values)  # (B, 19, 64, 64), BiSeNet order
        logits = F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=True)
        return logits[:, self.official_to_bisenet]  # (B, 19, 512, 512), official order


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_parser(path_or_none: str | os.PathLike | None = None) -> FaceParser | BiSeNetParser:
    """A face parser in eval mode on the CPU.

    Args:
        path_or_none: ``None`` for the shipped weights; a directory written by
            ``FaceParser.save_pretrained``; or a face-parsing.PyTorch BiSeNet ``.pth`` state dict
            (recognised by its parameter names).

    Raises:
        CheckpointError: the path holds neither, or its weights do not match the architecture.
    """
    path = SHIPPED_PARSER_DIR if path_or_none is None else Path(path_or_none)
    if path.is_dir():
        if not (path / FaceParser.config_name).is_file():
            what = "the shipped parser weights are missing" if path_or_none is None else "no FaceParser config"
            raise CheckpointError(f"{what}: {str(path)!r} has no {FaceParser.config_name}")
        try:
            parser = FaceParser.from_pretrained(path, torch_dtype=torch.float32)  # weights may be stored as fp16
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
            raise CheckpointError(f"cannot load a FaceParser from {str(path)!r}: {err}") from None
        return parser.eval()
    if path.is_file():
        return BiSeNetParser(load_bisenet(path)).eval()
    raise CheckpointError(f"parser {str(path)!r} does not exist (give a FaceParser folder or a BiSeNet .pth)")


# --------------------------------------------------------------------------------------------
# Validation protocol
# --------------------------------------------------------------------------------------------


def find_image(images_dir: Path, stem: str) -> Path:
    for extension in IMAGE_EXTENSIONS:
        candidate = images_dir / f"{stem}{extension}"
        if candidate.is_file():
            return candidate
    raise InputError(f"no image for stem {stem!r} in {str(images_dir)!r}")


def evaluate_parser(
    parser: PhotoParserMixin,
    dataset_dir: str | os.PathLike,
    stems: Iterable[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict:
    """Per-class and mean IoU of ``parser`` on ``dataset_dir/{images,masks}/<stem>.*``.

    Every image is parsed at its own resolution (the masks' resolution) and all pixels are
    accumulated into one confusion matrix before the IoUs are taken.

    Returns:
        ``{"per_class_iou": {name: iou}, "mean_iou": float, "num_images": int, "confusion": (C, C)}``.
    """
    from facemogle.masks import load_mask

    dataset_dir = Path(dataset_dir)
    stems = list(stems)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for start in range(0, len(stems), batch_size):
        chunk = stems[start : start + batch_size]
        photos = [find_image(dataset_dir / "images", stem) for stem in chunk]
        predictions = parser.parse(photos, batch_size=batch_size)
        for stem, predicted in zip(chunk, predictions):
            target = load_mask(dataset_dir / "masks" / f"{stem}.png")
            confusion += confusion_matrix(predicted, target)
    ious = iou_per_class(confusion)
    return {
        "per_class_iou": {name: float(iou) for name, iou in zip(CLASS_NAMES, ious)},
        "mean_iou": float(np.nanmean(ious)),
        "num_images": len(stems),
        "confusion": confusion,
    }
