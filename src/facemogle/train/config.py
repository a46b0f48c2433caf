"""Training configuration: one YAML file, validated completely before any work starts.

A config is a tree of sections (dataclasses below). ``load_config(path)`` reads the YAML with
``yaml.safe_load`` (duplicate keys refused), checks every key and value, and raises one
:class:`ConfigError` that lists *all* problems (unknown keys with a suggestion, wrong types,
out-of-range values, missing files/directories, impossible combinations) with their dotted paths,
e.g. ``train.batch_size: must be >= 1, got 0``. Nothing is read from environment variables.

Relative paths are resolved against the current working directory (run from the repository root,
like the shipped ``configs/*.yaml``).

Sections and what they control (METHOD.md sections 3 and 5):

* ``mode``: ``"adapter"`` (the paper: LoRA + MoGLE on a frozen base) or ``"scratch"`` (every
  transformer and MoGLE weight of a small preset trained from its random init).
  ``stage``: ``"diffusion"`` (the rectified-flow training) or ``"autoencoder"`` (train the
  preset's VAE first, for the scratch recipe; see :mod:`facemogle.train.autoencoder`).
* ``model``: the spec (``facemogle.specs``), its build options, LoRA rank/alpha, initial weights,
  and the MoGLE ablation switches (``model.mogle``).
* ``data``: dataset folder, layout, split, resolution, resize filter, caption and dropout settings.
* ``cache``: the latent / text-embedding cache (:mod:`facemogle.data.cache`).
* ``train``: batch size, accumulation, precision, optimizer, schedule, clipping, step count.
* ``checkpoint``, ``log``, ``sample``: intervals and outputs.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from facemogle.errors import InputError

MODES = ("adapter", "scratch")
STAGES = ("diffusion", "autoencoder")
LAYOUTS = ("auto", "mm-celeba-hq", "folder")
SPLITS = ("train", "val", "test")
IMAGE_RESIZE = ("bicubic", "area")
MASK_ORDERS = ("official", "bisenet")
CACHE_DTYPES = ("float32", "bfloat16", "float16")
MIXED_PRECISION = ("no", "bf16", "fp16")
OPTIMIZERS = ("prodigy", "adamw")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear")
#: Specs that load a large pretrained model: "scratch" mode (train everything from random init)
#: makes no sense for them.
PRETRAINED_SPECS = ("flux-dev",)
#: Spec build options the trainer sets itself (never from ``model.options``).
RESERVED_SPEC_OPTIONS = ("device", "dtype", "lora", "mogle", "checkpoint", "lora_rank")
#: Sides must be multiples of this: VAE factor 8 x 2x2 token patches (FLUX and every preset).
RESOLUTION_MULTIPLE = 16


class ConfigError(InputError):
    """The training config is unreadable or invalid; the message lists every problem found."""


#: Largest seed a config may give: numpy's generators (seeded with it by accelerate) take 32 bits.
SEED_MAX = 2**32 - 1


def _opt(default: Any = dataclasses.MISSING, *, choices=None, ge=None, gt=None, le=None, lt=None,
         exists: str | None = None, doc: str = "") -> Any:
    """A config option: default, allowed values / range, and for paths ``exists="dir"|"file"``."""
    metadata = dict(choices=choices, ge=ge, gt=gt, le=le, lt=lt, exists=exists, doc=doc)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    if dataclasses.is_dataclass(default):
        return field(default_factory=type(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# ----------------------------------------------------------------------------------- sections


@dataclass(kw_only=True)
class MoGLESection:
    """MoGLE switches (``facemogle.mogle.MoGLE``): the paper's ablations are combinations of these."""

    use_experts: bool = _opt(True, doc="False: identity experts")
    gating_mode: str = _opt("dynamic", choices=("dynamic", "none", "static", "scalar"))
    active_experts: str = _opt("all", choices=("all", "global", "local"))
    expert_hidden_dim: int = _opt(32, ge=1)


@dataclass(kw_only=True)
class ModelSection:
    spec: str = _opt("tiny-random", doc="facemogle.specs name")
    options: dict = _opt({}, doc="build options of the spec, e.g. {base: <FLUX.1-dev dir>} or {seed: 0}")
    lora_rank: int = _opt(4, ge=1)
    lora_alpha: float = _opt(4.0, gt=0)
    init_lora: Optional[str] = _opt(None, exists="file", doc="LoRA file to start from (official format)")
    init_mogle: Optional[str] = _opt(None, exists="file", doc="MoGLE file to start from (official format)")
    vae: Optional[str] = _opt(None, exists="dir", doc="a trained VAE directory (autoencoder stage) replacing the spec's")
    init_checkpoint: Optional[str] = _opt(None, exists="dir",
                                          doc="a diffusion checkpoint to start from (its moving average when it has "
                                              "one): transformer (scratch mode), LoRA and MoGLE; or a saved "
                                              "pipeline of the same shapes (an export, e.g. the bundled model's "
                                              "folder); a new run, new optimizer and schedule")
    mogle: MoGLESection = _opt(MoGLESection())


@dataclass(kw_only=True)
class DataSection:
    root: str = _opt(exists="dir", doc="dataset folder")
    layout: str = _opt("auto", choices=LAYOUTS)
    captions_dir: Optional[str] = _opt(None, exists="dir", doc="text/ + text.json elsewhere than root")
    split_file: Optional[str] = _opt(None, exists="file", doc="JSON split file (train/val/test stems)")
    split: str = _opt("train", choices=SPLITS, doc="the split trained on")
    num_val: Optional[int] = _opt(None, ge=0, doc="default split: stems held out for val (None: layout default)")
    split_salt: str = _opt("facemogle")
    max_samples: Optional[int] = _opt(None, ge=1, doc="train on the first N stems only (smoke runs)")
    resolution: int = _opt(512, ge=RESOLUTION_MULTIPLE)
    image_resize: str = _opt("bicubic", choices=IMAGE_RESIZE)
    mask_order: str = _opt("official", choices=MASK_ORDERS)
    captions_per_sample: Optional[int] = _opt(None, ge=1, doc="cache the first N sentences of each caption (None: all)")
    text_dropout: float = _opt(0.1, ge=0.0, le=1.0)
    mask_dropout: float = _opt(0.1, ge=0.0, le=1.0, doc="per local mask; the global mask is never dropped")
    empty_mask_dropout: float = _opt(0.0, ge=0.0, le=1.0,
                                     doc="whole mask -> the empty mask (text-only samples; FLUX knows faces without one)")
    mirror: bool = _opt(False, doc="add every face flipped left-right (left/right classes swapped)")
    balance_attributes: Optional[float] = _opt(None, gt=0.0, le=1.0,
                                               doc="draw faces whose caption states an attribute rarer than this "
                                                   "share more often (facemogle.data.balance); None: each face once "
                                                   "per epoch")
    balance_hair_colour: bool = _opt(False, doc="draw every hair colour of the captions as often as the commonest "
                                                "(at most 6x; facemogle.data.balance)")
    complete_faces_only: bool = _opt(False, doc="train only on faces whose mask shows skin, hair, both eyes, the "
                                                "nose and the lips (facemogle.face_parts)")
    covered_parts_count: bool = _opt(False, doc="with complete_faces_only: eyeglasses count as the eyes they cover, "
                                                "a hat as the hair (facemogle.face_parts.COVERED_BY)")
    first_caption_share: float = _opt(0.0, ge=0.0, le=1.0,
                                      doc="share of samples captioned by sentence 0 (every face fact) instead of a "
                                          "random sentence")
    num_workers: int = _opt(0, ge=0)


@dataclass(kw_only=True)
class CacheSection:
    enabled: bool = _opt(True, doc="False: encode image, masks and text every step (the reference's way)")
    dir: Optional[str] = _opt(None, doc="default: <output_dir>/cache")
    dtype: str = _opt("float32", choices=CACHE_DTYPES)
    shard_size: int = _opt(256, ge=1)
    encode_batch_size: int = _opt(8, ge=1)


@dataclass(kw_only=True)
class OptimizerSection:
    name: str = _opt("prodigy", choices=OPTIMIZERS)
    lr: float = _opt(1.0, gt=0.0)
    weight_decay: float = _opt(0.01, ge=0.0)
    betas: list = _opt([0.9, 0.999])
    eps: float = _opt(1e-8, gt=0.0)
    use_bias_correction: bool = _opt(True, doc="prodigy only")
    safeguard_warmup: bool = _opt(True, doc="prodigy only")
    d_coef: float = _opt(1.0, gt=0.0, doc="prodigy only")


#: The small parts ``train.part_loss_weight`` weighs by default: a few tokens each at 16 x 16 tokens.
PART_LOSS_CLASSES = ("left eye", "right eye", "left eyebrow", "right eyebrow", "inner mouth", "upper lip",
                     "lower lip")


@dataclass(kw_only=True)
class TrainSection:
    batch_size: int = _opt(1, ge=1, doc="per process; total = batch_size x processes x accumulation")
    gradient_accumulation_steps: int = _opt(1, ge=1)
    max_steps: int = _opt(4000, ge=1)
    mixed_precision: str = _opt("bf16", choices=MIXED_PRECISION)
    gradient_checkpointing: bool = _opt(False)
    max_grad_norm: Optional[float] = _opt(0.5, gt=0.0, doc="None: no clipping")
    ema_decay: Optional[float] = _opt(None, gt=0.0, lt=1.0,
                                      doc="keep an exponential moving average of the trained weights (diffusers "
                                          "EMAModel, warm-up on), saved beside each checkpoint; None: off")
    optimizer: OptimizerSection = _opt(OptimizerSection())
    lr_scheduler: str = _opt("constant", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = _opt(0, ge=0)
    timestep_buckets: int = _opt(4, ge=1, doc="loss is logged per bucket of t")
    loss_channel_power: float = _opt(0.0, ge=0.0, le=2.0,
                                     doc="weigh each latent channel's squared error by the autoencoder's decoder "
                                         "gain to this power (mean weight 1; facemogle.flow.token_channel_weights): "
                                         "0 the plain MSE, 2 the pixel MSE of the PCA patch codec; needs an "
                                         "autoencoder with channel_gain()")
    timestep_shift: float = _opt(1.0, gt=0.0,
                                 doc="train at t' = s t / (1 + (s - 1) t) of the drawn logit-normal t "
                                     "(facemogle.flow.shift_timesteps, SD3 / FLUX's resolution shift): > 1 puts "
                                     "more steps at high noise, where layout and colour are set; 1: off")
    part_loss_weight: float = _opt(0.0, ge=0.0,
                                   doc="extra loss weight on the tokens the mask's small parts cover "
                                       "(train.part_loss_classes; weights 1 + w there, 1 elsewhere, mean 1 per "
                                       "sample: facemogle.flow.part_token_weights), also for samples trained "
                                       "without their mask; 0: off; needs cache.enabled")
    part_loss_classes: list = _opt(list(PART_LOSS_CLASSES), doc="class names train.part_loss_weight weighs")
    cpu_threads: Optional[int] = _opt(None, ge=1, doc="torch CPU threads (None: torch's default); 1 suits tiny models")


@dataclass(kw_only=True)
class CheckpointSection:
    every: int = _opt(500, ge=1)
    keep_last: Optional[int] = _opt(None, ge=1, doc="None: keep all")


@dataclass(kw_only=True)
class LogSection:
    every: int = _opt(1, ge=1)
    tensorboard: Optional[bool] = _opt(None, doc="None: if installed")


@dataclass(kw_only=True)
class SampleSection:
    every: int = _opt(500, ge=0, doc="0: never")
    count: int = _opt(4, ge=1)
    steps: int = _opt(28, ge=1)
    guidance: float = _opt(3.5, ge=0.0)
    seed: int = _opt(42, ge=0, le=SEED_MAX)


@dataclass(kw_only=True)
class AutoencoderSection:
    """The ``stage: autoencoder`` run (a VAE for a scratch preset); L1 + L2 + tiny KL."""

    max_steps: int = _opt(2000, ge=1)
    batch_size: int = _opt(8, ge=1)
    lr: float = _opt(1e-4, gt=0.0)
    l1_weight: float = _opt(1.0, ge=0.0)
    l2_weight: float = _opt(1.0, ge=0.0)
    kl_weight: float = _opt(1e-6, ge=0.0)
    log_every: int = _opt(10, ge=1)


@dataclass(kw_only=True)
class TrainingConfig:
    output_dir: str = _opt(doc="checkpoints, logs, samples")
    mode: str = _opt("adapter", choices=MODES)
    stage: str = _opt("diffusion", choices=STAGES)
    seed: int = _opt(0, ge=0, le=SEED_MAX, doc="seeds torch, numpy and Python (numpy takes at most 2**32 - 1)")
    model: ModelSection = _opt(ModelSection())
    data: DataSection = _opt(dataclasses.MISSING)
    cache: CacheSection = _opt(CacheSection())
    train: TrainSection = _opt(TrainSection())
    checkpoint: CheckpointSection = _opt(CheckpointSection())
    log: LogSection = _opt(LogSection())
    sample: SampleSection = _opt(SampleSection())
    autoencoder: AutoencoderSection = _opt(AutoencoderSection())

    # -------------------------------------------------------------------------------- helpers
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache.dir) if self.cache.dir else Path(self.output_dir) / "cache"

    @property
    def checkpoints_dir(self) -> Path:
        return Path(self.output_dir) / "checkpoints"


def option_defaults(section: type = TrainingConfig, prefix: str = "") -> dict:
    """Dotted key -> default value of every option that has one (sections recursed into)."""
    defaults = {}
    for option in dataclasses.fields(section):
        if option.default_factory is not dataclasses.MISSING:
            value = option.default_factory()
            if dataclasses.is_dataclass(value):
                defaults.update(option_defaults(type(value), f"{prefix}{option.name}."))
                continue
        elif option.default is dataclasses.MISSING:
            if option.name == "data":
                defaults.update(option_defaults(DataSection, f"{prefix}data."))
            continue
        else:
            value = option.default
        defaults[f"{prefix}{option.name}"] = value
    return defaults


# ----------------------------------------------------------------------------------- parsing


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> TrainingConfig:
    """Read and validate a YAML config. ``overrides``: dotted keys -> values (e.g. the CLI's
    ``{"train.max_steps": 10}``), applied before validation.

    Raises:
        ConfigError: the file is missing or not YAML, or any option is invalid (all listed).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (output_dir, data, train, ...), "
                          f"got {type(data).__name__}")
    return config_from_dict(data, overrides=overrides, source=str(path))


def config_from_dict(data: dict, overrides: dict | None = None, source: str = "config") -> TrainingConfig:
    """Validate a config given as a plain dict (see :func:`load_config`)."""
    data = _deep_copy(data)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[leaf] = value
    errors: list[str] = []
    config = _parse_section(TrainingConfig, data, "", errors)
    if not errors:
        _check_semantics(config, errors)
    if errors:
        raise ConfigError(f"{source}: " + "; ".join(errors))
    return config


#: Nodes a config may hold with every alias expanded (a "billion laughs" alias bomb has 10**9).
MAX_YAML_NODES = 100_000


def expanded_size(node, limit: int = MAX_YAML_NODES) -> int:
    """Nodes of a composed YAML node tree with aliases counted every time they are used
    (memoised, so it takes time linear in the document); stops counting past ``limit``."""
    sizes: dict[int, int] = {}

    def size(current) -> int:
        key = id(current)
        if key not in sizes:
            sizes[key] = 0  # a recursive alias: counts once
            if isinstance(current, yaml.MappingNode):
                children = [n for pair in current.value for n in pair]
            elif isinstance(current, yaml.SequenceNode):
                children = current.value
            else:
                children = []
            total = 1
            for child in children:
                total += size(child)
                if total > limit:
                    break
            sizes[key] = total
        return sizes[key]

    return size(node)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last) and a
    document that expands to more than :data:`MAX_YAML_NODES` nodes through aliases."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None and expanded_size(node) > MAX_YAML_NODES:
            raise yaml.constructor.ConstructorError(
                None, None, f"the document expands to more than {MAX_YAML_NODES} values through aliases "
                "(an alias bomb?)", node.start_mark)
        return node

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _deep_copy(value):
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _parse_section(cls, data, prefix: str, errors: list[str]):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    errors_before = len(errors)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{prefix.rstrip('.') or 'config'}: must be a mapping, got {_type_name(data)}")
        return None
    for key in data:
        if key not in fields:
            hint = difflib.get_close_matches(str(key), list(fields), n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            errors.append(f"{prefix}{key}: unknown option{suggestion}; known: {', '.join(fields)}")
    values = {}
    for name, spec in fields.items():
        path = f"{prefix}{name}"
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            if name not in data and spec.default_factory is dataclasses.MISSING:
                errors.append(f"{path}: missing required section")
                continue
            values[name] = _parse_section(annotation, data.get(name), f"{path}.", errors)
            continue
        if name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                errors.append(f"{path}: missing required option")
                continue
            values[name] = spec.default if spec.default_factory is dataclasses.MISSING else spec.default_factory()
            continue
        ok, value = _check_value(data[name], annotation, spec.metadata, path, errors)
        if ok:
            values[name] = value
    if len(errors) > errors_before:
        return None
    return cls(**values)


def _check_value(value, annotation, meta, path: str, errors: list[str]):
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional, annotation = True, args[0]
    if value is None:
        if optional:
            return True, None
        errors.append(f"{path}: must not be null")
        return False, None
    base = typing.get_origin(annotation) or annotation
    if base is bool:
        if not isinstance(value, bool):
            errors.append(f"{path}: expected true or false, got {_type_name(value)} {value!r}")
            return False, None
    elif base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{path}: expected an integer, got {_type_name(value)} {value!r}")
            return False, None
    elif base is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-8" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{path}: expected a number, got {_type_name(value)} {value!r}")
            return False, None
        value = float(value)
        if not math.isfinite(value):  # .inf / .nan: a NaN model, or an endless schedule
            errors.append(f"{path}: must be a finite number, got {value}")
            return False, None
    elif base is str:
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string, got {_type_name(value)} {value!r}")
            return False, None
    elif base is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {_type_name(value)}")
            return False, None
    elif base is list:
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {_type_name(value)}")
            return False, None
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        errors.append(f"{path}: {value!r} is not one of {', '.join(map(str, choices))}{suggestion}")
        return False, None
    for bound, test, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                              ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        limit = meta.get(bound)
        if limit is not None and not test(value, limit):
            errors.append(f"{path}: must be {word} {limit}, got {value!r}")
            return False, None
    exists = meta.get("exists")
    if exists is not None:
        target = Path(value).expanduser()
        if exists == "dir" and not target.is_dir():
            errors.append(f"{path}: directory {value} does not exist" + ("" if not target.exists() else " (it is a file)"))
            return False, None
        if exists == "file" and not target.is_file():
            errors.append(f"{path}: file {value} does not exist")
            return False, None
        value = str(target)
    return True, value


def _check_semantics(config: TrainingConfig, errors: list[str]) -> None:
    """Checks that involve several options or the installed software."""
    data, train, model = config.data, config.train, config.model
    if data.resolution % RESOLUTION_MULTIPLE:
        nearest = max(RESOLUTION_MULTIPLE, round(data.resolution / RESOLUTION_MULTIPLE) * RESOLUTION_MULTIPLE)
        errors.append(f"data.resolution: {data.resolution} is not a multiple of {RESOLUTION_MULTIPLE} (try {nearest})")
    if data.text_dropout >= 1.0:
        errors.append("data.text_dropout: must be < 1 (1 drops every caption)")
    betas = config.train.optimizer.betas
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas):
        errors.append(f"train.optimizer.betas: expected two numbers in [0, 1), got {betas!r}")
    if train.optimizer.name == "prodigy":
        try:
            import prodigyopt  # noqa: F401
        except ImportError:
            errors.append("train.optimizer.name: 'prodigy' needs the prodigyopt package "
                          "(pip install 'facemogle[train]' or pip install prodigyopt), or use 'adamw'")
    if train.lr_scheduler == "constant" and train.lr_warmup_steps:
        errors.append("train.lr_warmup_steps: the 'constant' scheduler has no warm-up; "
                      "use lr_scheduler: constant_with_warmup")
    if train.part_loss_weight:
        from facemogle.labels import CLASS_NAMES

        unknown = [c for c in train.part_loss_classes if c not in CLASS_NAMES]
        if unknown or not train.part_loss_classes:
            errors.append(f"train.part_loss_classes: unknown class {unknown[0]!r}; known: {', '.join(CLASS_NAMES)}"
                          if unknown else "train.part_loss_classes: empty (name the classes part_loss_weight weighs)")
        if not config.cache.enabled:
            errors.append("train.part_loss_weight: reads the parts off the cached mask latents; set cache.enabled: "
                          "true (or part_loss_weight: 0)")
    if train.mixed_precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            errors.append("train.mixed_precision: fp16 needs a CUDA device (use bf16 or no on CPU)")
    if config.log.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            errors.append("log.tensorboard: true needs the tensorboard package (pip install tensorboard)")

    from facemogle.mogle import MoGLE
    from facemogle.specs import available_specs, get_spec

    specs = available_specs()
    if model.spec not in specs:
        hint = difflib.get_close_matches(model.spec, list(specs), n=1)
        errors.append(f"model.spec: unknown model {model.spec!r}{f' (did you mean {hint[0]!r}?)' if hint else ''}; "
                      f"known: {', '.join(specs)}")
    else:
        parameters = inspect.signature(get_spec(model.spec).build).parameters
        for key in model.options:
            if key in RESERVED_SPEC_OPTIONS:
                errors.append(f"model.options.{key}: set by the trainer (use model.lora_rank / init_lora / init_mogle / "
                              "train.mixed_precision instead)")
            elif key not in parameters:
                errors.append(f"model.options.{key}: not an option of spec {model.spec!r}; "
                              f"known: {', '.join(p for p in parameters if p not in RESERVED_SPEC_OPTIONS)}")
        if config.mode == "scratch" and model.spec in PRETRAINED_SPECS:
            errors.append(f"mode: 'scratch' trains a small preset from random init; {model.spec!r} is a pretrained "
                          "model, use mode: adapter")
    if config.stage == "autoencoder" and config.mode != "scratch":
        errors.append("stage: 'autoencoder' trains the VAE of a scratch preset; set mode: scratch")
    if config.mode == "adapter" and model.vae is not None:
        errors.append("model.vae: a replacement VAE is for mode: scratch (the adapter keeps the base model's VAE)")
    try:
        mogle = MoGLE(**dataclasses.asdict(model.mogle))
    except InputError as error:
        errors.append(f"model.mogle: {error}")
        mogle = None
    _check_initial_weights(model, mogle, errors)
    if config.sample.every and config.sample.count < 1:
        errors.append("sample.count: must be >= 1")


def _check_initial_weights(model: ModelSection, mogle, errors: list[str]) -> None:
    """``init_lora`` / ``init_mogle`` must fit the configured rank and MoGLE variant (headers and a
    0.1 M-parameter file: cheap to read now, before the model is built)."""
    from facemogle.errors import CheckpointError
    from facemogle.files import read_state_dict_file

    if model.init_lora is not None:
        from safetensors import safe_open

        try:
            with safe_open(model.init_lora, framework="pt") as handle:
                ranks = {handle.get_slice(k).get_shape()[0] for k in handle.keys() if k.endswith("lora_A.weight")}
        except Exception as error:  # header errors of any kind mean "not a LoRA safetensors file"
            errors.append(f"model.init_lora: {model.init_lora} is not a readable safetensors file ({error})")
        else:
            if ranks != {model.lora_rank}:
                errors.append(f"model.init_lora: the file's LoRA rank is {', '.join(map(str, sorted(ranks))) or 'none'}, "
                              f"model.lora_rank is {model.lora_rank}")
    if model.init_mogle is not None and mogle is not None:
        try:
            mogle.load_official_state_dict(read_state_dict_file(model.init_mogle))
        except CheckpointError as error:
            errors.append(f"model.init_mogle: {error}")
