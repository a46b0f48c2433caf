"""Rectified-flow training of Face-MoGLE on ``accelerate`` (METHOD.md section 5).

One optimizer step::

    x_0, cond   = cached image latents (B, N, D), mask latents (B, E, N, D)   # or encoded now
    t, noise    = the stream position's draws (facemogle.data.stream)          # (B,), (B, N, D)
    x_t         = (1 - t) x_0 + t noise
    tokens      = MoGLE(cond, x_t, t)                                           # (B, N, D)
    pred        = condition_forward(transformer, x_t, tokens, text, t, guidance = 1)
    loss        = mean((pred - (noise - x_0))^2)

Modes: ``adapter`` trains the condition LoRA + MoGLE on a frozen base (the paper); ``scratch``
trains every transformer and MoGLE weight of a small preset from its random init. The VAE and the
text encoders are always frozen (the autoencoder stage trains a VAE separately).

Multi-process: ``accelerate launch -m facemogle train CONFIG`` (or ``torchrun``). The sample
stream is global and every draw depends only on the stream position, so N processes x batch b
train on exactly the samples and noise of 1 process x batch N*b; gradients are averaged by DDP.

Outputs under ``output_dir``: ``checkpoints/step-*/`` (:mod:`facemogle.train.checkpoint`),
``logs/train_log.csv`` (loss per timestep bucket, lr, grad norm), ``logs/tensorboard/`` (if
enabled), ``samples/step-*.png`` (mask | generated grids), ``config.yaml``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import inspect
import io
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from facemogle.errors import CheckpointError, InputError
from facemogle.train import checkpoint as ckpt
from facemogle.train.config import TrainingConfig

logger = logging.getLogger(__name__)

LOG_NAME = "train_log.csv"
WEIGHT_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Config keys that may change between a checkpoint and its resumption (they do not change the math).
#: ``data.root`` may move: the training stems are compared instead (``TrainerState.stems_digest``).
RESUMABLE_CHANGES = ("train.max_steps", "checkpoint.", "log.", "sample.", "data.root", "data.num_workers",
                     "cache.dir", "cache.encode_batch_size", "output_dir")


# ----------------------------------------------------------------------------------- model


class FaceMoGLETrainingModel(nn.Module):
    """The trained modules in one ``nn.Module`` (what accelerate / DDP wraps)."""

    def __init__(self, transformer: nn.Module, mogle: nn.Module):
        super().__init__()
        self.transformer = transformer
        self.mogle = mogle

    def forward(self, image_tokens, condition_tokens, noise, timestep, prompt_embeds, pooled_prompt_embeds,
                img_ids, txt_ids) -> torch.Tensor:
        """Velocity prediction (B, N, D) for x_t built from ``image_tokens`` (B, N, D), ``noise``
        (B, N, D) and ``timestep`` (B,) in (0, 1); ``condition_tokens`` (B, E, N, D)."""
        from facemogle.condition import condition_forward
        from facemogle.flow import noisy_latents

        x_t = noisy_latents(image_tokens, noise, timestep)  # (B, N, D)
        tokens = self.mogle(condition_tokens, x_t, timestep)  # (B, N, D)
        guidance = torch.ones_like(timestep) if self.transformer.config.guidance_embeds else None  # FLUX guidance 1.0
        return condition_forward(
            self.transformer, hidden_states=x_t, condition_tokens=tokens, encoder_hidden_states=prompt_embeds,
            pooled_projections=pooled_prompt_embeds, timestep=timestep, img_ids=img_ids, txt_ids=txt_ids,
            guidance=guidance,
        )


def build_pipeline(config: TrainingConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The spec's pipeline with the configured LoRA and MoGLE, with trainable parameters marked
    (``requires_grad``). The spec builds its models directly on ``device`` in ``dtype`` (a 12B
    FLUX never exists in float32 on the CPU); :func:`place_pipeline` then sets the final dtypes.
    Seeds torch with ``config.seed`` first."""
    from facemogle.condition import (CONDITION_ADAPTER_NAME, add_condition_lora, load_condition_lora)
    from facemogle.mogle import MoGLE, read_state_dict_file
    from facemogle.specs import get_spec

    model = config.model
    torch.manual_seed(config.seed)
    options = dict(model.options)
    parameters = inspect.signature(get_spec(model.spec).build).parameters
    if "lora_rank" in parameters:
        options["lora_rank"] = model.lora_rank
    if "device" in parameters:
        options["device"] = device
    if "dtype" in parameters:
        options["dtype"] = dtype
    pipe = get_spec(model.spec).build(**options)
    transformer = pipe.transformer

    existing = getattr(transformer, "peft_config", {}).get(CONDITION_ADAPTER_NAME)
    if existing is not None and (existing.r, float(existing.lora_alpha)) != (model.lora_rank, model.lora_alpha):
        transformer.delete_adapters(CONDITION_ADAPTER_NAME)
        existing = None
    if existing is None:
        torch.manual_seed(config.seed)
        add_condition_lora(transformer, rank=model.lora_rank, alpha=model.lora_alpha)
    if model.init_lora is not None:
        load_condition_lora(transformer, model.init_lora)

    torch.manual_seed(config.seed + 1)
    mogle = MoGLE(**dataclasses.asdict(model.mogle))
    if model.init_mogle is not None:
        mogle.load_official_state_dict(read_state_dict_file(model.init_mogle))
    pipe.mogle = mogle
    pipe.register_modules(mogle=mogle)

    if model.vae is not None:
        from diffusers import AutoencoderKL

        pipe.vae = AutoencoderKL.from_pretrained(model.vae, torch_dtype=torch.float32)
        pipe.register_modules(vae=pipe.vae)

    for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.requires_grad_(False).eval()
    if config.mode == "scratch":
        transformer.requires_grad_(True)
    else:
        for name, parameter in transformer.named_parameters():
            parameter.requires_grad_(".lora_" in name)
    for parameter in discarded_condition_lora_parameters(transformer):
        parameter.requires_grad_(False)
    mogle.requires_grad_(True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def discarded_condition_lora_parameters(transformer: nn.Module) -> list[nn.Parameter]:
    """LoRA parameters that cannot influence the prediction, so they never get a gradient.

    The condition tokens are dropped after the last block (facemogle.condition), so in that block
    the layers that only produce the condition stream's *output* are dead ends: ``proj_mlp`` and
    ``proj_out`` of the last single block (or ``attn.to_out.0`` and ``ff.net.2`` of the last joint
    block when there are no single blocks). Their LoRA is frozen at its initial value (the optimizer
    would skip it anyway: its gradient is None); this keeps DDP's gradient reduction complete
    without ``find_unused_parameters`` and leaves the official LoRA file's key set unchanged.
    """
    if len(transformer.single_transformer_blocks):
        last = transformer.single_transformer_blocks[-1]
        modules = (last.proj_mlp, last.proj_out)
    elif len(transformer.transformer_blocks):
        last = transformer.transformer_blocks[-1]
        modules = (last.attn.to_out[0], last.ff.net[2])
    else:
        return []
    return [p for module in modules for name, p in module.named_parameters() if "lora_" in name]


def place_pipeline(pipe, device: torch.device, weight_dtype: torch.dtype) -> None:
    """Frozen weights in ``weight_dtype`` (the VAE stays float32), trainable ones in float32."""
    # nn.Module.to: diffusers' ModelMixin.to warns about "modules to keep in float32" on every cast.
    nn.Module.to(pipe.vae, device=device, dtype=torch.float32)
    for module in (pipe.text_encoder, pipe.text_encoder_2, pipe.transformer):
        nn.Module.to(module, device=device, dtype=weight_dtype)
    nn.Module.to(pipe.mogle, device=device, dtype=torch.float32)
    for parameter in pipe.transformer.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()


def build_optimizer(config: TrainingConfig, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    settings = config.train.optimizer
    if settings.name == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:  # checked by the config already; kept for API callers
            raise InputError("optimizer 'prodigy' needs the prodigyopt package (pip install prodigyopt)") from None
        return Prodigy(parameters, lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps,
                       weight_decay=settings.weight_decay, decouple=True,
                       use_bias_correction=settings.use_bias_correction,
                       safeguard_warmup=settings.safeguard_warmup, d_coef=settings.d_coef)
    return torch.optim.AdamW(parameters, lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps,
                             weight_decay=settings.weight_decay)


def build_lr_scheduler(config: TrainingConfig, optimizer):
    from diffusers.optimization import get_scheduler

    return get_scheduler(config.train.lr_scheduler, optimizer, num_warmup_steps=config.train.lr_warmup_steps,
                         num_training_steps=config.train.max_steps)


# ----------------------------------------------------------------------------------- data


def open_training_records(config: TrainingConfig):
    """(dataset index, records of the training split)."""
    from facemogle.data.datasets import index_dataset

    data = config.data
    index = index_dataset(data.root, data.layout, data.split_file, data.num_val, data.split_salt, data.captions_dir)
    records = index.split(data.split)
    if data.max_samples is not None:
        records = records[: data.max_samples]
    if not records:
        raise InputError(f"split {data.split!r} of {data.root} is empty ({index.split_source} split)")
    return index, records


@torch.no_grad()
def encode_raw_batch(pipe, batch: dict, max_sequence_length: int = 512) -> dict:
    """Encode a :class:`RawTrainingDataset` batch now (VAE on the image and the E condition
    images, both text encoders) into the tensors the cached path reads from disk."""
    from facemogle.latents import encode_condition_images, encode_images
    from facemogle.masks import condition_images

    device = next(pipe.vae.parameters()).device
    images = condition_images(batch["mask"].cpu().numpy())  # (B, E, 3, R, R) uint8
    images[:, 1:][batch["local_dropped"].cpu()] = 0  # a dropped local mask is a zeroed map
    prompt_embeds, pooled, _ = pipe.encode_prompt(prompt=list(batch["caption"]), prompt_2=None, device=device,
                                                  num_images_per_prompt=1, max_sequence_length=max_sequence_length)
    return {
        "image_tokens": encode_images(pipe.vae, batch["image"].to(device)).float(),
        "condition_tokens": encode_condition_images(pipe.vae, images.to(device)).float(),
        "prompt_embeds": prompt_embeds.float(),
        "pooled_prompt_embeds": pooled.float(),
        "noise": batch["noise"],
        "timestep": batch["timestep"],
    }


# ----------------------------------------------------------------------------------- logging


class TrainLog:
    """CSV (and optional TensorBoard) log of the loss per timestep bucket, lr and grad norm."""

    def __init__(self, directory: Path, num_buckets: int, tensorboard: bool | None, resume_step: int | None):
        self.path = directory / LOG_NAME
        self.edges = torch.linspace(0, 1, num_buckets + 1)
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
        ckpt.atomic_write_text(self.path, buffer.getvalue())

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
        bucket = torch.bucketize(timesteps, self.edges[1:-1], right=True)  # (n,) in 0..K-1
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
                      seed=config.sample.seed, output_type="pil").images
    grid = Image.new("RGB", (2 * resolution, len(records) * resolution))
    for row, (mask, image) in enumerate(zip(ids, images)):
        grid.paste(Image.fromarray(render_mask(mask)), (0, row * resolution))
        grid.paste(image.convert("RGB"), (resolution, row * resolution))
    path.parent.mkdir(parents=True, exist_ok=True)
    return ckpt.atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))


# ----------------------------------------------------------------------------------- trainer


@dataclass
class StepEvent:
    """Passed to callbacks after every optimizer step (after logging and checkpointing)."""

    step: int
    loss: float
    checkpoint: Path | None
    trainer: "Trainer"


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    start_step: int
    final_checkpoint: Path | None
    losses: list[float] = field(default_factory=list)  # mean loss of each step of this run
    step_seconds: list[float] = field(default_factory=list)
    cache_stats: dict = field(default_factory=dict)

    def steps_per_second(self, skip: int = 1) -> float:
        """Throughput after the first ``skip`` (warm-up) steps."""
        times = self.step_seconds[skip:] or self.step_seconds
        return len(times) / sum(times) if times and sum(times) > 0 else float("nan")

    def to_dict(self) -> dict:
        """JSON-ready (paths as strings); :meth:`from_dict` reads it back."""
        return {f.name: (str(v) if isinstance(v, Path) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainResult":
        values = dict(values)
        for name in ("output_dir", "final_checkpoint"):
            values[name] = None if values.get(name) is None else Path(values[name])
        return cls(**values)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "options":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: dict, current: dict, allow_max_steps: bool) -> list[str]:
    """Keys whose values differ in a way that would change the training math."""
    old, new = _flatten(saved or {}), _flatten(current)
    allowed = [k for k in RESUMABLE_CHANGES if allow_max_steps or k != "train.max_steps"]
    changes = []
    for key in sorted(set(old) | set(new)):
        if any(key == a or (a.endswith(".") and key.startswith(a)) for a in allowed):
            continue
        if old.get(key) != new.get(key):
            changes.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return changes


class Trainer:
    """Sets up everything from a validated config; :meth:`run` trains.

    Args:
        config: a validated :class:`TrainingConfig`.
        resume: None (fresh run; refused if ``output_dir`` already has checkpoints), True (the
            latest complete checkpoint of ``output_dir``; a fresh run if there is none), or a
            checkpoint directory.
        callbacks: called with a :class:`StepEvent` after every optimizer step.
        progress: show progress bars (main process only).
    """

    def __init__(self, config: TrainingConfig, resume: bool | str | Path | None = None,
                 callbacks: list[Callable[[StepEvent], None]] | tuple = (), progress: bool = True):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        if config.stage != "diffusion":
            raise InputError(f"stage {config.stage!r} is trained by facemogle.train.autoencoder, not the Trainer")
        if config.train.cpu_threads is not None:
            torch.set_num_threads(config.train.cpu_threads)
        self.config = config
        self.callbacks = list(callbacks)
        self.progress = progress
        self.output_dir = Path(config.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=config.train.mixed_precision,
            gradient_accumulation_steps=config.train.gradient_accumulation_steps,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        )
        self.resume_dir = self._resolve_resume(resume)

    # ------------------------------------------------------------------------------- setup
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _resolve_resume(self, resume) -> Path | None:
        root = self.config.checkpoints_dir
        if resume is None or resume is False:
            if ckpt.list_checkpoints(root):
                raise CheckpointError(f"{self.output_dir} already has checkpoints; pass --resume to continue them "
                                      "or choose another output_dir")
            return None
        if resume is True:
            directory = ckpt.latest_checkpoint(root)
            if directory is None:
                logger.warning("no checkpoint in %s: starting a fresh run", root)
                return None
        else:
            directory = Path(resume)
        ckpt.verify_checkpoint(directory)  # before anything is loaded
        return directory

    def _check_resume_config(self, directory: Path) -> None:
        saved = ckpt.read_checkpoint_config(directory)
        schedule_depends_on_length = self.config.train.lr_scheduler in ("cosine", "linear")
        changes = config_changes(saved, self.config.to_dict(), allow_max_steps=not schedule_depends_on_length)
        if changes:
            raise CheckpointError(f"cannot resume {directory} exactly: the config changed ({'; '.join(changes)})")

    def setup(self) -> None:
        from facemogle.data.datasets import FaceDataset
        from facemogle.data.stream import PositionBatchSampler
        from facemogle.latents import latent_image_ids, vae_downsample_factor

        config, accelerator = self.config, self.accelerator
        state = None
        if self.resume_dir is not None:
            self._check_resume_config(self.resume_dir)
            state = ckpt.TrainerState.from_file(self.resume_dir / ckpt.STATE_NAME)

        random.seed(config.seed)
        np.random.seed(config.seed)
        self.weight_dtype = WEIGHT_DTYPES[config.train.mixed_precision]
        self.pipe = pipe = build_pipeline(config, accelerator.device, self.weight_dtype)
        place_pipeline(pipe, accelerator.device, self.weight_dtype)
        if self.resume_dir is not None:
            ckpt.load_model_weights(self.resume_dir, pipe.transformer, pipe.mogle, scratch=config.mode == "scratch")
        if config.train.gradient_checkpointing:
            pipe.transformer.enable_gradient_checkpointing()

        # data
        self.index, records = open_training_records(config)
        faces = FaceDataset(records, config.data.resolution, config.data.image_resize, config.data.mask_order)
        self.num_samples = len(records)
        self.stems_digest = hashlib.sha256("\n".join(r.stem for r in records).encode()).hexdigest()
        if state is not None and (state.num_samples, state.stems_digest) != (self.num_samples, self.stems_digest):
            raise CheckpointError(f"cannot resume {self.resume_dir} exactly: the training set changed "
                                  f"({state.num_samples} samples then, {self.num_samples} now, or other stems)")
        factor = vae_downsample_factor(pipe.vae)
        latent_side = config.data.resolution // factor
        token_shape = ((latent_side // 2) ** 2, pipe.transformer.config.in_channels)
        self.img_ids = latent_image_ids(latent_side, latent_side, device=accelerator.device)
        self.cache_stats: dict = {}
        if config.cache.enabled:
            dataset = self._cached_dataset(faces)
        else:
            from facemogle.data.stream import RawTrainingDataset
            from facemogle.labels import NUM_CLASSES

            dataset = RawTrainingDataset(faces, config.seed, token_shape, NUM_CLASSES, config.data.text_dropout,
                                         config.data.mask_dropout, config.data.captions_per_sample)

        # optimisation
        self.trainable = [p for p in list(pipe.transformer.parameters()) + list(pipe.mogle.parameters())
                          if p.requires_grad]
        self.optimizer = build_optimizer(config, self.trainable)
        self.lr_scheduler = build_lr_scheduler(config, self.optimizer)
        self.global_step = state.global_step if state else 0
        self.samples_seen = state.samples_seen if state else 0
        if self.resume_dir is not None:
            ckpt.load_optimizer_states(self.resume_dir, self.optimizer, self.lr_scheduler)
        self.start_step = self.global_step

        per_process = config.train.batch_size
        self.global_batch = per_process * accelerator.num_processes * config.train.gradient_accumulation_steps
        remaining = max(config.train.max_steps - self.global_step, 0)
        sampler = PositionBatchSampler(self.samples_seen, per_process,
                                       remaining * config.train.gradient_accumulation_steps * accelerator.num_processes)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=config.data.num_workers)
        self.model = FaceMoGLETrainingModel(pipe.transformer, pipe.mogle)
        self.model.train()
        self.model, self.optimizer, self.dataloader = accelerator.prepare(self.model, self.optimizer, loader)
        if self.resume_dir is not None:
            if accelerator.scaler is not None:
                ckpt.load_grad_scaler(self.resume_dir, accelerator.scaler)
            ckpt.load_rng_state(self.resume_dir, accelerator.process_index)
            if state.num_processes != accelerator.num_processes:
                logger.warning("checkpoint was written by %d processes, resuming with %d: same samples and draws, "
                               "float reductions may differ slightly", state.num_processes, accelerator.num_processes)

        self.log = None
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(self.output_dir / ckpt.CONFIG_NAME, config.to_yaml())
            self.log = TrainLog(self.output_dir / "logs", config.train.timestep_buckets, config.log.tensorboard,
                                self.global_step if self.resume_dir is not None else None)
        self.sample_records = self._sample_records()

    def _cached_dataset(self, faces):
        from facemogle.data.cache import CacheSettings, CachedTrainingDataset, build_cache

        config, accelerator = self.config, self.accelerator
        settings = CacheSettings(
            resolution=config.data.resolution, image_resize=config.data.image_resize,
            mask_order=config.data.mask_order, captions_per_sample=config.data.captions_per_sample,
            dtype=config.cache.dtype, shard_size=config.cache.shard_size,
            encode_batch_size=config.cache.encode_batch_size,
            max_sequence_length=self.pipe.default_max_sequence_length,
        )
        cache = build_cache(self.pipe, faces, config.cache_dir, settings, process_index=accelerator.process_index,
                            num_processes=accelerator.num_processes, barrier=accelerator.wait_for_everyone,
                            num_workers=config.data.num_workers, progress=self.progress)
        self.cache = cache
        self.cache_stats = dict(cache.stats, key=cache.key, directory=str(cache.directory))
        return CachedTrainingDataset(cache, config.seed, config.data.text_dropout, config.data.mask_dropout)

    def _sample_records(self):
        if not self.config.sample.every:
            return []
        for name in ("val", "test", "train"):
            records = self.index.split(name)
            if records:
                return records[: self.config.sample.count]
        return []

    # ------------------------------------------------------------------------------- loop
    def _trainer_state(self) -> ckpt.TrainerState:
        epoch, index = divmod(self.samples_seen, self.num_samples)
        return ckpt.TrainerState(global_step=self.global_step, samples_seen=self.samples_seen, epoch=epoch,
                                 index_in_epoch=index, num_samples=self.num_samples,
                                 num_processes=self.accelerator.num_processes, seed=self.config.seed,
                                 mode=self.config.mode, stems_digest=self.stems_digest)

    def save(self) -> Path:
        accelerator = self.accelerator
        unwrapped = accelerator.unwrap_model(self.model)
        parts = ckpt.CheckpointParts(
            transformer=unwrapped.transformer, mogle=unwrapped.mogle, optimizer=self.optimizer.optimizer,
            lr_scheduler=self.lr_scheduler, state=self._trainer_state(), config_yaml=self.config.to_yaml(),
            grad_scaler=accelerator.scaler, scratch_pipeline=self.pipe if self.config.mode == "scratch" else None,
        )
        return ckpt.save_checkpoint(self.config.checkpoints_dir, parts, process_index=accelerator.process_index,
                                    barrier=accelerator.wait_for_everyone, keep_last=self.config.checkpoint.keep_last)

    def _micro_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        from facemogle.flow import RectifiedFlowLoss, velocity_target

        if "image_tokens" not in batch:
            batch = encode_raw_batch(self.pipe, batch, self.pipe.default_max_sequence_length)
        accelerator = self.accelerator
        prompt_embeds = batch["prompt_embeds"].to(self.weight_dtype)
        txt_ids = torch.zeros(prompt_embeds.shape[1], 3, device=accelerator.device)
        with accelerator.accumulate(self.model):
            pred = self.model(batch["image_tokens"], batch["condition_tokens"], batch["noise"], batch["timestep"],
                              prompt_embeds, batch["pooled_prompt_embeds"].to(self.weight_dtype), self.img_ids, txt_ids)
            target = velocity_target(batch["image_tokens"], batch["noise"])
            loss, per_sample = RectifiedFlowLoss()(pred, target, return_per_sample=True)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                max_norm = self.config.train.max_grad_norm or math.inf
                self._grad_norm = float(accelerator.clip_grad_norm_(self.trainable, max_norm))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return per_sample.detach(), batch["timestep"].detach()

    def run(self) -> TrainResult:
        from tqdm.auto import tqdm

        if not hasattr(self, "model"):
            self.setup()
        config, accelerator = self.config, self.accelerator
        result = TrainResult(output_dir=self.output_dir, global_step=self.global_step, start_step=self.start_step,
                             final_checkpoint=None, cache_stats=self.cache_stats)
        bar = tqdm(total=config.train.max_steps, initial=self.global_step, desc="training", unit="step",
                   disable=not self.progress or not self.is_main)
        batches = iter(self.dataloader)
        last_checkpoint = None
        while self.global_step < config.train.max_steps:
            started = time.perf_counter()
            self._grad_norm = None
            step_losses, step_times = [], []
            for _ in range(config.train.gradient_accumulation_steps):
                per_sample, timesteps = self._micro_step(next(batches))
                step_losses.append(accelerator.gather(per_sample))
                step_times.append(accelerator.gather(timesteps))
            if not accelerator.optimizer_step_was_skipped:
                self.lr_scheduler.step()
            self.global_step += 1
            self.samples_seen += self.global_batch
            losses = torch.cat(step_losses)
            mean_loss = losses.float().mean().item()
            result.losses.append(mean_loss)
            result.step_seconds.append(time.perf_counter() - started)  # the step itself, without samples/saving
            checkpoint = None
            if self.is_main:
                self.log.add(losses, torch.cat(step_times))
                if self._grad_norm is not None:
                    self.log.grad_norms.append(self._grad_norm)
                if self.global_step % config.log.every == 0 or self.global_step == config.train.max_steps:
                    self.log.write(self.global_step, self.samples_seen, self.samples_seen // self.num_samples,
                                   self.lr_scheduler.get_last_lr()[0])
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                bar.update()
            if config.sample.every and self.global_step % config.sample.every == 0 and self.sample_records:
                if self.is_main:
                    write_sample_grid(self.pipe, self.sample_records, config,
                                      self.output_dir / "samples" / f"{ckpt.step_dir_name(self.global_step)}.png",
                                      accelerator.autocast)
                    self.model.train()
                accelerator.wait_for_everyone()
            if self.global_step % config.checkpoint.every == 0 or self.global_step == config.train.max_steps:
                checkpoint = last_checkpoint = self.save()
            for callback in self.callbacks:
                callback(StepEvent(step=self.global_step, loss=mean_loss, checkpoint=checkpoint, trainer=self))
        bar.close()
        if last_checkpoint is None:
            last_checkpoint = ckpt.latest_checkpoint(config.checkpoints_dir)
        if self.log is not None:
            self.log.close()
        accelerator.wait_for_everyone()
        result.global_step = self.global_step
        result.final_checkpoint = last_checkpoint
        return result


def train(config: TrainingConfig, resume: bool | str | Path | None = None,
          callbacks: list[Callable[[StepEvent], None]] | tuple = (), progress: bool = True) -> TrainResult:
    """Train per ``config`` (see :class:`Trainer`); the autoencoder stage goes to
    :func:`facemogle.train.autoencoder.train_autoencoder`."""
    if config.stage == "autoencoder":
        from facemogle.train.autoencoder import train_autoencoder

        if resume:
            raise InputError("the autoencoder stage does not resume: it is short, run it again")
        return train_autoencoder(config, progress=progress)
    return Trainer(config, resume=resume, callbacks=callbacks, progress=progress).run()
