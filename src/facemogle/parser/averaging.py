"""Stochastic weight averaging (Izmailov et al. 2018) and the BatchNorm re-estimation it needs.

The recipe (``--swa-epochs N``) holds the learning rate constant for the last N epochs, averages the
weights at the end of each (``WeightAverage``, kept in the resumable checkpoint), copies the mean into
the model and re-estimates every BatchNorm's statistics on the training photos (``recompute_batch_norm``).
"""

from __future__ import annotations

import torch

from facemogle.parser.model import FaceParser


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
