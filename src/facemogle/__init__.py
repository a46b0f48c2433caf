"""Face-MoGLE: controllable face generation from a semantic mask, a text prompt, or both.

    >>> from facemogle import load_pipeline
    >>> pipe = load_pipeline("flux-dev", base="FLUX.1-dev", lora="pytorch_lora_weights.safetensors",
    ...                      mogle="global_local_mask_moe.pt")
    >>> image = pipe(mask="mask.png", prompt="She is wearing lipstick.", seed=42).images[0]

The heavy names (torch, diffusers) load lazily, so ``import facemogle`` and the mask tools stay fast.
"""

from __future__ import annotations

import importlib
import logging

__version__ = "0.1.0"


class _KnownNotices(logging.Filter):
    """Drops the start-up lines that installing torchao (``--quantize int8``, the ``[lowmem]`` extra)
    adds to every command, none of which concerns what facemogle does: diffusers 0.42, importing its
    torchao quantizer, warns that torchao-serialised checkpoints may not load (facemogle never loads
    one: it quantises weights as they load); torchao cannot load its CUDA kernels on a CPU-only
    machine (its CPU path needs none); torch notes that torchao registers enums the deprecated way.
    transformers notes, when diffusers' FLUX pipeline module names CLIP's and SigLIP's image
    processors, that without torchvision (never a facemogle dependency: it has no CPU build here)
    it falls back to their PIL versions (facemogle uses neither). Every other message of these
    loggers stays."""

    def __init__(self, *prefixes: str, containing: str = ""):
        super().__init__()
        self.prefixes, self.containing = prefixes, containing

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith(self.prefixes) and self.containing in message)


for _name, _notice in {
    "diffusers.quantizers.torchao.torchao_quantizer": _KnownNotices("Unable to import `torchao` Tensor objects"),
    "torchao": _KnownNotices("Failed to load ", containing="Could not load this library"),
    "torch.utils._pytree": _KnownNotices("<enum ", containing="is now natively supported by torch.compile"),
    "transformers.utils.import_utils": _KnownNotices("`", containing="requires torchvision (not installed); falling "
                                                                     "back to"),
}.items():
    logging.getLogger(_name).addFilter(_notice)

_LAZY = {
    "MoGLE": "facemogle.mogle",
    "FaceMoGLEPipeline": "facemogle.pipeline",
    "load_pipeline": "facemogle.specs",
    "available_specs": "facemogle.specs",
    "load_mask": "facemogle.masks",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'facemogle' has no attribute {name!r}")
