"""Sampling as plain functions: one model prediction, mask guidance, FLUX's schedule, the denoising loop.

Generation (:class:`facemogle.pipeline.FaceMoGLEPipeline`) and training
(:mod:`facemogle.train.trainer`) both predict through :func:`predict_velocity`, the one place
where MoGLE's output meets the transformer::

    tokens = MoGLE(condition latents (B, E, N, D), x_t (B, N, D), t (B,) in (0, 1))   # (B, N, D)
    v      = condition_forward(transformer, x_t, tokens, text, t, guidance)          # (B, N, D)

The pipeline's loop is :func:`denoise`::

    timesteps = flux_timesteps(scheduler, num_steps, num_tokens, device)
    predict   = partial(guided_prediction, transformer, mogle, conditioning=..., mask_guidance_scale=w)
    latents   = denoise(predict, scheduler, noise, timesteps, hooks=[...])

It has two extension points, so that features change one step without copying the loop:

* ``predict(latents, t) -> Prediction``: any function of that shape (wrap
  :func:`guided_prediction` to cache or reuse parts of the model between steps);
* :class:`StepHook` objects: ``before_prediction`` may replace the latents the model sees at a
  step, ``after_step`` the latents the scheduler produced (region-preserving edits put the photo's
  own noised latents back there; ``callback_on_step_end`` is one such hook).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from facemogle.condition import condition_forward
from facemogle.errors import InputError
from facemogle.forward_cache import ForwardCache
from facemogle.mogle import GLOBAL_INDEX


@dataclass
class Conditioning:
    """Everything the model sees at a step besides the noisy latents and t (batch B).

    ``condition_latents`` (B, E, N, D) MoGLE input; ``prompt_embeds`` (B, L, Dt) T5;
    ``pooled_prompt_embeds`` (B, P) CLIP pooled; ``img_ids`` (N, 3), ``txt_ids`` (L, 3) rotary ids;
    ``guidance`` (B,) FLUX guidance, or None for a transformer without a guidance embedding;
    ``expert_outputs`` (B, A, N, D): MoGLE's experts on ``condition_latents`` when computed ahead
    (:func:`with_expert_outputs`; they do not change between steps), else None.
    """

    condition_latents: torch.Tensor
    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    img_ids: torch.Tensor
    txt_ids: torch.Tensor
    guidance: torch.Tensor | None = None
    expert_outputs: torch.Tensor | None = None


@dataclass
class Prediction:
    """One step's output: ``velocity`` (B, N, D), the ``condition_tokens`` MoGLE gave the
    transformer (B, N, D) and the ``gate_weights`` (B, N, A) over the A active experts (None when
    not asked for). With mask guidance all three are those of the images' own masks (the first half)."""

    velocity: torch.Tensor
    condition_tokens: torch.Tensor
    gate_weights: torch.Tensor | None = None


def predict_velocity(transformer, mogle, latents: torch.Tensor, timestep: torch.Tensor, conditioning: Conditioning,
                     *, return_gate_weights: bool = False, cache: ForwardCache | None = None) -> Prediction:
    """The single model prediction: MoGLE's condition tokens, then the transformer's velocity.

    Args:
        latents: (B, N, D) noisy latent tokens x_t. timestep: (B,) t in (0, 1].
        conditioning: the batch's :class:`Conditioning` (with ``expert_outputs``, only MoGLE's gate runs).
        cache: the call's :class:`facemogle.forward_cache.ForwardCache` (None: compute everything).
    """
    mogle_dtype = mogle.dtype
    if conditioning.condition_latents is None:  # no condition stream: the base transformer alone
        mixed = (None, None) if return_gate_weights else None
    elif conditioning.expert_outputs is not None:
        mixed = mogle.mix(conditioning.expert_outputs, conditioning.condition_latents[:, GLOBAL_INDEX].to(mogle_dtype),
                          latents.to(mogle_dtype), timestep.to(mogle_dtype), return_gate_weights=return_gate_weights)
    else:
        mixed = mogle(conditioning.condition_latents.to(mogle_dtype), latents.to(mogle_dtype),
                      timestep.to(mogle_dtype), return_gate_weights=return_gate_weights)
    tokens, gate_weights = mixed if return_gate_weights else (mixed, None)
    tokens = None if tokens is None else tokens.to(latents.dtype)  # (B, N, D)
    velocity = condition_forward(
        transformer,
        hidden_states=latents,
        condition_tokens=tokens,
        encoder_hidden_states=conditioning.prompt_embeds,
        pooled_projections=conditioning.pooled_prompt_embeds,
        timestep=timestep,
        img_ids=conditioning.img_ids,
        txt_ids=conditioning.txt_ids,
        guidance=conditioning.guidance,
        cache=cache,
    )
    return Prediction(velocity, tokens, gate_weights)


@torch.no_grad()
def with_expert_outputs(mogle, conditioning: Conditioning) -> Conditioning:
    """``conditioning`` with MoGLE's expert outputs computed once (exact: the same ops as at every step)."""
    if conditioning.condition_latents is None:
        return conditioning
    latents = conditioning.condition_latents.to(mogle.dtype)
    return replace(conditioning, expert_outputs=mogle.expert_outputs(latents))


def mask_guidance(with_mask: torch.Tensor, empty_mask: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance on the mask: ``empty + scale * (with_mask - empty)``; ``scale`` one
    number, or one per image ((B,), e.g. another for the text-only images of a batch)."""
    if isinstance(scale, torch.Tensor):
        scale = scale.to(with_mask.dtype).view(-1, *[1] * (with_mask.dim() - 1))  # (B, 1, 1)
    return empty_mask + scale * (with_mask - empty_mask)


def with_empty_mask(conditioning: Conditioning, empty_latents: torch.Tensor,
                    empty_prompt: tuple[torch.Tensor, torch.Tensor] | None = None) -> Conditioning:
    """The (2B) batch mask guidance predicts on: the images' own masks, then the empty mask
    (``empty_latents`` (1 or B, E, N, D)) with the same text, or with ``empty_prompt`` (the empty
    prompt's (1, L, Dt) embeddings and (1, P) pooled embeddings) when the guidance is on the text
    too. Built once per call, not per step."""
    own = conditioning.condition_latents  # None: no condition stream (text guidance only)
    embeds, pooled = conditioning.prompt_embeds, conditioning.pooled_prompt_embeds
    if empty_prompt is None:
        other_embeds, other_pooled = embeds, pooled
    else:
        other_embeds, other_pooled = empty_prompt[0].expand_as(embeds), empty_prompt[1].expand_as(pooled)
    if conditioning.expert_outputs is not None:
        raise InputError("with_empty_mask must come before with_expert_outputs")
    return replace(conditioning, condition_latents=None if own is None else torch.cat([own, empty_latents.expand_as(own)]),
                   prompt_embeds=torch.cat([embeds, other_embeds]),
                   pooled_prompt_embeds=torch.cat([pooled, other_pooled]), guidance=_twice(conditioning.guidance))


def _twice(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else torch.cat([x, x])


def guided_prediction(transformer, mogle, latents: torch.Tensor, timestep: torch.Tensor, *, conditioning: Conditioning,
                      mask_guidance_scale: float | torch.Tensor = 1.0, return_gate_weights: bool = True,
                      cache: ForwardCache | None = None) -> Prediction:
    """:func:`predict_velocity`, with mask guidance when ``mask_guidance_scale != 1`` (one number, or
    a (B,) tensor of per-image scales, always guided); then ``conditioning`` must be the doubled batch
    of :func:`with_empty_mask`. ``cache``: the call's :class:`facemogle.forward_cache.ForwardCache`,
    the same object at every step."""
    if not isinstance(mask_guidance_scale, torch.Tensor) and mask_guidance_scale == 1.0:
        return predict_velocity(transformer, mogle, latents, timestep, conditioning,
                                return_gate_weights=return_gate_weights, cache=cache)
    both = predict_velocity(transformer, mogle, torch.cat([latents, latents]), torch.cat([timestep, timestep]),
                            conditioning, return_gate_weights=return_gate_weights, cache=cache)
    with_mask, empty_mask = both.velocity.chunk(2)
    first = len(latents)
    weights = None if both.gate_weights is None else both.gate_weights[:first]
    tokens = None if both.condition_tokens is None else both.condition_tokens[:first]
    return Prediction(mask_guidance(with_mask, empty_mask, mask_guidance_scale), tokens, weights)


def schedule_mu(scheduler, num_tokens: int) -> float:
    """FLUX's resolution-dependent ``mu`` for ``num_tokens`` image tokens (linear in the token count
    between the scheduler config's ``base_shift`` and ``max_shift``); the schedule's shift there is
    e^mu: sigma' = e^mu sigma / (1 + (e^mu - 1) sigma)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = scheduler.config
    return float(calculate_shift(num_tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                                 config.get("base_shift", 0.5), config.get("max_shift", 1.15)))


def flux_timesteps(scheduler, num_inference_steps: int, num_tokens: int, device) -> torch.Tensor:
    """Set ``scheduler`` (diffusers' FlowMatchEulerDiscreteScheduler) to FLUX's schedule: sigmas
    evenly from 1 to 1/steps, shifted by the resolution-dependent ``mu`` of ``num_tokens`` image
    tokens. Returns the (steps,) timesteps in 0..1000."""
    from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

    sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
    timesteps, _ = retrieve_timesteps(scheduler, num_inference_steps, device, sigmas=sigmas,
                                      mu=schedule_mu(scheduler, num_tokens))
    scheduler.set_begin_index(0)
    return timesteps


@dataclass
class StepState:
    """What a :class:`StepHook` sees and may change at step ``index``.

    ``timestep``: the scheduler's t (0..1000); ``sigma``: t / 1000, the noise level of the
    latents entering the step. ``latents`` (B, N, D): before the prediction, the step's input;
    after the scheduler step, its output, at noise level ``sigma_next``. ``prediction``: the
    step's :class:`Prediction` (None before it is made).
    """

    index: int
    timestep: torch.Tensor
    sigma: float
    latents: torch.Tensor
    prediction: Prediction | None = None
    sigma_next: float | None = None


class StepHook:
    """The per-step hook point of :func:`denoise`; override either method (both do nothing here)."""

    def before_prediction(self, state: StepState) -> None:
        """Called before the model predicts; may set ``state.latents``."""

    def after_step(self, state: StepState) -> None:
        """Called after the scheduler step (``state.latents`` is its output); may set ``state.latents``."""


def denoise(predict: Callable[[torch.Tensor, torch.Tensor], Prediction], scheduler, latents: torch.Tensor,
            timesteps: Sequence[torch.Tensor], *, hooks: Iterable[StepHook] = (), progress_bar=None,
            interrupted: Callable[[], bool] = lambda: False) -> torch.Tensor:
    """Integrate the flow from ``latents`` (B, N, D) over ``timesteps`` with the scheduler's steps.

    Per step: hooks' ``before_prediction``, ``predict(latents, t / 1000)`` with t broadcast to (B,),
    the scheduler step, hooks' ``after_step``. ``interrupted()`` true skips the remaining steps
    (diffusers' ``pipe.interrupt``). Returns the final latents (B, N, D).
    """
    hooks = list(hooks)
    num_train_timesteps = scheduler.config.num_train_timesteps
    for index, t in enumerate(timesteps):
        if interrupted():
            continue
        state = StepState(index=index, timestep=t, sigma=float(t) / num_train_timesteps, latents=latents)
        for hook in hooks:
            hook.before_prediction(state)
        t_unit = (t / num_train_timesteps).expand(len(state.latents)).to(state.latents.dtype)  # (B,) in (0, 1]
        state.prediction = predict(state.latents, t_unit)
        state.latents = scheduler.step(state.prediction.velocity, t, state.latents, return_dict=False)[0]
        state.sigma_next = float(scheduler.sigmas[scheduler.step_index])
        for hook in hooks:
            hook.after_step(state)
        latents = state.latents
        if progress_bar is not None:
            progress_bar.update()
    return latents


# ----------------------------------------------------------------------------------- noise


def generators_for_seeds(seeds: Sequence[int] | int, count: int, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per image: ``seeds`` as given, or ``seed, seed+1, ...`` for an int."""
    if isinstance(seeds, int):
        seeds = [seeds + i for i in range(count)]
    seeds = list(seeds)
    if len(seeds) != count:
        raise InputError(f"got {len(seeds)} seeds for {count} images")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= int(s) < 2**64:
            raise InputError(f"a seed must be an integer in [0, 2**64), got {s!r}")
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


def generators_for_call(seed, generator, total: int) -> list[torch.Generator] | torch.Generator | None:
    """One generator per image from ``seed`` (int or list) or ``generator`` (one, or one per image)."""
    if seed is not None:
        if generator is not None:
            raise InputError("give either seed or generator, not both")
        return generators_for_seeds(seed, total)
    if isinstance(generator, torch.Generator) and total > 1:
        draws = torch.randint(0, 2**62, (total,), generator=generator).tolist()
        return generators_for_seeds(draws, total, generator.device)
    if isinstance(generator, list) and len(generator) != total:
        raise InputError(f"got {len(generator)} generators for {total} images")
    return generator
