"""Image preprocessing of the evaluation feature extractors, in PIL and numpy only (no torchvision).

* ``clean_resize``: clean-fid's "clean" resize for the FID Inception: each channel of the uint8
  image, as 32-bit float, resized with PIL's bicubic filter (which antialiases), then clipped to
  ``[0, 255]``, with no quantisation back to uint8.
* ``ImagePreprocessor``: what ``CLIPImageProcessor`` / ``ViTImageProcessor`` do with their PIL
  backend: resize (shortest edge or exact size) on the uint8 image with PIL, centre crop, rescale
  to ``[0, 1]``, normalise with a mean and std. ``from_pretrained`` reads the model's
  ``preprocessor_config.json`` when there is one. Two protocol variants exist:
  ``for_cmmd`` (CMMD: centre-crop the largest square first, then resize to the crop size) and
  ``identity`` (the reference DINO structure metric: pixels / 255 at the image's own size).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from PIL import Image

#: OpenAI CLIP normalisation (``image_mean`` / ``image_std`` of the CLIP processors).
OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
#: ImageNet normalisation (DINO was trained with it).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: uint8 -> [0, 1].
UINT8_RESCALE: float = 1.0 / 255.0
PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"


def clean_resize(image: Image.Image, size: int) -> np.ndarray:
    """clean-fid's "clean" resize: ``(H, W)`` RGB image -> ``(size, size, 3)`` float32 in ``[0, 255]``."""
    pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
    channels = []
    for channel in range(pixels.shape[-1]):
        plane = Image.fromarray(pixels[..., channel].astype(np.float32))  # mode "F"
        channels.append(np.asarray(plane.resize((size, size), Image.Resampling.BICUBIC)))
    return np.clip(np.stack(channels, axis=-1), 0.0, 255.0).astype(np.float32)


def _size_pair(value, *, default_to_square: bool) -> tuple[str, tuple[int, int] | int]:
    """HF ``size`` entry -> ("exact", (h, w)) or ("shortest_edge", n)."""
    if isinstance(value, int):
        return ("exact", (value, value)) if default_to_square else ("shortest_edge", value)
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return "shortest_edge", int(value["shortest_edge"])
        if "height" in value and "width" in value:
            return "exact", (int(value["height"]), int(value["width"]))
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return "exact", (int(value[0]), int(value[1]))
    raise ValueError(f"unsupported image processor size {value!r}")


@dataclass(frozen=True)
class ImagePreprocessor:
    """PIL images -> ``(B, 3, H, W)`` float32 pixel values, like transformers' PIL image processors.

    Steps, in order, each optional: centre-crop the largest square (``square_crop_first``), resize
    with PIL (``resize_mode`` "shortest_edge": the short side becomes ``resize_to[0]`` and the long
    side ``int(size * long / short)``; "exact": to ``resize_to`` = (height, width)), centre crop to
    ``crop_size`` (offsets ``(H - h) // 2``, ``(W - w) // 2``), multiply by ``rescale_factor``,
    subtract ``mean`` and divide by ``std`` per channel.
    """

    resize_mode: str | None = "shortest_edge"  # "shortest_edge", "exact" or None
    resize_to: tuple[int, ...] = (224,)
    crop_size: tuple[int, int] | None = (224, 224)
    resample: int = int(Image.Resampling.BICUBIC)
    rescale_factor: float = UINT8_RESCALE
    mean: tuple[float, ...] | None = OPENAI_CLIP_MEAN
    std: tuple[float, ...] | None = OPENAI_CLIP_STD
    square_crop_first: bool = False

    # ----------------------------------------------------------------------------------------
    # Construction
    # ----------------------------------------------------------------------------------------

    @classmethod
    def clip_default(cls, image_size: int) -> "ImagePreprocessor":
        """``CLIPImageProcessor`` defaults for a model with ``image_size`` inputs."""
        return cls(resize_to=(image_size,), crop_size=(image_size, image_size))

    @classmethod
    def imagenet_default(cls, image_size: int) -> "ImagePreprocessor":
        """Resize the short side to ``image_size`` (bilinear), centre crop, ImageNet mean/std."""
        return cls(
            resize_to=(image_size,),
            crop_size=(image_size, image_size),
            resample=int(Image.Resampling.BILINEAR),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )

    @classmethod
    def identity(cls) -> "ImagePreprocessor":
        """Pixels / 255 at the image's own size: no resize, crop or mean/std."""
        return cls(resize_mode=None, resize_to=(), crop_size=None, mean=None, std=None)

    @classmethod
    def from_processor_config(
        cls, config: dict, *, default: "ImagePreprocessor", default_to_square: bool
    ) -> "ImagePreprocessor":
        """Read a transformers ``preprocessor_config.json`` dict; absent entries come from ``default``.

        ``default_to_square``: how an integer ``size`` is read (CLIP: shortest edge, ViT: square).
        """
        fields = asdict(default)
        if config.get("do_resize", True) and "size" in config:
            mode, size = _size_pair(config["size"], default_to_square=default_to_square)
            fields["resize_mode"] = mode
            fields["resize_to"] = size if isinstance(size, tuple) else (size,)
        elif not config.get("do_resize", True):
            fields["resize_mode"], fields["resize_to"] = None, ()
        if "do_center_crop" in config or "crop_size" in config:
            if config.get("do_center_crop", True) and config.get("crop_size") is not None:
                fields["crop_size"] = _size_pair(config["crop_size"], default_to_square=True)[1]
            elif not config.get("do_center_crop", True):
                fields["crop_size"] = None
        elif fields["resize_mode"] == "exact":
            fields["crop_size"] = None  # ViT processors do not crop
        if "resample" in config:
            fields["resample"] = int(config["resample"])
        if not config.get("do_rescale", True):
            fields["rescale_factor"] = 1.0
        elif "rescale_factor" in config:
            fields["rescale_factor"] = float(config["rescale_factor"])
        if not config.get("do_normalize", True):
            fields["mean"], fields["std"] = None, None
        else:
            if "image_mean" in config:
                fields["mean"] = tuple(float(v) for v in np.broadcast_to(config["image_mean"], 3))
            if "image_std" in config:
                fields["std"] = tuple(float(v) for v in np.broadcast_to(config["image_std"], 3))
        return cls(**fields)

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        default: "ImagePreprocessor",
        default_to_square: bool,
        local_files_only: bool = False,
    ) -> "ImagePreprocessor":
        """The preprocessing of a model folder or hub id (``default`` when it has no processor config)."""
        from transformers.utils import cached_file

        try:
            path = cached_file(
                os.fspath(source),
                PREPROCESSOR_CONFIG_NAME,
                local_files_only=local_files_only,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except OSError:
            path = None
        if path is None:
            return default
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
        return cls.from_processor_config(config, default=default, default_to_square=default_to_square)

    def for_cmmd(self) -> "ImagePreprocessor":
        """CMMD's protocol: centre-crop the largest square, resize it (bicubic) to the crop size."""
        side = self.crop_size or (self.resize_to * 2)[:2]
        return replace(self, square_crop_first=True, resize_mode="exact", resize_to=tuple(side), crop_size=None)

    # ----------------------------------------------------------------------------------------
    # Application
    # ----------------------------------------------------------------------------------------

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        """Target (width, height) of the resize step."""
        if self.resize_mode == "exact":
            return self.resize_to[1], self.resize_to[0]
        short, long = (width, height) if width <= height else (height, width)
        new_short = self.resize_to[0]
        new_long = int(new_short * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def pixels(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> ``(3, H, W)`` float32."""
        image = image.convert("RGB")
        if self.square_crop_first:
            width, height = image.size
            side = min(width, height)
            top, left = (height - side) // 2, (width - side) // 2
            image = image.crop((left, top, left + side, top + side))
        if self.resize_mode is not None:
            size = self._resized_size(*image.size)
            if size != image.size:
                image = image.resize(size, Image.Resampling(self.resample))
        array = np.asarray(image)  # (H, W, 3) uint8
        if self.crop_size is not None:
            height, width = array.shape[:2]
            crop_h, crop_w = self.crop_size
            if crop_h > height or crop_w > width:
                raise ValueError(f"centre crop {self.crop_size} is larger than the resized image {(height, width)}")
            top, left = (height - crop_h) // 2, (width - crop_w) // 2
            array = array[top : top + crop_h, left : left + crop_w]
        values = array.astype(np.float32) * np.float32(self.rescale_factor)
        if self.mean is not None and self.std is not None:
            values = (values - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(values.transpose(2, 0, 1))  # (3, H, W)

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """``B`` PIL images (same output size) -> ``(B, 3, H, W)`` float32."""
        return torch.from_numpy(np.stack([self.pixels(image) for image in images]))

    def describe(self) -> str:
        """A stable text form (part of the feature-cache identity)."""
        return json.dumps(asdict(self), sort_keys=True)
