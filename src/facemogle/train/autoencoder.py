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
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

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

    settings = config.autoencoder
    if config.train.cpu_threads is not None:
        torch.set_num_threads(config.train.cpu_threads)
    accelerator = Accelerator(mixed_precision=config.train.mixed_precision)
    vae = build_pipeline(config, accelerator.device).vae
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
        output_dir.mkdir(parents=True, exist_ok=True)
        partial, final = output_dir / f".{VAE_DIR}.partial-{os.getpid()}", output_dir / VAE_DIR
        vae.save_pretrained(str(partial), safe_serialization=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
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
