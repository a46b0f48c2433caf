"""How the MoGLE gate splits its weight between the global and the local experts, step by step.

A :class:`GateRecorder` reads the gate weights the pipeline hands to its per-step hook point
(:class:`facemogle.sampling.StepHook`, or diffusers' ``callback_on_step_end`` with the tensor
input ``"gate_weights"``): every denoising step adds one :class:`GateStep` (the step's t and the
weights averaged over the batch and the tokens; with mask guidance, over the images' own masks
only, not the empty-mask half). ``gate_weights_svg`` draws the global expert's weight and the
summed weight of the local experts against the step index (a dependency-free SVG line plot):

    recorder = GateRecorder(pipe.mogle)
    pipe(mask=..., prompt=..., num_inference_steps=20, step_hooks=[recorder])
    # or: pipe(..., callback_on_step_end=recorder, callback_on_step_end_tensor_inputs=["gate_weights"])
    Path("gate.svg").write_text(gate_weights_svg(recorder.steps))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from facemogle.errors import InputError
from facemogle.labels import CLASS_NAMES
from facemogle.mogle import GLOBAL_INDEX
from facemogle.sampling import StepHook, StepState


@dataclass
class GateStep:
    """One gate call: t in (0, 1) and the mean weight of each active expert (global first)."""

    timestep: float
    expert_names: tuple[str, ...]
    mean_weights: tuple[float, ...]

    @property
    def global_weight(self) -> float:
        return self.mean_weights[self.expert_names.index("global")] if "global" in self.expert_names else 0.0

    @property
    def local_weight(self) -> float:
        """Summed weight of the local experts (1 - global for a softmax gate over all experts)."""
        return sum(w for name, w in zip(self.expert_names, self.mean_weights) if name != "global")

    def as_dict(self) -> dict:
        return {"t": self.timestep, "global": self.global_weight, "local": self.local_weight,
                "experts": dict(zip(self.expert_names, self.mean_weights))}


def expert_names(mogle) -> tuple[str, ...]:
    """Names of the active experts in gate-output order: "global", then the local classes."""
    return tuple("global" if i == GLOBAL_INDEX else CLASS_NAMES[i - 1] for i in mogle.expert_indices)


class GateRecorder(StepHook):
    """Collects one :class:`GateStep` per denoising step of every pipeline call it is given to.

    Args:
        mogle: the pipeline's MoGLE (for the expert names); one without a gate is refused.
    """

    def __init__(self, mogle):
        if getattr(mogle, "gating", None) is None:
            raise InputError(f"this MoGLE has no gate (gating_mode={mogle.config.gating_mode!r})")
        self.names = expert_names(mogle)
        self.steps: list[GateStep] = []
        self._token_sum: torch.Tensor | None = None  # (B, N, A) summed over the steps

    def add(self, timestep: float, weights: torch.Tensor) -> None:
        """Record a step: t in (0, 1) and the gate weights (B, N, A)."""
        weights = weights.detach().float().cpu()
        means = weights.mean(dim=(0, 1))  # (A,)
        self.steps.append(GateStep(float(timestep), self.names, tuple(means.tolist())))
        same_shape = self._token_sum is not None and self._token_sum.shape == weights.shape
        self._token_sum = weights.clone() if not same_shape else self._token_sum + weights

    @property
    def token_weights(self) -> torch.Tensor | None:
        """(B, N, A): each image's per-token gate weights averaged over the recorded steps (use one
        recorder per call; None before any step); token n of an (h, w) grid is row n // w, column n % w."""
        if self._token_sum is None:
            return None
        return self._token_sum / max(1, len(self.steps))

    def after_step(self, state: StepState) -> None:
        self.add(state.sigma, state.prediction.gate_weights)

    def __call__(self, pipe, index: int, timestep, tensors: dict) -> dict:
        """As diffusers' ``callback_on_step_end`` (needs the tensor input ``"gate_weights"``)."""
        if "gate_weights" not in tensors:
            raise InputError('GateRecorder as a callback needs callback_on_step_end_tensor_inputs=["gate_weights"]')
        self.add(float(timestep) / pipe.scheduler.config.num_train_timesteps, tensors["gate_weights"])
        return {}


def gate_weights_svg(steps: Sequence[GateStep], *, title: str = "MoGLE gate weight per denoising step",
                     width: int = 560, height: int = 320) -> str:
    """An SVG line plot of the global weight and the summed local weight against the step index."""
    if not steps:
        raise InputError("no gate steps were recorded")
    left, right, top, bottom = 56, 120, 36, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    count = len(steps)

    def x(i: int) -> float:
        return left + (plot_w * i / (count - 1) if count > 1 else plot_w / 2)

    def y(value: float) -> float:
        return top + plot_h * (1 - value)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{left}" y="20" font-size="14">{title}</text>']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{left}" y1="{y(tick):.1f}" x2="{left + plot_w}" y2="{y(tick):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:.2f}</text>')
    for i in range(count):
        if i % max(1, count // 10) == 0 or i == count - 1:
            parts.append(f'<text x="{x(i):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{i + 1}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">denoising step '
                 f'(t = {steps[0].timestep:.2f} to {steps[-1].timestep:.2f})</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>')
    for label, colour, values in (("global expert", "#d62728", [s.global_weight for s in steps]),
                                  ("local experts (sum)", "#1f77b4", [s.local_weight for s in steps])):
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        legend_y = top + 14 + 18 * (label.startswith("local"))
        parts.append(f'<line x1="{left + plot_w + 10}" y1="{legend_y - 4}" x2="{left + plot_w + 26}" '
                     f'y2="{legend_y - 4}" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{left + plot_w + 30}" y="{legend_y}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
