"""Evaluation metrics as plain functions on feature arrays (METHOD.md section 8).

Inputs may be numpy arrays or torch tensors; statistics are computed in float64 with numpy.

==========================  =================================================================
``frechet_distance``        FID: Fréchet distance of two Gaussians fitted to Inception features
``kernel_distance``         KID: unbiased MMD^2 with the cubic polynomial kernel, averaged over
                            random subsets (clean-fid / torchmetrics protocol); x ``KID_SCALE``
                            for the paper's numbers
``cmmd``                    CMMD: MMD^2 of CLIP embeddings with an RBF kernel (sigma 10), x 1000
                            (kernel sums taken tile by tile: ``KERNEL_BLOCK_SIZE``)
``clip_text_scores``        100 x cosine(image embedding, text embedding), per image
``structure_distances``     per-image MSE between DINO key self-similarity matrices
``reference_structure_distance``  the reference's aggregate: per-batch sums averaged over batches
``segmentation_scores``     mIoU / pixel accuracy of predicted id maps against reference id maps
==========================  =================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from facemogle.eval.protocol import (
    CLIP_SCORE_SCALE,
    CMMD_SCALE,
    CMMD_SIGMA,
    DINO_REFERENCE_BATCH_SIZE,
    KID_DEGREE,
    KID_MAX_SUBSET_SIZE,
    KID_NUM_SUBSETS,
)
from facemogle.labels import CLASS_NAMES, NUM_CLASSES

#: CMMD sums its ``(N, M)`` kernel matrices in tiles of at most this many rows and columns (8 MB of
#: float64), so its memory does not grow with the square of the number of images (3,000 images:
#: 9 tiles per matrix instead of three 72 MB matrices and their temporaries). Sets of at most this
#: size are one tile: the same numbers as summing the whole matrix.
KERNEL_BLOCK_SIZE = 1024


def as_float64(array) -> np.ndarray:
    """numpy or torch -> float64 numpy array."""
    if isinstance(array, torch.Tensor):
        return array.detach().to("cpu", torch.float64).numpy()
    return np.asarray(array, dtype=np.float64)


def _as_feature_matrix(features, *, name: str, min_rows: int) -> np.ndarray:
    matrix = as_float64(features)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a (N, D) matrix, got shape {matrix.shape}")
    if matrix.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} samples, got {matrix.shape[0]}")
    return matrix


def _check_same_width(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature widths differ: {a.shape[1]} vs {b.shape[1]}")


# --------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """``(N, D)`` features -> mean ``(D,)`` and covariance ``(D, D)`` (unbiased, ``N - 1``)."""
    matrix = _as_feature_matrix(features, name="features", min_rows=2)
    return matrix.mean(axis=0), np.cov(matrix, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """``tr(sqrtm(sigma_a @ sigma_b))`` for covariance matrices, computed robustly.

    ``sigma_a @ sigma_b`` is similar to the symmetric PSD ``A^1/2 sigma_b A^1/2`` (``A^1/2`` the PSD
    root of ``sigma_a``), so the trace is the sum of the square roots of the latter's eigenvalues:
    two symmetric eigendecompositions, no complex round-off, and exact for singular covariances
    (fewer samples than dimensions), where ``scipy.linalg.sqrtm`` needs an epsilon offset.
    """
    root_a = _psd_sqrt(as_float64(sigma_a))
    middle = root_a @ as_float64(sigma_b) @ root_a
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance_from_statistics(mu_a, sigma_a, mu_b, sigma_b) -> float:
    """``||mu_a - mu_b||^2 + tr(sigma_a + sigma_b - 2 sqrtm(sigma_a sigma_b))``."""
    mu_a, mu_b = as_float64(mu_a), as_float64(mu_b)
    sigma_a, sigma_b = as_float64(sigma_a), as_float64(sigma_b)
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape:
        raise ValueError(f"statistics shapes differ: {mu_a.shape}/{sigma_a.shape} vs {mu_b.shape}/{sigma_b.shape}")
    mean_term = float(np.sum((mu_a - mu_b) ** 2))
    covariance_term = float(np.trace(sigma_a) + np.trace(sigma_b)) - 2.0 * trace_sqrt_product(sigma_a, sigma_b)
    return mean_term + covariance_term


def trace_sqrt_product_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """``tr(sqrtm(sigma_a @ sigma_b))`` of the two sets' covariances, without forming them.

    With centred features ``A`` (``N_a x D``) and ``B``, ``sigma_a sigma_b`` has the same non-zero
    eigenvalues as ``M M^T`` with ``M = A B^T / sqrt((N_a - 1)(N_b - 1))``, so the trace is the sum of
    the singular values of the ``N_a x N_b`` matrix ``M``: cheaper than ``D x D`` eigendecompositions
    when there are fewer samples than dimensions.
    """
    a = features_a - features_a.mean(axis=0)
    b = features_b - features_b.mean(axis=0)
    cross = a @ b.T / np.sqrt((a.shape[0] - 1) * (b.shape[0] - 1))  # (N_a, N_b)
    return float(np.linalg.svd(cross, compute_uv=False).sum())


def frechet_distance(features_a, features_b) -> float:
    """FID between two feature sets ``(N_a, D)`` and ``(N_b, D)`` (each needs N >= 2).

    Uses the ``N_a x N_b`` form of the trace term when a set has fewer samples than dimensions,
    the ``D x D`` one otherwise (same value up to round-off).
    """
    a = _as_feature_matrix(features_a, name="FID features", min_rows=2)
    b = _as_feature_matrix(features_b, name="FID features", min_rows=2)
    _check_same_width(a, b)
    if min(a.shape[0], b.shape[0]) < a.shape[1]:
        mean_term = float(np.sum((a.mean(axis=0) - b.mean(axis=0)) ** 2))
        variance_term = float(a.var(axis=0, ddof=1).sum() + b.var(axis=0, ddof=1).sum())
        return mean_term + variance_term - 2.0 * trace_sqrt_product_from_features(a, b)
    return frechet_distance_from_statistics(*feature_statistics(a), *feature_statistics(b))


# --------------------------------------------------------------------------------------------
# KID
# --------------------------------------------------------------------------------------------


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = KID_DEGREE) -> np.ndarray:
    """``(x @ y.T / D + 1) ** degree``: ``(N, D)``, ``(M, D)`` -> ``(N, M)``."""
    return (x @ y.T / x.shape[1] + 1.0) ** degree


def unbiased_mmd2(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples from their kernel matrices ``(m, m)``.

    Within-set sums leave out the diagonal (``1 / (m (m - 1))``); the cross term keeps every pair
    (``2 / m^2``), as clean-fid and torchmetrics compute KID.
    """
    m = k_xx.shape[0]
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


@dataclass(frozen=True)
class KernelDistance:
    """KID over random subsets: ``mean`` and ``std`` of the per-subset MMD^2 (not scaled)."""

    mean: float
    std: float
    subset_size: int
    num_subsets: int


def kernel_distance(
    features_a,
    features_b,
    *,
    num_subsets: int = KID_NUM_SUBSETS,
    max_subset_size: int = KID_MAX_SUBSET_SIZE,
    seed: int = 0,
) -> KernelDistance:
    """KID: unbiased polynomial-kernel MMD^2 averaged over ``num_subsets`` random subsets.

    Each subset draws ``m = min(N_a, N_b, max_subset_size)`` rows of each set without replacement
    (a ``numpy`` generator seeded with ``seed``: same inputs, same number).
    """
    a = _as_feature_matrix(features_a, name="KID features", min_rows=2)
    b = _as_feature_matrix(features_b, name="KID features", min_rows=2)
    _check_same_width(a, b)
    if num_subsets < 1 or max_subset_size < 2:
        raise ValueError("KID needs num_subsets >= 1 and max_subset_size >= 2")
    m = min(a.shape[0], b.shape[0], max_subset_size)
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for index in range(num_subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        values[index] = unbiased_mmd2(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))
    return KernelDistance(float(values.mean()), float(values.std()), m, num_subsets)


# --------------------------------------------------------------------------------------------
# CMMD
# --------------------------------------------------------------------------------------------


def rbf_kernel(x: np.ndarray, y: np.ndarray, sigma: float = CMMD_SIGMA) -> np.ndarray:
    """``exp(-||x_i - y_j||^2 / (2 sigma^2))``: ``(N, D)``, ``(M, D)`` -> ``(N, M)``."""
    squared = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.exp(-np.clip(squared, 0.0, None) / (2.0 * sigma**2))


def rbf_kernel_sums(x: np.ndarray, y: np.ndarray, sigma: float = CMMD_SIGMA) -> tuple[float, float]:
    """``(sum of every entry, trace)`` of ``rbf_kernel(x, y, sigma)``, computed in tiles of at most
    ``KERNEL_BLOCK_SIZE`` x ``KERNEL_BLOCK_SIZE`` (the full ``(N, M)`` matrix is never formed)."""
    block = KERNEL_BLOCK_SIZE
    total, trace = 0.0, 0.0
    for row in range(0, x.shape[0], block):
        for column in range(0, y.shape[0], block):
            tile = rbf_kernel(x[row : row + block], y[column : column + block], sigma)
            total += tile.sum()
            if row == column:  # the tile holds the diagonal entries row .. row + block - 1
                trace += np.trace(tile)
    return float(total), float(trace)


def cmmd(embeddings_a, embeddings_b, *, sigma: float = CMMD_SIGMA, unbiased: bool = False,
         scale: float = CMMD_SCALE) -> float:
    """CMMD: ``scale`` x MMD^2 of two embedding sets under an RBF kernel of bandwidth ``sigma``.

    Pass L2-normalised CLIP ViT-L/14-336 image embeddings (``ClipEncoder(preprocessing="cmmd")``).
    The default estimator is the CMMD paper's (Jayasumana et al. 2024): the minimum-variance
    V-statistic, means over full kernel matrices, so identical sets give exactly 0 and set sizes
    may differ. ``unbiased=True`` leaves the within-set diagonals out (``1 / (n (n - 1))``), an
    unbiased estimate of MMD^2 that can be slightly negative.
    """
    a = _as_feature_matrix(embeddings_a, name="CMMD embeddings", min_rows=2 if unbiased else 1)
    b = _as_feature_matrix(embeddings_b, name="CMMD embeddings", min_rows=2 if unbiased else 1)
    _check_same_width(a, b)
    n, m = a.shape[0], b.shape[0]
    (sum_aa, trace_aa), (sum_bb, trace_bb) = rbf_kernel_sums(a, a, sigma), rbf_kernel_sums(b, b, sigma)
    mean_ab = rbf_kernel_sums(a, b, sigma)[0] / (n * m)
    if unbiased:
        within_a = (sum_aa - trace_aa) / (n * (n - 1))
        within_b = (sum_bb - trace_bb) / (m * (m - 1))
        value = within_a + within_b - 2.0 * mean_ab
    else:
        value = sum_aa / (n * n) + sum_bb / (m * m) - 2.0 * mean_ab
    return float(scale * value)


# --------------------------------------------------------------------------------------------
# CLIP text score
# --------------------------------------------------------------------------------------------


def clip_text_scores(image_embeddings, text_embeddings) -> np.ndarray:
    """``100 x cosine`` of each (image, prompt) pair: ``(N, P)``, ``(N, P)`` -> ``(N,)``.

    The paper's "Text" column is the mean (``.mean()``), as its evaluation script computes it
    (OpenAI CLIP ViT-B/16, logit scale 100, no clamping).
    """
    images = as_float64(image_embeddings)
    texts = as_float64(text_embeddings)
    if images.shape != texts.shape or images.ndim != 2:
        raise ValueError(f"image and text embeddings must be (N, P) each, got {images.shape} and {texts.shape}")
    images = images / np.linalg.norm(images, axis=1, keepdims=True)
    texts = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    return CLIP_SCORE_SCALE * (images * texts).sum(axis=1)


# --------------------------------------------------------------------------------------------
# DINO structure distance
# --------------------------------------------------------------------------------------------


def structure_distances(similarity_generated, similarity_real) -> np.ndarray:
    """Per-image MSE between self-similarity matrices: ``(B, T, T)`` x 2 -> ``(B,)``."""
    generated = as_float64(similarity_generated)
    real = as_float64(similarity_real)
    if generated.shape != real.shape or generated.ndim != 3:
        raise ValueError(f"self-similarity batches must be (B, T, T) each, got {generated.shape} and {real.shape}")
    return ((generated - real) ** 2).mean(axis=(1, 2))


def reference_structure_distance(per_image, batch_size: int = DINO_REFERENCE_BATCH_SIZE) -> float:
    """The reference script's aggregate: sum per batch of ``batch_size`` images, mean over batches.

    About ``batch_size`` x the per-image mean (exactly so when ``batch_size`` divides N); this is
    the number in the paper's "Mask" column.
    """
    values = as_float64(per_image).reshape(-1)
    if values.size == 0:
        raise ValueError("no structure distances to aggregate")
    sums = [values[start : start + batch_size].sum() for start in range(0, values.size, batch_size)]
    return float(np.mean(sums))


# --------------------------------------------------------------------------------------------
# Mask control: mIoU / pixel accuracy
# --------------------------------------------------------------------------------------------


def confusion_matrix(predicted, reference, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 pixel counts, row = reference id, column = predicted id."""
    predicted = np.asarray(predicted)
    reference = np.asarray(reference)
    if predicted.shape != reference.shape:
        raise ValueError(f"id maps differ in shape: {predicted.shape} vs {reference.shape}")
    for name, ids in (("predicted", predicted), ("reference", reference)):
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(f"{name} ids must be in 0..{num_classes - 1}, found {ids.min()}..{ids.max()}")
    flat = reference.astype(np.int64).ravel() * num_classes + predicted.astype(np.int64).ravel()
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """``(C,)`` IoU = TP / (TP + FP + FN); NaN for classes absent from both maps."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / union, np.nan)


@dataclass(frozen=True)
class SegmentationScores:
    """Mask agreement of predicted id maps with reference id maps (fractions in ``[0, 1]``).

    * ``miou``: mean, over the classes present in either map set, of the per-class IoU from pixel
      counts accumulated over all images;
    * ``pixel_accuracy``: correctly labelled pixels / all pixels;
    * ``miou_per_image``: each image's mean IoU over the classes present in either of its two maps,
      averaged over images;
    * ``per_class_iou``: ``{class name: IoU}`` for the classes present (accumulated counts);
    * ``confusion``: the accumulated ``(C, C)`` pixel counts (row = reference, column = predicted).
    """

    miou: float
    pixel_accuracy: float
    miou_per_image: float
    per_class_iou: dict[str, float]
    confusion: np.ndarray = field(repr=False)


class SegmentationAccumulator:
    """Accumulates pixel counts image by image (no id maps kept); ``scores()`` summarises them."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        self.num_classes = num_classes
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.image_mious: list[float] = []

    def update(self, predicted, reference) -> None:
        """Add one pair of ``(H, W)`` integer id maps."""
        confusion = confusion_matrix(predicted, reference, self.num_classes)
        if confusion.sum() == 0:
            raise ValueError("empty id maps")
        self.confusion += confusion
        self.image_mious.append(float(np.nanmean(iou_per_class(confusion))))

    def scores(self) -> SegmentationScores:
        if not self.image_mious:
            raise ValueError("no id maps were added")
        ious = iou_per_class(self.confusion)
        if self.num_classes == NUM_CLASSES:
            names = CLASS_NAMES
        else:
            names = tuple(str(index) for index in range(self.num_classes))
        return SegmentationScores(
            miou=float(np.nanmean(ious)),
            pixel_accuracy=float(np.trace(self.confusion) / self.confusion.sum()),
            miou_per_image=float(np.mean(self.image_mious)),
            per_class_iou={names[c]: float(ious[c]) for c in range(self.num_classes) if not np.isnan(ious[c])},
            confusion=self.confusion.copy(),
        )


def segmentation_scores(predicted_maps, reference_maps, num_classes: int = NUM_CLASSES) -> SegmentationScores:
    """Score predicted id maps against reference id maps (same count, pairwise same shape).

    ``predicted_maps`` / ``reference_maps``: sequences (or ``(N, H, W)`` arrays) of integer id maps.
    """
    if len(predicted_maps) != len(reference_maps) or len(predicted_maps) == 0:
        raise ValueError(
            f"need the same non-zero number of predicted and reference maps, got {len(predicted_maps)} "
            f"and {len(reference_maps)}"
        )
    accumulator = SegmentationAccumulator(num_classes)
    for predicted, reference in zip(predicted_maps, reference_maps):
        accumulator.update(predicted, reference)
    return accumulator.scores()
