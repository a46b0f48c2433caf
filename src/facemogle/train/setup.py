"""What the diffusion trainer and the autoencoder stage share: the pipeline with its trainable
parameters marked, the optimizer and learning-rate schedule, the training records, the run's result.

Neither :mod:`facemogle.train.trainer` nor :mod:`facemogle.train.autoencoder` imports the other;
both import this module.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from facemogle.errors import InputError
from facemogle.train.config import TrainingConfig

WEIGHT_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: CPU feature flags (``/proc/cpuinfo``) of native bfloat16 arithmetic: x86's AVX512-BF16 and AMX,
#: Arm's BF16 extension.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU computes in bfloat16 natively (its ``flags`` / ``Features`` in ``/proc/cpuinfo``
    name :data:`NATIVE_BF16_FLAGS`); ``None`` where there is no ``/proc/cpuinfo`` to read.

    ``train.mixed_precision: bf16`` trained the tiny recipe's runs 1.34x (64 px: 0.66 -> 0.50 s a
    step) and 1.36x (128 px: 1.86 -> 1.37 s) faster here (AMD EPYC, AVX512-BF16, batch 8, 2 threads);
    without native bfloat16 the products are converted in software and a step can be slower than
    float32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return bool(NATIVE_BF16_FLAGS & set(value.split()))
    return None


def build_pipeline(config: TrainingConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The spec's pipeline with the configured LoRA and MoGLE, with trainable parameters marked
    (``requires_grad``). The spec builds its models directly on ``device`` in ``dtype`` (a 12B
    FLUX never exists in float32 on the CPU); :func:`place_pipeline` then sets the final dtypes.
    Seeds torch with ``config.seed`` first."""
    from facemogle.condition import (CONDITION_ADAPTER_NAME, add_condition_lora, load_condition_lora)
    from facemogle.files import read_state_dict_file
    from facemogle.mogle import MoGLE
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
        from facemogle.patch_autoencoder import load_autoencoder

        pipe.vae = load_autoencoder(model.vae, torch_dtype=torch.float32)
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
    if data.mirror:
        from facemogle.data.datasets import with_mirrored

        records = with_mirrored(records)
    return index, records


def open_validation_records(config: TrainingConfig) -> list:
    """Records of the validation split of the config's dataset (empty when it has none)."""
    from facemogle.data.datasets import index_dataset

    data = config.data
    index = index_dataset(data.root, data.layout, data.split_file, data.num_val, data.split_salt, data.captions_dir)
    return list(index.split("val"))


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
