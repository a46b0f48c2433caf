"""FaceMoGLEPipeline: face generation from a semantic mask, a prompt, or both.

The pipeline is diffusers' ``FluxPipeline`` (text encoding, latent packing, the flow-matching
Euler scheduler with FLUX's dynamic shift, VAE decoding, offloading, LoRA loading) plus one extra
component, :class:`facemogle.mogle.MoGLE`, and a denoising loop that feeds its output to the
transformer's condition stream (:mod:`facemogle.condition`). Steps of one call:

0. ``check_inputs``    - every argument, before any model runs.
1. ``encode_prompt``   - CLIP pooled + T5 sequence embeddings (FLUX's, unchanged).
2. ``encode_masks``    - each given mask -> 20 condition images -> VAE posterior means ->
                         (M, 20, N, 64) tokens, once per call (:mod:`facemogle.condition_tokens`).
3. ``prepare_latents`` - initial noise, one generator per image (FluxPipeline's convention, so an
                         image depends only on its own seed, never on the rest of the batch).
4. denoise            - :func:`facemogle.sampling.denoise`: per step MoGLE(condition tokens, x_t,
                         t in (0, 1)) -> transformer(x_t, condition) -> Euler step, with optional
                         mask guidance and the per-step hook point (:class:`facemogle.sampling.StepHook`).
5. ``decode_latents``  - VAE decode and post-process to PIL / numpy / torch.

Text-only generation uses the empty mask: no mask at all, every condition map blank (the global
map all background, no class map; what the reference's text-only inference feeds); mask-only uses
the empty prompt.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, FluxPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from facemogle.condition import CONDITION_ADAPTER_NAME, load_condition_lora, save_condition_lora
from facemogle.condition_tokens import MaskLatents, encode_blank, encode_mask_latents
from facemogle.errors import InputError
from facemogle.forward_cache import OFF, CachePolicy, ForwardCache, cache_policy
from facemogle.files import LORA_WEIGHT_NAME
from facemogle.latents import decode_tokens, latent_image_ids, pack_latents, vae_downsample_factor
from facemogle import patch_autoencoder  # noqa: F401  (diffusers loads only classes of imported modules)
from facemogle.masks import check_size, load_mask, resize_mask
from facemogle.mogle import MoGLE
from facemogle.provenance import mark_generated
from facemogle.sampling import (Conditioning, StepHook, StepState, denoise, flux_timesteps, generators_for_call,
                                guided_prediction, with_empty_mask, with_expert_outputs)

logger = logging.getLogger(__name__)

MaskInput = Union[str, "os.PathLike[str]", PIL.Image.Image, np.ndarray, None]

#: Prompts longer than this many characters are refused (T5 reads at most 512 tokens anyway).
MAX_PROMPT_CHARS = 4096
#: Most denoising steps a call may ask for (FLUX.1-dev uses 28-50; more only costs time).
MAX_STEPS = 1000
#: Images per VAE call when encoding condition images.
VAE_CHUNK = 40


@dataclass
class FaceMoGLEPipelineOutput(BaseOutput):
    """``images``: list of PIL images, a numpy array (B, H, W, 3), a tensor (B, 3, H, W) in [0, 1],
    or packed latents (B, N, 64), depending on ``output_type``."""

    images: Any


def check_prompt(prompt) -> None:
    """A prompt is a string of valid UTF-8 text of at most ``MAX_PROMPT_CHARS`` characters."""
    if not isinstance(prompt, str):
        raise InputError(f"a prompt must be a string, got {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # e.g. undecodable bytes from the command line (surrogates)
        raise InputError("the prompt is not valid UTF-8 text") from None
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"prompt of {len(prompt)} characters is too long (at most {MAX_PROMPT_CHARS})")


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


def onload(module: torch.nn.Module) -> None:
    """Run accelerate's offload hook of a module we call piecewise instead of through ``forward``."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(module)


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
    #: The model spec that built this pipeline (set by :func:`facemogle.specs.load_pipeline`; in the watermark).
    model_spec = "unknown"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "noise_pred", "condition_tokens", "gate_weights"]
    _optional_components = ["image_encoder", "feature_extractor"]
    #: The exact savings of a call (each leaves the output unchanged; ``facemogle bench generate``
    #: turns them off one at a time to measure what each buys): "condition_images" (the blank map
    #: encoded once per size and kept), "experts" (MoGLE's experts once per call, only the gate per
    #: step), "step_invariants" (text embedding, rotary embedding, condition modulation once per call).
    exact_savings: frozenset = frozenset({"condition_images", "experts", "step_invariants"})

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
        default_text_guidance: bool = False,
        default_text_only_guidance_scale: float | None = None,
    ):
        # FluxPipeline.__init__ reads the VAE factor from AutoencoderKL's block list; any autoencoder
        # with its interface may serve here (the bundled model's is a patch codec), so the
        # attributes it sets are set from latents.vae_downsample_factor instead.
        DiffusionPipeline.__init__(self)
        self.register_modules(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            mogle=mogle,
        )
        self.vae_scale_factor = vae_downsample_factor(vae) if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor * 2)
        self.tokenizer_max_length = tokenizer.model_max_length if tokenizer is not None else 77
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
            default_text_guidance=default_text_guidance,
            default_text_only_guidance_scale=default_text_only_guidance_scale,
        )
        self.default_sample_size = default_sample_size
        self.default_num_inference_steps = default_num_inference_steps
        self.default_max_sequence_length = default_max_sequence_length
        self.default_guidance_scale = default_guidance_scale
        # Mask guidance: 1.0 = off (the paper's sampling); the tiny model ships with more.
        self.default_mask_guidance_scale = default_mask_guidance_scale
        # Text guidance: mask guidance's second branch drops the prompt too (classifier-free
        # guidance on mask and text together; also for text-only calls). Off: the paper's sampling.
        self.default_text_guidance = default_text_guidance
        # The guidance scale of text-only images (no mask), with text guidance; None: the mask's.
        self.default_text_only_guidance_scale = default_text_only_guidance_scale

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
        and one line per pipeline says what happened instead. transformers' "Token indices sequence
        length is longer ..." line, which the untruncated tokenising diffusers does to find the cut
        text raises, goes too: the same cut is what that one line reports.
        """
        notices = _TruncationNotices()
        loggers = [logging.getLogger(FluxPipeline.__module__), logging.getLogger(_TOKENIZER_LOGGER)]
        for each in loggers:
            each.addFilter(notices)
        try:
            return super().encode_prompt(prompt, prompt_2, *args, **kwargs)
        finally:
            for each in loggers:
                each.removeFilter(notices)
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
            check_prompt(p)
        if not 1 <= int(num_inference_steps) <= MAX_STEPS:
            raise InputError(f"num_inference_steps must be in 1..{MAX_STEPS}, got {num_inference_steps}")
        if int(num_images_per_prompt) < 1:
            raise InputError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        if max_sequence_length > 512:
            raise InputError(f"max_sequence_length cannot exceed 512, got {max_sequence_length}")

    def mask_ids(self, mask: MaskInput, height: int, width: int, order: str = "official") -> np.ndarray:
        """A mask in any supported form -> (height, width) uint8 ids (nearest-neighbour resize).

        ``None`` is the empty mask, used for text-only generation: all background here, and
        :meth:`encode_mask_latents` then leaves every class map blank too.
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
        return self.encode_mask_latents(masks, height, width, order).dense()

    def encode_mask_latents(self, masks: list[MaskInput], height: int, width: int, order: str = "official") -> MaskLatents:
        """Masks -> :class:`facemogle.condition_tokens.MaskLatents` (global maps and present classes
        encoded in batched VAE calls; ``None``: the empty mask, all maps blank). The blank map's
        tokens are encoded once per size and autoencoder and kept (:meth:`blank_tokens`), so the
        empty mask costs no VAE call at all."""
        ids = np.stack([self.mask_ids(m, height, width, order) for m in masks])  # (M, H, W)
        onload(self.vae)
        blank = self.blank_tokens(height, width) if "condition_images" in self.exact_savings else None
        return encode_mask_latents(self.vae, ids, chunk_size=VAE_CHUNK, empty=[m is None for m in masks],
                                   blank_tokens=blank)

    @torch.no_grad()
    def blank_tokens(self, height: int, width: int) -> torch.Tensor:
        """Tokens (N, D) of an all-black condition map at this size, encoded once and kept on the
        pipeline (keyed by the autoencoder, its device, dtype and weights' versions: an in-place
        change of its weights, e.g. training, encodes it again)."""
        onload(self.vae)
        parameters = list(self.vae.parameters())
        key = (height, width, id(self.vae), str(self.vae.device), self.vae.dtype,
               tuple(getattr(p, "_version", 0) for p in parameters), tuple(p.data_ptr() for p in parameters))
        kept = getattr(self, "_blank_tokens", None)
        if kept is None or kept[0] != key:
            kept = (key, encode_blank(self.vae, height, width))
            self._blank_tokens = kept
        return kept[1]

    def prepare_latents(self, count: int, height: int, width: int, dtype: torch.dtype, device: torch.device,
                        generators: list[torch.Generator] | None, latents: torch.Tensor | None = None):
        """Initial noise (count, N, 64) and the tokens' rotary ids (N, 3).

        Noise follows ``FluxPipeline``'s convention: ``randn((1, C, H/f, W/f), generator)`` per
        image, packed into 2x2 patches (:func:`facemogle.latents.pack_latents`), so an image
        depends on its own generator only. Given ``latents`` are checked and used as they are.
        """
        channels = self.transformer.config.in_channels // 4
        latent_h, latent_w = 2 * (height // self.size_multiple), 2 * (width // self.size_multiple)
        image_ids = latent_image_ids(latent_h, latent_w, device=device, dtype=dtype)  # (N, 3)
        if latents is None:
            noise = randn_tensor((count, channels, latent_h, latent_w), generator=generators, device=device, dtype=dtype)
            return pack_latents(noise), image_ids  # (B, N, 64)
        latents = latents.to(device=device, dtype=dtype)
        if latents.shape != (count, len(image_ids), channels * 4):
            raise InputError(f"latents of shape {tuple(latents.shape)} do not fit {count} images of {height}x{width}")
        return latents, image_ids

    def decode_latents(self, latents: torch.Tensor, height: int, width: int, output_type: str):
        """Packed latents (B, N, 64) -> images as ``output_type`` ("latent" returns them unchanged)."""
        if output_type == "latent":
            return latents
        onload(self.vae)
        decoded = decode_tokens(self.vae, latents, height, width)  # (B, 3, H, W) in [-1, 1]
        return self.image_processor.postprocess(decoded, output_type=output_type)

    def step_predictor(self, conditioning: Conditioning, mask_guidance_scale: float | torch.Tensor = 1.0,
                       policy: CachePolicy | None = None):
        """The per-step prediction of one call, ``predict(latents, t) -> Prediction``, and its
        :class:`facemogle.forward_cache.ForwardCache` (None with the step invariants off): MoGLE's
        experts computed once here (:attr:`exact_savings`), mask guidance when the scale is not 1
        (``conditioning`` then holds the doubled batch), the cache ``policy`` (default: exact)."""
        policy = CachePolicy() if policy is None else policy
        onload(self.mogle)
        if "experts" in self.exact_savings:
            conditioning = with_expert_outputs(self.mogle, conditioning)  # (B, A, N, D), once per call
        cache = ForwardCache(policy) if "step_invariants" in self.exact_savings or not policy.exact else None
        predict = functools.partial(guided_prediction, self.transformer, self.mogle, conditioning=conditioning,
                                    mask_guidance_scale=mask_guidance_scale, cache=cache)
        return predict, cache

    def edit(self, image, mask, **kwargs):
        """Edit a photo through its mask: regenerate where ``mask`` differs from the photo's own
        mask (plus named ``regions``), keep every other pixel. See :func:`facemogle.editing.edit_photo`
        for the arguments (``source_mask``, ``regions``, ``prompt``, ``strength``, ``grow``, ``seed``, ...)."""
        from facemogle.editing import edit_photo

        return edit_photo(self, image, mask, **kwargs)

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
        text_guidance: bool | None = None,
        text_only_guidance_scale: float | None = None,
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
        step_hooks: Sequence[StepHook] = (),
        condition_cache: str = OFF,
        step_cache: str = OFF,
        watermark: bool = True,
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
                predicts with the empty mask (every map blank, as text-only generation) and uses
                ``pred_empty + w * (pred_mask - pred_empty)``. 1.0 (off, the paper's sampling) costs
                nothing; any other value doubles the transformer's batch. Default: the pipeline's
                ``default_mask_guidance_scale`` (1.0; the tiny model: see its card).
            text_guidance: the guidance's second branch also drops the prompt (the empty mask with
                the empty prompt): ``w`` then pushes towards the mask *and* the text, and text-only
                calls are guided too (a doubled batch). Default: the pipeline's
                ``default_text_guidance`` (False; the tiny model: see its card).
            text_only_guidance_scale: ``w`` for the images without a mask (text-only, with text
                guidance), which may differ from the masked images' ``mask_guidance_scale`` in the
                same batch. Default: the pipeline's ``default_text_only_guidance_scale``; None there:
                ``mask_guidance_scale`` (the tiny model sets its own: see its card).
            num_images_per_prompt: images per (mask, prompt) pair.
            generator: one ``torch.Generator`` per image (or one for a single image). With a
                single generator for several images, one seed per image is drawn from it.
            seed: alternative to ``generator``: an int (images get seed, seed+1, ...) or one per image.
                Image *i* for seed *s* equals a single-image call with seed *s*.
            latents: optional initial noise (B, N, 64).
            mask_order: ``"official"`` or ``"bisenet"`` label order of id masks.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``. Only PIL images are marked
                (``watermark``); ``"np"``, ``"pt"`` and ``"latent"`` outputs are never marked.
            callback_on_step_end: diffusers' per-step callback ``(pipe, i, t, tensors) -> dict``;
                ``tensors`` holds the names in ``callback_on_step_end_tensor_inputs`` among
                ``latents``, ``prompt_embeds``, ``noise_pred``, ``condition_tokens`` (MoGLE's output)
                and ``gate_weights`` (B, N, A); with mask guidance, those of the images' own masks.
                A returned ``{"latents": ...}`` replaces the latents.
            step_hooks: :class:`facemogle.sampling.StepHook` objects run at every step (after the
                callback), the hook point for features that change the denoising loop.
            condition_cache: ``"off"`` (exact, the default), ``"every:K"``: the condition stream is
                computed every K steps and its keys/values reused in between (an approximation,
                since MoGLE's gate changes the condition tokens each step), ``"every:K+first"``: also
                refresh the first block's condition keys/values each step. See
                :mod:`facemogle.forward_cache` and the README's speed table for what each costs.
            step_cache: ``"off"`` (exact) or ``"first-block:T"``: diffusers' first-block cache inside
                the condition forward (steps whose first-block residual changed by less than T skip
                the other blocks). diffusers' own ``transformer.enable_cache`` hooks cannot see the
                condition forward's blocks and are refused.
            watermark: PIL outputs carry the invisible watermark and their generation parameters
                (:mod:`facemogle.provenance`; images under 512 px are upscaled to 512 px to be
                marked). ``False`` opts out: the images are the model's own, at the asked size.

        Returns:
            :class:`FaceMoGLEPipelineOutput` (or a tuple when ``return_dict=False``).
        """
        # 0. defaults and checks (nothing is computed before the inputs are known to be valid)
        num_inference_steps = self.default_num_inference_steps if num_inference_steps is None else num_inference_steps
        max_sequence_length = self.default_max_sequence_length if max_sequence_length is None else max_sequence_length
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        mask_guidance_scale = self.default_mask_guidance_scale if mask_guidance_scale is None else mask_guidance_scale
        text_guidance = self.default_text_guidance if text_guidance is None else bool(text_guidance)
        if text_only_guidance_scale is None:
            text_only_guidance_scale = self.default_text_only_guidance_scale
        text_only_guidance_scale = mask_guidance_scale if text_only_guidance_scale is None else text_only_guidance_scale
        height = int(self.default_sample_size * self.vae_scale_factor if height is None else height)
        width = int(self.default_sample_size * self.vae_scale_factor if width is None else width)
        for name, value in (("guidance_scale", guidance_scale), ("mask_guidance_scale", mask_guidance_scale),
                            ("text_only_guidance_scale", text_only_guidance_scale)):
            if not math.isfinite(float(value)):
                raise InputError(f"{name} must be a finite number, got {value}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise InputError(f"output_type must be pil, np, pt or latent, got {output_type!r}")
        masks = _as_list(mask, None)
        prompts = ["" if p is None else p for p in _as_list(prompt, "")]
        pairs = _broadcast(masks, prompts)
        self.check_inputs(prompts, height, width, num_inference_steps, num_images_per_prompt, max_sequence_length)
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise InputError(f"callback_on_step_end_tensor_inputs: unknown names {sorted(unknown)} "
                             f"(known: {', '.join(self._callback_tensor_inputs)})")
        policy = cache_policy(condition_cache, step_cache)
        if not policy.condition_stream and any(m is not None for m in masks):
            raise InputError("condition_cache='none' runs no condition stream, so it takes no mask (text-only calls only)")
        if getattr(self.transformer, "is_cache_enabled", False):
            raise InputError("diffusers' transformer.enable_cache hooks do not see facemogle's condition forward; "
                             "call transformer.disable_cache() and pass step_cache='first-block:T' instead")
        total = pairs * num_images_per_prompt
        generators = generators_for_call(seed, generator, total)
        device = self._execution_device
        self._guidance_scale = guidance_scale
        self._interrupt = False

        # 1. encode prompt: once per given prompt (and the empty one, for text guidance), then indexed per image
        mask_index = _per_image(len(masks), pairs, num_images_per_prompt)
        scales = [mask_guidance_scale if masks[i] is not None else text_only_guidance_scale for i in mask_index]
        # guidance changes an image when its scale is not 1 and its two branches differ (a mask, or the text)
        mask_guided = any(w != 1.0 and (text_guidance or masks[i] is not None) for w, i in zip(scales, mask_index))
        text_guided = mask_guided and text_guidance
        all_embeds, all_pooled, text_ids = self.encode_prompt(
            prompt=prompts + [""] * text_guided, prompt_2=None, device=device, num_images_per_prompt=1,
            max_sequence_length=max_sequence_length
        )
        prompt_index = _per_image(len(prompts), pairs, num_images_per_prompt)
        prompt_embeds, pooled_prompt_embeds = all_embeds[prompt_index], all_pooled[prompt_index]  # (B, L, D), (B, P)
        empty_prompt = (all_embeds[len(prompts):], all_pooled[len(prompts):]) if text_guided else None

        # 2. encode masks: once per call (with the empty mask, when mask guidance needs it)
        if policy.condition_stream:
            encoded = self.encode_mask_latents(masks + [None] * mask_guided, height, width, mask_order).dense().to(device)
            condition_latents = encoded[mask_index]  # (B, E, N, 64)
        else:  # condition_cache="none": the base transformer alone
            encoded, condition_latents = None, None

        # 3. prepare latents
        latents, image_ids = self.prepare_latents(total, height, width, prompt_embeds.dtype, device, generators, latents)

        # 4. denoise
        timesteps = flux_timesteps(self.scheduler, num_inference_steps, latents.shape[1], device)
        self._num_timesteps = len(timesteps)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((total,), guidance_scale, device=device, dtype=torch.float32)
        conditioning = Conditioning(condition_latents, prompt_embeds, pooled_prompt_embeds, image_ids, text_ids, guidance)
        if mask_guided:
            # (2B) batch: own masks, then the empty mask (with the empty prompt, for text guidance)
            conditioning = with_empty_mask(conditioning, None if encoded is None else encoded[len(masks):], empty_prompt)
        step_scale = 1.0
        if mask_guided:  # one number when every image has the same scale, else one per image
            step_scale = scales[0] if len(set(scales)) == 1 else torch.tensor(scales, device=device)  # (B,)
        predict, cache = self.step_predictor(conditioning, step_scale, policy)
        hooks = [_CallbackHook(self, callback_on_step_end, callback_on_step_end_tensor_inputs, prompt_embeds),
                 *step_hooks]
        onload(self.transformer)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            latents = denoise(predict, self.scheduler, latents, timesteps, hooks=hooks,
                              progress_bar=progress_bar, interrupted=lambda: self.interrupt)
        self._current_timestep = None
        self.forward_cache_counts = None if cache is None else dict(cache.counts)  # what the steps did

        # 5. decode
        images = self.decode_latents(latents, height, width, output_type)
        if output_type == "pil" and watermark:
            images = mark_generated(images, self.model_spec, seed=seed, steps=num_inference_steps, size=[width, height],
                                    prompts=[prompts[i] for i in prompt_index], guidance=guidance_scale,
                                    mask_guidance=mask_guidance_scale, text_guidance=text_guidance,
                                    **({"text_only_guidance": text_only_guidance_scale}
                                       if text_only_guidance_scale != mask_guidance_scale else {}),
                                    **({} if policy.exact else {"condition_cache": condition_cache, "step_cache": step_cache}))
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return FaceMoGLEPipelineOutput(images=images)


class _CallbackHook(StepHook):
    """diffusers' per-step pipeline state (``pipe.current_timestep``) and ``callback_on_step_end``
    (if given) as a :class:`facemogle.sampling.StepHook`."""

    def __init__(self, pipe, callback, names: Sequence[str], prompt_embeds: torch.Tensor):
        self.pipe, self.callback, self.names, self.prompt_embeds = pipe, callback, names, prompt_embeds

    def before_prediction(self, state: StepState) -> None:
        self.pipe._current_timestep = state.timestep

    def after_step(self, state: StepState) -> None:
        if self.callback is None:
            return
        tensors = {"latents": state.latents, "prompt_embeds": self.prompt_embeds,
                   "noise_pred": state.prediction.velocity, "condition_tokens": state.prediction.condition_tokens,
                   "gate_weights": state.prediction.gate_weights}
        out = self.callback(self.pipe, state.index, state.timestep, {k: tensors[k] for k in self.names})
        state.latents = (out or {}).get("latents", state.latents)


def _per_image(given: int, pairs: int, per_pair: int) -> list[int]:
    """Index of each image's input among ``given`` inputs (one input is broadcast to every pair)."""
    return [pair if given > 1 else 0 for pair in range(pairs) for _ in range(per_pair)]


#: The logger of transformers' tokenizers (its "Token indices sequence length is longer ..." warning).
_TOKENIZER_LOGGER = "transformers.tokenization_utils_base"


class _TruncationNotices(logging.Filter):
    """Swallows diffusers' "The following part of your input was truncated ..." warnings, noting the
    encoder, and transformers' "Token indices sequence length is longer ..." (the same cut, seen by the
    tokenizer before diffusers cuts it)."""

    PREFIX = "The following part of your input was truncated"
    TOKENIZER_PREFIX = "Token indices sequence length is longer than the specified maximum"

    def __init__(self):
        super().__init__()
        self.encoders: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self.TOKENIZER_PREFIX):
            return False
        if not message.startswith(self.PREFIX):
            return True
        self.encoders.add("CLIP" if "CLIP" in message else "T5")
        return False
