"""Face-MoGLE: controllable face generation from a semantic mask, a text prompt, or both.

    >>> from facemogle import load_pipeline
    >>> pipe = load_pipeline("flux-dev", base="FLUX.1-dev", lora="pytorch_lora_weights.safetensors",
    ...                      mogle="global_local_mask_moe.pt")
    >>> image = pipe(mask="mask.png", prompt="She is wearing lipstick.", seed=42).images[0]

The heavy names (torch, diffusers) load lazily, so ``import facemogle`` and the mask tools stay fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

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
