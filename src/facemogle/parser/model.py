"""``FaceParser``: the shipped face parser network (a compact U-Net), a diffusers ``ModelMixin``.

Photos are resized to ``sample_size`` x ``sample_size`` (bilinear, antialiased, aspect ratio not
kept: faces are expected roughly square and centred, as in CelebA-HQ/FFHQ), scaled to [-1, 1], and
two channels of normalised (y, x) coordinates are appended (they make left/right classes a matter of
position, which the flip-with-swap augmentation keeps consistent). A stride-2 stem and
``len(block_channels) - 1`` further stride-2 stages make the encoder; a global-average context vector
is added at the bottleneck; the decoder upsamples and fuses the skip features back to
``sample_size / 2``; a 1x1 head gives the logits, which are upsampled (bilinear) to each photo's size
before the argmax (``PhotoParserMixin.parse``, ``facemogle.parser.inference``).

``save_pretrained(DIR)`` writes ``config.json`` + safetensors weights; ``load_parser(DIR)``
(``facemogle.parser.loading``) reads them back. The shipped weights are trained by
``facemogle.parser.training`` (``scripts/train_parser.py``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from PIL import Image
from torch import nn

from facemogle.errors import InputError
from facemogle.labels import NUM_CLASSES
from facemogle.parser.inference import RGB_CHANNELS, ImageSource, PhotoParserMixin, open_image, resize_photo
from facemogle.parser.mirror import mirrored_class_ids

COORD_CHANNELS = 2  # (y, x) in [-1, 1]


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
        """Test-time flip: the logits of the photo averaged with those of its mirror image."""
        logits = self(pixel_values)  # (B, C, S/2, S/2)
        if self.config.test_time_flip:
            mirrored = self(pixel_values.flip(-1)).flip(-1)[:, self.mirrored_class_ids]
            logits = (logits + mirrored) / 2
        return logits

    def _photo_logits(self, photos: list[Image.Image]) -> torch.Tensor:
        """Multi-scale testing: log-probabilities averaged over ``sample_size`` and ``test_time_sizes``."""
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
