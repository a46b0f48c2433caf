"""The model-choosing options shared by the commands that generate (``generate``, ``evaluate --protocol``)."""

from __future__ import annotations

import argparse

from facemogle.errors import InputError
from facemogle.low_memory import OFFLOAD_MODES, QUANTIZE_MODES

#: Options that only the flux-dev spec takes (besides --checkpoint, which also opens saved pipelines).
FLUX_OPTIONS = ("base", "lora", "mogle", "checkpoint")


def add_model_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--model``, ``--base``, ``--lora``, ``--mogle``, ``--checkpoint``."""
    parser.add_argument("--model", default=None, help="model spec (see `facemogle generate --list-models`)")
    parser.add_argument("--base", help="flux-dev: FLUX.1-dev directory or hub id")
    parser.add_argument("--lora", help="flux-dev: official pytorch_lora_weights.safetensors")
    parser.add_argument("--mogle", help="flux-dev: official global_local_mask_moe.pt")
    parser.add_argument(
        "--checkpoint",
        help="a training checkpoint directory: a whole saved pipeline (scratch mode), or the official "
        "LoRA + MoGLE files on the --base FLUX.1-dev (adapter mode)",
    )
    parser.add_argument("--offload", choices=list(OFFLOAD_MODES),
                        help="low memory: diffusers' model / sequential / group CPU offloading (README, 'Low memory')")
    parser.add_argument("--quantize", choices=list(QUANTIZE_MODES),
                        help="low memory: transformer weights in fp8 (layerwise casting), int8 (torchao) or nf4 "
                             "(bitsandbytes, CUDA, flux-dev)")


def resolve_model(args: argparse.Namespace) -> tuple[str, dict]:
    """(spec name, ``load_pipeline`` keywords) for the parsed model options; clear errors for
    options that do not fit the chosen spec."""
    from facemogle.cli import checks
    from facemogle.specs import DEFAULT_MODEL, checkpoint_spec, get_spec

    options = {name: getattr(args, name) for name in FLUX_OPTIONS if getattr(args, name, None)}
    low_memory = {name: getattr(args, name) for name in ("offload", "quantize") if getattr(args, name, None)}
    if low_memory:
        from facemogle.low_memory import check_low_memory

        check_low_memory(low_memory.get("offload"), low_memory.get("quantize"), getattr(args, "device", None))

    def check_files() -> None:  # weight files: regular files (--base may be a hub id)
        for name in ("lora", "mogle"):
            if name in options:
                checks.input_file(f"--{name}", options[name])

    if args.checkpoint:
        checks.input_folder("--checkpoint", args.checkpoint)
    if args.checkpoint and args.model is None:
        model, checkpoint_options = checkpoint_spec(args.checkpoint)
        if model == "saved":
            if len(options) > 1:
                raise InputError("--base/--lora/--mogle do not apply to a checkpoint that holds a whole pipeline")
            options = checkpoint_options
        check_files()
        return model, {**options, **low_memory}
    model = args.model or DEFAULT_MODEL
    get_spec(model)  # an unknown name, before anything loads
    if options and model != "flux-dev":
        raise InputError(f"--{'/--'.join(options)} only apply to --model flux-dev, not {model}")
    check_files()
    if low_memory.get("quantize") == "nf4" and model != "flux-dev":
        raise InputError(f"--quantize nf4 happens while the weights load: flux-dev only, not {model}")
    return model, {**options, **low_memory}
