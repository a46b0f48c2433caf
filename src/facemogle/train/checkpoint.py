"""Training checkpoints: explicit file formats, atomic writes, exact resume.

A checkpoint is a directory ``<output_dir>/checkpoints/step-<8 digits>/``:

===================================  =============================================================
file                                 content
===================================  =============================================================
``pytorch_lora_weights.safetensors`` the condition LoRA, official diffusers LoRA format
                                     (:func:`facemogle.condition.save_condition_lora`)
``global_local_mask_moe.pt``         MoGLE, official format (``MoGLE.save_official_checkpoint``)
``optimizer.pt``                     ``optimizer.state_dict()`` (``torch.save``; read back with
                                     ``torch.load(weights_only=True)``)
``lr_scheduler.pt``                  ``lr_scheduler.state_dict()`` (same)
``grad_scaler.pt``                   fp16 only: the gradient scaler's state
``rng_state_<rank>.pt``              per process: python ``random``, numpy, torch CPU (+ CUDA) states
``trainer_state.json``               global step, samples seen (the data stream position), epoch and
                                     index in that epoch's permutation, process count, seed, a hash
                                     of the training stems
``config.yaml``                      the resolved training config
``pipeline/``                        mode "scratch" only: ``FaceMoGLEPipeline.save_pretrained`` of
                                     the trained model (base transformer weights + its own copy of
                                     the LoRA file; load it with :func:`load_checkpoint_pipeline`)
``checkpoint.json``                  written last: every file's size and sha256 (the completion
                                     marker)
===================================  =============================================================

Every file is written to a temporary name, flushed and renamed (``os.replace``) inside a hidden
``.tmp-step-...`` directory; after the marker, the directory itself is renamed to ``step-...``.
A kill at any moment therefore leaves either a complete ``step-...`` directory or a hidden
temporary one, which :func:`list_checkpoints` never returns (and the next save removes).

``facemogle generate --checkpoint DIR`` reads the two official files (flux-dev). A scratch
checkpoint also loads whole with ``load_checkpoint_pipeline(DIR)``
(= ``FaceMoGLEPipeline.from_pretrained(DIR/"pipeline")``).

Resuming a scratch run copies ``pipeline/transformer`` into the live (LoRA-wrapped) transformer
with :func:`load_base_transformer_state_dict`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file

from facemogle.errors import CheckpointError
from facemogle.files import (LORA_WEIGHT_NAME, MOGLE_WEIGHT_NAME, atomic_save_safetensors, atomic_torch_save,
                             atomic_write_text, fsync_dir, read_state_dict_file, safe_torch_load)
from facemogle.specs import SAVED_PIPELINE_DIR

CHECKPOINT_FORMAT_VERSION = 1
MARKER_NAME = "checkpoint.json"
STATE_NAME = "trainer_state.json"
CONFIG_NAME = "config.yaml"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "lr_scheduler.pt"
SCALER_NAME = "grad_scaler.pt"
PIPELINE_DIR = SAVED_PIPELINE_DIR
#: The moving average of the trained weights (``train.ema_decay``), by parameter name
#: (``transformer.<name>`` / ``mogle.<name>``); what :func:`apply_ema_weights` puts in a pipeline.
EMA_NAME = "ema_weights.safetensors"
STEP_PATTERN = re.compile(r"^step-(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def rng_file_name(rank: int) -> str:
    return f"rng_state_{rank}.pt"


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


# ----------------------------------------------------------------------------------- state


@dataclass
class TrainerState:
    """Where training stands. ``samples_seen`` is the position in the sample stream
    (:mod:`facemogle.data.stream`): ``epoch = samples_seen // num_samples``,
    ``index_in_epoch = samples_seen % num_samples``."""

    global_step: int
    samples_seen: int
    epoch: int
    index_in_epoch: int
    num_samples: int
    num_processes: int
    seed: int
    mode: str
    stems_digest: str = ""  # sha256 of the training stems, in order

    def to_json(self) -> str:
        return json.dumps({"format": CHECKPOINT_FORMAT_VERSION, **asdict(self)}, indent=1) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> TrainerState:
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            payload.pop("format", None)
            return cls(**payload)
        except (OSError, json.JSONDecodeError, TypeError) as error:
            raise CheckpointError(f"{path}: not a trainer state file ({error})") from None


def capture_rng_state() -> dict:
    """Python, numpy and torch (CPU + CUDA) RNG states, in a form ``torch.load(weights_only=True)`` reads."""
    version, python_state, gauss = random.getstate()
    bit_generator, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": [version, list(python_state), gauss],
        "numpy": {"bit_generator": bit_generator, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["bit_generator"], numpy_state["key"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------- transformer weights


def load_base_transformer_state_dict(transformer: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy plain ``FluxTransformer2DModel`` weights (``<m>.weight``) into a live transformer with
    LoRA layers (``<m>.base_layer.weight``), in place; the LoRA tensors are left alone."""
    own = transformer.state_dict()
    mapped = {}
    for key in own:
        if ".lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        if plain not in state:
            raise CheckpointError(f"transformer weights lack {plain}")
        mapped[key] = state[plain]
    unexpected = set(state) - {k.replace(".base_layer.", ".") for k in mapped}
    if unexpected:
        raise CheckpointError(f"transformer weights have unexpected keys, e.g. {sorted(unexpected)[0]}")
    transformer.load_state_dict(mapped, strict=False)


def load_checkpoint_pipeline(checkpoint: str | os.PathLike, device: str | torch.device = "cpu",
                             dtype: torch.dtype | None = None):
    """The full pipeline of a scratch-mode checkpoint (``FaceMoGLEPipeline.from_pretrained`` of
    ``pipeline/``, which holds its LoRA file too)."""
    from facemogle.specs import load_pipeline

    if not (Path(checkpoint) / PIPELINE_DIR / "model_index.json").is_file():
        raise CheckpointError(f"{checkpoint} has no {PIPELINE_DIR}/ (only scratch-mode checkpoints save the whole "
                              "pipeline; load adapter checkpoints with load_pipeline('flux-dev', checkpoint=...))")
    return load_pipeline("saved", path=checkpoint, device=device, dtype=dtype)


# ----------------------------------------------------------------------------------- listing


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (marker present) under ``root``, oldest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_PATTERN.match(path.name)
        if match and path.is_dir() and (path / MARKER_NAME).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def verify_checkpoint(directory: str | os.PathLike) -> dict:
    """Check a checkpoint's marker and every listed file (size and sha256); return the marker.

    Raises:
        CheckpointError: not a complete checkpoint, or a file is missing / changed.
    """
    directory = Path(directory)
    marker = directory / MARKER_NAME
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    if not marker.is_file():
        raise CheckpointError(f"{directory} is not a complete checkpoint (no {MARKER_NAME}; "
                              "it was interrupted while being written)")
    try:
        manifest = json.loads(marker.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{marker} is damaged ({error})") from None
    if manifest.get("format") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{directory} has checkpoint format {manifest.get('format')}, "
                              f"this version reads {CHECKPOINT_FORMAT_VERSION}")
    for relative, (size, digest) in files.items():
        path = directory / relative
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory} lacks {relative}")
        if path.stat().st_size != size or _sha256(path) != digest:
            raise CheckpointError(f"checkpoint file {path} was changed or damaged (size/sha256 mismatch)")
    return manifest


# ----------------------------------------------------------------------------------- saving


@dataclass
class CheckpointParts:
    """Everything a checkpoint holds, as live objects (unwrapped modules)."""

    transformer: torch.nn.Module
    mogle: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    state: TrainerState
    config_yaml: str
    grad_scaler: object | None = None
    scratch_pipeline: object | None = None  # the FaceMoGLEPipeline to save under pipeline/ (scratch mode)
    ema_weights: dict | None = None  # name -> tensor, the moving average (train.ema_decay)


def save_checkpoint(root: str | os.PathLike, parts: CheckpointParts, *, process_index: int = 0,
                    barrier: Callable[[], None] | None = None, keep_last: int | None = None) -> Path:
    """Write ``root/step-<global_step>`` atomically (see the module docstring). Call on every
    process (each writes its RNG state); the main process writes the rest and renames."""
    from facemogle.condition import save_condition_lora

    barrier = barrier or (lambda: None)
    root = Path(root)
    name = step_dir_name(parts.state.global_step)
    tmp, final = root / f".tmp-{name}", root / name
    is_main = process_index == 0
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    atomic_torch_save(tmp / rng_file_name(process_index), capture_rng_state())
    if is_main:
        staging = tmp / ".lora"
        staging.mkdir()
        save_condition_lora(parts.transformer, staging)
        with open(staging / LORA_WEIGHT_NAME, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(staging / LORA_WEIGHT_NAME, tmp / LORA_WEIGHT_NAME)
        shutil.rmtree(staging)
        parts.mogle.save_official_checkpoint(tmp / MOGLE_WEIGHT_NAME)
        atomic_torch_save(tmp / OPTIMIZER_NAME, parts.optimizer.state_dict())
        atomic_torch_save(tmp / SCHEDULER_NAME, parts.lr_scheduler.state_dict())
        if parts.grad_scaler is not None:
            atomic_torch_save(tmp / SCALER_NAME, parts.grad_scaler.state_dict())
        atomic_write_text(tmp / STATE_NAME, parts.state.to_json())
        atomic_write_text(tmp / CONFIG_NAME, parts.config_yaml)
        if parts.ema_weights is not None:
            atomic_save_safetensors(tmp / EMA_NAME, {k: v.detach().contiguous().cpu() for k, v in parts.ema_weights.items()})
        if parts.scratch_pipeline is not None:  # its transformer and mogle are the trained modules
            partial = tmp / f".{PIPELINE_DIR}.partial"
            parts.scratch_pipeline.save_pretrained(str(partial), safe_serialization=True)
            os.replace(partial, tmp / PIPELINE_DIR)
    barrier()
    if is_main:
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            files[str(path.relative_to(tmp))] = [path.stat().st_size, _sha256(path)]
        marker = {"format": CHECKPOINT_FORMAT_VERSION, "global_step": parts.state.global_step, "files": files}
        atomic_write_text(tmp / MARKER_NAME, json.dumps(marker, indent=1) + "\n")
        fsync_dir(tmp)
        if final.exists():  # the same step written again (a run resumed from an earlier checkpoint)
            old = root / f".old-{name}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
        if keep_last is not None:
            for stale in list_checkpoints(root)[:-keep_last]:
                shutil.rmtree(stale)
    barrier()
    return final


# ----------------------------------------------------------------------------------- loading


def load_model_weights(directory: Path, transformer: torch.nn.Module, mogle, *, scratch: bool) -> None:
    """Load the LoRA, MoGLE (and for scratch checkpoints the transformer) weights of a checkpoint
    into live modules, in place."""
    from diffusers import FluxTransformer2DModel

    from facemogle.condition import load_condition_lora

    if scratch:
        transformer_dir = directory / PIPELINE_DIR / "transformer"
        if not transformer_dir.is_dir():
            raise CheckpointError(f"scratch checkpoint {directory} lacks {PIPELINE_DIR}/transformer")
        saved = FluxTransformer2DModel.from_pretrained(str(transformer_dir), torch_dtype=torch.float32)
        load_base_transformer_state_dict(transformer, saved.state_dict())  # copied into the live dtypes
    load_condition_lora(transformer, directory)
    mogle.load_official_state_dict(read_state_dict_file(directory / MOGLE_WEIGHT_NAME))


def is_saved_pipeline(directory: str | os.PathLike) -> bool:
    """True for a ``FaceMoGLEPipeline.save_pretrained`` folder (e.g. an export such as the bundled
    model's), which is not a training checkpoint."""
    directory = Path(directory)
    return (directory / "model_index.json").is_file() and not (directory / MARKER_NAME).is_file()


def load_saved_pipeline_weights(directory: Path, transformer: torch.nn.Module, mogle) -> None:
    """Copy a saved pipeline's transformer (with its condition LoRA) and MoGLE weights into live
    modules of the same shapes, in place and in their dtypes: a run that starts from an exported
    model (``model.init_checkpoint: src/facemogle/weights/tiny``)."""
    from facemogle.specs import load_pipeline

    saved = load_pipeline("saved", path=directory, dtype=torch.float32)
    for name, live, source in (("transformer", transformer, saved.transformer), ("mogle", mogle, saved.mogle)):
        own, theirs = live.state_dict(), source.state_dict()
        if set(own) != set(theirs):
            different = sorted(set(own) ^ set(theirs))
            raise CheckpointError(f"{directory}: its {name} does not fit this model (e.g. {different[0]})")
        bad = [k for k in own if own[k].shape != theirs[k].shape]
        if bad:
            raise CheckpointError(f"{directory}: its {name} has other shapes than this model's (e.g. {bad[0]} "
                                  f"{tuple(theirs[bad[0]].shape)} vs {tuple(own[bad[0]].shape)})")
        live.load_state_dict(theirs)


def read_ema_weights(directory: Path) -> dict | None:
    """The moving-average weights a checkpoint holds (``None``: it was trained without one)."""
    from safetensors.torch import load_file

    path = Path(directory) / EMA_NAME
    return load_file(str(path)) if path.is_file() else None


def apply_ema_weights(pipe, directory: Path) -> bool:
    """Copy a checkpoint's moving-average weights into ``pipe.transformer`` / ``pipe.mogle`` (in
    place, in their dtypes); False when the checkpoint has none."""
    weights = read_ema_weights(directory)
    if weights is None:
        return False
    modules = {"transformer": pipe.transformer, "mogle": pipe.mogle}
    live = {f"{owner}.{name}": p for owner, module in modules.items() for name, p in module.named_parameters()}
    missing = sorted(set(weights) - set(live))
    if missing:
        raise CheckpointError(f"{directory / EMA_NAME} names parameters the model lacks: {', '.join(missing[:3])}")
    with torch.no_grad():
        for name, value in weights.items():
            live[name].copy_(value.to(live[name].dtype))
    return True


def load_optimizer_states(directory: Path, optimizer, lr_scheduler) -> None:
    """Optimizer and LR-scheduler states (load them into the raw, unwrapped optimizer)."""
    try:
        optimizer.load_state_dict(safe_torch_load(directory / OPTIMIZER_NAME))
        lr_scheduler.load_state_dict(safe_torch_load(directory / SCHEDULER_NAME))
    except (ValueError, KeyError, RuntimeError) as error:
        raise CheckpointError(f"optimizer state of {directory} does not fit this model: {error}") from None


def load_grad_scaler(directory: Path, grad_scaler) -> None:
    path = directory / SCALER_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {SCALER_NAME} (it was not trained with fp16)")
    grad_scaler.load_state_dict(safe_torch_load(path))


def load_rng_state(directory: Path, process_index: int) -> None:
    """Restore this process's RNG states (rank 0's when the checkpoint had fewer processes)."""
    path = directory / rng_file_name(process_index)
    if not path.is_file():
        path = directory / rng_file_name(0)
    restore_rng_state(safe_torch_load(path))


def read_checkpoint_config(directory: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load((directory / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise CheckpointError(f"cannot read {directory / CONFIG_NAME}: {error}") from None


def read_lora_file(directory: Path) -> dict[str, torch.Tensor]:
    """The LoRA tensors of a checkpoint (official keys)."""

    return load_file(str(directory / LORA_WEIGHT_NAME))
