"""Each metric of facemogle.eval.metrics against an independent numpy / scipy / torchmetrics computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cosine as cosine_distance

from facemogle.eval.features import cosine_self_similarity
from facemogle.eval.metrics import (
    SegmentationAccumulator,
    clip_text_scores,
    cmmd,
    confusion_matrix,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_statistics,
    kernel_distance,
    reference_structure_distance,
    segmentation_scores,
    structure_distances,
    trace_sqrt_product,
)
from facemogle.eval.protocol import CLIP_SCORE_SCALE, CMMD_SCALE, CMMD_SIGMA, DINO_REFERENCE_BATCH_SIZE
from facemogle.labels import CLASS_NAMES, NUM_CLASSES


def gaussian_features(seed: int, rows: int, dims: int, *, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dims, dims)) / math.sqrt(dims)
    return (rng.normal(size=(rows, dims)) @ mixing) * scale + shift


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy's general matrix square root."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(sigma_a @ sigma_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a + sigma_b - 2 * root))


# --------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows_a, rows_b", [(400, 300), (9, 12)])  # more and fewer samples than dims
def test_fid_matches_scipy_sqrtm(rows_a, rows_b):
    a = gaussian_features(0, rows_a, 24)
    b = gaussian_features(1, rows_b, 24, shift=0.3, scale=1.4)
    expected = scipy_fid(a, b)
    assert expected > 1.0
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance_from_statistics(*feature_statistics(a), *feature_statistics(b)) == pytest.approx(
        expected, rel=1e-6
    )


def test_fid_accepts_torch_and_matches_torchmetrics_statistics():
    from torchmetrics.image.fid import _compute_fid

    a = gaussian_features(2, 200, 16)
    b = gaussian_features(3, 150, 16, shift=-0.5)
    mu_a, sigma_a = feature_statistics(a)
    mu_b, sigma_b = feature_statistics(b)
    expected = _compute_fid(*(torch.from_numpy(x) for x in (mu_a, sigma_a, mu_b, sigma_b))).item()
    assert frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(
        expected, rel=1e-5
    )


def test_fid_of_identical_sets_is_zero_also_when_covariance_is_singular():
    wide = gaussian_features(4, 10, 64)  # rank 9 covariance in 64 dims
    assert abs(frechet_distance(wide, wide)) < 1e-9
    tall = gaussian_features(5, 500, 8)
    assert abs(frechet_distance(tall, tall)) < 1e-9
    # The D x D route is exact on singular covariances too (no epsilon offset needed).
    sigma = np.cov(wide, rowvar=False)
    assert trace_sqrt_product(sigma, sigma) == pytest.approx(np.trace(sigma), rel=1e-6)


def test_fid_is_symmetric_and_checks_shapes():
    a, b = gaussian_features(6, 30, 8), gaussian_features(7, 40, 8, shift=1.0)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    with pytest.raises(ValueError, match="widths differ"):
        frechet_distance(a, gaussian_features(8, 30, 9))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], b)


# --------------------------------------------------------------------------------------------
# KID
# --------------------------------------------------------------------------------------------


def loop_unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """KID's estimator written out pair by pair (cubic kernel, gamma = 1 / D, coef 1)."""
    m, dims = x.shape
    kernel = lambda u, v: (u @ v / dims + 1.0) ** 3  # noqa: E731
    within = sum(kernel(x[i], x[j]) + kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    cross = sum(kernel(x[i], y[j]) for i in range(m) for j in range(m))
    return within / (m * (m - 1)) - 2.0 * cross / (m * m)


def test_kid_with_one_full_subset_matches_the_pairwise_formula_and_torchmetrics():
    from torchmetrics.image.kid import poly_mmd

    a = gaussian_features(10, 25, 6)
    b = gaussian_features(11, 25, 6, shift=0.4)
    # One subset as large as the sets = a permutation of all rows; MMD is permutation invariant.
    kid = kernel_distance(a, b, num_subsets=1, max_subset_size=1000)
    assert kid.subset_size == 25
    assert kid.mean == pytest.approx(loop_unbiased_mmd2(a, b), rel=1e-10)
    assert kid.mean == pytest.approx(poly_mmd(torch.from_numpy(a), torch.from_numpy(b)).item(), rel=1e-10)
    assert kid.std == 0.0


def test_kid_subsets_are_seeded_and_bounded():
    a = gaussian_features(12, 60, 6)
    b = gaussian_features(13, 50, 6, shift=0.4)
    first = kernel_distance(a, b, num_subsets=20, max_subset_size=10, seed=3)
    again = kernel_distance(a, b, num_subsets=20, max_subset_size=10, seed=3)
    other = kernel_distance(a, b, num_subsets=20, max_subset_size=10, seed=4)
    assert first == again
    assert first.mean != other.mean
    assert first.subset_size == 10 and first.num_subsets == 20
    assert first.std > 0


def test_kid_of_identical_sets_is_near_zero_and_equals_its_closed_form():
    a = gaussian_features(14, 40, 6)
    same = kernel_distance(a, a, num_subsets=3)
    # Full subsets of identical sets: 2 S_off / (m^2 (m - 1)) - 2 S_diag / m^2 (diagonal in the cross term).
    kernel = (a @ a.T / a.shape[1] + 1.0) ** 3
    m = a.shape[0]
    off_diagonal, diagonal = kernel.sum() - np.trace(kernel), np.trace(kernel)
    assert same.mean == pytest.approx(2 * off_diagonal / (m * m * (m - 1)) - 2 * diagonal / (m * m), rel=1e-9)
    different = kernel_distance(a, gaussian_features(15, 40, 6, shift=1.0), num_subsets=3)
    assert abs(same.mean) < 0.05 * different.mean


# --------------------------------------------------------------------------------------------
# CMMD
# --------------------------------------------------------------------------------------------


def loop_rbf_mmd2(x: np.ndarray, y: np.ndarray, sigma: float, *, unbiased: bool) -> float:
    kernel = lambda u, v: math.exp(-float(((u - v) ** 2).sum()) / (2 * sigma**2))  # noqa: E731
    n, m = len(x), len(y)
    if unbiased:
        k_xx = sum(kernel(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        k_yy = sum(kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    else:
        k_xx = sum(kernel(u, v) for u in x for v in x) / (n * n)
        k_yy = sum(kernel(u, v) for u in y for v in y) / (m * m)
    k_xy = sum(kernel(u, v) for u in x for v in y) / (n * m)
    return k_xx + k_yy - 2 * k_xy


def unit_rows(array: np.ndarray) -> np.ndarray:
    return array / np.linalg.norm(array, axis=1, keepdims=True)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cmmd_matches_the_pairwise_rbf_formula(unbiased):
    # Embeddings spread far apart so that sigma = 10 still sees a difference.
    a = gaussian_features(20, 12, 5, scale=6.0)
    b = gaussian_features(21, 15, 5, scale=6.0, shift=3.0)
    expected = CMMD_SCALE * loop_rbf_mmd2(a, b, CMMD_SIGMA, unbiased=unbiased)
    assert expected > 1.0
    assert cmmd(a, b, unbiased=unbiased) == pytest.approx(expected, rel=1e-9)


def test_cmmd_of_identical_sets_is_exactly_zero_and_positive_otherwise():
    a = unit_rows(gaussian_features(22, 20, 8))
    b = unit_rows(gaussian_features(23, 20, 8, shift=0.5))
    assert cmmd(a, a) == pytest.approx(0.0, abs=1e-12)
    assert cmmd(a, b) > 0
    # The default sigma matches CMMD's, applied to unit-norm CLIP embeddings: small numbers.
    assert cmmd(a, b) < CMMD_SCALE * 2 * (1 - math.exp(-4 / (2 * CMMD_SIGMA**2)))


@pytest.mark.parametrize("unbiased", [False, True])
def test_cmmd_sums_its_kernels_in_bounded_tiles_with_the_same_result(unbiased, monkeypatch):
    """The (N, M) kernel matrices are never formed: every rbf_kernel call is one tile of at most
    KERNEL_BLOCK_SIZE x KERNEL_BLOCK_SIZE, and the tiles add up to the untiled number."""
    import facemogle.eval.metrics as metrics_module

    block = 4
    a = gaussian_features(24, 3 * block + 1, 5, scale=6.0)
    b = gaussian_features(25, 3 * block + 3, 5, scale=6.0, shift=3.0)
    untiled = cmmd(a, b, unbiased=unbiased)  # 13 and 15 rows: one tile of the default size
    assert untiled == pytest.approx(CMMD_SCALE * loop_rbf_mmd2(a, b, CMMD_SIGMA, unbiased=unbiased), rel=1e-9)

    shapes = []
    real_rbf_kernel = metrics_module.rbf_kernel

    def spy(x, y, sigma=CMMD_SIGMA):
        shapes.append((len(x), len(y)))
        return real_rbf_kernel(x, y, sigma)

    monkeypatch.setattr(metrics_module, "KERNEL_BLOCK_SIZE", block)
    monkeypatch.setattr(metrics_module, "rbf_kernel", spy)
    assert cmmd(a, b, unbiased=unbiased) == pytest.approx(untiled, rel=1e-12)
    assert shapes and max(max(shape) for shape in shapes) <= block
    assert len(shapes) == 4 * 4 + 4 * 4 + 4 * 4  # a-a, b-b (4 row/column blocks each), a-b
    if not unbiased:
        assert cmmd(a, a.copy()) == 0.0  # identical sets stay exactly 0 when tiled


# --------------------------------------------------------------------------------------------
# CLIP text score
# --------------------------------------------------------------------------------------------


def test_clip_text_scores_are_100_times_the_cosine():
    rng = np.random.default_rng(30)
    images, texts = rng.normal(size=(7, 12)), rng.normal(size=(7, 12))
    expected = [CLIP_SCORE_SCALE * (1.0 - cosine_distance(u, v)) for u, v in zip(images, texts)]
    scores = clip_text_scores(torch.from_numpy(images), texts * 3.0)  # scale-free, torch or numpy
    np.testing.assert_allclose(scores, expected, rtol=1e-10)
    assert clip_text_scores(images, images) == pytest.approx(np.full(7, CLIP_SCORE_SCALE))
    with pytest.raises(ValueError, match="embeddings"):
        clip_text_scores(images, texts[:3])


# --------------------------------------------------------------------------------------------
# DINO structure distance
# --------------------------------------------------------------------------------------------


def test_cosine_self_similarity_and_structure_mse_match_numpy():
    rng = np.random.default_rng(40)
    keys_generated = rng.normal(size=(3, 10, 6)).astype(np.float32)
    keys_real = rng.normal(size=(3, 10, 6)).astype(np.float32)
    similarity_generated = cosine_self_similarity(torch.from_numpy(keys_generated))
    similarity_real = cosine_self_similarity(torch.from_numpy(keys_real))

    def numpy_self_similarity(keys):
        return np.array([[[1.0 - cosine_distance(t, u) for u in image] for t in image] for image in keys])

    np.testing.assert_allclose(similarity_generated.numpy(), numpy_self_similarity(keys_generated), atol=1e-6)
    expected = ((numpy_self_similarity(keys_generated) - numpy_self_similarity(keys_real)) ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(structure_distances(similarity_generated, similarity_real), expected, rtol=1e-5)
    assert structure_distances(similarity_real, similarity_real) == pytest.approx(np.zeros(3))


def test_reference_structure_distance_sums_per_batch_of_64_and_averages_over_batches():
    values = np.random.default_rng(41).uniform(0, 0.1, size=2 * DINO_REFERENCE_BATCH_SIZE + 5)
    batches = [values[:64], values[64:128], values[128:]]
    assert reference_structure_distance(values) == pytest.approx(np.mean([batch.sum() for batch in batches]))
    whole_batches = values[: 2 * DINO_REFERENCE_BATCH_SIZE]
    assert reference_structure_distance(whole_batches) == pytest.approx(DINO_REFERENCE_BATCH_SIZE * whole_batches.mean())


# --------------------------------------------------------------------------------------------
# Mask mIoU / pixel accuracy
# --------------------------------------------------------------------------------------------


def loop_scores(predicted_maps, reference_maps):
    """Per-class IoU over classes present in either, from explicit boolean masks."""
    classes = sorted(set(np.concatenate([np.unique(m) for m in [*predicted_maps, *reference_maps]])))
    ious = {}
    for c in classes:
        intersection = sum(np.logical_and(p == c, r == c).sum() for p, r in zip(predicted_maps, reference_maps))
        union = sum(np.logical_or(p == c, r == c).sum() for p, r in zip(predicted_maps, reference_maps))
        ious[int(c)] = intersection / union
    per_image = []
    for p, r in zip(predicted_maps, reference_maps):
        present = np.union1d(np.unique(p), np.unique(r))
        per_image.append(np.mean([np.logical_and(p == c, r == c).sum() / np.logical_or(p == c, r == c).sum() for c in present]))
    accuracy = sum((p == r).sum() for p, r in zip(predicted_maps, reference_maps)) / sum(r.size for r in reference_maps)
    return ious, float(np.mean(list(ious.values()))), float(accuracy), float(np.mean(per_image))


def test_segmentation_scores_match_a_per_class_loop(make_id_map):
    references = [make_id_map(seed) for seed in range(4)]
    rng = np.random.default_rng(50)
    predicted = []
    for reference in references:  # keep ~70 % of pixels, relabel the rest at random
        noise = rng.integers(0, NUM_CLASSES, reference.shape).astype(np.uint8)
        predicted.append(np.where(rng.random(reference.shape) < 0.7, reference, noise))
    ious, miou, accuracy, per_image = loop_scores(predicted, references)
    scores = segmentation_scores(predicted, references)
    assert scores.miou == pytest.approx(miou)
    assert scores.pixel_accuracy == pytest.approx(accuracy)
    assert scores.miou_per_image == pytest.approx(per_image)
    assert scores.per_class_iou == pytest.approx({CLASS_NAMES[c]: iou for c, iou in ious.items()})
    assert 0.3 < scores.miou < 0.9


def test_segmentation_perfect_and_disjoint_maps():
    reference = np.zeros((8, 8), np.uint8)
    reference[2:6, 2:6] = CLASS_NAMES.index("hair")
    perfect = segmentation_scores([reference], [reference])
    assert perfect.miou == perfect.pixel_accuracy == perfect.miou_per_image == 1.0
    assert set(perfect.per_class_iou) == {"background", "hair"}  # absent classes are not averaged
    disjoint = segmentation_scores([np.full((8, 8), 1, np.uint8)], [np.full((8, 8), 2, np.uint8)])
    assert disjoint.miou == disjoint.pixel_accuracy == 0.0


def test_confusion_matrix_rows_are_reference_and_errors_are_clear():
    reference = np.array([[0, 0, 1]], np.uint8)
    predicted = np.array([[0, 1, 1]], np.uint8)
    confusion = confusion_matrix(predicted, reference)
    assert confusion.shape == (NUM_CLASSES, NUM_CLASSES)
    assert confusion[0, 0] == 1 and confusion[0, 1] == 1 and confusion[1, 1] == 1 and confusion.sum() == 3
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(predicted, reference[:, :2])
    with pytest.raises(ValueError, match="ids must be in"):
        confusion_matrix(np.full((1, 3), NUM_CLASSES, np.uint8), reference)
    with pytest.raises(ValueError, match="no id maps"):
        SegmentationAccumulator().scores()
