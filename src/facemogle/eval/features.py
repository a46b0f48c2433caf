"""Feature extractors of the evaluation metrics, loaded from a local path or a hub id.

* ``InceptionFeatures``: the FID Inception-v3 (``facemogle.eval.inception``) on clean-fid "clean"
  299 x 299 resizes -> ``(B, 2048)`` pool3 features (FID, KID).
* ``ClipEncoder``: a transformers ``CLIPModel`` -> L2-normalised ``(B, P)`` image / text embeddings
  (CLIP ViT-B/16 for the text score, CLIP ViT-L/14-336 for CMMD with ``preprocessing="cmmd"``).
* ``DinoKeys``: a transformers ``ViTModel`` (DINO ViT-B/8) -> the keys of its last self-attention
  layer ``(B, T, C)`` (heads concatenated, CLS token first), captured by a forward hook on the key
  projection, and their cosine self-similarity ``(B, T, T)`` (the DINO structure distance).

Nothing here downloads unless a hub id is given with ``local_files_only=False``; tests build tiny
random models from configs, save them, and load them back through these loaders. Each extractor
has an ``identity`` string (source, file fingerprint, preprocessing) that keys the feature cache.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from facemogle.errors import CheckpointError, InputError
from facemogle.eval.inception import (
    INCEPTION_FEATURE_DIM,
    INCEPTION_IMAGE_SIZE,
    TF_INPUT_OFFSET,
    TF_INPUT_SCALE,
    FIDInceptionV3,
)
from facemogle.eval.preprocess import ImagePreprocessor, clean_resize
from facemogle.eval.protocol import DINO_INPUT_MODES

#: Weight files recognised in a folder given as the Inception source.
INCEPTION_WEIGHT_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".bin", ".safetensors")
#: File name of the pytorch-fid release of the FID Inception weights.
PYTORCH_FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


# --------------------------------------------------------------------------------------------
# Sources and fingerprints
# --------------------------------------------------------------------------------------------


def resolve_source(source: str | os.PathLike, *, what: str) -> str:
    """A local path that exists, or a hub id (``org/name``); anything else is an error.

    Raises:
        CheckpointError: ``source`` looks like a path (``./x``, ``/x``, ``~/x``, ``a/b/c``) but
            does not exist.
    """
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists():
        return str(path)
    if not _HUB_ID.match(text):
        raise CheckpointError(f"{what} {text} does not exist (give a local path or a hub id such as org/name)")
    return text


def path_fingerprint(path: str | os.PathLike) -> str:
    """Short hash of a file's or folder's files (relative names, sizes, modification times)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        stat = file.stat()
        name = file.name if file == path else file.relative_to(path).as_posix()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _source_fingerprint(source: str, model: nn.Module) -> str:
    if Path(source).exists():
        return path_fingerprint(source)
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    return commit or "hub"


def _load_pretrained(model_class, source: str, *, what: str, local_files_only: bool, **kwargs):
    """``model_class.from_pretrained`` that refuses partial loads (a wrong model left half random)."""
    try:
        model, info = model_class.from_pretrained(
            source, local_files_only=local_files_only, dtype=torch.float32, output_loading_info=True, **kwargs
        )
    except Exception as error:  # transformers/hub raise OSError, ValueError, HF errors alike
        where = "locally" if local_files_only else "locally or on the hub"
        raise CheckpointError(
            f"cannot load the {what} from {source} ({where}): {type(error).__name__}: {error}"
        ) from None
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(entry[0]) if isinstance(entry, tuple) else str(entry) for entry in info.get("mismatched_keys") or ())
    if missing or mismatched:
        problems = missing or mismatched
        raise CheckpointError(
            f"cannot load the {what} from {source}: {len(problems)} weights of a {model_class.__name__} are "
            f"{'missing' if missing else 'of another shape'} (e.g. {', '.join(problems[:3])}); is it the right model?"
        )
    return model


def _to_device(images_tensor: torch.Tensor, model: nn.Module) -> torch.Tensor:
    parameter = next(model.parameters())
    return images_tensor.to(device=parameter.device, dtype=parameter.dtype)


# --------------------------------------------------------------------------------------------
# Inception (FID, KID)
# --------------------------------------------------------------------------------------------


class InceptionFeatures:
    """FID Inception-v3 pool3 features of PIL images (clean-fid "clean" mode).

    ``__call__(images)``: list of ``B`` PIL images (any size) -> ``(B, 2048)`` float32 on the CPU.
    """

    def __init__(self, model: FIDInceptionV3, *, source: str = "in-memory", fingerprint: str = "",
                 image_size: int = INCEPTION_IMAGE_SIZE):
        self.model = model.eval()
        self.image_size = image_size
        self.identity = self._identity(source, fingerprint, image_size, dict(model.config))

    @staticmethod
    def _identity(source: str, fingerprint: str, image_size: int, config: dict) -> str:
        return (
            f"fid-inception-v3|{source}|{fingerprint}|clean-resize-{image_size}|"
            f"offset={config['input_offset']}|scale={config['input_scale']}"
        )

    @staticmethod
    def weights_file(source: str | os.PathLike) -> Path:
        """The weights file of ``source``: the file itself, or the one weights file of a folder
        (pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` preferred).

        Raises:
            CheckpointError: the path is missing or the folder holds no (or several) weight files.
        """
        path = Path(source).expanduser()
        if not path.exists():
            raise CheckpointError(
                f"FID Inception weights {source} do not exist (give the path of {PYTORCH_FID_WEIGHTS_NAME} "
                "or a .safetensors copy)"
            )
        if path.is_dir():
            preferred = path / PYTORCH_FID_WEIGHTS_NAME
            candidates = [preferred] if preferred.is_file() else sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix in INCEPTION_WEIGHT_SUFFIXES
            )
            if len(candidates) != 1:
                raise CheckpointError(
                    f"{path}: expected one FID Inception weights file ({', '.join(INCEPTION_WEIGHT_SUFFIXES)}), "
                    f"found {len(candidates)}"
                )
            path = candidates[0]
        return path.resolve()

    @classmethod
    def identity_of(cls, source: str | os.PathLike, **config) -> str:
        """The ``identity`` that ``from_pretrained(source, **config)`` will have, without loading it
        (so cached features can be used without reading 100 MB of weights)."""
        path = cls.weights_file(source)
        full_config = {"input_offset": TF_INPUT_OFFSET, "input_scale": TF_INPUT_SCALE, **config}
        return cls._identity(str(path), path_fingerprint(path), INCEPTION_IMAGE_SIZE, full_config)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, *, device: str | torch.device = "cpu",
                        **config) -> "InceptionFeatures":
        """Load a weights file (``.pth`` state dict or ``.safetensors``) or a folder holding one.

        ``config``: ``FIDInceptionV3`` options (e.g. pytorch-fid's input normalisation).

        Raises:
            CheckpointError: see ``weights_file``; or the file is not FID Inception weights.
        """
        path = cls.weights_file(source)
        model = FIDInceptionV3.from_weights_file(path, **config).to(device)
        return cls(model, source=str(path), fingerprint=path_fingerprint(path))

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """``B`` PIL images -> ``(B, 3, 299, 299)`` float32 pixel values in ``[0, 255]``."""
        arrays = [clean_resize(image, self.image_size).transpose(2, 0, 1) for image in images]
        return torch.from_numpy(np.stack(arrays))

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        features = self.model(_to_device(self.preprocess(images), self.model))  # (B, 2048)
        assert features.shape[-1] == INCEPTION_FEATURE_DIM
        return features.float().cpu()


# --------------------------------------------------------------------------------------------
# CLIP (text score, CMMD)
# --------------------------------------------------------------------------------------------


class ClipEncoder:
    """CLIP image and text embeddings, L2-normalised.

    ``encode_images(images)``: ``B`` PIL images -> ``(B, P)`` float32 (CPU), ``P`` = projection dim.
    ``encode_texts(texts)``: ``B`` strings -> ``(B, P)`` float32 (CPU); texts longer than the
    model's context (77 tokens for OpenAI CLIP) are truncated.

    ``preprocessing``: "clip" (the model's processor: resize the short side, centre crop; as OpenAI
    CLIP and the paper's text score do) or "cmmd" (CMMD's: centre-crop the largest square, resize it
    bicubic to the model's input size).
    """

    def __init__(self, model: nn.Module, preprocessor: ImagePreprocessor, tokenizer=None, *,
                 source: str = "in-memory", fingerprint: str = ""):
        self.model = model.eval()
        self.preprocessor = preprocessor
        self.tokenizer = tokenizer
        self.identity = f"clip|{source}|{fingerprint}|{preprocessor.describe()}"

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        preprocessing: str = "clip",
        device: str | torch.device = "cpu",
        local_files_only: bool = False,
        with_tokenizer: bool = True,
    ) -> "ClipEncoder":
        """Load a ``CLIPModel`` (+ tokenizer, + ``preprocessor_config.json`` if any) from a folder or hub id.

        Raises:
            CheckpointError: the source is missing or not a CLIP model.
        """
        from transformers import AutoTokenizer, CLIPModel

        if preprocessing not in ("clip", "cmmd"):
            raise InputError(f"CLIP preprocessing must be 'clip' or 'cmmd', got {preprocessing!r}")
        source = resolve_source(source, what="CLIP model")
        model = _load_pretrained(CLIPModel, source, what="CLIP model", local_files_only=local_files_only)
        preprocessor = ImagePreprocessor.from_pretrained(
            source,
            default=ImagePreprocessor.clip_default(model.config.vision_config.image_size),
            default_to_square=False,
            local_files_only=local_files_only,
        )
        if preprocessing == "cmmd":
            preprocessor = preprocessor.for_cmmd()
        tokenizer = None
        if with_tokenizer:
            try:
                tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
            except Exception as error:
                raise CheckpointError(
                    f"cannot load the CLIP tokenizer from {source}: {type(error).__name__}: {error}"
                ) from None
        return cls(model.to(device), preprocessor, tokenizer, source=source,
                   fingerprint=_source_fingerprint(source, model))

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        pixel_values = _to_device(self.preprocessor(images), self.model)  # (B, 3, S, S)
        pooled = self.model.vision_model(pixel_values=pixel_values).pooler_output  # (B, hidden)
        embeddings = self.model.visual_projection(pooled)  # (B, P)
        return F.normalize(embeddings.float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise InputError("this CLIP encoder was loaded without a tokenizer")
        max_length = self.model.config.text_config.max_position_embeddings
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        device = next(self.model.parameters()).device
        pooled = self.model.text_model(
            input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
        ).pooler_output  # (B, hidden)
        embeddings = self.model.text_projection(pooled)  # (B, P)
        return F.normalize(embeddings.float(), dim=-1).cpu()


# --------------------------------------------------------------------------------------------
# DINO (structure distance)
# --------------------------------------------------------------------------------------------


def last_layer_key_projection(model: nn.Module) -> nn.Linear:
    """The key projection of the last transformer layer of a transformers ``ViTModel``.

    Handles both layouts: ``layers[-1].attention.k_proj`` (transformers >= 5) and
    ``encoder.layer[-1].attention.attention.key`` (older).
    """
    layers = getattr(model, "layers", None)
    if layers is None:
        layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not layers:
        raise CheckpointError(f"{type(model).__name__} has no transformer layers (expected a ViTModel)")
    for name, module in layers[-1].named_modules():
        if name.rsplit(".", 1)[-1] in ("k_proj", "key") and isinstance(module, nn.Linear):
            return module
    raise CheckpointError(f"the last layer of {type(model).__name__} has no key projection (k_proj / key)")


def cosine_self_similarity(tokens: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(B, T, C)`` tokens -> ``(B, T, T)`` cosine similarity of every token pair."""
    normed = tokens / tokens.norm(dim=-1, keepdim=True).clamp_min(eps)
    return normed @ normed.transpose(1, 2)


class DinoKeys:
    """Keys of the last self-attention layer of a DINO ViT, and their cosine self-similarity.

    ``keys(images)``: ``B`` PIL images -> ``(B, T, C)`` float32, ``T`` = 1 + patches (CLS first),
    ``C`` = heads x head dim (heads concatenated).
    ``self_similarity(images)``: -> ``(B, T, T)`` float32.

    ``input_mode``:

    * ``"reference"`` (default; reproduces the paper's "Mask" numbers): pixel values / 255 without
      mean/std normalisation, at the image's own resolution (position embeddings interpolated), as
      the Face-MoGLE evaluation script feeds its DINO. All images of a batch must have one size.
    * ``"imagenet"``: the model's processor (resize to its input size, ImageNet mean/std), as the
      Splice/PnP structure distance does.
    """

    def __init__(self, model: nn.Module, preprocessor: ImagePreprocessor, *, input_mode: str = "reference",
                 source: str = "in-memory", fingerprint: str = ""):
        if input_mode not in DINO_INPUT_MODES:
            raise InputError(f"DINO input mode must be one of {', '.join(DINO_INPUT_MODES)}, got {input_mode!r}")
        self.model = model.eval()
        self.input_mode = input_mode
        self.preprocessor = ImagePreprocessor.identity() if input_mode == "reference" else preprocessor
        self.key_projection = last_layer_key_projection(model)
        #: Smallest image side the model takes ("reference" mode feeds images at their own size).
        self.patch_size = int(getattr(getattr(model, "config", None), "patch_size", 1) or 1)
        self.identity = f"dino-keys|{source}|{fingerprint}|{input_mode}|{self.preprocessor.describe()}"

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        input_mode: str = "reference",
        device: str | torch.device = "cpu",
        local_files_only: bool = False,
    ) -> "DinoKeys":
        """Load a ``ViTModel`` (e.g. ``facebook/dino-vitb8``) from a folder or hub id.

        Raises:
            CheckpointError: the source is missing or not a ViT.
        """
        from transformers import ViTModel

        source = resolve_source(source, what="DINO model")
        model = _load_pretrained(
            ViTModel, source, what="DINO ViT", local_files_only=local_files_only, add_pooling_layer=False
        )
        preprocessor = ImagePreprocessor.from_pretrained(
            source,
            default=ImagePreprocessor.imagenet_default(model.config.image_size),
            default_to_square=True,
            local_files_only=local_files_only,
        )
        return cls(model.to(device), preprocessor, input_mode=input_mode, source=source,
                   fingerprint=_source_fingerprint(source, model))

    def _keys_of_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = self.key_projection.register_forward_hook(lambda _m, _i, output: captured.append(output))
        try:
            self.model(pixel_values=_to_device(pixel_values, self.model), interpolate_pos_encoding=True)
        finally:
            handle.remove()
        return captured[-1]  # (B, T, C)

    @torch.no_grad()
    def keys(self, images: list[Image.Image]) -> torch.Tensor:
        if self.input_mode == "reference" and len({image.size for image in images}) > 1:
            raise InputError("DINO keys in 'reference' mode need images of one size per batch")
        if self.input_mode == "reference" and any(min(image.size) < self.patch_size for image in images):
            small = next(image for image in images if min(image.size) < self.patch_size)
            raise InputError(f"DINO keys in 'reference' mode need images of at least {self.patch_size}x"
                             f"{self.patch_size} pixels (the patch size), got {small.width}x{small.height}")
        return self._keys_of_pixels(self.preprocessor(images)).float()

    @torch.no_grad()
    def self_similarity(self, images: list[Image.Image]) -> torch.Tensor:
        return cosine_self_similarity(self.keys(images))  # (B, T, T)
