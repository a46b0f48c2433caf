"""The training log (loss per timestep bucket, lr, grad norm: CSV and optional TensorBoard) and
the sample grids written while training."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
import torch

from facemogle.files import atomic_write, atomic_write_text
from facemogle.flow import RectifiedFlow
from facemogle.train.config import TrainingConfig

LOG_NAME = "train_log.csv"


class TrainLog:
    """CSV (and optional TensorBoard) log of the loss per timestep bucket, lr and grad norm."""

    def __init__(self, directory: Path, num_buckets: int, tensorboard: bool | None, resume_step: int | None):
        self.path = directory / LOG_NAME
        self.edges = RectifiedFlow.bucket_edges(num_buckets)
        names = [f"{self.edges[i]:.2f}-{self.edges[i + 1]:.2f}" for i in range(num_buckets)]
        self.columns = (["step", "samples_seen", "epoch", "lr", "loss", "grad_norm"] + [f"loss_t{n}" for n in names]
                        + [f"count_t{n}" for n in names] + ["seconds"])
        directory.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():  # drop rows logged after the checkpoint
            with open(self.path, newline="", encoding="utf-8") as handle:
                rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= resume_step]
            self._rewrite(rows)
        elif not self.path.is_file() or resume_step is None:
            self._rewrite([])
        self.writer = None
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(directory / "tensorboard"), purge_step=(resume_step or 0) + 1)
            except ImportError:
                self.writer = None
        self.reset()

    def _rewrite(self, rows: list[dict]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())

    def reset(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.timesteps: list[torch.Tensor] = []
        self.grad_norms: list[float] = []
        self.started = time.perf_counter()

    def add(self, per_sample_loss: torch.Tensor, timesteps: torch.Tensor) -> None:
        self.losses.append(per_sample_loss.detach().float().cpu())
        self.timesteps.append(timesteps.detach().float().cpu())

    def write(self, step: int, samples_seen: int, epoch: int, lr: float) -> dict:
        losses, timesteps = torch.cat(self.losses), torch.cat(self.timesteps)
        bucket = RectifiedFlow.bucket(timesteps, self.edges)  # (n,) in 0..K-1
        row = {"step": step, "samples_seen": samples_seen, "epoch": epoch, "lr": f"{lr:.6g}",
               "loss": f"{losses.mean().item():.6f}",
               "grad_norm": f"{np.mean(self.grad_norms):.6f}" if self.grad_norms else "",
               "seconds": f"{time.perf_counter() - self.started:.3f}"}
        names = self.columns[6 : 6 + len(self.edges) - 1]
        for k, name in enumerate(names):
            chosen = losses[bucket == k]
            row[name] = f"{chosen.mean().item():.6f}" if len(chosen) else ""
            row[name.replace("loss_t", "count_t")] = len(chosen)
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=self.columns).writerow(row)
        if self.writer is not None:
            self.writer.add_scalar("loss", losses.mean().item(), step)
            self.writer.add_scalar("lr", lr, step)
            for name in names:
                if row[name]:
                    self.writer.add_scalar(f"loss_by_t/{name[len('loss_t'):]}", float(row[name]), step)
        self.reset()
        return row

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_sample_grid(pipe, records, config: TrainingConfig, path: Path, autocast) -> Path:
    """Generate one image per record (its mask and first caption) and save rows of mask | image."""
    from PIL import Image

    from facemogle.data.datasets import load_mask_ids
    from facemogle.masks import render_mask

    resolution = config.data.resolution
    ids = [load_mask_ids(r.mask, resolution, config.data.mask_order) for r in records]
    prompts = [r.captions[0] if r.captions else "" for r in records]
    with torch.random.fork_rng(devices=[]), torch.no_grad(), autocast():
        images = pipe(mask=ids, prompt=prompts, height=resolution, width=resolution,
                      num_inference_steps=config.sample.steps, guidance_scale=config.sample.guidance,
                      seed=config.sample.seed, output_type="pil", watermark=False).images  # training's own check
    grid = Image.new("RGB", (2 * resolution, len(records) * resolution))
    for row, (mask, image) in enumerate(zip(ids, images)):
        grid.paste(Image.fromarray(render_mask(mask)), (0, row * resolution))
        grid.paste(image.convert("RGB"), (resolution, row * resolution))
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))
