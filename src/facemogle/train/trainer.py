"""Rectified-flow training of Face-MoGLE on ``accelerate`` (METHOD.md section 5).

One optimizer step::

    x_0, cond    = cached image latents (B, N, D), mask latents (B, E, N, D)   # or encoded now
    t, noise     = the stream position's draws (facemogle.data.stream)          # (B,), (B, N, D)
    x_t, target  = flow.training_pair(x_0, noise, t)                            # (1 - t) x_0 + t noise, noise - x_0
    pred         = predict_velocity(transformer, mogle, x_t, t, cond + text)    # MoGLE -> condition forward, guidance 1
    loss         = flow.loss(pred, target[, part weights])                      # mean squared error

``flow`` is :class:`facemogle.flow.RectifiedFlow`; ``predict_velocity`` (:mod:`facemogle.sampling`)
is the same prediction generation makes at every step.

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

import hashlib
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from facemogle.condition_tokens import encode_mask_latents
from facemogle.errors import CheckpointError, InputError, TrainingError
from facemogle.files import atomic_write_text
from facemogle.flow import RectifiedFlow, part_token_weights, token_channel_weights
from facemogle.latents import encode_images
from facemogle.sampling import Conditioning, predict_velocity
from facemogle.train import checkpoint as ckpt
from facemogle.train.config import TrainingConfig
from facemogle.train.setup import (WEIGHT_DTYPES, TrainResult, build_lr_scheduler, build_optimizer, build_pipeline,
                                   cpu_has_native_bf16, open_training_records, place_pipeline)
from facemogle.train.train_log import TrainLog, write_sample_grid

logger = logging.getLogger(__name__)

#: Config keys that may change between a checkpoint and its resumption (they do not change the math).
#: ``data.root`` may move: the training stems are compared instead (``TrainerState.stems_digest``).
#: ``model.init_checkpoint`` may move too: a resumed run takes its weights from its own checkpoint.
RESUMABLE_CHANGES = ("train.max_steps", "checkpoint.", "log.", "sample.", "data.root", "data.num_workers",
                     "cache.dir", "cache.encode_batch_size", "output_dir", "model.init_checkpoint")


def training_sample_weights(config: TrainingConfig, records) -> list[float] | None:
    """Per-record sampling weights from ``data.balance_attributes``, ``data.balance_hair_colour``
    and ``data.complete_faces_only`` (:mod:`facemogle.data.balance`); None: every face once per
    epoch."""
    data = config.data
    if data.balance_attributes is None and not data.balance_hair_colour and not data.complete_faces_only:
        return None
    from facemogle.data.balance import attribute_weights, complete_face_weights

    weights = attribute_weights([list(r.captions) for r in records], data.balance_attributes,
                                equal_hair_colours=data.balance_hair_colour)
    if data.complete_faces_only:
        from facemogle.masks import load_mask

        # a mirrored record's mask is its photo's flipped: the same parts, so read the file as it is
        keep = complete_face_weights([load_mask(r.mask, order=data.mask_order) for r in records],
                                     covered_parts_count=data.covered_parts_count)
        weights = [w * k for w, k in zip(weights, keep)]
        if not any(weights):
            raise InputError("data.complete_faces_only: no training mask shows every face part")
    return weights


# ----------------------------------------------------------------------------------- model


class FaceMoGLETrainingModel(nn.Module):
    """The trained modules in one ``nn.Module`` (what accelerate / DDP wraps); its forward is the
    single model prediction of generation (:func:`facemogle.sampling.predict_velocity`), with FLUX
    guidance 1.0."""

    def __init__(self, transformer: nn.Module, mogle: nn.Module):
        super().__init__()
        self.transformer = transformer
        self.mogle = mogle

    def forward(self, noisy_latents, timestep, condition_latents, prompt_embeds, pooled_prompt_embeds,
                img_ids, txt_ids) -> torch.Tensor:
        """Velocity prediction (B, N, D) at ``noisy_latents`` x_t (B, N, D) and ``timestep`` (B,)
        in (0, 1), for ``condition_latents`` (B, E, N, D) and the text embeddings."""
        guidance = torch.ones_like(timestep) if self.transformer.config.guidance_embeds else None
        conditioning = Conditioning(condition_latents, prompt_embeds, pooled_prompt_embeds, img_ids, txt_ids, guidance)
        return predict_velocity(self.transformer, self.mogle, noisy_latents, timestep, conditioning).velocity


def loss_channel_weights(vae, power: float) -> torch.Tensor | None:
    """The loss's (64,) token channel weights for ``train.loss_channel_power`` (None at 0)."""
    if not power:
        return None
    gain = getattr(vae, "channel_gain", None)
    if gain is None:
        raise InputError(f"train.loss_channel_power {power:g} needs an autoencoder with per-channel decoder gains "
                          f"(the PCA patch codec); {type(vae).__name__} has none: set it to 0")
    return token_channel_weights(gain(), power)


# ----------------------------------------------------------------------------------- data


@torch.no_grad()
def encode_raw_batch(pipe, batch: dict, max_sequence_length: int = 512) -> dict:
    """Encode a :class:`RawTrainingDataset` batch now (VAE on the image and the condition images,
    both text encoders) into the tensors the cached path reads from disk."""
    device = next(pipe.vae.parameters()).device
    emptied = batch.get("mask_emptied")
    emptied = None if emptied is None else torch.as_tensor(emptied, dtype=torch.bool).cpu()
    mask_latents = encode_mask_latents(pipe.vae, batch["mask"].cpu().numpy(), empty=emptied)  # emptied: no mask
    condition_latents = mask_latents.dense(batch["local_dropped"].to(device))  # a dropped local mask is a blank map
    prompt_embeds, pooled, _ = pipe.encode_prompt(prompt=list(batch["caption"]), prompt_2=None, device=device,
                                                  num_images_per_prompt=1, max_sequence_length=max_sequence_length)
    return {
        "image_tokens": encode_images(pipe.vae, batch["image"].to(device)).float(),
        "condition_tokens": condition_latents.float(),
        "prompt_embeds": prompt_embeds.float(),
        "pooled_prompt_embeds": pooled.float(),
        "noise": batch["noise"],
        "timestep": batch["timestep"],
    }


# ----------------------------------------------------------------------------------- trainer


@dataclass
class StepEvent:
    """Passed to callbacks after every optimizer step (after logging and checkpointing)."""

    step: int
    loss: float
    checkpoint: Path | None
    trainer: "Trainer"


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "options":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: dict, current: dict, allow_max_steps: bool) -> list[str]:
    """Keys whose values differ in a way that would change the training math. An option the saved
    config lacks (a checkpoint of an older version) counts as unchanged while it keeps its default."""
    from facemogle.train.config import option_defaults

    old, new = _flatten(saved or {}), _flatten(current)
    defaults = option_defaults()
    allowed = [k for k in RESUMABLE_CHANGES if allow_max_steps or k != "train.max_steps"]
    changes = []
    for key in sorted(set(old) | set(new)):
        if any(key == a or (a.endswith(".") and key.startswith(a)) for a in allowed):
            continue
        if key not in old and key in defaults and new.get(key) == defaults[key]:
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
        if (config.train.mixed_precision == "bf16" and self.accelerator.device.type == "cpu"
                and cpu_has_native_bf16() is False):
            logger.warning("train.mixed_precision: bf16 on a CPU without native bfloat16 (no avx512_bf16 / amx_bf16 / "
                           "bf16 flag): it may train slower than mixed_precision: \"no\"")
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
        self.flow = RectifiedFlow(loss_channel_weights(pipe.vae, config.train.loss_channel_power),  # the loss needs the VAE
                                  timestep_shift=config.train.timestep_shift)
        if self.resume_dir is not None:
            ckpt.load_model_weights(self.resume_dir, pipe.transformer, pipe.mogle, scratch=config.mode == "scratch")
        elif config.model.init_checkpoint is not None and ckpt.is_saved_pipeline(config.model.init_checkpoint):
            ckpt.load_saved_pipeline_weights(Path(config.model.init_checkpoint), pipe.transformer, pipe.mogle)
        elif config.model.init_checkpoint is not None:  # a new run from an earlier run's weights
            start = Path(config.model.init_checkpoint)
            ckpt.verify_checkpoint(start)
            ckpt.load_model_weights(start, pipe.transformer, pipe.mogle, scratch=config.mode == "scratch")
            ckpt.apply_ema_weights(pipe, start)
        if config.train.gradient_checkpointing:
            pipe.transformer.enable_gradient_checkpointing()

        # data
        self.index, records = open_training_records(config)
        faces = FaceDataset(records, config.data.resolution, config.data.image_resize, config.data.mask_order)
        self.num_samples = len(records)
        self.sample_weights = training_sample_weights(config, records)
        identity = "\n".join(r.stem for r in records)
        if self.sample_weights is not None:  # weights come from the captions: new captions, another stream
            identity += "\nweights " + " ".join(f"{w:.6g}" for w in self.sample_weights)
        self.stems_digest = hashlib.sha256(identity.encode()).hexdigest()
        if state is not None and (state.num_samples, state.stems_digest) != (self.num_samples, self.stems_digest):
            raise CheckpointError(f"cannot resume {self.resume_dir} exactly: the training set changed "
                                  f"({state.num_samples} samples then, {self.num_samples} now, or other stems or "
                                  "sample weights)")
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
                                         config.data.mask_dropout, config.data.captions_per_sample,
                                         config.data.empty_mask_dropout, self.sample_weights,
                                         config.data.first_caption_share)

        # optimisation
        self.trainable = [p for p in list(pipe.transformer.parameters()) + list(pipe.mogle.parameters())
                          if p.requires_grad]
        self.optimizer = build_optimizer(config, self.trainable)
        self.lr_scheduler = build_lr_scheduler(config, self.optimizer)
        self.global_step = state.global_step if state else 0
        self.ema = self._moving_average()
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
            atomic_write_text(self.output_dir / ckpt.CONFIG_NAME, config.to_yaml())
            self.log = TrainLog(self.output_dir / "logs", config.train.timestep_buckets, config.log.tensorboard,
                                self.global_step if self.resume_dir is not None else None)
        self.sample_records = self._sample_records()

    def _moving_average(self):
        """diffusers' EMAModel over the trained parameters (``train.ema_decay``; None: off), its
        weights read back from the checkpoint on resume."""
        decay = self.config.train.ema_decay
        if decay is None:
            return None
        from diffusers.training_utils import EMAModel

        ema = EMAModel(self.trainable, decay=decay, use_ema_warmup=True, power=2 / 3)
        if self.resume_dir is not None:
            saved = ckpt.read_ema_weights(self.resume_dir)
            if saved is None:
                raise CheckpointError(f"cannot resume {self.resume_dir} with train.ema_decay: it holds no moving average")
            names = self._trainable_names()
            for shadow, name in zip(ema.shadow_params, names):
                shadow.copy_(saved[name])
            ema.optimization_step = self.global_step
        return ema

    def _trainable_names(self) -> list[str]:
        """``transformer.<name>`` / ``mogle.<name>`` of each trained parameter, in ``self.trainable`` order."""
        ids = {id(p): f"{owner}.{name}" for owner, module in (("transformer", self.pipe.transformer),
                                                               ("mogle", self.pipe.mogle))
               for name, p in module.named_parameters()}
        return [ids[id(p)] for p in self.trainable]

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
        if self.sample_weights is not None and len(self.sample_weights) != cache.num_samples:
            raise TrainingError(f"{len(self.sample_weights)} sample weights for {cache.num_samples} cached samples")
        part_classes = None
        if config.train.part_loss_weight:
            from facemogle.labels import class_ids

            part_classes = class_ids(config.train.part_loss_classes)
        return CachedTrainingDataset(cache, config.seed, config.data.text_dropout, config.data.mask_dropout,
                                     config.data.empty_mask_dropout, self.sample_weights,
                                     config.data.first_caption_share, part_classes)

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
            ema_weights=None if self.ema is None else dict(zip(self._trainable_names(), self.ema.shadow_params)),
        )
        return ckpt.save_checkpoint(self.config.checkpoints_dir, parts, process_index=accelerator.process_index,
                                    barrier=accelerator.wait_for_everyone, keep_last=self.config.checkpoint.keep_last)

    def _micro_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "image_tokens" not in batch:
            batch = encode_raw_batch(self.pipe, batch, self.pipe.default_max_sequence_length)
        accelerator = self.accelerator
        prompt_embeds = batch["prompt_embeds"].to(self.weight_dtype)
        txt_ids = torch.zeros(prompt_embeds.shape[1], 3, device=accelerator.device)
        with accelerator.accumulate(self.model):
            timestep = self.flow.shift(batch["timestep"])  # (B,)
            x_t, target = self.flow.training_pair(batch["image_tokens"], batch["noise"], timestep)
            pred = self.model(x_t, timestep, batch["condition_tokens"], prompt_embeds,
                              batch["pooled_prompt_embeds"].to(self.weight_dtype), self.img_ids, txt_ids)
            token_weights = None
            if self.config.train.part_loss_weight:  # (B, N): more weight on the small parts' tokens
                token_weights = part_token_weights(batch["part_tokens"], self.config.train.part_loss_weight)
            loss, per_sample = self.flow.loss(pred, target, token_weights)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                max_norm = self.config.train.max_grad_norm or math.inf
                self._grad_norm = float(accelerator.clip_grad_norm_(self.trainable, max_norm))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return per_sample.detach(), timestep.detach()

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
                if self.ema is not None:
                    self.ema.step(self.trainable)
            self.global_step += 1
            self.samples_seen += self.global_batch
            losses = torch.cat(step_losses)
            mean_loss = losses.float().mean().item()
            if not math.isfinite(mean_loss):  # stop before a NaN model is logged as trained or saved
                raise TrainingError(f"the training loss is {mean_loss} at step {self.global_step} (lr "
                                    f"{self.lr_scheduler.get_last_lr()[0]:g}); lower train.optimizer.lr or set "
                                    f"train.max_grad_norm; checkpoints up to the last good step are kept")
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
