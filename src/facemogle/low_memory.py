"""Low-memory modes through diffusers' and accelerate's own machinery (``--offload``, ``--quantize``).

FLUX.1-dev's transformer alone is 24 GB in bfloat16; these modes fit it on smaller GPUs:

============  ===========================================================================  ==========
mode          what it does                                                                   runs on
============  ===========================================================================  ==========
offload       ``model``: ``pipe.enable_model_cpu_offload`` (one whole model on the GPU at a   model,
              time); ``sequential``: ``enable_sequential_cpu_offload`` (each layer moved in  group: any
              when it runs; slowest, least memory); ``group``: ``enable_group_offload``      device;
              (``leaf_level``: the condition forward calls the transformer's layers, not     sequential:
              its blocks' ``forward``, so block-level groups would never be moved in)        accelerator
quantize      ``fp8``: ``transformer.enable_layerwise_casting`` (weights stored in           fp8, int8:
              float8_e4m3fn, each layer cast up to the compute dtype when it runs);          CPU and GPU;
              ``int8``: torchao's int8 weight-only quantisation of the transformer's Linear  nf4: CUDA
              layers (``quantize_``, what diffusers' ``TorchAoConfig`` applies at load);
              ``nf4``: bitsandbytes 4-bit at load (diffusers' ``PipelineQuantizationConfig``;
              flux-dev only)
============  ===========================================================================  ==========

The condition LoRA stays on the condition stream in every mode: quantisation leaves the LoRA's own
``lora_A``/``lora_B`` layers in the compute dtype (peft wraps the quantised base layer), and
layerwise casting is applied after the LoRA is attached (a LoRA added later would be created in the
storage dtype that no hook casts back; diffusers' docs warn of this clash). Nothing here downloads
anything.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from facemogle.errors import InputError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: the command line reads the mode names before it sets
# its CPU threads, which must happen before torch loads (facemogle.cpu_threads).
OFFLOAD_MODES = ("model", "sequential", "group")
QUANTIZE_MODES = ("fp8", "int8", "nf4")
#: Storage dtype of ``--quantize fp8`` (a torch dtype name).
FP8_STORAGE = "float8_e4m3fn"


def check_low_memory(offload: str | None, quantize: str | None, device: torch.device | str | None) -> None:
    """Refuse an unknown mode, or one that this machine cannot run, in one line, before anything loads."""
    import torch

    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if offload is not None and offload not in OFFLOAD_MODES:
        raise InputError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {offload!r}")
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise InputError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
    if offload == "sequential" and device.type == "cpu":
        raise InputError("--offload sequential needs an accelerator (on the CPU the weights already live in CPU "
                         "memory; accelerate cannot offload from the CPU to itself layer by layer)")
    if quantize == "int8" and importlib.util.find_spec("torchao") is None:
        raise InputError("--quantize int8 needs torchao: pip install 'facemogle[lowmem]' (or pip install torchao)")
    if quantize == "nf4":
        if device.type != "cuda":
            raise InputError("--quantize nf4 needs a CUDA device (bitsandbytes 4-bit through diffusers); "
                             "on the CPU use --quantize int8 or fp8")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise InputError("--quantize nf4 needs bitsandbytes: pip install bitsandbytes")


def nf4_quantization_config(dtype: torch.dtype):
    """diffusers' ``PipelineQuantizationConfig`` putting the transformer in bitsandbytes nf4 at load."""
    from diffusers import PipelineQuantizationConfig

    return PipelineQuantizationConfig(
        quant_backend="bitsandbytes_4bit",
        quant_kwargs={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": dtype},
        components_to_quantize=["transformer"],
    )


def quantize_transformer(pipe, quantize: str | None) -> None:
    """``fp8`` or ``int8`` on a built pipeline's transformer (``nf4`` happens at load; None: nothing)."""
    import torch

    transformer = pipe.transformer
    if quantize == "fp8":
        transformer.enable_layerwise_casting(storage_dtype=getattr(torch, FP8_STORAGE), compute_dtype=transformer.dtype)
    elif quantize == "int8":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        def frozen_linear(module, name: str) -> bool:  # the base layers; never the LoRA's own
            return isinstance(module, torch.nn.Linear) and "lora_" not in name

        quantize_(transformer, Int8WeightOnlyConfig(), filter_fn=frozen_linear)


def offload_pipeline(pipe, offload: str | None, device: torch.device | str) -> None:
    """Attach diffusers' offloading hooks, computing on ``device`` (None: nothing)."""
    import torch

    device = torch.device(device)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif offload == "group":
        pipe.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"), offload_type="leaf_level")


def apply_low_memory(pipe, *, offload: str | None = None, quantize: str | None = None,
                     device: torch.device | str | None = None):
    """Quantise (``fp8`` / ``int8``), then offload, a built pipeline; returns it. ``device``: where it
    computes (default: CUDA if available, else the CPU)."""
    import torch

    device = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    check_low_memory(offload, quantize, device)
    quantize_transformer(pipe, quantize)
    offload_pipeline(pipe, offload, device)
    return pipe
