"""The autoencoder stage of the scratch recipe: train the preset's VAE on the dataset's faces.

``stage: autoencoder`` in a config runs :func:`train_autoencoder`: the VAE of ``model.spec``
(random for small presets) is trained to reconstruct the training images with
``l1_weight * |x' - x| + l2_weight * (x' - x)^2 + kl_weight * KL`` (no perceptual or adversarial
loss: simple on purpose), on the same split, resolution and seeded sample stream as the diffusion
stage. At the end the latent statistics of the training images set the VAE's ``shift_factor``
(mean) and ``scaling_factor`` (1 / std), so normalised latents have mean 0 and std 1, and the VAE
is written to ``<output_dir>/vae`` (``AutoencoderKL.save_pretrained``; the directory appears
complete or not at all). Point ``model.vae`` of the scratch diffusion config at it.
No resume: the stage is short; rerun it to redo it.

A spec whose autoencoder is a :class:`facemogle.patch_autoencoder.PatchAutoencoder` (the bundled
tiny model's) is *fitted* instead (:func:`fit_autoencoder`): PCA of the training photos' patches,
in seconds, then saved the same way; its reconstruction PSNR on the validation faces, and that of
the other patch-codec shapes it was chosen over, go into ``<output_dir>/candidates.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from facemogle.files import atomic_save_pretrained
from facemogle.train.config import TrainingConfig

VAE_DIR = "vae"
LOG_NAME = "autoencoder_log.csv"
STAT_BATCHES = 8


def _pixels(images: torch.Tensor, device) -> torch.Tensor:
    return images.to(device=device, dtype=torch.float32) / 127.5 - 1.0  # uint8 -> [-1, 1]


def train_autoencoder(config: TrainingConfig, progress: bool = True):
    """Train ``pipe.vae`` per ``config.autoencoder``; returns a ``TrainResult`` (losses per step)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from facemogle.data.datasets import FaceDataset
    from facemogle.data.stream import EpochPermutations, PositionBatchSampler
    from facemogle.files import atomic_write_text
    from facemogle.train.setup import TrainResult, build_pipeline, open_training_records

    from facemogle.patch_autoencoder import PatchAutoencoder

    settings = config.autoencoder
    if config.train.cpu_threads is not None:
        torch.set_num_threads(config.train.cpu_threads)
    accelerator = Accelerator(mixed_precision=config.train.mixed_precision)
    vae = build_pipeline(config, accelerator.device).vae
    if isinstance(vae, PatchAutoencoder):
        return fit_autoencoder(config, vae, accelerator.is_main_process, progress)
    vae.requires_grad_(True).train()
    _, records = open_training_records(config)
    faces = FaceDataset(records, config.data.resolution, config.data.image_resize, config.data.mask_order)
    order = EpochPermutations(len(faces), config.seed)

    class Shuffled(torch.utils.data.Dataset):
        def __len__(self):
            return len(faces)

        def __getitem__(self, position):
            return faces[order.sample_index(position)]["image"]

    sampler = PositionBatchSampler(0, settings.batch_size, settings.max_steps * accelerator.num_processes)
    loader = torch.utils.data.DataLoader(Shuffled(), batch_sampler=sampler, num_workers=config.data.num_workers)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.lr)
    vae, optimizer, loader = accelerator.prepare(vae, optimizer, loader)
    torch.manual_seed(config.seed)

    output_dir = Path(config.output_dir)
    result = TrainResult(output_dir=output_dir, global_step=0, start_step=0, final_checkpoint=None)
    rows = []
    bar = tqdm(total=settings.max_steps, desc="autoencoder", unit="step",
               disable=not progress or not accelerator.is_main_process)
    for step, images in enumerate(loader, start=1):
        started = time.perf_counter()
        x = _pixels(images, accelerator.device)
        posterior = accelerator.unwrap_model(vae).encode(x).latent_dist
        recon = accelerator.unwrap_model(vae).decode(posterior.sample()).sample
        l1 = (recon - x).abs().mean()
        l2 = (recon - x).square().mean()
        kl = posterior.kl().mean() / x[0].numel()
        loss = settings.l1_weight * l1 + settings.l2_weight * l2 + settings.kl_weight * kl
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(float(accelerator.gather(loss.detach()[None]).mean()))
        result.step_seconds.append(time.perf_counter() - started)
        if step % settings.log_every == 0 or step == settings.max_steps:
            rows.append({"step": step, "loss": f"{result.losses[-1]:.6f}", "l1": f"{l1.item():.6f}",
                         "l2": f"{l2.item():.6f}", "kl": f"{kl.item():.6f}"})
        bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
        bar.update()
    bar.close()
    result.global_step = settings.max_steps

    vae = accelerator.unwrap_model(vae).eval()
    if accelerator.is_main_process:
        shift, scale = latent_statistics(vae, faces, settings.batch_size, accelerator.device)
        vae.register_to_config(shift_factor=shift, scaling_factor=scale)
        final = save_autoencoder(vae, output_dir)
        header = ["step", "loss", "l1", "l2", "kl"]
        lines = [",".join(header)] + [",".join(str(row[k]) for k in header) for row in rows]
        atomic_write_text(output_dir / LOG_NAME, "\n".join(lines) + "\n")
        result.final_checkpoint = final
    accelerator.wait_for_everyone()
    return result


@torch.no_grad()
def latent_statistics(vae, faces, batch_size: int, device) -> tuple[float, float]:
    """(mean, std) of the posterior-mean latents of up to ``STAT_BATCHES`` batches of ``faces``."""
    latents = []
    for start in range(0, min(len(faces), STAT_BATCHES * batch_size), batch_size):
        images = torch.stack([faces[i]["image"] for i in range(start, min(start + batch_size, len(faces)))])
        latents.append(vae.encode(_pixels(images, device)).latent_dist.mode().float().cpu())
    values = torch.cat(latents)
    return float(values.mean()), float(1.0 / values.std().clamp_min(1e-6))


def save_autoencoder(vae, output_dir: Path) -> Path:
    """``vae.save_pretrained`` into ``<output_dir>/vae``, complete or not at all; returns that folder."""
    return atomic_save_pretrained(vae, output_dir / VAE_DIR, safe_serialization=True)


#: Patch codecs measured beside the configured one: (downsample factor, latent channels, decoder
#: smoothing steps).
CANDIDATE_SHAPES = ((4, 16, 0), (8, 16, 0), (8, 16, 5), (4, 8, 0))
CANDIDATES_NAME = "candidates.json"


def fit_autoencoder(config: TrainingConfig, preset, is_main: bool, progress: bool = True):
    """The stage for a :class:`~facemogle.patch_autoencoder.PatchAutoencoder` preset: fit it (PCA)
    on the training photos, save it, and measure it and :data:`CANDIDATE_SHAPES` on the validation
    faces (``candidates.json``). Returns a ``TrainResult`` with one "step" (the fit)."""
    import json

    from tqdm.auto import tqdm

    from facemogle.data.datasets import FaceDataset
    from facemogle.files import atomic_write_text
    from facemogle.patch_autoencoder import fit_patch_autoencoder, reconstruction_psnr
    from facemogle.train.setup import TrainResult, open_training_records, open_validation_records

    output_dir = Path(config.output_dir)
    result = TrainResult(output_dir=output_dir, global_step=1, start_step=0, final_checkpoint=None)
    _, records = open_training_records(config)
    faces = FaceDataset(records, config.data.resolution, config.data.image_resize, config.data.mask_order)
    images = torch.stack([faces[i]["image"] for i in tqdm(range(len(faces)), desc="reading photos",
                                                         disable=not progress or not is_main)])
    val_records = open_validation_records(config)
    val_faces = FaceDataset(val_records, config.data.resolution, config.data.image_resize, config.data.mask_order)
    val_images = torch.stack([val_faces[i]["image"] for i in range(len(val_faces))]) if len(val_faces) else None
    started = time.perf_counter()
    shape = (preset.config.downsample_factor, preset.config.latent_channels, preset.config.smoothing_steps)
    vae = fit_patch_autoencoder(images, downsample_factor=shape[0], latent_channels=shape[1], smoothing_steps=shape[2])
    result.step_seconds.append(time.perf_counter() - started)
    train_psnr = reconstruction_psnr(vae, images)
    result.losses.append(train_psnr)
    if is_main:
        result.final_checkpoint = save_autoencoder(vae, output_dir)
        candidates = []
        for factor, channels, smoothing in dict.fromkeys((shape, *CANDIDATE_SHAPES)):
            fitted = vae if (factor, channels, smoothing) == shape else fit_patch_autoencoder(
                images, downsample_factor=factor, latent_channels=channels, smoothing_steps=smoothing)
            candidates.append({"design": "pca-patch" + (f" + {smoothing} smoothing steps" if smoothing else ""),
                               "downsample_factor": factor, "latent_channels": channels,
                               "smoothing_steps": smoothing,
                               "resolution": config.data.resolution, "chosen": (factor, channels, smoothing) == shape,
                               "train_psnr_db": round(reconstruction_psnr(fitted, images), 2),
                               "val_psnr_db": None if val_images is None
                               else round(reconstruction_psnr(fitted, val_images), 2)})
        atomic_write_text(output_dir / CANDIDATES_NAME, json.dumps(candidates, indent=1) + "\n")
        print("autoencoder candidates (PSNR dB, train / val):", ", ".join(
            f"{c['design']} /{c['downsample_factor']} x{c['latent_channels']}: {c['train_psnr_db']} / {c['val_psnr_db']}"
            for c in candidates), flush=True)
    return result
