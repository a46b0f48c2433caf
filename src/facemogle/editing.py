"""Editing a photo through its mask: regenerate the regions where the mask changes, keep the rest.

``FaceMoGLEPipeline.edit`` (:func:`edit_photo`) works for every model spec, on the pipeline's own
denoising loop (:func:`facemogle.sampling.denoise`) with one extra step hook::

    region   = where(edited mask != source mask) | classes named in ``regions``, grown by ``grow`` px
    x_0      = VAE posterior mean of the photo (at the model's size)          # (1, N, 64)
    x_start  = (1 - s) x_0 + s noise,  s = the first sigma ``strength`` keeps  # SDEdit; s = 1: pure noise
    per step: the model denoises with the EDITED mask as its condition; after the scheduler step,
              tokens outside the region are put back on the photo's own trajectory,
              (1 - sigma_next) x_0 + sigma_next noise, with the same noise (RePaint for flow models)
    output   = photo * (1 - alpha) + decoded * alpha at the photo's own resolution, alpha a feathered
               region that is exactly 0 outside it: those pixels are the photo's own, bit for bit.

The source mask defaults to the shipped parser's reading of the photo (:mod:`facemogle.parser`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput

from facemogle.errors import InputError
from facemogle.labels import class_ids as label_class_ids
from facemogle.latents import encode_images
from facemogle.masks import load_mask, resize_mask
from facemogle.pipeline import onload
from facemogle.provenance import mark_image
from facemogle.sampling import Conditioning, StepHook, StepState, denoise, flux_timesteps, with_empty_mask

#: Default margin (photo pixels) by which the changed region is grown, and the feather inside it.
DEFAULT_GROW = 12
#: Largest relative difference between the aspect ratios of the photo and its masks.
ASPECT_TOLERANCE = 0.01


@dataclass
class FaceMoGLEEditOutput(BaseOutput):
    """``images``: the edited photo (a list of one PIL image, or an (H, W, 3) uint8 array for
    ``output_type="np"``), at the photo's size; ``region``: (H, W) bool, the pixels regenerated."""

    images: object
    region: np.ndarray


class RegionPreservingHook(StepHook):
    """After every scheduler step, tokens outside the region return to the photo's trajectory.

    Args:
        keep: (1, N, 1) bool, True for tokens to keep (outside the region).
        photo_latents: (1, N, D) the photo's clean tokens x_0. noise: (1, N, D) the call's noise.
    """

    def __init__(self, keep: torch.Tensor, photo_latents: torch.Tensor, noise: torch.Tensor):
        self.keep, self.photo_latents, self.noise = keep, photo_latents, noise

    def after_step(self, state: StepState) -> None:
        sigma = state.sigma_next
        on_trajectory = (1 - sigma) * self.photo_latents + sigma * self.noise
        state.latents = torch.where(self.keep, on_trajectory.to(state.latents.dtype), state.latents)


def grow_region(region: np.ndarray, pixels: int) -> np.ndarray:
    """(H, W) bool region dilated by ``pixels`` (a square of side 2 * pixels + 1)."""
    if pixels <= 0 or not region.any():
        return region.copy()
    tensor = torch.from_numpy(region.astype(np.float32))[None, None]
    grown = F.max_pool2d(tensor, kernel_size=2 * pixels + 1, stride=1, padding=pixels)
    return grown[0, 0].numpy() > 0.5


def edit_region(source_ids: np.ndarray, edited_ids: np.ndarray, regions: Sequence[int] = (), grow: int = DEFAULT_GROW) -> np.ndarray:
    """The pixels an edit regenerates: where the masks differ, plus the pixels of the ``regions``
    class ids in either mask, grown by ``grow`` pixels. (H, W) bool."""
    if source_ids.shape != edited_ids.shape:
        raise InputError(f"source mask {source_ids.shape} and edited mask {edited_ids.shape} differ in size")
    region = source_ids != edited_ids
    for class_id in regions:
        region |= (source_ids == class_id) | (edited_ids == class_id)
    return grow_region(region, grow)


def feathered_alpha(region: np.ndarray, feather: int) -> np.ndarray:
    """(H, W) float32 blend weight: 1 deep inside ``region``, ramping down over about ``feather``
    pixels to its border, and exactly 0 outside it."""
    alpha = region.astype(np.float32)
    if feather <= 0 or not region.any():
        return alpha
    tensor = torch.from_numpy(alpha)[None, None]
    blurred = F.avg_pool2d(F.pad(tensor, [feather] * 4, mode="replicate"), 2 * feather + 1, stride=1)[0, 0].numpy()
    return np.where(region, np.clip(2 * blurred - 1, 0, 1), 0).astype(np.float32)  # blur 1/2 at the border -> 0


def composite(photo: np.ndarray, generated: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 blend; where ``alpha`` is 0 the photo's pixels are copied unchanged."""
    mixed = photo.astype(np.float32) * (1 - alpha[..., None]) + generated.astype(np.float32) * alpha[..., None]
    return np.where(alpha[..., None] > 0, np.clip(np.rint(mixed), 0, 255).astype(np.uint8), photo)


def work_size(width: int, height: int, side: int, multiple: int) -> tuple[int, int]:
    """(width, height) the model edits at: the photo's aspect ratio, longer side ``side``, both
    sides multiples of ``multiple``."""
    scale = side / max(width, height)
    return (max(multiple, int(round(width * scale / multiple)) * multiple),
            max(multiple, int(round(height * scale / multiple)) * multiple))


def _check_aspect(photo: PIL.Image.Image, ids: np.ndarray, what: str) -> None:
    photo_ratio, mask_ratio = photo.width / photo.height, ids.shape[1] / ids.shape[0]
    if abs(photo_ratio / mask_ratio - 1) > ASPECT_TOLERANCE:
        raise InputError(f"the {what} is {ids.shape[1]}x{ids.shape[0]} but the photo {photo.width}x{photo.height}: "
                         "their aspect ratios differ (a mask must cover the whole photo)")


def _open_photo(image) -> PIL.Image.Image:
    from facemogle.parser.inference import open_image

    try:
        photo = open_image(image)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as error:
        raise InputError(f"cannot read the photo {image}: {error.strerror or error}") from None
    if photo.width < 1 or photo.height < 1:
        raise InputError(f"the photo is empty ({photo.width}x{photo.height})")
    return photo


@dataclass
class EditPlan:
    """What an edit will do, known before any model runs: the ``photo`` (RGB PIL), the ``edited``
    and ``source`` masks at the photo's size ((H, W) official ids) and the ``region`` it
    regenerates ((H, W) bool)."""

    photo: PIL.Image.Image
    edited: np.ndarray
    source: np.ndarray
    region: np.ndarray


def plan_edit(image, mask, *, source_mask=None, regions: str | Sequence[str] | None = None, grow: int = DEFAULT_GROW,
              mask_order: str = "official", parser=None) -> EditPlan:
    """Read and check the photo and masks and find the region (see :func:`edit_photo`). Raises
    ``InputError`` for masks whose aspect ratio is not the photo's, an edit that changes nothing,
    unknown region names."""
    if int(grow) < 0:
        raise InputError(f"grow must be >= 0 pixels, got {grow}")
    class_ids = label_class_ids(regions)
    photo = _open_photo(image)
    edited = load_mask(mask, order=mask_order)
    _check_aspect(photo, edited, "edited mask")
    edited = resize_mask(edited, (photo.height, photo.width))
    if source_mask is not None:
        source = load_mask(source_mask, order=mask_order)
        _check_aspect(photo, source, "source mask")
        source = resize_mask(source, (photo.height, photo.width))
    else:
        if parser is None:
            from facemogle.parser import load_parser

            parser = load_parser()
        source = parser.parse(photo)
    if not class_ids and np.array_equal(source, edited):
        raise InputError("the edited mask equals the source mask and no regions were named: nothing to edit")
    return EditPlan(photo, edited, source, edit_region(source, edited, class_ids, int(grow)))


@torch.no_grad()
def edit_photo(pipe, image, mask, *, source_mask=None, regions: str | Sequence[str] | None = None, prompt: str | None = None,
               strength: float = 1.0, grow: int = DEFAULT_GROW, feather: int | None = None, seed: int | None = None,
               generator: torch.Generator | None = None, size: int | None = None, num_inference_steps: int | None = None,
               guidance_scale: float | None = None, mask_guidance_scale: float | None = None, mask_order: str = "official",
               parser=None, output_type: str = "pil", return_dict: bool = True,
               step_hooks: Sequence[StepHook] = (), watermark: bool = True) -> FaceMoGLEEditOutput | tuple:
    """Edit ``image`` so that it follows the edited ``mask`` where it differs from ``source_mask``.

    Args:
        image: the photo (path or PIL image), any size.
        mask: the edited mask (any format :func:`facemogle.masks.load_mask` reads), same aspect
            ratio as the photo; resized to the photo with nearest neighbour.
        source_mask: the photo's own mask; default: the shipped parser's reading of the photo.
        regions: class names (``"hair"``, ``"eyeglasses"``, ... of :mod:`facemogle.labels`) to
            regenerate wherever either mask has them, on top of the changed pixels.
        prompt: the text condition (default empty: mask only).
        strength: 1 starts from pure noise inside the region; below 1 from the partly noised photo
            (SDEdit), for subtler edits; 0 returns the photo unchanged.
        grow: pixels (of the photo) by which the region is grown. feather: pixels over which the
            result blends into the photo inside the region (default ``grow // 2``).
        seed / generator: the noise (same seed, same result).
        size: the longer side the model works at (default the pipeline's default size).
        num_inference_steps, guidance_scale, mask_guidance_scale: as for generation.
        parser: a photo parser for the default source mask (default: the shipped one).
        output_type: ``"pil"`` or ``"np"`` ((H, W, 3) uint8, never marked).
        watermark: a PIL result carries the invisible watermark and the edit's parameters
            (:mod:`facemogle.provenance`); the mark touches every pixel (PSNR ~39 dB), so only
            ``watermark=False`` (or ``"np"``) keeps the pixels outside the region bit for bit.

    Returns:
        :class:`FaceMoGLEEditOutput` (``images``, ``region``), or ``(images, region)``.
    """
    # check inputs (every argument before any model runs)
    if output_type not in ("pil", "np"):
        raise InputError(f"output_type must be pil or np for an edit, got {output_type!r}")
    if not np.isfinite(strength) or not 0.0 <= strength <= 1.0:
        raise InputError(f"strength must be in [0, 1], got {strength}")
    if feather is not None and int(feather) < 0:
        raise InputError(f"feather must be >= 0 pixels, got {feather}")
    feather = int(grow) // 2 if feather is None else int(feather)
    photo = _open_photo(image)
    side = int(size or pipe.default_sample_size * pipe.vae_scale_factor)
    width, height = work_size(photo.width, photo.height, side, pipe.size_multiple)
    steps = pipe.default_num_inference_steps if num_inference_steps is None else int(num_inference_steps)
    prompt = prompt or ""
    pipe.check_inputs([prompt], height, width, steps, 1, pipe.default_max_sequence_length)
    guidance_scale = pipe.default_guidance_scale if guidance_scale is None else guidance_scale
    mask_guidance_scale = pipe.default_mask_guidance_scale if mask_guidance_scale is None else mask_guidance_scale
    if seed is not None and generator is not None:
        raise InputError("give either seed or generator, not both")
    plan = plan_edit(photo, mask, source_mask=source_mask, regions=regions, grow=grow, mask_order=mask_order,
                     parser=parser)
    edited, region = plan.edited, plan.region
    pixels = np.asarray(photo, dtype=np.uint8)
    if strength == 0 or not region.any():  # nothing is regenerated: the photo itself, unmarked
        return _edit_output(pixels, region, output_type, return_dict)
    if seed is not None:
        generator = torch.Generator("cpu").manual_seed(int(seed))
    device = pipe._execution_device

    # encode prompt, masks and the photo
    prompt_embeds, pooled_prompt_embeds, text_ids = pipe.encode_prompt(
        prompt=[prompt], prompt_2=None, device=device, num_images_per_prompt=1,
        max_sequence_length=pipe.default_max_sequence_length)
    mask_guided = mask_guidance_scale != 1.0
    work_mask = resize_mask(edited, (height, width))
    encoded = pipe.encode_mask_latents([work_mask] + [None] * mask_guided, height, width).dense().to(device)
    small = np.array(photo.resize((width, height), PIL.Image.Resampling.LANCZOS), dtype=np.uint8)
    photo_tensor = torch.from_numpy(small).permute(2, 0, 1)[None]  # (1, 3, h, w) uint8
    onload(pipe.vae)
    photo_latents = encode_images(pipe.vae, photo_tensor).to(device=device, dtype=prompt_embeds.dtype)  # (1, N, 64)

    # prepare latents: the call's noise, the region on the token grid, the start of the schedule
    noise, image_ids = pipe.prepare_latents(1, height, width, prompt_embeds.dtype, device, [generator] if generator else None)
    keep = ~_token_region(region, height, width, pipe.size_multiple).to(device)[None, :, None]  # (1, N, 1)
    timesteps = flux_timesteps(pipe.scheduler, steps, noise.shape[1], device)
    start = min(int(round(steps * (1 - strength))), steps - 1)
    pipe.scheduler.set_begin_index(start)
    sigma = float(timesteps[start]) / pipe.scheduler.config.num_train_timesteps
    latents = (1 - sigma) * photo_latents + sigma * noise

    # denoise with the edited mask; tokens outside the region follow the photo
    guidance = None
    if pipe.transformer.config.guidance_embeds:
        guidance = torch.full((1,), guidance_scale, device=device, dtype=torch.float32)
    conditioning = Conditioning(encoded[:1], prompt_embeds, pooled_prompt_embeds, image_ids, text_ids, guidance)
    if mask_guided:
        conditioning = with_empty_mask(conditioning, encoded[1:])
    predict, _ = pipe.step_predictor(conditioning, mask_guidance_scale)
    hooks = [RegionPreservingHook(keep, photo_latents, noise), *step_hooks]
    with pipe.progress_bar(total=len(timesteps) - start) as progress_bar:
        latents = denoise(predict, pipe.scheduler, latents, timesteps[start:], hooks=hooks, progress_bar=progress_bar)

    # decode and composite at the photo's resolution
    decoded = pipe.decode_latents(latents, height, width, "np")[0]  # (h, w, 3) float in [0, 1]
    generated = PIL.Image.fromarray(np.clip(np.rint(decoded * 255), 0, 255).astype(np.uint8))
    generated = np.asarray(generated.resize((photo.width, photo.height), PIL.Image.Resampling.LANCZOS))
    pipe.maybe_free_model_hooks()
    result = composite(pixels, generated, feathered_alpha(region, feather))
    if output_type == "pil" and watermark:
        marked = mark_image(PIL.Image.fromarray(result), pipe.model_spec, {
            "edit": True, "seed": seed, "steps": steps, "strength": strength, "guidance": guidance_scale,
            "mask_guidance": mask_guidance_scale, "prompt": prompt, "regions": list(label_class_ids(regions))})
        return FaceMoGLEEditOutput(images=[marked], region=region) if return_dict else ([marked], region)
    return _edit_output(result, region, output_type, return_dict)


def _token_region(region: np.ndarray, height: int, width: int, token_pixels: int) -> torch.Tensor:
    """(N,) bool: tokens (``token_pixels`` squares of the work size) that touch the region."""
    tensor = torch.from_numpy(region.astype(np.float32))[None, None]  # (1, 1, H, W) photo size
    work = F.interpolate(tensor, size=(height, width), mode="area")  # any part of a pixel counts
    tokens = F.max_pool2d(work, kernel_size=token_pixels)  # (1, 1, h / p, w / p)
    return (tokens[0, 0] > 0).flatten()


def _edit_output(pixels: np.ndarray, region: np.ndarray, output_type: str, return_dict: bool):
    images = [PIL.Image.fromarray(pixels)] if output_type == "pil" else pixels
    if not return_dict:
        return images, region
    return FaceMoGLEEditOutput(images=images, region=region)
