"""The training loss of the face parser: cross-entropy + soft Dice (+ Lovasz-softmax).

Shapes: logits (B, C, S, S) float32, probabilities (B, C, H, W), labels (B, S, S) int64 official ids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
