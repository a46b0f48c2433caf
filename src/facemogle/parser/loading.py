"""``load_parser``: the shipped face parser, a saved ``FaceParser`` folder, or a BiSeNet ``.pth``.

``load_parser(None)`` returns the parser shipped in ``facemogle/weights/parser`` (trained by
``scripts/train_parser.py`` on celebamask-hq-mini, see its ``MODEL_CARD.md``: non-commercial research
and education only). ``load_parser(DIR)`` loads a ``FaceParser`` saved with ``save_pretrained``;
``load_parser(FILE.pth)`` a face-parsing.PyTorch BiSeNet state dict (``facemogle.parser.bisenet``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from facemogle.errors import CheckpointError
from facemogle.parser.bisenet import BiSeNetParser, load_bisenet
from facemogle.parser.model import FaceParser

#: Folder of the shipped parser (config.json + safetensors + MODEL_CARD.md).
SHIPPED_PARSER_DIR = Path(__file__).resolve().parents[1] / "weights" / "parser"


def load_parser(path_or_none: str | os.PathLike | None = None) -> FaceParser | BiSeNetParser:
    """A face parser in eval mode on the CPU.

    Args:
        path_or_none: ``None`` for the shipped weights; a directory written by
            ``FaceParser.save_pretrained``; or a face-parsing.PyTorch BiSeNet ``.pth`` state dict
            (recognised by its parameter names).

    Raises:
        CheckpointError: the path holds neither, or its weights do not match the architecture.
    """
    path = SHIPPED_PARSER_DIR if path_or_none is None else Path(path_or_none)
    if path.is_dir():
        if not (path / FaceParser.config_name).is_file():
            what = "the shipped parser weights are missing" if path_or_none is None else "no FaceParser config"
            raise CheckpointError(f"{what}: {str(path)!r} has no {FaceParser.config_name}")
        try:
            parser = FaceParser.from_pretrained(path, torch_dtype=torch.float32)  # weights may be stored as fp16
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
            raise CheckpointError(f"cannot load a FaceParser from {str(path)!r}: {err}") from None
        return parser.eval()
    if path.is_file():
        return BiSeNetParser(load_bisenet(path)).eval()
    raise CheckpointError(f"parser {str(path)!r} does not exist (give a FaceParser folder or a BiSeNet .pth)")
