"""Importing facemogle drops the known start-up notices that do not concern it, and only those."""

from __future__ import annotations

import logging

import facemogle  # noqa: F401 (installs the filters)


def passes(logger: str, message: str) -> bool:
    record = logging.LogRecord(logger, logging.WARNING, __file__, 1, message, None, None)
    return all(f.filter(record) for f in logging.getLogger(logger).filters)


def test_known_notices_are_dropped_and_others_kept():
    torchvision = ("`CLIPImageProcessor` requires torchvision (not installed); falling back to "
                   "`CLIPImageProcessorPil` for backward compatibility.")
    assert not passes("transformers.utils.import_utils", torchvision)
    assert not passes("transformers.utils.import_utils", torchvision.replace("CLIP", "Siglip"))
    assert passes("transformers.utils.import_utils", "Disabling PyTorch because PyTorch >= 2.6 is required")
    assert not passes("torchao", "Failed to load x.so: Could not load this library: x.so")
    assert passes("torchao", "Failed to load x.so: permission denied")
    assert not passes("diffusers.quantizers.torchao.torchao_quantizer",
                      "Unable to import `torchao` Tensor objects. This may affect loading checkpoints")
