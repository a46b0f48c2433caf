"""FaceMoGLEPipeline: face generation from a semantic mask, a prompt, or both.

The pipeline is diffusers' ``FluxPipeline`` (text encoding, latent packing, the flow-matching
Euler scheduler with FLUX's dynamic shift, VAE decoding, offloading, LoRA loading) plus one extra
component, :class:`facemogle.mogle.MoGLE`, and a denoising loop that feeds its output to the
transformer's condition stream (:mod:`facemogle.condition`). Steps of one call:

1. ``encode_prompt``  - CLIP pooled + T5 sequence embeddings (FLUX's, unchanged).
2. ``encode_masks``   - each distinct mask -> 20 condition images -> VAE posterior means ->
                        (M, 20, N, 64) tokens, once per call, in batched VAE calls.
3. ``prepare_latents`` - initial noise, one generator per image (FluxPipeline's convention, so an
                        image depends only on its own seed, never on the rest of the batch).
4. denoising loop     - per step: MoGLE(condition tokens, x_t, t in (0, 1)) -> condition tokens
                        -> transformer(x_t, condition) -> Euler step.
5. decode             - VAE decode and post-process to PIL / numpy / torch.

Text-only generation uses an empty mask (all background); mask-only uses the empty prompt.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
import PIL.Image
import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from facemogle.condition import (
    CONDITION_ADAPTER_NAME,
    LORA_WEIGHT_NAME,
    condition_forward,
    load_condition_lora,
    save_condition_lora,
)
from facemogle.errors import InputError
from facemogle.latents import encode_condition_images, latent_image_ids, unpack_latents, denormalise_latents
from facemogle.masks import check_size, condition_images, load_mask, resize_mask
from facemogle.mogle import MoGLE

logger = logging.getLogger(__name__)

MaskInput = Union[str, "os.PathLike[str]", PIL.Image.Image, np.ndarray, None]

#: Prompts longer than this many characters are refused (T5 reads at most 512 tokens anyway).
MAX_PROMPT_CHARS = 4096
#: Images per VAE call when encoding condition images.
VAE_CHUNK = 40


@dataclass
class FaceMoGLEPipelineOutput(BaseOutput):
    """``images``: list of PIL images, a numpy array (B, H, W, 3), a tensor (B, 3, H, W) in [0, 1],
    or packed latents (B, N, 64), depending on ``output_type``."""

    images: Any


def _as_list(value, empty) -> list:
    if value is None:
        return [empty]
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            raise InputError("an empty list was given; pass at least one mask or prompt")
        return list(value)
    return [value]


def _broadcast(masks: list, prompts: list) -> int:
    n = max(len(masks), len(prompts))
    for name, items in (("masks", masks), ("prompts", prompts)):
        if len(items) not in (1, n):
            raise InputError(
                f"got {len(masks)} masks and {len(prompts)} prompts; give one of each, or equally many"
            )
    return n


def _onload(module: torch.nn.Module) -> None:
    """Run accelerate's offload hook of a module we call piecewise instead of through ``forward``."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(module)


def generators_for_seeds(seeds: Sequence[int] | int, count: int, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per image: ``seeds`` as given, or ``seed, seed+1, ...`` for an int."""
    if isinstance(seeds, int):
        seeds = [seeds + i for i in range(count)]
    seeds = list(seeds)
    if len(seeds) != count:
        raise InputError(f"got {len(seeds)} seeds for {count} images")
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


def _has_condition_lora(transformer) -> bool:
    return CONDITION_ADAPTER_NAME in getattr(transformer, "peft_config", {})


@contextlib.contextmanager
def _base_weights_only(transformer):
    """Within the block, ``transformer.state_dict()`` holds only the frozen base weights under
    diffusers' own names (peft's ``.base_layer`` dropped, LoRA tensors left out), so
    ``save_pretrained`` writes a plain FluxTransformer2DModel; the LoRA is saved on its own."""

    def strip_lora(module, state_dict, prefix, local_metadata):
        for key in list(state_dict):
            if ".lora_" in key:
                del state_dict[key]
            elif ".base_layer." in key:
                state_dict[key.replace(".base_layer.", ".")] = state_dict.pop(key)

    handle = transformer._register_state_dict_hook(strip_lora)
    try:
        yield
    finally:
        handle.remove()


class FaceMoGLEPipeline(FluxPipeline):
    r"""Face-MoGLE generation on a FLUX-style transformer.

    Components: those of ``FluxPipeline`` (scheduler, vae, text_encoder, tokenizer, text_encoder_2,
    tokenizer_2, transformer; the transformer carries the condition LoRA) plus ``mogle``.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->vae->mogle->transformer"
    _optional_components = ["image_encoder", "feature_extractor"]

    def __init__(
        self,
        scheduler,
        vae,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        transformer,
        mogle: MoGLE,
        image_encoder=None,
        feature_extractor=None,
        default_sample_size: int = 64,
        default_num_inference_steps: int = 28,
        default_max_sequence_length: int = 512,
        default_guidance_scale: float = 3.5,
        default_mask_guidance_scale: float = 1.0,
    ):
        super().__init__(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self.register_modules(mogle=mogle)
        # Saved in model_index.json. Defaults: 64 x 8 = 512 px and 28 steps, the paper's
        # inference setting (METHOD.md section 6); small specs set their own.
        # T5 tokens per prompt (FLUX: 512); training must use the same value as inference.
        # Guidance: FLUX.1-dev's distilled guidance embedding works at 3.5; a transformer trained
        # from scratch has only ever seen guidance 1 (the trainer's value) and needs 1.0.
        self.register_to_config(
            default_sample_size=default_sample_size,
            default_num_inference_steps=default_num_inference_steps,
            default_max_sequence_length=default_max_sequence_length,
            default_guidance_scale=default_guidance_scale,
            default_mask_guidance_scale=default_mask_guidance_scale,
        )
        self.default_sample_size = default_sample_size
        self.default_num_inference_steps = default_num_inference_steps
        self.default_max_sequence_length = default_max_sequence_length
        self.default_guidance_scale = default_guidance_scale
        # Mask guidance: 1.0 = off (the paper's sampling); the tiny model ships with more.
        self.default_mask_guidance_scale = default_mask_guidance_scale

    # ------------------------------------------------------------------------------------------
    # saving and loading
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs):
        """Save every component; the condition LoRA goes to ``<dir>/pytorch_lora_weights.safetensors``
        (the official format) and the transformer directory holds the base weights only."""
        with _base_weights_only(self.transformer):
            super().save_pretrained(save_directory, **kwargs)
        if _has_condition_lora(self.transformer):
            save_condition_lora(self.transformer, save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Load a directory written by :meth:`save_pretrained` (LoRA file included, if present)."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        lora = Path(pretrained_model_name_or_path) / LORA_WEIGHT_NAME
        if lora.is_file():
            load_condition_lora(pipe.transformer, lora)
        return pipe

    # ------------------------------------------------------------------------------------------
    # inputs
    def encode_prompt(self, prompt, prompt_2=None, *args, **kwargs):
        """``FluxPipeline.encode_prompt``, with its truncation warnings summarised.

        diffusers warns once per batch for every prompt cut at the CLIP encoder's 77 tokens or at
        ``max_sequence_length`` T5 tokens, listing the cut text (pad tokens included for the shorter
        prompts of the batch). That floods training and evaluation logs, so the warnings are counted
        and one line per pipeline says what happened instead.
        """
        notices = _TruncationNotices()
        flux_logger = logging.getLogger(FluxPipeline.__module__)
        flux_logger.addFilter(notices)
        try:
            return super().encode_prompt(prompt, prompt_2, *args, **kwargs)
        finally:
            flux_logger.removeFilter(notices)
            reported = getattr(self, "_reported_truncation", set())
            new = notices.encoders - reported
            if new:
                self._reported_truncation = reported | new
                limits = {"CLIP": f"CLIP ({self.tokenizer_max_length} tokens)", "T5": "T5 (max_sequence_length)"}
                logger.warning("prompts longer than the %s encoder%s take were cut there (the rest is ignored); "
                               "said once per pipeline", " and ".join(limits[e] for e in sorted(new)),
                               "s" if len(new) > 1 else "")

    @property
    def size_multiple(self) -> int:
        """Output sides must be multiples of this (VAE factor x 2x2 token patches)."""
        return self.vae_scale_factor * 2

    def check_inputs(self, prompts: list, height: int, width: int, num_inference_steps: int, num_images_per_prompt: int, max_sequence_length: int):
        check_size(height, width, multiple_of=self.size_multiple)
        for p in prompts:
            if not isinstance(p, str):
                raise InputError(f"a prompt must be a string, got {type(p).__name__}")
            if len(p) > MAX_PROMPT_CHARS:
                raise InputError(f"prompt of {len(p)} characters is too long (at most {MAX_PROMPT_CHARS})")
        if int(num_inference_steps) < 1:
            raise InputError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if int(num_images_per_prompt) < 1:
            raise InputError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        if max_sequence_length > 512:
            raise InputError(f"max_sequence_length cannot exceed 512, got {max_sequence_length}")

    def mask_ids(self, mask: MaskInput, height: int, width: int, order: str = "official") -> np.ndarray:
        """A mask in any supported form -> (height, width) uint8 ids (nearest-neighbour resize).

        ``None`` is the empty mask (all background), used for text-only generation.
        """
        if mask is None:
            return np.zeros((height, width), dtype=np.uint8)
        ids = load_mask(mask, order=order)
        if ids.shape != (height, width):
            ids = resize_mask(ids, (height, width))
        return ids

    @torch.no_grad()
    def encode_masks(self, masks: list[MaskInput], height: int, width: int, order: str = "official") -> torch.Tensor:
        """Masks -> MoGLE input tokens (M, E, N, 64), E = NUM_CONDITIONS, deterministic (posterior mean)."""
        ids = np.stack([self.mask_ids(m, height, width, order) for m in masks])  # (M, H, W)
        images = condition_images(ids)  # (M, E, 3, H, W) uint8
        _onload(self.vae)
        return encode_condition_images(self.vae, images, chunk_size=VAE_CHUNK)

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        mask: MaskInput | list[MaskInput] = None,
        prompt: str | list[str] | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        mask_guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        seed: int | list[int] | None = None,
        latents: torch.FloatTensor | None = None,
        mask_order: str = "official",
        max_sequence_length: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ):
        r"""Generate faces.

        Args:
            mask: one mask or a list (path, PIL image, numpy ids or colour map; any format
                :func:`facemogle.masks.load_mask` reads). ``None``: text-only generation.
            prompt: one prompt or a list. ``None`` or ``""``: mask-only generation.
                Masks and prompts broadcast: give one of each, one and many, or equally many.
            height, width: output size (default: the pipeline's ``default_sample_size`` x the VAE
                factor, 512 px for FLUX.1-dev); masks are resized with nearest neighbour.
            num_inference_steps: default: the pipeline's ``default_num_inference_steps``.
            guidance_scale: FLUX guidance (default: the pipeline's ``default_guidance_scale``:
                3.5 for FLUX.1-dev, 1.0 for the scratch-trained tiny model).
            mask_guidance_scale: classifier-free guidance on the mask, ``w``: each step also
                predicts with the empty mask (all background, as text-only generation) and uses
                ``pred_empty + w * (pred_mask - pred_empty)``. 1.0 (off, the paper's sampling) costs
                nothing; any other value doubles the transformer's batch. Default: the pipeline's
                ``default_mask_guidance_scale`` (1.0; the tiny model: see its card).
            num_images_per_prompt: images per (mask, prompt) pair.
            generator: one ``torch.Generator`` per image (or one for a single image). With a
                single generator for several images, one seed per image is drawn from it.
            seed: alternative to ``generator``: an int (images get seed, seed+1, ...) or one per image.
                Image *i* for seed *s* equals a single-image call with seed *s*.
            latents: optional initial noise (B, N, 64).
            mask_order: ``"official"`` or ``"bisenet"`` label order of id masks.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.

        Returns:
            :class:`FaceMoGLEPipelineOutput` (or a tuple when ``return_dict=False``).
        """
        if num_inference_steps is None:
            num_inference_steps = self.default_num_inference_steps
        if max_sequence_length is None:
            max_sequence_length = self.default_max_sequence_length
        if guidance_scale is None:
            guidance_scale = self.default_guidance_scale
        if mask_guidance_scale is None:
            mask_guidance_scale = self.default_mask_guidance_scale
        height = int(height or self.default_sample_size * self.vae_scale_factor)
        width = int(width or self.default_sample_size * self.vae_scale_factor)
        if output_type not in ("pil", "np", "pt", "latent"):
            raise InputError(f"output_type must be pil, np, pt or latent, got {output_type!r}")
        masks = _as_list(mask, None)
        prompts = _as_list(prompt, "")
        prompts = ["" if p is None else p for p in prompts]
        pairs = _broadcast(masks, prompts)
        self.check_inputs(prompts, height, width, num_inference_steps, num_images_per_prompt, max_sequence_length)
        total = pairs * num_images_per_prompt
        device = self._execution_device
        self._guidance_scale = guidance_scale
        self._interrupt = False

        # 1. text: one embedding per distinct prompt, then indexed per image
        prompt_index = [i if len(prompts) > 1 else 0 for i in range(pairs) for _ in range(num_images_per_prompt)]
        prompt_embeds, pooled_prompt_embeds, text_ids = self.encode_prompt(
            prompt=prompts, prompt_2=None, device=device, num_images_per_prompt=1, max_sequence_length=max_sequence_length
        )
        prompt_embeds = prompt_embeds[prompt_index]  # (B, L, D)
        pooled_prompt_embeds = pooled_prompt_embeds[prompt_index]  # (B, P)

        # 2. masks: encoded once per call
        mask_index = [i if len(masks) > 1 else 0 for i in range(pairs) for _ in range(num_images_per_prompt)]
        condition_tokens = self.encode_masks(masks, height, width, mask_order)  # (M, E, N, 64)
        condition_tokens = condition_tokens[mask_index].to(device)  # (B, E, N, 64)
        mask_guided = mask_guidance_scale != 1.0 and any(m is not None for m in masks)
        self._mask_guided = mask_guided  # the batch holds (mask, empty mask) halves; read by gate recorders
        if mask_guided:  # the empty mask's tokens, for the unconditional half of the batch
            empty = self.encode_masks([None], height, width).to(device)  # (1, E, N, 64)
            condition_tokens = torch.cat([condition_tokens, empty.expand_as(condition_tokens)])  # (2B, E, N, 64)

        # 3. initial noise, one generator per image
        if seed is not None:
            if generator is not None:
                raise InputError("give either seed or generator, not both")
            generator = generators_for_seeds(seed, total)
        elif isinstance(generator, torch.Generator) and total > 1:
            draws = torch.randint(0, 2**62, (total,), generator=generator).tolist()
            generator = generators_for_seeds(draws, total, generator.device)
        elif isinstance(generator, list) and len(generator) != total:
            raise InputError(f"got {len(generator)} generators for {total} images")
        num_channels_latents = self.transformer.config.in_channels // 4
        latent_h = 2 * (height // self.size_multiple)
        latent_w = 2 * (width // self.size_multiple)
        if latents is None:
            latents = randn_tensor((total, num_channels_latents, latent_h, latent_w), generator=generator, device=device, dtype=prompt_embeds.dtype)
            latents = self._pack_latents(latents, total, num_channels_latents, latent_h, latent_w)  # (B, N, 64)
        else:
            latents = latents.to(device=device, dtype=prompt_embeds.dtype)
            if latents.shape != (total, condition_tokens.shape[2], num_channels_latents * 4):
                raise InputError(f"latents of shape {tuple(latents.shape)} do not fit {total} images of {height}x{width}")
        image_ids = latent_image_ids(latent_h, latent_w, device=device, dtype=prompt_embeds.dtype)  # (N, 3)

        # 4. timesteps: FLUX's dynamic shift
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        mu = calculate_shift(
            latents.shape[1],
            self.scheduler.config.get("base_image_seq_len", 256),
            self.scheduler.config.get("max_image_seq_len", 4096),
            self.scheduler.config.get("base_shift", 0.5),
            self.scheduler.config.get("max_shift", 1.15),
        )
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, sigmas=sigmas, mu=mu)
        self._num_timesteps = len(timesteps)
        self.scheduler.set_begin_index(0)
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        copies = 2 if mask_guided else 1  # the transformer's batch: (mask, empty mask) halves
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((copies * total,), guidance_scale, device=device, dtype=torch.float32)
        model_prompt_embeds = prompt_embeds.repeat(copies, 1, 1)  # (copies * B, L, D)
        model_pooled_prompt_embeds = pooled_prompt_embeds.repeat(copies, 1)  # (copies * B, P)

        # 5. denoising loop
        _onload(self.mogle)
        _onload(self.transformer)
        mogle_dtype = self.mogle.dtype
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                model_latents = latents.repeat(copies, 1, 1)  # (copies * B, N, 64)
                t_unit = (t / num_train_timesteps).expand(copies * total).to(latents.dtype)  # in (0, 1]
                tokens = self.mogle(
                    condition_tokens.to(mogle_dtype), model_latents.to(mogle_dtype), t_unit.to(mogle_dtype)
                ).to(latents.dtype)  # (copies * B, N, 64)
                noise_pred = condition_forward(
                    self.transformer,
                    hidden_states=model_latents,
                    condition_tokens=tokens,
                    encoder_hidden_states=model_prompt_embeds,
                    pooled_projections=model_pooled_prompt_embeds,
                    timestep=t_unit,
                    img_ids=image_ids,
                    txt_ids=text_ids,
                    guidance=guidance,
                )
                if mask_guided:
                    with_mask, empty_mask = noise_pred.chunk(2)
                    noise_pred = empty_mask + mask_guidance_scale * (with_mask - empty_mask)  # (B, N, 64)
                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds, "noise_pred": noise_pred, "condition_tokens": tokens}
                    out = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                    latents = (out or {}).get("latents", latents)
                progress_bar.update()
        self._current_timestep = None

        # 6. decode
        if output_type == "latent":
            images = latents
        else:
            _onload(self.vae)
            unpacked = denormalise_latents(self.vae, unpack_latents(latents, latent_h, latent_w))
            decoded = self.vae.decode(unpacked.to(self.vae.dtype), return_dict=False)[0]
            images = self.image_processor.postprocess(decoded, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return FaceMoGLEPipelineOutput(images=images)


class _TruncationNotices(logging.Filter):
    """Swallows diffusers' "The following part of your input was truncated ..." warnings, noting the encoder."""

    PREFIX = "The following part of your input was truncated"

    def __init__(self):
        super().__init__()
        self.encoders: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.PREFIX):
            return True
        self.encoders.add("CLIP" if "CLIP" in message else "T5")
        return False
