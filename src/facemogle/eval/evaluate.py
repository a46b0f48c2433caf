"""The paper's evaluation on folders of images: ``evaluate(EvaluationSettings(...)) -> report``.

Metrics (names for ``EvaluationSettings.metrics`` / ``--metrics``):

=========  =============================================================  ========================
``fid``    FID, clean-fid "clean" protocol, generated vs real photos      ``inception`` weights
``kid``    KID x 1000 (100 subsets of up to 1000, seeded)                 ``inception`` weights
``cmmd``   CMMD x 1000, CLIP ViT-L/14-336, RBF sigma 10                   ``clip_large`` model
``text``   mean 100 x cosine(image, prompt), CLIP ViT-B/16                ``clip`` model + prompts
``dino``   DINO ViT-B/8 structure distance, per image and as the paper    ``dino`` model
``ir``     ImageReward v1.0, mean (optional ImageReward package)          ``image_reward`` folder
``miou``   face parsing of generated images vs input masks: mIoU, acc.    ``masks`` (+ ``parser``)
=========  =============================================================  ========================

The generated folder defines the image set; real photos, masks and prompts are paired with it by
file stem (``facemogle.eval.image_sets``). Features are cached per folder and extractor
(``facemogle.eval.cache``). The returned report is a JSON-ready dictionary; ``facemogle.eval.report``
renders it as the paper's Table 1.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from facemogle import __version__
from facemogle.errors import InputError
from facemogle.eval.cache import CACHE_FOLDER_NAME, FeatureCache
from facemogle.eval.features import ClipEncoder, DinoKeys, InceptionFeatures
from facemogle.eval.image_sets import list_images, load_prompts, load_rgb, paired_files
from facemogle.eval.metrics import (
    SegmentationAccumulator,
    clip_text_scores,
    cmmd,
    frechet_distance,
    kernel_distance,
    reference_structure_distance,
    structure_distances,
)
from facemogle.eval.protocol import (
    DINO_INPUT_MODES,
    DINO_REFERENCE_BATCH_SIZE,
    KID_MAX_SUBSET_SIZE,
    KID_NUM_SUBSETS,
    KID_SCALE,
    METRICS,
)

_NEEDS_REAL = ("fid", "kid", "cmmd", "dino")
_NEEDS_PROMPTS = ("text", "ir")
#: Metrics comparing two image sets' statistics (at least 2 images each).
NEEDS_TWO_IMAGES = ("fid", "kid", "cmmd")
#: Which ``EvaluationSettings`` field (and CLI flag) each metric needs, and what it is.
_EXTRACTOR_OF_METRIC: dict[str, tuple[str, str, str]] = {
    "fid": ("inception", "--inception", "the FID Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth)"),
    "kid": ("inception", "--inception", "the FID Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth)"),
    "cmmd": ("clip_large", "--clip-large", "a CLIP ViT-L/14-336 model (e.g. openai/clip-vit-large-patch14-336)"),
    "text": ("clip", "--clip", "a CLIP ViT-B/16 model (e.g. openai/clip-vit-base-patch16)"),
    "dino": ("dino", "--dino", "a DINO ViT-B/8 model (e.g. facebook/dino-vitb8)"),
    "ir": ("image_reward", "--image-reward", "a folder with ImageReward.pt and med_config.json"),
}


def parse_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """``"fid,kid"`` or ``["fid", "kid"]`` -> ``("fid", "kid")`` in table order; ``"all"`` = every metric.

    Raises:
        InputError: empty list or unknown names.
    """
    names = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    names = [name.strip().lower() for name in names if name.strip()]
    if names == ["all"]:
        return METRICS
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise InputError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)} (or all)")
    if not names:
        raise InputError(f"no metric given; choose from {', '.join(METRICS)}")
    return tuple(name for name in METRICS if name in names)


@dataclass
class EvaluationSettings:
    """What to evaluate and with which models (one field per ``facemogle evaluate`` option)."""

    generated: Path
    metrics: tuple[str, ...] = ("fid", "kid")
    real: Path | None = None
    masks: Path | None = None
    prompts: Path | None = None
    inception: str | None = None
    clip: str | None = None
    clip_large: str | None = None
    dino: str | None = None
    parser: str | None = None
    image_reward: str | None = None
    batch_size: int = 32
    device: str = "cpu"
    local_files_only: bool = False
    cache: bool = True
    cache_dir: Path | None = None
    kid_subsets: int = KID_NUM_SUBSETS
    kid_subset_size: int = KID_MAX_SUBSET_SIZE
    seed: int = 0
    dino_input: str = "reference"
    label: str | None = None
    progress: bool = True


def load_face_parser(path_or_none: str | None):
    """The face parser of the ``miou`` metric (``facemogle.parser.load_parser``), imported lazily."""
    from facemogle.parser import load_parser

    return load_parser(path_or_none)


def check_settings(settings: EvaluationSettings, metrics: tuple[str, ...]) -> None:
    if settings.batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {settings.batch_size}")
    if settings.dino_input not in DINO_INPUT_MODES:
        raise InputError(f"DINO input must be one of {', '.join(DINO_INPUT_MODES)}, got {settings.dino_input!r}")
    if settings.kid_subsets < 1 or settings.kid_subset_size < 2:
        raise InputError("KID needs at least 1 subset of at least 2 images")
    needing_real = [m for m in metrics if m in _NEEDS_REAL]
    if needing_real and settings.real is None:
        raise InputError(f"metric(s) {', '.join(needing_real)} compare with real photos: give --real DIR")
    needing_prompts = [m for m in metrics if m in _NEEDS_PROMPTS]
    if needing_prompts and settings.prompts is None:
        raise InputError(f"metric(s) {', '.join(needing_prompts)} need the prompts: give --prompts FILE")
    if "miou" in metrics and settings.masks is None:
        raise InputError("metric miou compares with the input masks: give --masks DIR")
    for metric in metrics:
        if metric in _EXTRACTOR_OF_METRIC:
            attribute, flag, what = _EXTRACTOR_OF_METRIC[metric]
            if not getattr(settings, attribute):
                raise InputError(f"metric {metric} needs {what}: give {flag} PATH_OR_ID")


class _Evaluation:
    """One run: the paired file lists, the caches, and a method per metric family."""

    def __init__(self, settings: EvaluationSettings, metrics: tuple[str, ...], parser=None):
        self.settings = settings
        self.metrics = metrics
        self.parser = parser
        generated = list_images(settings.generated, what="generated image")
        self.stems = list(generated)
        self.generated_paths = list(generated.values())
        self.real_paths = (
            paired_files(self.stems, settings.real, what="real photo")
            if any(m in _NEEDS_REAL for m in metrics)
            else None
        )
        self.mask_paths = paired_files(self.stems, settings.masks, what="mask") if "miou" in metrics else None
        self.prompts = (
            load_prompts(settings.prompts, self.stems) if any(m in _NEEDS_PROMPTS for m in metrics) else None
        )
        too_few = [m for m in metrics if m in NEEDS_TWO_IMAGES]
        if too_few and len(self.stems) < 2:
            raise InputError(f"metric(s) {', '.join(too_few)} need at least 2 images, got {len(self.stems)}")
        self.results: dict = {}
        self.extractors: dict[str, str] = {}

    # ---------------------------------------------------------------------------------------

    def _cache(self, folder: Path) -> FeatureCache:
        if not self.settings.cache:
            return FeatureCache(None)
        return FeatureCache(self.settings.cache_dir or Path(folder) / CACHE_FOLDER_NAME)

    def _batches(self, count: int, description: str):
        starts = range(0, count, self.settings.batch_size)
        return tqdm(starts, desc=description, disable=not self.settings.progress, unit="batch")

    def _image_features(
        self, paths: list[Path], encode: Callable[[list[Image.Image]], torch.Tensor], *, kind: str,
        identity: str, description: str,
    ) -> torch.Tensor:
        """``(N, D)`` features of ``paths`` in batches, cached beside the images.

        Only one batch of ``settings.batch_size`` images is decoded at a time (the list is dropped
        as soon as ``encode`` returns); what is kept is the ``(b, D)`` features of each batch.
        """

        def compute() -> dict[str, torch.Tensor]:
            chunks = []
            for start in self._batches(len(paths), description):
                chunks.append(encode([load_rgb(path) for path in paths[start : start + self.settings.batch_size]]))
            return {"features": torch.cat(chunks)}

        cache = self._cache(paths[0].parent)
        return cache.get_or_compute(kind, paths, identity, compute)["features"]

    # ---------------------------------------------------------------------------------------

    def inception_metrics(self) -> None:
        settings = self.settings
        identity = InceptionFeatures.identity_of(settings.inception)
        loaded: list[InceptionFeatures] = []

        def inception(images: list[Image.Image]) -> torch.Tensor:  # loads the weights on a cache miss only
            if not loaded:
                loaded.append(InceptionFeatures.from_pretrained(settings.inception, device=settings.device))
                assert loaded[0].identity == identity
            return loaded[0](images)

        self.extractors["inception"] = identity
        generated = self._image_features(self.generated_paths, inception, kind="inception",
                                         identity=identity, description="Inception (generated)")
        real = self._image_features(self.real_paths, inception, kind="inception",
                                    identity=identity, description="Inception (real)")
        if "fid" in self.metrics:
            self.results["fid"] = frechet_distance(generated, real)
        if "kid" in self.metrics:
            kid = kernel_distance(generated, real, num_subsets=settings.kid_subsets,
                                  max_subset_size=settings.kid_subset_size, seed=settings.seed)
            self.results["kid_x1000"] = kid.mean * KID_SCALE
            self.results["kid_x1000_std"] = kid.std * KID_SCALE
            self.results["kid_subset_size"] = kid.subset_size

    def cmmd_metric(self) -> None:
        settings = self.settings
        clip = ClipEncoder.from_pretrained(settings.clip_large, preprocessing="cmmd", device=settings.device,
                                           local_files_only=settings.local_files_only, with_tokenizer=False)
        self.extractors["clip_large"] = clip.identity
        generated = self._image_features(self.generated_paths, clip.encode_images, kind="cmmd-clip",
                                         identity=clip.identity, description="CLIP-L (generated)")
        real = self._image_features(self.real_paths, clip.encode_images, kind="cmmd-clip",
                                    identity=clip.identity, description="CLIP-L (real)")
        self.results["cmmd_x1000"] = cmmd(generated, real)

    def text_metric(self) -> None:
        settings = self.settings
        clip = ClipEncoder.from_pretrained(settings.clip, preprocessing="clip", device=settings.device,
                                           local_files_only=settings.local_files_only)
        self.extractors["clip"] = clip.identity
        images = self._image_features(self.generated_paths, clip.encode_images, kind="text-clip",
                                      identity=clip.identity, description="CLIP (generated)")
        texts = torch.cat([
            clip.encode_texts(self.prompts[start : start + settings.batch_size])
            for start in self._batches(len(self.prompts), "CLIP (prompts)")
        ])
        scores = clip_text_scores(images, texts)
        self.results["text"] = float(scores.mean())

    def dino_metric(self) -> None:
        settings = self.settings
        dino = DinoKeys.from_pretrained(settings.dino, input_mode=settings.dino_input, device=settings.device,
                                        local_files_only=settings.local_files_only)
        self.extractors["dino"] = dino.identity

        def compute() -> dict[str, torch.Tensor]:
            distances = []
            for start in self._batches(len(self.stems), "DINO structure"):
                stop = start + settings.batch_size
                distances.append(self._dino_batch(dino, self.generated_paths[start:stop], self.real_paths[start:stop]))
            return {"distances": torch.from_numpy(np.concatenate(distances))}

        files = [*self.generated_paths, *self.real_paths]
        cache = self._cache(self.generated_paths[0].parent)
        per_image = cache.get_or_compute("dino-structure", files, dino.identity, compute,
                                         rows=len(self.stems))["distances"].numpy()  # (N,)
        self.results["dino_structure_per_image"] = float(per_image.mean())
        self.results["dino_structure_reference"] = reference_structure_distance(per_image, DINO_REFERENCE_BATCH_SIZE)

    @staticmethod
    def _dino_batch(dino: DinoKeys, generated_paths: list[Path], real_paths: list[Path]) -> np.ndarray:
        generated = [load_rgb(path) for path in generated_paths]
        if dino.input_mode == "reference":  # images go in at their own size: at least one patch
            for path, image in zip(generated_paths, generated):
                if min(image.size) < dino.patch_size:
                    raise InputError(
                        f"{path} is {image.width}x{image.height} pixels, smaller than the DINO patch "
                        f"({dino.patch_size}x{dino.patch_size}); the structure distance (--dino-input "
                        "reference) needs larger images, or use --dino-input imagenet"
                    )
        real = [load_rgb(path) for path in real_paths]
        if dino.input_mode == "reference":
            # Pairs are compared at the generated image's resolution (the reference needs equal sizes).
            real = [r if r.size == g.size else r.resize(g.size, Image.Resampling.BICUBIC) for g, r in zip(generated, real)]
        groups: dict[tuple[int, int] | None, list[int]] = defaultdict(list)
        for index, image in enumerate(generated):
            groups[image.size if dino.input_mode == "reference" else None].append(index)
        distances = np.empty(len(generated))
        for indices in groups.values():
            similarity_generated = dino.self_similarity([generated[i] for i in indices])  # (b, T, T)
            similarity_real = dino.self_similarity([real[i] for i in indices])  # (b, T, T)
            distances[indices] = structure_distances(similarity_generated, similarity_real)
        return distances

    def image_reward_metric(self) -> None:
        from facemogle.eval.image_reward import image_reward_scores, load_image_reward

        model = load_image_reward(self.settings.image_reward, device=self.settings.device)
        self.extractors["image_reward"] = f"image-reward|{self.settings.image_reward}"
        scores = image_reward_scores(model, self.prompts, self.generated_paths, progress=self.settings.progress)
        self.results["image_reward"] = float(scores.mean())

    def mask_metric(self) -> None:
        from facemogle.masks import load_mask, resize_mask

        parser = self.parser if self.parser is not None else load_face_parser(self.settings.parser)
        self.extractors["parser"] = self.settings.parser or type(parser).__name__
        accumulator = SegmentationAccumulator()
        for start in self._batches(len(self.stems), "face parsing"):
            stop = start + self.settings.batch_size
            # (b, H, W) uint8 official ids; the batch's images are dropped once parsed
            predicted = parser.parse([load_rgb(path) for path in self.generated_paths[start:stop]])
            for ids, mask_path in zip(predicted, self.mask_paths[start:stop]):
                reference = load_mask(mask_path)
                ids = np.asarray(ids, dtype=np.uint8)
                if ids.shape != reference.shape:
                    ids = resize_mask(ids, reference.shape)
                accumulator.update(ids, reference)
        scores = accumulator.scores()
        self.results["mask_miou"] = scores.miou
        self.results["mask_pixel_accuracy"] = scores.pixel_accuracy
        self.results["mask_miou_per_image"] = scores.miou_per_image
        self.results["mask_per_class_iou"] = scores.per_class_iou

    # ---------------------------------------------------------------------------------------

    def run(self) -> dict:
        if "fid" in self.metrics or "kid" in self.metrics:
            self.inception_metrics()
        steps = {"cmmd": self.cmmd_metric, "dino": self.dino_metric, "text": self.text_metric,
                 "ir": self.image_reward_metric, "miou": self.mask_metric}
        for metric, step in steps.items():
            if metric in self.metrics:
                step()
        settings = self.settings
        return {
            "facemogle_version": __version__,
            "label": settings.label or Path(settings.generated).name,
            "metrics_requested": list(self.metrics),
            "inputs": {
                "generated": str(settings.generated),
                "real": None if settings.real is None else str(settings.real),
                "masks": None if settings.masks is None else str(settings.masks),
                "prompts": None if settings.prompts is None else str(settings.prompts),
                "num_images": len(self.stems),
            },
            "metrics": self.results,
            "settings": {
                "batch_size": settings.batch_size,
                "device": str(settings.device),
                "kid_subsets": settings.kid_subsets,
                "kid_max_subset_size": settings.kid_subset_size,
                "seed": settings.seed,
                "dino_input": settings.dino_input,
                "dino_reference_batch_size": DINO_REFERENCE_BATCH_SIZE,
                "cache": settings.cache,
            },
            "extractors": self.extractors,
        }


def evaluate(settings: EvaluationSettings, *, parser=None) -> dict:
    """Compute ``settings.metrics`` and return the report (JSON-ready; see ``facemogle.eval.report``).

    ``parser``: an object with ``parse(list[PIL.Image]) -> (B, H, W) uint8`` official ids for the
    ``miou`` metric; by default ``load_face_parser(settings.parser)``.

    Raises:
        InputError: unknown metrics, missing inputs or models, unpaired or unreadable files.
        CheckpointError: a model cannot be loaded.
    """
    metrics = parse_metrics(settings.metrics)
    check_settings(settings, metrics)
    return _Evaluation(settings, metrics, parser).run()


__all__ = ["METRICS", "EvaluationSettings", "evaluate", "load_face_parser", "parse_metrics"]
